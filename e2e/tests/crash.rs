//! Crash safety of the control plane: kill -9 at random moments during a
//! stream of writes loses no acknowledged write; a corrupt store is refused
//! with a message that says what to do; a backup taken while the control
//! plane runs restores into a fresh data dir.

#![allow(clippy::unwrap_used)]

use nio_e2e::*;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// 50 times: write backends one after another, SIGKILL the control plane
/// at a random moment (0–40 ms into the writes), restart it on the same
/// data dir; then every write that was answered 201 is there, and the
/// revision never went back.
#[tokio::test]
async fn kill9_during_writes_loses_no_acknowledged_write() {
    const ITERATIONS: usize = 50;
    let dir = tempfile::tempdir().unwrap();
    let mut cp = ControlPlane::start(&dir.path().join("cp")).await.unwrap();
    let acked: Arc<Mutex<Vec<String>>> = Arc::default();
    let mut last_revision = 0u64;
    let mut killed_mid_write = 0;
    for i in 0..ITERATIONS {
        let admin = cp.admin();
        let acked_by_writer = acked.clone();
        let writer = tokio::spawn(async move {
            let mut n = 0;
            loop {
                let name = format!("b-{i}-{n}");
                let r = admin
                    .create(backend(&name, &["http://127.0.0.1:9".to_string()]))
                    .await;
                match r {
                    Ok(_) => acked_by_writer.lock().unwrap().push(name),
                    // The process died under the request.
                    Err(_) => return true,
                }
                n += 1;
            }
        });
        // The random moment: not a wait for a condition.
        let delay = random_below(40);
        tokio::time::sleep(Duration::from_millis(delay)).await;
        cp.proc.kill9();
        if writer.await.unwrap() {
            killed_mid_write += 1;
        }
        cp.restart().await.unwrap();
        let revision = cp.admin().revision().await.unwrap();
        assert!(
            revision >= last_revision,
            "revision went back from {last_revision} to {revision} after kill -9 #{i}"
        );
        last_revision = revision;
        let (status, list) = cp
            .admin()
            .send(reqwest::Method::GET, "/apis/nio.dev/v1/backends", None)
            .await
            .unwrap();
        assert_eq!(status, 200, "{list}");
        let present: std::collections::HashSet<String> = list["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| b["metadata"]["name"].as_str().unwrap().to_string())
            .collect();
        let acked = acked.lock().unwrap();
        let missing: Vec<&String> = acked.iter().filter(|n| !present.contains(*n)).collect();
        assert!(
            missing.is_empty(),
            "after kill -9 #{i}: acknowledged writes missing: {missing:?}"
        );
    }
    let total = acked.lock().unwrap().len();
    eprintln!(
        "kill -9: {ITERATIONS} iterations, {total} acknowledged writes all present, {killed_mid_write} kills landed during a write, final revision {last_revision}"
    );
    assert!(total > 0);
}

/// A store that cannot be read: the control plane exits non-zero and says
/// which directory and what to do, instead of starting empty. Two kinds of
/// damage: every file overwritten (sled refuses its config), and bytes
/// flipped in sled's log only (sled alone would open it as an empty store:
/// the acknowledged-revision mark catches it).
#[tokio::test]
async fn a_corrupt_store_is_refused_with_a_clear_message() {
    for whole in [true, false] {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("cp");
        {
            let cp = ControlPlane::start(&data).await.unwrap();
            for name in ["a", "b", "c"] {
                cp.admin()
                    .create(backend(name, &["http://127.0.0.1:9".to_string()]))
                    .await
                    .unwrap();
            }
        }
        let store = data.join("store");
        if whole {
            for entry in walk(&store) {
                let len = std::fs::metadata(&entry).unwrap().len().max(64) as usize;
                std::fs::write(&entry, vec![0xA5u8; len]).unwrap();
            }
        } else {
            let db = store.join("db");
            let mut bytes = std::fs::read(&db).unwrap();
            for b in bytes.iter_mut().skip(100).step_by(5) {
                *b ^= 0x5a;
            }
            std::fs::write(&db, bytes).unwrap();
        }
        let out = Command::new(bin("nio-control-plane"))
            .arg("--data-dir")
            .arg(&data)
            .args([
                "--admin-listen",
                "127.0.0.1:0",
                "--grpc-listen",
                "127.0.0.1:0",
            ])
            .env_remove("NIO_ADMIN_TOKEN")
            .env_remove("NIO_JOIN_TOKEN")
            .env("RUST_BACKTRACE", "0")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success(),
            "started on a corrupt store (whole: {whole}): {stderr}"
        );
        assert!(
            stderr.contains(&store.display().to_string()) && stderr.contains("restore"),
            "the message should name the store and say how to recover: {stderr}"
        );
        assert!(!stderr.contains("panicked"), "{stderr}");
        eprintln!(
            "corrupt store (whole files: {whole}):\n{}",
            stderr.lines().last().unwrap_or_default()
        );
    }
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// A random number below `n` (std's randomly seeded hasher; no crate).
fn random_below(n: u64) -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(n);
    h.finish() % n
}

/// The documented backup and restore: `nio-control-plane backup` through
/// the admin API while the control plane runs (an online snapshot with
/// API-key credentials), `restore` into a fresh data dir, and the restored
/// control plane serves the same configuration — API keys included. An
/// offline backup (control plane stopped) reads the store directly, and
/// restore refuses a data dir that already has a store.
#[tokio::test]
async fn backup_while_running_restores_into_a_fresh_data_dir() {
    let dir = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start(&dir.path().join("cp")).await.unwrap();
    let admin = cp.admin();
    admin
        .create(backend("svc", &["http://127.0.0.1:9".to_string()]))
        .await
        .unwrap();
    admin
        .create(route("svc", &["svc.test"], &["/"], "svc"))
        .await
        .unwrap();
    admin
        .create(resource("ApiKey", "team-a", serde_json::json!({})))
        .await
        .unwrap();
    let export = |admin: Admin| async move {
        let (s, v) = admin
            .send(
                reqwest::Method::GET,
                "/api/v1/export?includeSecrets=true",
                None,
            )
            .await
            .unwrap();
        assert_eq!(s, 200, "{v}");
        v["items"].clone()
    };
    let before = export(cp.admin()).await;

    let file = dir.path().join("backup.json");
    let admin_url = format!("http://{}", cp.admin);
    succeeds(store_command(
        "backup",
        &cp.data_dir,
        "--to",
        &file,
        &["--admin-url", &admin_url],
    ));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&file).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "the backup holds secrets: mode {mode:o}");
    }
    // Without --admin-url, on the running control plane's data dir: a
    // message that says what to do.
    let out = store_command(
        "backup",
        &cp.data_dir,
        "--to",
        &dir.path().join("other.json"),
        &[],
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--admin-url"));

    let fresh = dir.path().join("restored");
    succeeds(store_command("restore", &fresh, "--from", &file, &[]));
    // Not over an existing store.
    let out = store_command("restore", &fresh, "--from", &file, &[]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("fresh data dir"));

    let restored = ControlPlane::start(&fresh).await.unwrap();
    let after = export(restored.admin()).await;
    let strip = |items: &serde_json::Value| {
        let mut items = items.as_array().unwrap().clone();
        for i in &mut items {
            // Revisions restart in the new store.
            i["metadata"]
                .as_object_mut()
                .unwrap()
                .remove("resourceVersion");
        }
        items
    };
    assert_eq!(strip(&before), strip(&after));
    assert!(
        after.to_string().contains("credentials"),
        "API-key credentials were not restored: {after}"
    );
    drop(restored);

    // Offline: the control plane stopped, the store read directly.
    let mut cp = cp;
    cp.proc.kill9();
    let offline = dir.path().join("offline.json");
    succeeds(store_command("backup", &cp.data_dir, "--to", &offline, &[]));
    let doc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&offline).unwrap()).unwrap();
    assert_eq!(strip(&doc["items"]), strip(&before));
}

/// `nio-control-plane backup|restore --data-dir DIR <flag> FILE [extra]`,
/// with no admin URL or token from the environment.
fn store_command(
    sub: &str,
    data_dir: &std::path::Path,
    flag: &str,
    file: &std::path::Path,
    extra: &[&str],
) -> std::process::Output {
    Command::new(bin("nio-control-plane"))
        .args([sub, "--data-dir"])
        .arg(data_dir)
        .arg(flag)
        .arg(file)
        .args(extra)
        .env_remove("NIO_ADMIN_URL")
        .env_remove("NIO_ADMIN_TOKEN")
        .env("RUST_BACKTRACE", "0")
        .output()
        .unwrap()
}

fn succeeds(out: std::process::Output) {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
