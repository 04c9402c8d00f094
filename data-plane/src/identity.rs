//! The data plane's identity toward a TLS control plane: a client
//! certificate from the control plane's CA (see the control plane's `pki`
//! module for the whole flow).
//!
//! The key pair is made here and never leaves the data plane: enrollment
//! sends a CSR (with the join token the first time, with the current
//! certificate for a renewal) and gets the certificate back. Both are kept
//! in the cache dir (`identity.pem`, and `identity-key.pem` with mode
//! 0600), so a restarted data plane reconnects without the join token.
//! It renews at two thirds of the certificate's life.

use nio_proto::v1::enrollment_client::EnrollmentClient;
use nio_proto::v1::EnrollRequest;
use rcgen::{CertificateParams, DnType, KeyPair};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tonic::metadata::MetadataValue;
use tonic::transport::Channel;

const CERT_FILE: &str = "identity.pem";
const KEY_FILE: &str = "identity-key.pem";

#[derive(Clone)]
pub struct Identity {
    pub cert_pem: String,
    pub key_pem: String,
    /// The id the certificate was issued to (its CN).
    pub id: String,
    pub not_before: u64,
    pub not_after: u64,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key.
        f.debug_struct("Identity")
            .field("id", &self.id)
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Identity {
    fn parse(cert_pem: String, key_pem: String) -> Result<Identity, String> {
        let (_, pem) = x509_parser::pem::parse_x509_pem(cert_pem.as_bytes())
            .map_err(|e| format!("not a PEM certificate: {e}"))?;
        let cert = pem
            .parse_x509()
            .map_err(|e| format!("unreadable certificate: {e}"))?;
        let id = cert
            .subject()
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
            .unwrap_or_default()
            .to_string();
        let validity = cert.validity();
        Ok(Identity {
            id,
            not_before: u64::try_from(validity.not_before.timestamp()).unwrap_or(0),
            not_after: u64::try_from(validity.not_after.timestamp()).unwrap_or(0),
            cert_pem,
            key_pem,
        })
    }

    /// The stored identity, if there is one.
    pub fn load(dir: &Path) -> Option<Identity> {
        let cert = std::fs::read_to_string(dir.join(CERT_FILE)).ok()?;
        let key = std::fs::read_to_string(dir.join(KEY_FILE)).ok()?;
        match Identity::parse(cert, key) {
            Ok(identity) => Some(identity),
            Err(e) => {
                tracing::warn!(error = %e, dir = %dir.display(), "the stored data-plane certificate is unreadable; enrolling again");
                None
            }
        }
    }

    /// Usable for `id` now: issued to it, not expired, and — when the
    /// control plane's CA is known — by that CA (a control plane that
    /// lost its data dir has a new CA: the data plane enrolls again).
    pub fn usable_for(&self, id: &str, ca_pem: Option<&str>) -> bool {
        self.id == id && now_secs() < self.not_after && ca_pem.is_none_or(|ca| self.chains_to(ca))
    }

    fn chains_to(&self, ca_pem: &str) -> bool {
        use rustls_pki_types::pem::PemObject;
        use rustls_pki_types::CertificateDer;
        let mut roots = rustls::RootCertStore::empty();
        for ca in CertificateDer::pem_slice_iter(ca_pem.as_bytes()).flatten() {
            let _ = roots.add(ca);
        }
        let Ok(leaf) = CertificateDer::from_pem_slice(self.cert_pem.as_bytes()) else {
            return false;
        };
        rustls::server::WebPkiClientVerifier::builder_with_provider(
            std::sync::Arc::new(roots),
            crate::tls::provider(),
        )
        .build()
        .is_ok_and(|v| {
            v.verify_client_cert(&leaf, &[], rustls_pki_types::UnixTime::now())
                .is_ok()
        })
    }

    /// When to renew: at two thirds of its life.
    pub fn renew_in(&self) -> Duration {
        let life = self.not_after.saturating_sub(self.not_before);
        let at = self.not_before + life * 2 / 3;
        Duration::from_secs(at.saturating_sub(now_secs()))
    }

    pub fn expires(&self) -> String {
        humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(self.not_after))
            .to_string()
    }

    fn store(&self, dir: &Path) -> std::io::Result<()> {
        write_atomic(&dir.join(KEY_FILE), self.key_pem.as_bytes(), 0o600)?;
        write_atomic(&dir.join(CERT_FILE), self.cert_pem.as_bytes(), 0o644)
    }
}

fn write_atomic(path: &PathBuf, data: &[u8], mode: u32) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, mode);
    let mut f = opts.open(&tmp)?;
    f.write_all(data)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

/// Gets a certificate for `id` over `channel` (TLS to the control plane:
/// with the current certificate for a renewal, or presenting `join_token`)
/// and stores it in `dir`.
pub async fn enroll(
    channel: Channel,
    id: &str,
    join_token: Option<&str>,
    dir: &Path,
) -> Result<Identity, tonic::Status> {
    let key = KeyPair::generate().map_err(|e| tonic::Status::internal(e.to_string()))?;
    let mut params = CertificateParams::default();
    params.distinguished_name.push(DnType::CommonName, id);
    let csr = params
        .serialize_request(&key)
        .and_then(|csr| csr.pem())
        .map_err(|e| tonic::Status::internal(format!("cannot make a CSR: {e}")))?;
    let mut request = tonic::Request::new(EnrollRequest {
        id: id.to_string(),
        csr_pem: csr,
    });
    if let Some(token) = join_token {
        let auth = MetadataValue::try_from(format!("Bearer {token}")).map_err(|_| {
            tonic::Status::invalid_argument("the join token contains invalid characters")
        })?;
        request.metadata_mut().insert("authorization", auth);
    }
    let reply = EnrollmentClient::new(channel)
        .enroll(request)
        .await?
        .into_inner();
    let identity = Identity::parse(reply.certificate_pem, key.serialize_pem())
        .map_err(tonic::Status::internal)?;
    identity.store(dir).map_err(|e| {
        tonic::Status::internal(format!("storing the certificate in {}: {e}", dir.display()))
    })?;
    tracing::info!(id, expires = %identity.expires(), "received a data-plane certificate from the control plane");
    Ok(identity)
}
