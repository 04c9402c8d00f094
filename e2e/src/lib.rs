//! Harness for Nio's end-to-end tests: starts the real `nio-control-plane`
//! and `nio-data-plane` binaries as processes on `127.0.0.1:0`, discovers
//! their ports from their JSON logs, and offers small clients for the admin
//! API, plus real HTTP backends to proxy to.
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
}

impl ControlPlane {
    /// Starts a control plane on `data_dir` (ports from `:0`).
    pub async fn start(data_dir: &Path) -> Result<ControlPlane> {
        Self::start_on(data_dir, "127.0.0.1:0".parse()?, "127.0.0.1:0".parse()?).await
    }

    /// Starts on given addresses, e.g. to come back where data planes look.
    pub async fn start_on(
        data_dir: &Path,
        admin: SocketAddr,
        grpc: SocketAddr,
    ) -> Result<ControlPlane> {
        let mut cmd = Command::new(bin("nio-control-plane"));
        cmd.arg("--data-dir")
            .arg(data_dir)
            .args(["--admin-listen", &admin.to_string()])
            .args(["--grpc-listen", &grpc.to_string()])
            .args(["--log-format", "json"])
            .env_remove("NIO_ADMIN_TOKEN")
            .env_remove("NIO_JOIN_TOKEN");
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
        })
    }

    /// Kills (SIGKILL) and starts again on the same data dir and ports.
    pub async fn restart(&mut self) -> Result<()> {
        self.proc.kill9();
        *self = ControlPlane::start_on(&self.data_dir, self.admin, self.grpc).await?;
        Ok(())
    }

    pub fn grpc_url(&self) -> String {
        format!("http://{}", self.grpc)
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
    pub ops: SocketAddr,
    pub cache_dir: PathBuf,
}

impl DataPlane {
    pub async fn start(cp: &ControlPlane, id: &str, cache_dir: &Path) -> Result<DataPlane> {
        Self::start_with(&cp.grpc_url(), &cp.join_token_file(), id, cache_dir, &[]).await
    }

    pub async fn start_with(
        control_plane: &str,
        join_token_file: &Path,
        id: &str,
        cache_dir: &Path,
        extra: &[&str],
    ) -> Result<DataPlane> {
        let mut cmd = Command::new(bin("nio-data-plane"));
        cmd.args(["--id", id, "--control-plane", control_plane])
            .arg("--join-token-file")
            .arg(join_token_file)
            .args([
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
        let ops = proc.addr_from_log("ops listening").await?;
        Ok(DataPlane {
            proc,
            id: id.to_string(),
            http,
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

fn plural(resource: &Value) -> Result<String> {
    Ok(match resource["kind"].as_str().context("kind")? {
        "Route" => "routes".into(),
        "Backend" => "backends".into(),
        k => bail!("unknown kind {k}"),
    })
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
/// and echoing what it received (`/slow/<ms>` answers after a delay).
pub struct TestBackend {
    pub name: String,
    pub addr: SocketAddr,
    pub hits: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl TestBackend {
    pub async fn start(name: &str) -> Result<TestBackend> {
        Self::start_on("127.0.0.1:0".parse()?, name).await
    }

    pub async fn start_on(addr: SocketAddr, name: &str) -> Result<TestBackend> {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding {addr}"))?;
        let addr = listener.local_addr()?;
        let hits = Arc::new(AtomicU64::new(0));
        let (n, h) = (name.to_string(), hits.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let (n, h) = (n.clone(), h.clone());
                tokio::spawn(async move {
                    let svc = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                        h.fetch_add(1, Ordering::Relaxed);
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
                        let body = json!({
                            "backend": n,
                            "method": req.method().as_str(),
                            "path": req.uri().path_and_query().map(|p| p.as_str()).unwrap_or("/"),
                            "headers": headers,
                        });
                        // `/slow/<ms>` answers after that many milliseconds.
                        let delay = body["path"]
                            .as_str()
                            .and_then(|p| p.strip_prefix("/slow/"))
                            .and_then(|ms| ms.parse().ok())
                            .map(Duration::from_millis);
                        async move {
                            if let Some(d) = delay {
                                tokio::time::sleep(d).await;
                            }
                            let mut resp =
                                hyper::Response::new(Full::new(Bytes::from(body.to_string())));
                            resp.headers_mut()
                                .insert("content-type", "application/json".parse().unwrap());
                            Ok::<_, Infallible>(resp)
                        }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Ok(TestBackend {
            name: name.to_string(),
            addr,
            hits,
            task,
        })
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Serves until the process ends.
    pub async fn run_forever(self) -> Result<()> {
        // `self` lives in this future, so the server task is never aborted.
        std::future::pending().await
    }
}

impl Drop for TestBackend {
    fn drop(&mut self) {
        self.task.abort();
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
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}
