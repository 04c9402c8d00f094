//! A small W3C WebDriver client for the UI tests: starts `chromedriver`
//! (Debian's `chromium-driver`) on a port it picks itself, opens headless
//! Chromium at 1280×800 and drives it — navigate, find, click, type, read
//! text, run a script, take a screenshot, read the browser's console log.
//!
//! Only what the tests use; every wait has a deadline and polls, never a
//! bare sleep.

use anyhow::{anyhow, bail, Context, Result};
use serde_json::{json, Value};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The key W3C WebDriver names an element reference by.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// WebDriver key codes.
pub const TAB: &str = "\u{E004}";
pub const ENTER: &str = "\u{E007}";

/// Where Debian installs them (`apt-get install chromium chromium-driver`).
pub const CHROMIUM: &str = "/usr/bin/chromium";
pub const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// A running chromedriver; killed on drop.
pub struct Driver {
    child: Child,
    pub url: String,
}

impl Driver {
    pub fn start() -> Result<Driver> {
        let mut child = Command::new(CHROMEDRIVER)
            .arg("--port=0")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| {
                format!("starting {CHROMEDRIVER}: install Debian's chromium and chromium-driver (scripts/test does)")
            })?;
        let stdout = child.stdout.take().context("chromedriver stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let port = loop {
            let line = lines
                .next()
                .context("chromedriver exited before it said its port")??;
            if let Some(rest) = line.split("started successfully on port ").nth(1) {
                break rest.trim_end_matches('.').trim().parse::<u16>()?;
            }
        };
        // Keep draining its output so it never blocks on a full pipe.
        std::thread::spawn(move || lines.for_each(drop));
        Ok(Driver {
            child,
            url: format!("http://127.0.0.1:{port}"),
        })
    }

    /// A new headless Chromium session with a 1280×800 viewport.
    pub async fn session(&self) -> Result<Browser> {
        let http = reqwest::Client::new();
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": CHROMIUM,
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                         "--window-size=1280,800", "--disable-extensions", "--no-first-run"],
            },
            "goog:loggingPrefs": {"browser": "ALL"},
        }}});
        let resp: Value = http
            .post(format!("{}/session", self.url))
            .json(&caps)
            .send()
            .await?
            .json()
            .await?;
        let id = resp["value"]["sessionId"]
            .as_str()
            .with_context(|| format!("no session: {resp}"))?
            .to_string();
        let browser = Browser {
            http,
            base: format!("{}/session/{id}", self.url),
        };
        browser.viewport(1280, 800).await?;
        Ok(browser)
    }
}

impl Drop for Driver {
    /// Asks chromedriver to shut down first: it then quits the browsers it
    /// started, which a killed chromedriver would leave running when a
    /// test fails before [`Browser::quit`].
    fn drop(&mut self) {
        use std::io::{Read, Write};
        let addr = self.url.trim_start_matches("http://");
        if let Ok(mut conn) = std::net::TcpStream::connect(addr) {
            let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
            let _ = write!(
                conn,
                "GET /shutdown HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
            );
            let _ = conn.read_to_end(&mut Vec::new());
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One browser session.
pub struct Browser {
    http: reqwest::Client,
    base: String,
}

/// A found element.
#[derive(Debug, Clone)]
pub struct Element(String);

impl Browser {
    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value> {
        let mut req = self.http.request(method, format!("{}{path}", self.base));
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await?;
        let status = resp.status();
        let v: Value = resp.json().await?;
        if !status.is_success() {
            bail!(
                "webdriver {path}: {} {}",
                v["value"]["error"],
                v["value"]["message"]
            );
        }
        Ok(v["value"].clone())
    }

    async fn post(&self, path: &str, body: Value) -> Result<Value> {
        self.call(reqwest::Method::POST, path, Some(body)).await
    }

    async fn get(&self, path: &str) -> Result<Value> {
        self.call(reqwest::Method::GET, path, None).await
    }

    /// Sets the viewport (device metrics), so screenshots are exactly this size.
    pub async fn viewport(&self, width: u32, height: u32) -> Result<()> {
        self.post(
            "/goog/cdp/execute",
            json!({"cmd": "Emulation.setDeviceMetricsOverride",
                   "params": {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": false}}),
        )
        .await?;
        Ok(())
    }

    pub async fn goto(&self, url: &str) -> Result<()> {
        self.post("/url", json!({ "url": url })).await?;
        Ok(())
    }

    pub async fn find(&self, css: &str) -> Result<Element> {
        let v = self
            .post("/element", json!({"using": "css selector", "value": css}))
            .await?;
        v[ELEMENT]
            .as_str()
            .map(|id| Element(id.to_string()))
            .ok_or_else(|| anyhow!("no element id for {css}: {v}"))
    }

    pub async fn find_all(&self, css: &str) -> Result<Vec<Element>> {
        let v = self
            .post("/elements", json!({"using": "css selector", "value": css}))
            .await?;
        Ok(v.as_array()
            .into_iter()
            .flatten()
            .filter_map(|e| e[ELEMENT].as_str().map(|id| Element(id.to_string())))
            .collect())
    }

    /// Waits until `css` matches an element.
    pub async fn wait(&self, css: &str) -> Result<Element> {
        self.wait_until(&format!("an element {css}"), || async {
            Ok(self.find(css).await.ok())
        })
        .await
    }

    /// Waits until the element at `css` holds `needle` in its text.
    pub async fn wait_text(&self, css: &str, needle: &str) -> Result<String> {
        self.wait_until(&format!("{css} to show {needle:?}"), || async {
            let Ok(e) = self.find(css).await else {
                return Ok(None);
            };
            let text = self.text(&e).await.unwrap_or_default();
            Ok(text.contains(needle).then_some(text))
        })
        .await
    }

    /// Polls `check` every 50 ms for up to 20 s.
    pub async fn wait_until<T, F, Fut>(&self, what: &str, mut check: F) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<Option<T>>>,
    {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(v) = check().await? {
                return Ok(v);
            }
            if Instant::now() > deadline {
                let body = self.page_text().await.unwrap_or_default();
                bail!("timed out waiting for {what}; the page shows:\n{body}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn click(&self, e: &Element) -> Result<()> {
        self.post(&format!("/element/{}/click", e.0), json!({}))
            .await?;
        Ok(())
    }

    /// Clicks the element at `css` once it is there.
    pub async fn click_on(&self, css: &str) -> Result<()> {
        let e = self.wait(css).await?;
        self.click(&e).await
    }

    /// Replaces the text of the input at `css`.
    pub async fn fill(&self, css: &str, text: &str) -> Result<()> {
        let e = self.wait(css).await?;
        self.post(&format!("/element/{}/clear", e.0), json!({}))
            .await?;
        self.post(&format!("/element/{}/value", e.0), json!({ "text": text }))
            .await?;
        Ok(())
    }

    /// Presses and releases one key (a WebDriver key code such as
    /// [`TAB`] or [`ENTER`]) where the focus is.
    pub async fn press(&self, key: &str) -> Result<()> {
        self.post(
            "/actions",
            json!({"actions": [{"type": "key", "id": "keyboard", "actions": [
                {"type": "keyDown", "value": key}, {"type": "keyUp", "value": key}]}]}),
        )
        .await?;
        Ok(())
    }

    pub async fn text(&self, e: &Element) -> Result<String> {
        Ok(self
            .get(&format!("/element/{}/text", e.0))
            .await?
            .as_str()
            .unwrap_or_default()
            .to_string())
    }

    /// Everything the page shows, as text.
    pub async fn page_text(&self) -> Result<String> {
        let body = self.find("body").await?;
        self.text(&body).await
    }

    /// Runs `script` (a function body; `arguments` are `args`) and returns its value.
    pub async fn script(&self, script: &str, args: Value) -> Result<Value> {
        self.post("/execute/sync", json!({ "script": script, "args": args }))
            .await
    }

    /// A PNG of the viewport, written to `path`.
    pub async fn screenshot(&self, path: &Path) -> Result<()> {
        use base64::Engine;
        let b64 = self.get("/screenshot").await?;
        let png = base64::engine::general_purpose::STANDARD
            .decode(b64.as_str().context("screenshot data")?)?;
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(path, png)?;
        Ok(())
    }

    /// The browser console's entries since the last call: `(level, source, message)`.
    pub async fn console(&self) -> Result<Vec<(String, String, String)>> {
        let v = self.post("/se/log", json!({"type": "browser"})).await?;
        Ok(v.as_array()
            .into_iter()
            .flatten()
            .map(|e| {
                let s = |k: &str| e[k].as_str().unwrap_or_default().to_string();
                (s("level"), s("source"), s("message"))
            })
            .collect())
    }

    pub async fn quit(self) -> Result<()> {
        self.http.delete(&self.base).send().await?;
        Ok(())
    }
}
