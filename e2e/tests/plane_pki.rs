//! The PKI between the planes: a data plane enrolls once with the join
//! token over TLS, then connects with mutual TLS; it comes back after a
//! restart with its stored certificate alone, and renews before expiry.
//! Streams without a certificate, with one from another CA, an expired
//! one, or a revoked one are refused.

#![allow(clippy::unwrap_used)]

use anyhow::Result;
use nio_e2e::{backend, route, wait_for, ControlPlane, DataPlane, TestBackend};
use nio_proto::v1::config_sync_client::ConfigSyncClient;
use nio_proto::v1::{data_plane_message, DataPlaneMessage, Hello};
use rcgen::{CertificateParams, DnType, KeyPair};
use std::path::Path;
use std::time::Duration;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

const DEADLINE: Duration = Duration::from_secs(30);

/// Opens a Sync stream as data plane `id` with `identity` (PEM cert, key)
/// and, if given, the join token; the status it ends with, or "ok".
async fn sync_as(
    cp: &ControlPlane,
    id: &str,
    identity: Option<(String, String)>,
    token: Option<&str>,
) -> String {
    let ca = std::fs::read_to_string(cp.ca_file()).unwrap();
    let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca));
    if let Some((cert, key)) = identity {
        tls = tls.identity(Identity::from_pem(cert, key));
    }
    let channel = Channel::from_shared(cp.grpc_url())
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect()
        .await;
    let channel = match channel {
        Ok(c) => c,
        Err(e) => return format!("connect: {e:?}"),
    };
    let hello = DataPlaneMessage {
        msg: Some(data_plane_message::Msg::Hello(Hello {
            id: id.into(),
            version: nio_proto::VERSION.into(),
            ..Default::default()
        })),
    };
    let mut request = tonic::Request::new(tokio_stream::iter(vec![hello]));
    if let Some(t) = token {
        request
            .metadata_mut()
            .insert("authorization", format!("Bearer {t}").parse().unwrap());
    }
    match ConfigSyncClient::new(channel).sync(request).await {
        Ok(mut stream) => match stream.get_mut().message().await {
            Ok(Some(_)) => "ok".into(),
            Ok(None) => "ended".into(),
            Err(s) => format!("{:?}: {}", s.code(), s.message()),
        },
        Err(s) => format!("{:?}: {}", s.code(), s.message()),
    }
}

fn stored_identity(cache: &Path) -> (String, String) {
    (
        std::fs::read_to_string(cache.join("identity.pem")).unwrap(),
        std::fs::read_to_string(cache.join("identity-key.pem")).unwrap(),
    )
}

/// A certificate for `id` signed by the CA in `ca_dir` (or self-signed),
/// valid from/to days from now.
fn forged(id: &str, ca_dir: Option<&Path>, from: i64, to: i64) -> (String, String) {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.distinguished_name.push(DnType::CommonName, id);
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now + time::Duration::days(from);
    params.not_after = now + time::Duration::days(to);
    let key = KeyPair::generate().unwrap();
    let cert = match ca_dir {
        Some(dir) => {
            let ca_key =
                KeyPair::from_pem(&std::fs::read_to_string(dir.join("ca-key.pem")).unwrap())
                    .unwrap();
            let ca = CertificateParams::from_ca_cert_pem(
                &std::fs::read_to_string(dir.join("ca.pem")).unwrap(),
            )
            .unwrap()
            .self_signed(&ca_key)
            .unwrap();
            params.signed_by(&key, &ca, &ca_key).unwrap()
        }
        None => params.self_signed(&key).unwrap(),
    };
    (cert.pem(), key.serialize_pem())
}

#[tokio::test(flavor = "multi_thread")]
async fn join_once_then_mutual_tls_and_refusals() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let cp = ControlPlane::start(&dir.path().join("cp")).await?;
    let admin = cp.admin();
    let app = TestBackend::start("app").await?;
    admin.create(backend("app", &[app.url()])).await?;
    admin.create(route("r", &[], &["/"], "app")).await?;
    let revision = admin.revision().await?;
    let cache = dir.path().join("dp");
    let mut dp = DataPlane::start(&cp, "dp-1", &cache).await?;
    admin.wait_applied(&["dp-1"], revision, DEADLINE).await?;
    assert!(dp.proc.logged("received a data-plane certificate"));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(cache.join("identity-key.pem"))?
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    let planes = admin.dataplanes().await?;
    let expires = planes["dp-1"]["certificateExpires"].as_str().unwrap_or("");
    assert!(expires.starts_with("20"), "{}", planes["dp-1"]);

    // Restarted without the join token: reconnects with its certificate.
    dp.proc.sigterm()?;
    dp.proc.wait_exit(DEADLINE).await?;
    admin
        .create(route("r2", &["two.test"], &["/"], "app"))
        .await?;
    let revision = admin.revision().await?;
    let ca = cp.ca_file();
    let dp = DataPlane::start_with(
        &cp.grpc_url(),
        Path::new(""),
        "dp-1",
        &cache,
        &["--control-plane-ca", ca.to_str().unwrap()],
    )
    .await?;
    admin.wait_applied(&["dp-1"], revision, DEADLINE).await?;
    assert!(!dp.proc.logged("received a data-plane certificate"));
    let (status, _) = dp.get(&reqwest::Client::new(), "/").await?;
    assert_eq!(status, 200);

    // Refused: no certificate (even with the join token), one for another
    // id, one from another CA, an expired one from our own CA.
    let token = cp.join_token()?;
    let none = sync_as(&cp, "x", None, Some(&token)).await;
    assert!(
        none.starts_with("Unauthenticated: no client certificate"),
        "{none}"
    );
    let other_id = sync_as(&cp, "dp-2", Some(stored_identity(&cache)), None).await;
    assert!(
        other_id.contains("PermissionDenied") && other_id.contains("issued to data plane \"dp-1\""),
        "{other_id}"
    );
    let foreign = sync_as(&cp, "dp-1", Some(forged("dp-1", None, -1, 30)), None).await;
    assert_ne!(foreign, "ok");
    let pki = cp.data_dir.join("pki");
    let expired = sync_as(&cp, "dp-1", Some(forged("dp-1", Some(&pki), -30, -1)), None).await;
    assert_ne!(expired, "ok");
    let valid = sync_as(&cp, "dp-3", Some(forged("dp-3", Some(&pki), -1, 1)), None).await;
    assert_eq!(valid, "ok", "a certificate from the CA is accepted");

    // Revoked: the open stream is closed, and the certificate refused.
    // (with nioctl, over the admin API's POST /api/v1/dataplanes/{id}/revoke)
    let out = std::process::Command::new(nio_e2e::bin("nioctl"))
        .args(["dataplanes", "--revoke", "dp-1"])
        .env("NIO_SERVER", format!("http://{}", cp.admin))
        .env("NIO_ADMIN_TOKEN", &cp.token)
        .env("NIOCONFIG", dir.path().join("nioctl-config.yaml"))
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("dataplane/dp-1 revoked at"),
        "{text}"
    );
    wait_for("the data plane to be cut off", DEADLINE, || async {
        let planes = admin.dataplanes().await?;
        Ok((planes["dp-1"]["connected"] == false).then_some(()))
    })
    .await?;
    wait_for("the refusal in its log", DEADLINE, || async {
        Ok(dp.proc.logged("revoked").then_some(()))
    })
    .await?;
    let revoked = sync_as(&cp, "dp-1", Some(stored_identity(&cache)), None).await;
    let planes = admin.dataplanes().await?;
    assert_eq!(planes["dp-1"]["connected"], false);
    assert!(
        revoked.contains("PermissionDenied") && revoked.contains("revoked"),
        "{revoked}"
    );
    // ...and it keeps serving its last configuration meanwhile.
    let (status, _) = dp.get(&reqwest::Client::new(), "/").await?;
    assert_eq!(status, 200);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn certificates_are_renewed_before_they_expire() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let cp = ControlPlane::start_with_flags(
        &dir.path().join("cp"),
        &["--dataplane-cert-validity", "6s"],
    )
    .await?;
    let admin = cp.admin();
    let app = TestBackend::start("app").await?;
    admin.create(backend("app", &[app.url()])).await?;
    admin.create(route("r", &[], &["/"], "app")).await?;
    let dp = DataPlane::start(&cp, "dp-1", &dir.path().join("dp")).await?;
    let first = wait_for("the first certificate", DEADLINE, || async {
        let planes = admin.dataplanes().await?;
        Ok(planes
            .get("dp-1")
            .and_then(|p| p["certificateExpires"].as_str().map(String::from)))
    })
    .await?;
    // Renewed at two thirds of 6 s; the stream then presents the new one.
    wait_for("a renewed certificate", DEADLINE, || async {
        let planes = admin.dataplanes().await?;
        let p = &planes["dp-1"];
        let renewed = p["connected"] == true
            && p["certificateExpires"]
                .as_str()
                .is_some_and(|e| e > first.as_str());
        Ok(renewed.then_some(()))
    })
    .await?;
    // Well past the first certificate's end: still connected and served.
    tokio::time::sleep(Duration::from_secs(7)).await;
    let planes = admin.dataplanes().await?;
    assert_eq!(planes["dp-1"]["connected"], true, "{}", planes["dp-1"]);
    admin
        .create(route("late", &["late.test"], &["/"], "app"))
        .await?;
    let revision = admin.revision().await?;
    admin.wait_applied(&["dp-1"], revision, DEADLINE).await?;
    assert!(
        dp.proc
            .log_text()
            .matches("received a data-plane certificate")
            .count()
            >= 2
    );
    Ok(())
}
