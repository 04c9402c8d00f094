//! Harness for Nio's end-to-end tests: starts the real `nio-control-plane`
//! and `nio-data-plane` binaries as processes on `127.0.0.1:0`, discovers
//! their ports from their JSON logs, and offers small clients for the admin
//! API, plus real HTTP backends to proxy to, and ([`webdriver`]) a
//! headless Chromium for the web console's tests.
//!
//! The binaries must be built first (`cargo build --bins`; `scripts/test`
//! does it). Processes are killed when their handle is dropped, so a failing
//! test leaves nothing running.

// A test harness: a poisoned lock or a bad constant should fail the test loudly.
#![allow(clippy::unwrap_used)]

use anyhow::{anyhow, bail, Context, Result};
use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub mod sim;
pub mod webdriver;

/// Path of a workspace binary built with the same profile as the running
/// executable (a test in `target/<profile>/deps/` or a tool in
/// `target/<profile>/`).
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("executable path");
    let mut dir = exe.parent().expect("executable directory");
    if dir.ends_with("deps") {
        dir = dir.parent().expect("target directory");
    }
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: build the binaries first with `cargo build --bins` (scripts/test does)",
        path.display()
    );
    path
}

/// Polls `check` until it returns `Ok(Some(v))` or the deadline passes.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Option<T>>>,
{
    let deadline = Instant::now() + timeout;
    let mut last_err = None;
    loop {
        match check().await {
            Ok(Some(v)) => return Ok(v),
            Ok(None) => {}
            Err(e) => last_err = Some(e),
        }
        if Instant::now() > deadline {
            return Err(anyhow!(
                "timed out after {timeout:?} waiting for {what}; last error: {last_err:?}"
            ));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// A child process whose JSON log lines are collected.
pub struct Proc {
    child: Child,
    name: String,
    logs: Arc<Mutex<Vec<String>>>,
}

impl Proc {
    fn spawn(name: &str, mut cmd: Command) -> Result<Proc> {
        cmd.stdout(Stdio::null()).stderr(Stdio::piped());
        cmd.env("RUST_LOG", "info");
        let mut child = cmd.spawn().with_context(|| format!("starting {name}"))?;
        let stderr = child.stderr.take().context("stderr")?;
        let logs = Arc::new(Mutex::new(Vec::new()));
        let sink = logs.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                sink.lock().unwrap().push(line);
            }
        });
        Ok(Proc {
            child,
            name: name.to_string(),
            logs,
        })
    }

    /// Waits for the log line whose message is `message` and returns its
    /// `addr` field.
    async fn addr_from_log(&mut self, message: &str) -> Result<SocketAddr> {
        let logs = self.logs.clone();
        let name = self.name.clone();
        let child = &mut self.child;
        wait_for(
            &format!("{name} to log '{message}'"),
            Duration::from_secs(30),
            || {
                let found = logs.lock().unwrap().iter().find_map(|l| {
                    let v: Value = serde_json::from_str(l).ok()?;
                    (v["fields"]["message"] == message)
                        .then(|| v["fields"]["addr"].as_str()?.parse().ok())
                        .flatten()
                });
                let exited = child.try_wait().ok().flatten();
                let name = name.clone();
                async move {
                    if let Some(status) = exited {
                        bail!("{name} exited early with {status}");
                    }
                    Ok(found)
                }
            },
        )
        .await
        .map_err(|e| anyhow!("{e}\n--- {} log ---\n{}", self.name, self.log_text()))
    }

    pub fn log_text(&self) -> String {
        self.logs.lock().unwrap().join("\n")
    }

    /// True once a log line contains `needle`.
    pub fn logged(&self, needle: &str) -> bool {
        self.logs.lock().unwrap().iter().any(|l| l.contains(needle))
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL and reap.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends SIGTERM without waiting.
    pub fn sigterm(&self) -> Result<()> {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()?;
        if !status.success() {
            bail!("kill -TERM {} failed", self.child.id());
        }
        Ok(())
    }

    /// Waits (without blocking the runtime) for the process to exit.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Result<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.child.try_wait()? {
                return Ok(s);
            }
            if Instant::now() > deadline {
                bail!("{} did not exit within {timeout:?}", self.name);
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill9();
        if std::thread::panicking() {
            eprintln!("--- {} log ---\n{}", self.name, self.log_text());
        }
    }
}

pub struct ControlPlane {
    pub proc: Proc,
    pub data_dir: PathBuf,
    pub admin: SocketAddr,
    pub grpc: SocketAddr,
    pub token: String,
    /// Extra flags it was started with (kept for restarts).
    pub flags: Vec<String>,
}

impl ControlPlane {
    /// Starts a control plane on `data_dir` (ports from `:0`), gRPC over
    /// TLS with its own CA (the default).
    pub async fn start(data_dir: &Path) -> Result<ControlPlane> {
        Self::start_on(data_dir, "127.0.0.1:0".parse()?, "127.0.0.1:0".parse()?).await
    }

    /// With `--grpc-plaintext`, for tests that speak the sync protocol
    /// with simulated data planes.
    pub async fn start_plaintext(data_dir: &Path) -> Result<ControlPlane> {
        Self::start_with_flags(data_dir, &["--grpc-plaintext"]).await
    }

    /// With more flags.
    pub async fn start_with_flags(data_dir: &Path, flags: &[&str]) -> Result<ControlPlane> {
        let any = "127.0.0.1:0".parse()?;
        let flags = flags.iter().map(|f| f.to_string()).collect();
        Self::launch(data_dir, any, any, flags).await
    }

    /// Starts on given addresses, e.g. to come back where data planes look.
    pub async fn start_on(
        data_dir: &Path,
        admin: SocketAddr,
        grpc: SocketAddr,
    ) -> Result<ControlPlane> {
        Self::launch(data_dir, admin, grpc, Vec::new()).await
    }

    async fn launch(
        data_dir: &Path,
        admin: SocketAddr,
        grpc: SocketAddr,
        flags: Vec<String>,
    ) -> Result<ControlPlane> {
        let mut cmd = Command::new(bin("nio-control-plane"));
        cmd.arg("--data-dir")
            .arg(data_dir)
            .args(["--admin-listen", &admin.to_string()])
            .args(["--grpc-listen", &grpc.to_string()])
            .args(["--log-format", "json"])
            .env_remove("NIO_ADMIN_TOKEN")
            .env_remove("NIO_JOIN_TOKEN")
            .args(&flags);
        let mut proc = Proc::spawn("control plane", cmd)?;
        let admin = proc.addr_from_log("admin API listening").await?;
        let grpc = proc.addr_from_log("gRPC sync listening").await?;
        let token = std::fs::read_to_string(data_dir.join("admin-token"))?
            .trim()
            .to_string();
        Ok(ControlPlane {
            proc,
            data_dir: data_dir.to_path_buf(),
            admin,
            grpc,
            token,
            flags,
        })
    }

    /// Kills (SIGKILL) and starts again on the same data dir and ports.
    pub async fn restart(&mut self) -> Result<()> {
        self.proc.kill9();
        let flags = std::mem::take(&mut self.flags);
        *self = ControlPlane::launch(&self.data_dir, self.admin, self.grpc, flags).await?;
        Ok(())
    }

    pub fn grpc_url(&self) -> String {
        let plaintext = self.flags.iter().any(|f| f == "--grpc-plaintext");
        let scheme = if plaintext { "http" } else { "https" };
        format!("{scheme}://{}", self.grpc)
    }

    /// The CA data planes verify the gRPC listener with.
    pub fn ca_file(&self) -> PathBuf {
        self.data_dir.join("pki").join("ca.pem")
    }

    pub fn join_token_file(&self) -> PathBuf {
        self.data_dir.join("join-token")
    }

    /// The join token the control plane created.
    pub fn join_token(&self) -> Result<String> {
        Ok(std::fs::read_to_string(self.join_token_file())?
            .trim()
            .to_string())
    }

    pub fn admin(&self) -> Admin {
        Admin {
            base: format!("http://{}", self.admin),
            token: self.token.clone(),
            http: reqwest::Client::new(),
        }
    }
}

pub struct DataPlane {
    pub proc: Proc,
    pub id: String,
    pub http: SocketAddr,
    /// The HTTPS listener, when started with `--https-listen`.
    pub https: Option<SocketAddr>,
    pub ops: SocketAddr,
    pub cache_dir: PathBuf,
}

impl DataPlane {
    pub async fn start(cp: &ControlPlane, id: &str, cache_dir: &Path) -> Result<DataPlane> {
        Self::start_with(&cp.grpc_url(), &cp.join_token_file(), id, cache_dir, &[]).await
    }

    /// `join_token_file`: an empty path starts it without a join token.
    pub async fn start_with(
        control_plane: &str,
        join_token_file: &Path,
        id: &str,
        cache_dir: &Path,
        extra: &[&str],
    ) -> Result<DataPlane> {
        let mut cmd = Command::new(bin("nio-data-plane"));
        cmd.args(["--id", id, "--control-plane", control_plane]);
        if !join_token_file.as_os_str().is_empty() {
            cmd.arg("--join-token-file").arg(join_token_file);
        }
        // The control plane's CA sits next to its join token (unless the
        // test says where it is).
        let ca = join_token_file.with_file_name("pki").join("ca.pem");
        if control_plane.starts_with("https://")
            && !extra.contains(&"--control-plane-ca")
            && ca.exists()
        {
            cmd.arg("--control-plane-ca").arg(ca);
        }
        cmd.args([
            "--http-listen",
            "127.0.0.1:0",
            "--ops-listen",
            "127.0.0.1:0",
        ])
        .arg("--cache-dir")
        .arg(cache_dir)
        .args(["--log-format", "json"])
        .args(extra)
        .env_remove("NIO_JOIN_TOKEN");
        let mut proc = Proc::spawn(&format!("data plane {id}"), cmd)?;
        let http = proc.addr_from_log("proxy listening").await?;
        let https = match extra.contains(&"--https-listen") {
            true => Some(proc.addr_from_log("https listening").await?),
            false => None,
        };
        let ops = proc.addr_from_log("ops listening").await?;
        Ok(DataPlane {
            proc,
            id: id.to_string(),
            http,
            https,
            ops,
            cache_dir: cache_dir.to_path_buf(),
        })
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.http)
    }

    /// The revision in the data plane's snapshot cache (0 if none yet).
    pub fn cached_revision(&self) -> u64 {
        use prost::Message;
        std::fs::read(self.cache_dir.join("snapshot.pb"))
            .ok()
            .and_then(|b| nio_proto::v1::Snapshot::decode(b.as_slice()).ok())
            .map_or(0, |s| s.revision)
    }

    /// GET `path` through the proxy; returns (status, body).
    pub async fn get(&self, client: &reqwest::Client, path: &str) -> Result<(u16, String)> {
        let r = client.get(self.url(path)).send().await?;
        Ok((r.status().as_u16(), r.text().await?))
    }

    /// `/readyz`: the revision served when ready (200), `None` otherwise.
    pub async fn readiness(&self, client: &reqwest::Client) -> Result<Option<u64>> {
        let r = client
            .get(format!("http://{}/readyz", self.ops))
            .send()
            .await?;
        if r.status() != 200 {
            return Ok(None);
        }
        let body = r.text().await?;
        let revision = body
            .trim()
            .strip_prefix("ready: revision ")
            .and_then(|r| r.parse().ok())
            .with_context(|| format!("unexpected /readyz body {body:?}"))?;
        Ok(Some(revision))
    }

    /// Waits until `/readyz` answers 200.
    pub async fn ready(&self) -> Result<()> {
        let client = reqwest::Client::new();
        wait_for("data plane ready", Duration::from_secs(20), || async {
            Ok(self.readiness(&client).await.ok().flatten().map(|_| ()))
        })
        .await
    }
}

/// Admin API client.
#[derive(Clone)]
pub struct Admin {
    pub base: String,
    pub token: String,
    pub http: reqwest::Client,
}

impl Admin {
    pub fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.token)
    }

    async fn json(resp: reqwest::RequestBuilder) -> Result<(u16, Value)> {
        let r = resp.send().await?;
        let status = r.status().as_u16();
        let text = r.text().await?;
        let v = serde_json::from_str(&text).unwrap_or(Value::String(text));
        Ok((status, v))
    }

    /// POST a resource; fails unless 201.
    pub async fn create(&self, resource: Value) -> Result<Value> {
        let plural = plural(&resource)?;
        let (s, v) = Self::json(
            self.request(reqwest::Method::POST, &format!("/apis/nio.dev/v1/{plural}"))
                .json(&resource),
        )
        .await?;
        if s != 201 {
            bail!("create {plural}: {s} {v}");
        }
        Ok(v)
    }

    /// PUT a resource; fails unless 200.
    pub async fn replace(&self, resource: Value) -> Result<Value> {
        let plural = plural(&resource)?;
        let name = resource["metadata"]["name"]
            .as_str()
            .context("name")?
            .to_string();
        let (s, v) = Self::json(
            self.request(
                reqwest::Method::PUT,
                &format!("/apis/nio.dev/v1/{plural}/{name}"),
            )
            .json(&resource),
        )
        .await?;
        if s != 200 {
            bail!("replace {plural}/{name}: {s} {v}");
        }
        Ok(v)
    }

    pub async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<(u16, Value)> {
        let mut req = self.request(method, path);
        if let Some(b) = body {
            req = req.json(&b);
        }
        Self::json(req).await
    }

    pub async fn revision(&self) -> Result<u64> {
        let (_, v) = self
            .send(reqwest::Method::GET, "/api/v1/revision", None)
            .await?;
        v["revision"].as_u64().context("revision")
    }

    /// `GET /api/v1/dataplanes` as id → record.
    pub async fn dataplanes(&self) -> Result<HashMap<String, Value>> {
        let (s, v) = self
            .send(reqwest::Method::GET, "/api/v1/dataplanes", None)
            .await?;
        if s != 200 {
            bail!("dataplanes: {s} {v}");
        }
        Ok(v["items"]
            .as_array()
            .context("items")?
            .iter()
            .map(|d| (d["id"].as_str().unwrap_or_default().to_string(), d.clone()))
            .collect())
    }

    /// Waits until every data plane in `ids` is connected and has applied
    /// `revision`.
    pub async fn wait_applied(&self, ids: &[&str], revision: u64, timeout: Duration) -> Result<()> {
        wait_for(
            &format!("{ids:?} to apply revision {revision}"),
            timeout,
            || async {
                let planes = self.dataplanes().await?;
                Ok(ids
                    .iter()
                    .all(|id| {
                        planes.get(*id).is_some_and(|d| {
                            d["connected"] == true
                                && d["appliedRevision"].as_u64() >= Some(revision)
                        })
                    })
                    .then_some(()))
            },
        )
        .await
    }
}

impl Admin {
    /// Creates the resource, or replaces it when it exists; returns the
    /// revision of the write.
    pub async fn apply(&self, resource: &Value) -> Result<u64> {
        let plural = plural(resource)?;
        let (s, mut v) = Self::json(
            self.request(reqwest::Method::POST, &format!("/apis/nio.dev/v1/{plural}"))
                .json(resource),
        )
        .await?;
        if s == 409 {
            v = self.replace(resource.clone()).await?;
        } else if s != 201 {
            bail!("create {plural}: {s} {v}");
        }
        v["metadata"]["resourceVersion"]
            .as_str()
            .and_then(|r| r.parse().ok())
            .context("resourceVersion in the answer")
    }
}

/// One control plane and one data plane (id `dp`, access log in a file),
/// for tests of the data path.
pub struct Gateway {
    pub dir: tempfile::TempDir,
    pub cp: ControlPlane,
    pub dp: DataPlane,
    pub admin: Admin,
    pub client: reqwest::Client,
}

impl Gateway {
    /// `extra`: more data-plane flags.
    pub async fn start(extra: &[&str]) -> Result<Gateway> {
        let dir = tempfile::tempdir()?;
        let cp = ControlPlane::start(&dir.path().join("cp")).await?;
        let log = dir.path().join("access.log");
        let mut args = vec!["--access-log", log.to_str().context("temp path")?];
        args.extend_from_slice(extra);
        let dp = DataPlane::start_with(
            &cp.grpc_url(),
            &cp.join_token_file(),
            "dp",
            &dir.path().join("dp"),
            &args,
        )
        .await?;
        let admin = cp.admin();
        Ok(Gateway {
            dir,
            cp,
            dp,
            admin,
            client: reqwest::Client::new(),
        })
    }

    /// A gateway (with these data-plane flags) with one route, `svc.test/`,
    /// to a fresh echo backend named `svc`.
    pub async fn with_echo(extra: &[&str]) -> Result<(Gateway, TestBackend)> {
        let svc = TestBackend::start("svc").await?;
        let gw = Gateway::start(extra).await?;
        gw.apply(&[
            backend("svc", &[svc.url()]),
            route("svc", &["svc.test"], &["/"], "svc"),
        ])
        .await?;
        Ok((gw, svc))
    }

    /// Creates or replaces each resource in order, then waits until the
    /// data plane serves the last revision.
    pub async fn apply(&self, resources: &[Value]) -> Result<u64> {
        // The highest: a resource applied unchanged keeps its older
        // version, which must not end the wait early.
        let mut revision = 0;
        for r in resources {
            revision = revision.max(self.admin.apply(r).await?);
        }
        self.admin
            .wait_applied(&["dp"], revision, Duration::from_secs(20))
            .await?;
        Ok(revision)
    }

    /// A request through the data plane with this Host header.
    pub fn request(
        &self,
        method: reqwest::Method,
        host: &str,
        path: &str,
    ) -> reqwest::RequestBuilder {
        self.client
            .request(method, self.dp.url(path))
            .header("host", host)
    }

    /// GET through the data plane: (status, body as JSON or a string).
    pub async fn get(&self, host: &str, path: &str) -> Result<(u16, Value)> {
        let r = self
            .request(reqwest::Method::GET, host, path)
            .send()
            .await?;
        let status = r.status().as_u16();
        let text = r.text().await?;
        Ok((
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        ))
    }

    /// The access-log lines written so far.
    pub fn access_log(&self) -> Vec<Value> {
        std::fs::read_to_string(self.dir.path().join("access.log"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// The data plane's `/metrics` text.
    pub async fn metrics(&self) -> Result<String> {
        Ok(self
            .client
            .get(format!("http://{}/metrics", self.dp.ops))
            .send()
            .await?
            .text()
            .await?)
    }
}

fn plural(resource: &Value) -> Result<String> {
    let kind = resource["kind"].as_str().context("kind")?;
    nio_proto::model::Kind::from_kind_field(kind)
        .map(|k| k.plural().to_string())
        .with_context(|| format!("unknown kind {kind}"))
}

/// Any resource from its kind, name and spec.
pub fn resource(kind: &str, name: &str, spec: Value) -> Value {
    json!({"apiVersion": "nio.dev/v1", "kind": kind, "metadata": {"name": name}, "spec": spec})
}

/// A Backend over `targets` (`{url, weight, backup}` objects) with the
/// fields of `extra` added to its spec.
pub fn backend_with(name: &str, targets: Vec<Value>, extra: &Value) -> Value {
    let mut spec = json!({ "targets": targets });
    if let (Some(spec), Some(extra)) = (spec.as_object_mut(), extra.as_object()) {
        spec.extend(extra.clone());
    }
    resource("Backend", name, spec)
}

pub fn backend(name: &str, urls: &[String]) -> Value {
    json!({
        "apiVersion": "nio.dev/v1", "kind": "Backend",
        "metadata": {"name": name},
        "spec": {"targets": urls.iter().map(|u| json!({"url": u})).collect::<Vec<_>>()}
    })
}

pub fn route(name: &str, hosts: &[&str], paths: &[&str], backend: &str) -> Value {
    json!({
        "apiVersion": "nio.dev/v1", "kind": "Route",
        "metadata": {"name": name},
        "spec": {"frontend": {"hosts": hosts, "paths": paths}, "backend": backend}
    })
}

/// A real HTTP server that answers every request with JSON naming itself
/// and echoing what it received: method, path, headers and the body's
/// length. Paths: `/slow/<ms>` answers after a delay, `/status/<code>`
/// answers with that status, `/health` answers with the status set by
/// [`TestBackend::set_health`]. [`TestBackend::set_status`] and
/// [`TestBackend::set_delay`] change every answer; [`TestBackend::stop`]
/// closes the listener and every open connection (a dead target).
pub struct TestBackend {
    pub name: String,
    pub addr: SocketAddr,
    pub hits: Arc<AtomicU64>,
    behaviour: Arc<Behaviour>,
    stop: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

#[derive(Default)]
struct Behaviour {
    /// 0: answer normally.
    status: AtomicU64,
    health: AtomicU64,
    delay_ms: AtomicU64,
}

impl TestBackend {
    pub async fn start(name: &str) -> Result<TestBackend> {
        Self::start_on("127.0.0.1:0".parse()?, name).await
    }

    /// One backend per name.
    pub async fn start_all(names: &[&str]) -> Result<Vec<TestBackend>> {
        let mut all = Vec::with_capacity(names.len());
        for name in names {
            all.push(TestBackend::start(name).await?);
        }
        Ok(all)
    }

    pub async fn start_on(addr: SocketAddr, name: &str) -> Result<TestBackend> {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding {addr}"))?;
        let addr = listener.local_addr()?;
        let hits = Arc::new(AtomicU64::new(0));
        let behaviour = Arc::new(Behaviour::default());
        behaviour.health.store(200, Ordering::Relaxed);
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let (n, h, b) = (name.to_string(), hits.clone(), behaviour.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let (n, h, b) = (n.clone(), h.clone(), b.clone());
                let mut stopped = stopped.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                        let (n, h, b) = (n.clone(), h.clone(), b.clone());
                        async move { Ok::<_, Infallible>(answer(req, &n, &h, &b).await) }
                    });
                    let builder =
                        hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                    let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), svc);
                    tokio::select! {
                        _ = conn => {}
                        _ = stopped.wait_for(|s| *s) => {}
                    }
                });
            }
        });
        Ok(TestBackend {
            name: name.to_string(),
            addr,
            hits,
            behaviour,
            stop,
            task,
        })
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every answer gets this status (0: back to normal).
    pub fn set_status(&self, status: u16) {
        self.behaviour
            .status
            .store(u64::from(status), Ordering::Relaxed);
    }

    /// What `/health` answers.
    pub fn set_health(&self, status: u16) {
        self.behaviour
            .health
            .store(u64::from(status), Ordering::Relaxed);
    }

    /// Every answer is delayed this long.
    pub fn set_delay(&self, delay: Duration) {
        self.behaviour
            .delay_ms
            .store(delay.as_millis() as u64, Ordering::Relaxed);
    }

    /// Requests received, health probes excluded.
    pub fn hit_count(&self) -> u64 {
        self.hits.load(Ordering::Relaxed)
    }

    /// Closes the listener and every connection: the target is dead.
    pub fn stop(&self) {
        let _ = self.stop.send(true);
        self.task.abort();
    }

    /// Serves until the process ends.
    pub async fn run_forever(self) -> Result<()> {
        // `self` lives in this future, so the server task is never aborted.
        std::future::pending().await
    }
}

async fn answer(
    req: hyper::Request<hyper::body::Incoming>,
    name: &str,
    hits: &AtomicU64,
    b: &Behaviour,
) -> hyper::Response<Full<Bytes>> {
    use http_body_util::BodyExt;
    let path = req
        .uri()
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_string();
    let health = path == "/health";
    if !health {
        hits.fetch_add(1, Ordering::Relaxed);
    }
    let headers: serde_json::Map<String, Value> = req
        .headers()
        .iter()
        .map(|(k, v)| {
            (
                k.to_string(),
                Value::String(v.to_str().unwrap_or("").to_string()),
            )
        })
        .collect();
    let method = req.method().to_string();
    // Read the whole body (test bodies are small) to report its size.
    let body_len = req
        .into_body()
        .collect()
        .await
        .map_or(0, |b| b.to_bytes().len());
    let mut delay = Duration::from_millis(b.delay_ms.load(Ordering::Relaxed));
    if let Some(ms) = path.strip_prefix("/slow/").and_then(|ms| ms.parse().ok()) {
        delay = Duration::from_millis(ms);
    }
    let forced = b.status.load(Ordering::Relaxed) as u16;
    let status = if health {
        b.health.load(Ordering::Relaxed) as u16
    } else if let Some(code) = path.strip_prefix("/status/").and_then(|c| c.parse().ok()) {
        code
    } else if forced != 0 {
        forced
    } else {
        200
    };
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let body = json!({
        "backend": name,
        "method": method,
        "path": path,
        "headers": headers,
        "bodyLength": body_len,
    });
    let mut resp = hyper::Response::new(Full::new(Bytes::from(body.to_string())));
    *resp.status_mut() = hyper::StatusCode::from_u16(status).unwrap_or(hyper::StatusCode::OK);
    resp.headers_mut()
        .insert("content-type", "application/json".parse().unwrap());
    resp
}

impl Drop for TestBackend {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Which backend answered (from a [`TestBackend`] body).
pub fn served_by(body: &str) -> String {
    serde_json::from_str::<Value>(body)
        .ok()
        .and_then(|v| v["backend"].as_str().map(str::to_string))
        .unwrap_or_else(|| format!("<not a backend answer: {body}>"))
}

/// Median and p-quantile helpers for reported figures.
/// A Python with grpcio, grpcio-tools and prometheus-client (a venv in
/// `target/e2e-venv`, created on first use), for tests that play a
/// third-party consumer in another language.
pub fn python() -> Result<PathBuf> {
    static READY: std::sync::Mutex<Option<PathBuf>> = std::sync::Mutex::new(None);
    let mut ready = READY.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(p) = ready.as_ref() {
        return Ok(p.clone());
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .context("repository root")?
        .to_path_buf();
    let venv = root.join("target").join("e2e-venv");
    let python = venv.join("bin").join("python");
    let has = |p: &Path| {
        std::process::Command::new(p)
            .args(["-c", "import grpc, grpc_tools, prometheus_client"])
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if !has(&python) {
        let run = |cmd: &mut std::process::Command| -> Result<()> {
            let out = cmd.output()?;
            if !out.status.success() {
                bail!("{cmd:?}: {}", String::from_utf8_lossy(&out.stderr));
            }
            Ok(())
        };
        run(std::process::Command::new("python3")
            .args(["-m", "venv"])
            .arg(&venv))?;
        run(
            std::process::Command::new(venv.join("bin").join("pip")).args([
                "install",
                "-q",
                "grpcio",
                "grpcio-tools",
                "prometheus-client",
            ]),
        )?;
    }
    *ready = Some(python.clone());
    Ok(python)
}

/// `e2e/py/feed.py`, the Python event-feed consumer.
pub fn feed_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("py")
        .join("feed.py")
}

pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}
