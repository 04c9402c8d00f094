//! `nioctl` (the real binary) against real control and data planes:
//! declarative apply, diff, round trips, delete -f, invalid manifests,
//! export/import between control planes, and Otoroshi imports.

#![allow(clippy::unwrap_used)]

use nio_e2e::*;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::time::Duration;

struct Out {
    code: i32,
    stdout: String,
    stderr: String,
}

/// Runs nioctl against `cp`, isolated from any user config file.
async fn nioctl(cp: &ControlPlane, dir: &Path, args: &[&str]) -> Out {
    let out = tokio::process::Command::new(bin("nioctl"))
        .args(args)
        .env("NIO_SERVER", format!("http://{}", cp.admin))
        .env("NIO_ADMIN_TOKEN_FILE", cp.data_dir.join("admin-token"))
        .env_remove("NIO_ADMIN_TOKEN")
        .env("NIOCONFIG", dir.join("nioctl-config.yaml"))
        .current_dir(dir)
        .output()
        .await
        .unwrap();
    Out {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn write(path: &Path, text: &str) -> PathBuf {
    std::fs::write(path, text).unwrap();
    path.to_path_buf()
}

fn manifests(dir: &Path, backend_url: &str, path: &str) -> PathBuf {
    let m = dir.join("manifests");
    std::fs::create_dir_all(&m).unwrap();
    write(
        &m.join("10-backend.yaml"),
        &format!(
            "apiVersion: nio.dev/v1\nkind: Backend\nmetadata: {{name: shop}}\nspec:\n  targets:\n    - url: {backend_url}\n"
        ),
    );
    write(
        &m.join("20-routes.yaml"),
        &format!(
            "apiVersion: nio.dev/v1\nkind: Route\nmetadata: {{name: shop}}\nspec:\n  frontend: {{hosts: [shop.local], paths: [{path}]}}\n  backend: shop\n---\napiVersion: nio.dev/v1\nkind: Route\nmetadata: {{name: other}}\nspec:\n  frontend: {{hosts: [other.local]}}\n  backend: shop\n"
        ),
    );
    m
}

#[tokio::test(flavor = "multi_thread")]
async fn apply_twice_diff_roundtrip_and_delete() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let cp = ControlPlane::start(&dir.path().join("cp")).await?;
    let m = manifests(dir.path(), "http://127.0.0.1:1", "/shop");
    let m_str = m.to_str().unwrap();

    let first = nioctl(&cp, dir.path(), &["apply", "-f", m_str]).await;
    assert_eq!(first.code, 0, "{}", first.stderr);
    assert!(
        first.stdout.contains("backend/shop created"),
        "{}",
        first.stdout
    );
    assert!(
        first.stdout.contains("route/shop created"),
        "{}",
        first.stdout
    );
    let second = nioctl(&cp, dir.path(), &["apply", "-f", m_str]).await;
    assert_eq!(second.code, 0, "{}", second.stderr);
    let lines: Vec<&str> = second.stdout.lines().collect();
    assert_eq!(lines.len(), 3, "{}", second.stdout);
    assert!(
        lines.iter().all(|l| l.ends_with(" unchanged")),
        "{}",
        second.stdout
    );

    // No change: diff exits 0 and prints nothing.
    let d = nioctl(&cp, dir.path(), &["diff", "-f", m_str]).await;
    assert_eq!((d.code, d.stdout.as_str()), (0, ""), "{}", d.stderr);
    // An edit: diff shows it and exits 1; nothing is written.
    let rev = cp.admin().revision().await?;
    manifests(dir.path(), "http://127.0.0.1:1", "/store");
    let d = nioctl(&cp, dir.path(), &["diff", "-f", m_str]).await;
    assert_eq!(d.code, 1, "{}\n{}", d.stdout, d.stderr);
    assert!(d.stdout.contains("route/shop (changed"), "{}", d.stdout);
    assert!(d.stdout.contains("-     - /shop"), "{}", d.stdout);
    assert!(d.stdout.contains("+     - /store"), "{}", d.stdout);
    assert!(!d.stdout.contains("route/other"), "{}", d.stdout);
    assert_eq!(cp.admin().revision().await?, rev);

    // get -o yaml round-trips into apply (a resource and a list).
    let got = nioctl(&cp, dir.path(), &["get", "route", "shop", "-o", "yaml"]).await;
    assert_eq!(got.code, 0, "{}", got.stderr);
    let one = write(&dir.path().join("one.yaml"), &got.stdout);
    let again = nioctl(&cp, dir.path(), &["apply", "-f", one.to_str().unwrap()]).await;
    assert_eq!(
        again.stdout.trim(),
        "route/shop unchanged",
        "{}",
        again.stderr
    );
    let list = nioctl(&cp, dir.path(), &["get", "rt", "-o", "yaml"]).await;
    let all = write(&dir.path().join("all.yaml"), &list.stdout);
    let again = nioctl(&cp, dir.path(), &["apply", "-f", all.to_str().unwrap()]).await;
    assert_eq!(again.code, 0, "{}", again.stderr);
    assert_eq!(
        again.stdout.matches("unchanged").count(),
        2,
        "{}",
        again.stdout
    );
    assert_eq!(cp.admin().revision().await?, rev);

    // get -o wide has the extra columns.
    let wide = nioctl(&cp, dir.path(), &["get", "routes", "-o", "wide"]).await;
    assert!(wide.stdout.contains("LABELS"), "{}", wide.stdout);

    // delete -f removes exactly what the file names.
    let del = nioctl(&cp, dir.path(), &["delete", "-f", one.to_str().unwrap()]).await;
    assert_eq!(del.code, 0, "{}", del.stderr);
    assert_eq!(del.stdout.trim(), "route/shop deleted");
    let (s, _) = cp
        .admin()
        .send(reqwest::Method::GET, "/apis/nio.dev/v1/routes/shop", None)
        .await?;
    assert_eq!(s, 404);
    for path in [
        "/apis/nio.dev/v1/routes/other",
        "/apis/nio.dev/v1/backends/shop",
    ] {
        let (s, _) = cp.admin().send(reqwest::Method::GET, path, None).await?;
        assert_eq!(s, 200, "{path}");
    }

    // A wrong token: the server's message, non-zero exit.
    let bad = tokio::process::Command::new(bin("nioctl"))
        .args(["get", "routes", "--token", "wrong"])
        .env("NIO_SERVER", format!("http://{}", cp.admin))
        .env("NIOCONFIG", dir.path().join("none.yaml"))
        .output()
        .await?;
    assert!(!bad.status.success());
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(err.contains("401") && err.contains("token"), "{err}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn invalid_manifests_name_file_document_and_field_and_apply_nothing() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let cp = ControlPlane::start(&dir.path().join("cp")).await?;
    let cases = [
        ("kind", "apiVersion: nio.dev/v1\nkind: Gadget\nmetadata: {name: g}\nspec: {}\n", "kind"),
        ("missing", "apiVersion: nio.dev/v1\nkind: Route\nmetadata: {name: r}\nspec: {frontend: {}}\n", "backend"),
        ("type", "apiVersion: nio.dev/v1\nkind: Backend\nmetadata: {name: b2}\nspec:\n  targets: [{url: \"http://127.0.0.1:1\", weight: heavy}]\n", "spec.targets[0].weight"),
    ];
    for (name, bad, field) in cases {
        let file = dir.path().join(format!("{name}.yaml"));
        let good = "apiVersion: nio.dev/v1\nkind: Backend\nmetadata: {name: ok}\nspec:\n  targets: [{url: \"http://127.0.0.1:1\"}]\n";
        write(&file, &format!("{good}---\n{bad}"));
        let out = nioctl(&cp, dir.path(), &["apply", "-f", file.to_str().unwrap()]).await;
        assert_ne!(out.code, 0, "{name}");
        assert!(
            out.stderr.contains(&format!("{name}.yaml, document 2")),
            "{}",
            out.stderr
        );
        assert!(out.stderr.contains(field), "{name}: {}", out.stderr);
        assert!(out.stderr.contains("nothing was applied"), "{}", out.stderr);
    }
    assert_eq!(cp.admin().revision().await?, 0, "nothing applied");
    Ok(())
}

async fn wait_dp(gw: &Gateway) -> anyhow::Result<()> {
    let rev = gw.admin.revision().await?;
    gw.admin
        .wait_applied(&["dp"], rev, Duration::from_secs(20))
        .await
}

async fn status(gw: &Gateway, host: &str, path: &str, auth: Option<(&str, &str)>) -> u16 {
    let mut req = gw.request(reqwest::Method::GET, host, path);
    if let Some((id, secret)) = auth {
        req = req.basic_auth(id, Some(secret));
    }
    req.send().await.unwrap().status().as_u16()
}

#[tokio::test(flavor = "multi_thread")]
async fn export_from_one_control_plane_import_into_another() -> anyhow::Result<()> {
    let backend = TestBackend::start("shop").await?;
    let a = Gateway::start(&[]).await?;
    let dir = a.dir.path();
    let m = manifests(dir, &backend.url(), "/shop");
    let guarded = write(
        &m.join("30-guarded.yaml"),
        "apiVersion: nio.dev/v1\nkind: Route\nmetadata: {name: guarded}\nspec:\n  frontend: {hosts: [api.local]}\n  backend: shop\n  plugins: [{kind: apiKey}]\n",
    );
    let _ = guarded;
    let out = nioctl(&a.cp, dir, &["apply", "-f", m.to_str().unwrap()]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let created = nioctl(
        &a.cp,
        dir,
        &["apikeys", "create", "app", "--route", "guarded"],
    )
    .await;
    assert_eq!(created.code, 0, "{}", created.stderr);
    let secret = created
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("client secret: "))
        .unwrap()
        .trim()
        .to_string();
    wait_dp(&a).await?;

    // Without secrets: no credentials in the export.
    let plain = nioctl(&a.cp, dir, &["export", "-o", "json"]).await;
    assert_eq!(plain.code, 0, "{}", plain.stderr);
    assert!(!plain.stdout.contains("credentials"));
    let export = nioctl(&a.cp, dir, &["export", "--include-secrets"]).await;
    assert!(export.stdout.contains("kind: Export"), "{}", export.stdout);
    assert!(!export.stdout.contains(&secret), "only hashes are exported");
    let file = write(&dir.join("export.yaml"), &export.stdout);

    let b = Gateway::start(&[]).await?;
    let dry = nioctl(
        &b.cp,
        dir,
        &["import", "-f", file.to_str().unwrap(), "--dry-run"],
    )
    .await;
    assert_eq!(dry.code, 0, "{}", dry.stderr);
    assert!(
        dry.stdout.contains("route/guarded created (dry run)"),
        "{}",
        dry.stdout
    );
    assert_eq!(b.admin.revision().await?, 0);
    let imported = nioctl(&b.cp, dir, &["import", "-f", file.to_str().unwrap()]).await;
    assert_eq!(imported.code, 0, "{}", imported.stderr);
    assert!(
        imported.stdout.contains("revision 1"),
        "one revision: {}",
        imported.stdout
    );
    assert!(
        !imported.stdout.contains("secret (shown"),
        "{}",
        imported.stdout
    );
    wait_dp(&b).await?;

    for gw in [&a, &b] {
        assert_eq!(status(gw, "shop.local", "/shop/x", None).await, 200);
        assert_eq!(status(gw, "nowhere.local", "/", None).await, 404);
        assert_eq!(status(gw, "api.local", "/", None).await, 401);
        assert_eq!(
            status(gw, "api.local", "/", Some(("app", &secret))).await,
            200
        );
        assert_eq!(
            status(gw, "api.local", "/", Some(("app", "wrong"))).await,
            401
        );
    }
    // Again: everything unchanged, no new revision.
    let again = nioctl(&b.cp, dir, &["import", "-f", file.to_str().unwrap()]).await;
    assert!(
        again
            .stdout
            .lines()
            .filter(|l| l.contains('/'))
            .all(|l| l.ends_with("unchanged")),
        "{}",
        again.stdout
    );
    assert_eq!(b.admin.revision().await?, 1);

    // describe shows which data planes applied it.
    let d = nioctl(&b.cp, dir, &["describe", "route", "guarded"]).await;
    assert!(
        d.stdout.contains("dp") && d.stdout.contains("applied"),
        "{}",
        d.stdout
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn import_from_otoroshi_fixtures() -> anyhow::Result<()> {
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/otoroshi");
    let backend = TestBackend::start("oto").await?;
    let gw = Gateway::start(&[]).await?;
    let dir = gw.dir.path();
    for f in ["mtls-demo-export.json", "tunnel-remote-export.json"] {
        let path = fixtures.join(f);
        let out = nioctl(
            &gw.cp,
            dir,
            &[
                "import",
                "--from-otoroshi",
                path.to_str().unwrap(),
                "--rewrite-targets",
                &backend.url(),
            ],
        )
        .await;
        assert_eq!(out.code, 0, "{f}: {}", out.stderr);
        assert!(out.stdout.contains("NOT converted"), "{}", out.stdout);
        assert!(
            out.stdout.contains("route/otoroshi-admin-api"),
            "{}",
            out.stdout
        );
        assert!(
            !out.stdout.contains("admin-api-apikey-secret"),
            "no secret printed"
        );
    }
    wait_dp(&gw).await?;
    let host = "otoroshi-api.oto.tools";
    assert_eq!(status(&gw, host, "/api/services", None).await, 401);
    let key = Some(("admin-api-apikey-id", "admin-api-apikey-secret"));
    assert_eq!(status(&gw, host, "/api/services", key).await, 200);
    assert_eq!(
        status(
            &gw,
            host,
            "/api/services",
            Some(("admin-api-apikey-id", "nope"))
        )
        .await,
        401
    );
    // `/health` is public in Otoroshi as an exact pattern, which the import
    // does not widen to a prefix: the key stays required.
    assert_eq!(status(&gw, host, "/health", None).await, 401);
    assert_eq!(
        status(&gw, "whoami-next-gen.oto.tools", "/", None).await,
        200
    );
    // The renamed default key keeps its secret under its new id, and is
    // not allowed on the admin API's group.
    let v: Value = serde_json::from_str(
        &std::fs::read_to_string(fixtures.join("tunnel-remote-export.json")).unwrap(),
    )?;
    let secret = v["apiKeys"][1]["clientSecret"].as_str().unwrap();
    assert_eq!(
        status(
            &gw,
            host,
            "/api/services",
            Some(("hqo0254xsym4nh3s", secret))
        )
        .await,
        403
    );
    let _ = json!({});
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn edit_rotate_and_invalid_imports() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let cp = ControlPlane::start(&dir.path().join("cp")).await?;
    let m = manifests(dir.path(), "http://127.0.0.1:1", "/shop");
    let out = nioctl(&cp, dir.path(), &["apply", "-f", m.to_str().unwrap()]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);

    // edit: $EDITOR changes the file, the change is applied.
    let edited = tokio::process::Command::new(bin("nioctl"))
        .args(["edit", "rt", "shop"])
        .env("NIO_SERVER", format!("http://{}", cp.admin))
        .env("NIO_ADMIN_TOKEN_FILE", cp.data_dir.join("admin-token"))
        .env("NIOCONFIG", dir.path().join("none.yaml"))
        .env_remove("VISUAL")
        .env("EDITOR", "sed -i s#/shop#/edited#")
        .output()
        .await?;
    assert!(
        edited.status.success(),
        "{}",
        String::from_utf8_lossy(&edited.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&edited.stdout).trim(),
        "route/shop edited"
    );
    let (_, v) = cp
        .admin()
        .send(reqwest::Method::GET, "/apis/nio.dev/v1/routes/shop", None)
        .await?;
    assert_eq!(v["spec"]["frontend"]["paths"], json!(["/edited"]));

    // apikeys: create and rotate print a new secret each time.
    let c = nioctl(&cp, dir.path(), &["apikeys", "create", "mobile"]).await;
    assert_eq!(c.code, 0, "{}", c.stderr);
    let r = nioctl(
        &cp,
        dir.path(),
        &["apikeys", "rotate", "mobile", "--grace", "1h"],
    )
    .await;
    assert_eq!(r.code, 0, "{}", r.stderr);
    let secret = |o: &str| {
        o.lines()
            .find_map(|l| l.strip_prefix("client secret: "))
            .unwrap()
            .trim()
            .to_string()
    };
    assert_ne!(secret(&c.stdout), secret(&r.stdout));
    let (_, v) = cp
        .admin()
        .send(
            reqwest::Method::GET,
            "/apis/nio.dev/v1/apikeys/mobile",
            None,
        )
        .await?;
    assert_eq!(v["status"]["secrets"].as_array().unwrap().len(), 2);

    // An invalid import: every problem named by item and field; nothing written.
    let rev = cp.admin().revision().await?;
    let bad = write(
        &dir.path().join("bad-export.yaml"),
        "apiVersion: nio.dev/v1\nkind: Export\nitems:\n  - {apiVersion: nio.dev/v1, kind: Backend, metadata: {name: fresh}, spec: {targets: [{url: \"http://127.0.0.1:2\"}]}}\n  - {apiVersion: nio.dev/v1, kind: Route, metadata: {name: r2}, spec: {frontend: {}, backend: ghost}}\n",
    );
    let out = nioctl(&cp, dir.path(), &["import", "-f", bad.to_str().unwrap()]).await;
    assert_ne!(out.code, 0);
    assert!(
        out.stderr.contains("Error from server (422)"),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr.contains("items[1]") && out.stderr.contains("ghost"),
        "{}",
        out.stderr
    );
    assert_eq!(cp.admin().revision().await?, rev);
    let (s, _) = cp
        .admin()
        .send(
            reqwest::Method::GET,
            "/apis/nio.dev/v1/backends/fresh",
            None,
        )
        .await?;
    assert_eq!(s, 404, "all or nothing");
    Ok(())
}
