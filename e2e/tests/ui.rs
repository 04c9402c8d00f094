//! The admin web UI in a real headless Chromium (Debian's `chromium`,
//! driven over WebDriver by `chromium-driver`) against a real control
//! plane, data plane and backend: log in, create a Backend and a Route
//! through the forms (the route then answers through the data plane), see
//! the API's validation message next to the field, create an API key and
//! see its secret once, find the data plane with its revision and the
//! audit event of the write; a wrong token sends every page back to login.
//!
//! Each page's screenshot (1280×800) goes to the target dir, and to
//! `docs/screenshots/` with `NIO_UPDATE_SCREENSHOTS=1`. First-load transfer
//! sizes and per-page render times are printed (and written next to the
//! screenshots), never asserted.

#![allow(clippy::unwrap_used)]

use anyhow::{ensure, Context, Result};
use nio_e2e::webdriver::{self, Browser, Driver};
use nio_e2e::{resource, served_by, wait_for, ControlPlane, DataPlane, TestBackend};
use serde_json::{json, Value};
use std::path::PathBuf;
use std::time::Duration;

/// Writes `name.png` to the target dir (and to docs/screenshots when asked).
struct Screenshots {
    dir: PathBuf,
    docs: Option<PathBuf>,
}

impl Screenshots {
    fn new() -> Screenshots {
        let update = std::env::var("NIO_UPDATE_SCREENSHOTS").is_ok_and(|v| v == "1");
        Screenshots {
            dir: PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("ui-screenshots"),
            docs: update
                .then(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docs/screenshots")),
        }
    }

    async fn take(&self, b: &Browser, name: &str) -> Result<()> {
        // The pointer may rest on a row and the caret blink: move focus away
        // so screenshots only change when the page does.
        b.script(
            "document.activeElement && document.activeElement.blur(); window.scrollTo(0, 0)",
            json!([]),
        )
        .await?;
        let path = self.dir.join(format!("{name}.png"));
        b.screenshot(&path).await?;
        if let Some(docs) = &self.docs {
            std::fs::create_dir_all(docs)?;
            std::fs::copy(&path, docs.join(format!("{name}.png")))?;
        }
        Ok(())
    }
}

/// Waits for `page` to say its data is on screen, and returns how long it
/// took from the navigation (ms, as the page measured it).
async fn rendered(b: &Browser, page: &str) -> Result<u64> {
    b.wait(&format!("main[data-ready='{page}']")).await?;
    let ms = b
        .script(
            "return (window.nioRenderMs || {})[arguments[0]]",
            json!([page]),
        )
        .await?;
    ms.as_u64()
        .with_context(|| format!("no render time for {page}: {ms}"))
}

/// A certificate for `names` valid for `days` more days.
fn certificate(name: &str, names: &[&str], days: i64) -> Value {
    let mut params =
        rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
            .unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, names[0]);
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::days(1);
    params.not_after = now + time::Duration::days(days);
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    resource(
        "Certificate",
        name,
        json!({"certificate": cert.pem(), "privateKey": key.serialize_pem()}),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn an_operator_runs_the_gateway_from_the_console() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let cp = ControlPlane::start(&dir.path().join("cp")).await?;
    let dp = DataPlane::start_with(
        &cp.grpc_url(),
        &cp.join_token_file(),
        "edge-1",
        &dir.path().join("dp"),
        &["--labels", "zone=local,tier=edge"],
    )
    .await?;
    let shop = TestBackend::start("shop").await?;
    let admin = cp.admin();
    admin
        .create(certificate(
            "shop-tls",
            &["shop.test", "www.shop.test"],
            400,
        ))
        .await?;
    admin
        .create(certificate("legacy-tls", &["legacy.test"], 12))
        .await?;
    let shots = Screenshots::new();
    let mut timings: Vec<(String, u64)> = Vec::new();

    let driver = Driver::start()?;
    let b = driver.session().await?;
    let ui = format!("http://{}/ui/", cp.admin);

    // Login page; what the first load transferred.
    b.goto(&ui).await?;
    timings.push(("login (first load)".into(), rendered(&b, "login").await?));
    let sizes = b
        .script(
            "const es = [...performance.getEntriesByType('navigation'), ...performance.getEntriesByType('resource')];
             return es.map(e => [e.name, e.transferSize, e.encodedBodySize, e.decodedBodySize]);",
            json!([]),
        )
        .await?;
    shots.take(&b, "login").await?;
    b.fill("#token", &cp.token).await?;
    b.click_on("button[type=submit]").await?;
    timings.push(("overview".into(), rendered(&b, "overview").await?));
    let token_kept = b
        .script("return sessionStorage.getItem('nio.adminToken')", json!([]))
        .await?;
    ensure!(
        token_kept == json!(cp.token),
        "the token is kept in sessionStorage"
    );
    let local = b
        .script(
            "return localStorage.length + document.cookie.length",
            json!([]),
        )
        .await?;
    ensure!(
        local == json!(0),
        "nothing in localStorage or cookies: {local}"
    );

    // A Backend through the form.
    b.click_on("nav a[href='#/backends']").await?;
    timings.push(("backends".into(), rendered(&b, "backends").await?));
    b.click_on("#new-resource").await?;
    rendered(&b, "backends-edit").await?;
    b.fill("input[name='metadata.name']", "shop").await?;
    b.fill("input[name='spec.targets[0].url']", &shop.url())
        .await?;
    b.click_on("#save").await?;
    b.wait_text("h1", "Backend shop").await?;
    let stored = admin
        .request(reqwest::Method::GET, "/apis/nio.dev/v1/backends/shop")
        .send()
        .await?
        .json::<Value>()
        .await?;
    ensure!(
        stored["spec"]["targets"][0]["url"] == json!(shop.url()),
        "the form wrote the backend: {stored}"
    );
    shots.take(&b, "backend-edit").await?;

    // A Route whose backend does not exist: the API's message sits next to
    // the Backend field.
    b.click_on("nav a[href='#/routes']").await?;
    timings.push(("routes (empty)".into(), rendered(&b, "routes").await?));
    b.click_on("#new-resource").await?;
    timings.push(("route form".into(), rendered(&b, "routes-edit").await?));
    b.fill("input[name='metadata.name']", "shop-api").await?;
    b.fill("input[name='spec.frontend.hosts']", "shop.test")
        .await?;
    b.fill("input[name='spec.frontend.paths']", "/").await?;
    b.fill("input[name='spec.backend']", "shop-v2").await?;
    b.click_on("#save").await?;
    let message = b
        .wait_text("[data-error-for='spec.backend']", "does not exist")
        .await?;
    ensure!(message.contains("shop-v2"), "the API's message: {message}");
    let label = b
        .script(
            "return document.querySelector(\"[data-error-for='spec.backend']\").closest('.field').querySelector('label').textContent",
            json!([]),
        )
        .await?;
    ensure!(
        label == json!("Backend"),
        "the message is in the Backend field, not {label}"
    );
    shots.take(&b, "route-form-error").await?;

    // Fixed, it is created and answers through the data plane.
    b.fill("input[name='spec.backend']", "shop").await?;
    b.click_on("#save").await?;
    b.wait_text("h1", "Route shop-api").await?;
    let client = reqwest::Client::new();
    wait_for(
        "the route to answer through the data plane",
        Duration::from_secs(20),
        || async {
            let r = client
                .get(dp.url("/hello"))
                .header("host", "shop.test")
                .send()
                .await?;
            let status = r.status();
            let body = r.text().await?;
            Ok((status == 200 && served_by(&body) == "shop").then_some(()))
        },
    )
    .await?;
    b.wait_text("#placement", "edge-1").await?;
    b.wait_text("#placement", "serving").await?;
    shots.take(&b, "route-edit").await?;
    // A route that wants API keys, for the key made below.
    let mut keyed = nio_e2e::route("shop-keyed", &["keyed.shop.test"], &["/"], "shop");
    keyed["spec"]["plugins"] = json!([{"kind": "apiKey"}]);
    admin.create(keyed).await?;

    // An edit through the form is a conditional replace.
    b.fill("input[name='spec.frontend.paths']", "/hello, /shop")
        .await?;
    b.click_on("#save").await?;
    b.wait_text("#saved", "Saved at revision").await?;
    b.wait_text("#placement", "serving").await?;
    let route = |admin: nio_e2e::Admin| async move {
        admin
            .request(reqwest::Method::GET, "/apis/nio.dev/v1/routes/shop-api")
            .send()
            .await?
            .json::<Value>()
            .await
    };
    let stored = route(admin.clone()).await?;
    ensure!(
        stored["spec"]["frontend"]["paths"] == json!(["/hello", "/shop"]),
        "the form's edit is stored: {stored}"
    );

    // The YAML view holds the whole resource as the API renders it, and
    // saves what is typed there.
    b.click_on("#yaml-tab").await?;
    b.wait("#yaml").await?;
    let yaml = b
        .script("return document.getElementById('yaml').value", json!([]))
        .await?;
    let yaml = yaml.as_str().unwrap_or_default().to_string();
    ensure!(
        yaml.contains("kind: Route") && yaml.contains("  backend: shop\n"),
        "YAML view: {yaml}"
    );
    shots.take(&b, "route-yaml").await?;
    b.fill(
        "#yaml",
        &yaml.replace(
            "  backend: shop\n",
            "  backend: shop\n  preserveHost: true\n",
        ),
    )
    .await?;
    b.click_on("#save").await?;
    b.wait_until("the YAML edit to be stored", || async {
        let stored = route(admin.clone()).await?;
        Ok((stored["spec"]["preserveHost"] == json!(true)).then_some(()))
    })
    .await?;

    // The list: searchable, with where each route is served.
    b.click_on("nav a[href='#/routes']").await?;
    timings.push(("routes".into(), rendered(&b, "routes").await?));
    b.wait_text("tr[data-name='shop-api']", "1/1 serving")
        .await?;
    shots.take(&b, "routes").await?;
    b.fill("input[type=search]", "no-such-thing").await?;
    b.wait_text("#resource-list", "Nothing matches").await?;
    b.fill("input[type=search]", "shop").await?;
    b.wait("tr[data-name='shop-api']").await?;
    b.click_on("nav a[href='#/backends']").await?;
    rendered(&b, "backends").await?;
    b.wait_text("tr[data-name='shop']", "serving").await?;
    shots.take(&b, "backends").await?;

    // Traffic for the overview's charts: a request every 50 ms while the
    // charts gather a few readings (bounded: at most 30 s).
    let traffic = {
        let (client, url) = (client.clone(), dp.url("/hello"));
        tokio::spawn(async move {
            for _ in 0..600 {
                let _ = client.get(&url).header("host", "shop.test").send().await;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };
    b.click_on("nav a[href='#/']").await?;
    rendered(&b, "overview").await?;
    b.wait_text("#route-traffic", "shop-api").await?;
    b.wait_text("#stat-fleet", "1 / 1").await?;
    b.wait_until("four readings on the charts", || async {
        let n = b
            .script(
                "const s = document.querySelector('#route-traffic .spark'); return s ? Number(s.dataset.points) : 0",
                json!([]),
            )
            .await?;
        Ok((n.as_u64().unwrap_or(0) >= 4).then_some(()))
    })
    .await?;
    let rate = b
        .script(
            "return document.querySelector('#route-traffic .spark-value').textContent",
            json!([]),
        )
        .await?;
    let rate: f64 = rate.as_str().unwrap_or_default().parse()?;
    ensure!(
        rate > 0.0,
        "the overview shows the route's request rate: {rate}"
    );
    shots.take(&b, "overview").await?;
    traffic.abort();

    // An API key: its secret is shown once.
    b.click_on("nav a[href='#/apikeys']").await?;
    timings.push(("apikeys".into(), rendered(&b, "apikeys").await?));
    b.fill("#new-apikey input[name='metadata.name']", "mobile-app")
        .await?;
    b.fill("#new-apikey input[name='spec.routes']", "shop-keyed")
        .await?;
    b.fill("#new-apikey input[name='spec.quotas']", "100")
        .await?;
    b.click_on("#create-apikey").await?;
    let secret = b.wait_text("#secret-token", ".").await?;
    let secret = secret.trim().to_string();
    ensure!(secret.len() > 20, "a secret is shown: {secret:?}");
    shots.take(&b, "apikey-secret").await?;
    b.click_on("#secret-done").await?;
    b.wait_text("tr[data-name='mobile-app']", "enabled").await?;
    // The secret shown is the one that works, and its use is counted
    // against the key's daily quota.
    let keyed = |auth: Option<String>| {
        let req = client
            .get(dp.url("/hello"))
            .header("host", "keyed.shop.test");
        match auth {
            Some(a) => req.bearer_auth(a),
            None => req,
        }
    };
    wait_for(
        "the key to open the keyed route",
        Duration::from_secs(20),
        || async {
            let r = keyed(Some(secret.clone())).send().await?;
            Ok((r.status() == 200).then_some(()))
        },
    )
    .await?;
    for _ in 0..2 {
        let r = keyed(Some(secret.clone())).send().await?;
        ensure!(r.status() == 200, "with the key: {}", r.status());
    }
    let r = keyed(None).send().await?;
    ensure!(r.status() == 401, "without the key: {}", r.status());
    b.wait_text("tr[data-name='mobile-app']", "3/100").await?;
    shots.take(&b, "apikeys").await?;
    // The quota's reset, from the row.
    b.click_on("tr[data-name='mobile-app'] .reset-quota")
        .await?;
    b.wait_text("tr[data-name='mobile-app']", "0/100").await?;
    ensure!(
        !b.page_text().await?.contains(&secret),
        "the secret is gone once the dialog is closed"
    );
    let html = b
        .script("return document.documentElement.outerHTML", json!([]))
        .await?;
    ensure!(
        !html.as_str().unwrap_or_default().contains(&secret),
        "the secret is not left in the page"
    );

    // Data planes: the running one, with its applied revision.
    let revision = admin.revision().await?;
    admin
        .wait_applied(&["edge-1"], revision, Duration::from_secs(20))
        .await?;
    b.click_on("nav a[href='#/dataplanes']").await?;
    timings.push(("dataplanes".into(), rendered(&b, "dataplanes").await?));
    b.wait_text(
        "tr[data-id='edge-1'] .applied-revision",
        &revision.to_string(),
    )
    .await?;
    b.wait_text("tr[data-id='edge-1']", "current").await?;
    b.wait_text("tr[data-id='edge-1']", "zone=local").await?;
    shots.take(&b, "dataplanes").await?;

    // Certificates: the one near expiry stands out.
    b.click_on("nav a[href='#/certificates']").await?;
    timings.push(("certificates".into(), rendered(&b, "certificates").await?));
    b.wait_text("tr[data-name='shop-tls']", "www.shop.test")
        .await?;
    b.wait("tr[data-name='legacy-tls'] .expiry.warn").await?;
    shots.take(&b, "certificates").await?;

    // Events: the audit event of the route's creation, live and in the log.
    b.click_on("nav a[href='#/events']").await?;
    timings.push(("events".into(), rendered(&b, "events").await?));
    // Gateway events from the traffic above crowd the tail: filter them out.
    b.wait("#event-list tr[data-kind='gateway']").await?;
    b.click_on(".filters input[value='gateway']").await?;
    b.click_on(".filters button[type=submit]").await?;
    b.wait_text("#event-list", "create Route shop-api").await?;
    ensure!(
        b.find_all("#event-list tr[data-kind='gateway']")
            .await?
            .is_empty(),
        "the kind filter leaves gateway events out"
    );
    // A write now arrives on the live tail.
    admin
        .request(
            reqwest::Method::PATCH,
            "/apis/nio.dev/v1/apikeys/mobile-app",
        )
        .json(&json!({"spec": {"enabled": false}}))
        .send()
        .await?
        .error_for_status()?;
    b.wait_text("#event-list", "patch ApiKey mobile-app")
        .await?;
    shots.take(&b, "events").await?;
    b.click_on("#audit-tab").await?;
    timings.push(("audit log".into(), rendered(&b, "audit").await?));
    b.wait_text("#audit-list", "shop-api").await?;
    shots.take(&b, "audit").await?;

    // Deleting asks first; the API's refusal is shown in the dialog.
    b.click_on("nav a[href='#/backends']").await?;
    rendered(&b, "backends").await?;
    b.click_on("tr[data-name='shop'] button.danger").await?;
    b.click_on("#confirm-delete").await?;
    b.wait_text("dialog .error-box", "shop-api").await?;
    shots.take(&b, "backend-delete-refused").await?;
    b.click_on("dialog button:not(.danger)").await?;
    b.click_on("nav a[href='#/apikeys']").await?;
    rendered(&b, "apikeys").await?;
    b.click_on("tr[data-name='mobile-app'] button.danger")
        .await?;
    b.click_on("#confirm-delete").await?;
    b.wait_text("#apikey-list", "No API keys yet.").await?;
    let gone = admin
        .request(reqwest::Method::GET, "/apis/nio.dev/v1/apikeys/mobile-app")
        .send()
        .await?;
    ensure!(
        gone.status() == 404,
        "deleted through the UI: {}",
        gone.status()
    );
    let kept = admin
        .request(reqwest::Method::GET, "/apis/nio.dev/v1/backends/shop")
        .send()
        .await?;
    ensure!(
        kept.status() == 200,
        "a backend in use stays: {}",
        kept.status()
    );

    // No script error on any page (the browser also logs the HTTP errors
    // the pages handle, like the 422 above: those are not script errors).
    let console = b.console().await?;
    ensure!(
        console.iter().any(|(_, _, m)| m.contains("422")),
        "the browser log is read (it holds the refused create): {console:?}"
    );
    let errors: Vec<_> = console
        .into_iter()
        .filter(|(level, source, message)| {
            level == "SEVERE" && source != "network" && !message.contains("Failed to load resource")
        })
        .collect();
    ensure!(errors.is_empty(), "console errors: {errors:?}");

    // The keyboard reaches everything: from the top of the Routes page,
    // Tab to "New route" and open it with Enter.
    b.click_on("nav a[href='#/routes']").await?;
    rendered(&b, "routes").await?;
    b.script(
        "document.activeElement && document.activeElement.blur()",
        json!([]),
    )
    .await?;
    let mut reached = false;
    for _ in 0..40 {
        b.press(webdriver::TAB).await?;
        let id = b
            .script(
                "return document.activeElement && document.activeElement.id",
                json!([]),
            )
            .await?;
        if id == json!("new-resource") {
            reached = true;
            break;
        }
    }
    ensure!(reached, "Tab reaches the New route button");
    b.press(webdriver::ENTER).await?;
    rendered(&b, "routes-edit").await?;

    // A narrow window.
    b.viewport(600, 900).await?;
    b.click_on("nav a[href='#/']").await?;
    rendered(&b, "overview").await?;
    shots.take(&b, "narrow-overview").await?;
    b.viewport(1280, 800).await?;

    // A token that stops working sends the page back to login.
    b.script(
        "sessionStorage.setItem('nio.adminToken', 'not-the-token')",
        json!([]),
    )
    .await?;
    b.click_on("nav a[href='#/routes']").await?;
    b.wait("#token").await?;
    let left = b
        .script("return sessionStorage.getItem('nio.adminToken')", json!([]))
        .await?;
    ensure!(left.is_null(), "the wrong token is forgotten: {left}");

    // Logging out clears the token.
    b.fill("#token", &cp.token).await?;
    b.click_on("button[type=submit]").await?;
    b.wait("#logout").await?;
    b.click_on("#logout").await?;
    b.wait("#token").await?;
    let left = b
        .script("return sessionStorage.getItem('nio.adminToken')", json!([]))
        .await?;
    ensure!(left.is_null(), "logout forgets the token: {left}");
    b.quit().await?;

    // The report: first-load bytes and render times.
    let mut report = String::from("first load (name, transferred, encoded, decoded bytes):\n");
    let (mut transferred, mut encoded, mut decoded) = (0, 0, 0);
    for e in sizes.as_array().into_iter().flatten() {
        let n = |i: usize| e[i].as_u64().unwrap_or(0);
        transferred += n(1);
        encoded += n(2);
        decoded += n(3);
        report += &format!(
            "  {} {} {} {}\n",
            e[0].as_str().unwrap_or_default(),
            n(1),
            n(2),
            n(3)
        );
    }
    report += &format!(
        "total: {transferred} B transferred, {encoded} B compressed bodies, {decoded} B uncompressed\nrender times (navigation to data on screen):\n"
    );
    for (page, ms) in &timings {
        report += &format!("  {page}: {ms} ms\n");
    }
    println!("{report}");
    std::fs::create_dir_all(&shots.dir)?;
    std::fs::write(shots.dir.join("report.txt"), &report)?;
    Ok(())
}

/// The UI's files: without a token, compressed, cached by validation, with
/// a script policy that forbids inline code; the API beside them still
/// wants the token.
#[tokio::test]
async fn ui_assets_are_public_compressed_and_locked_down() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let cp = ControlPlane::start(&dir.path().join("cp")).await?;
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()?;
    let base = format!("http://{}", cp.admin);

    let r = client.get(format!("{base}/ui")).send().await?;
    ensure!(
        r.status() == 303 || r.status() == 307 || r.status() == 308,
        "{}",
        r.status()
    );
    ensure!(r.headers()["location"] == "/ui/");

    let r = client
        .get(format!("{base}/ui/"))
        .header("accept-encoding", "gzip")
        .send()
        .await?;
    ensure!(r.status() == 200, "{}", r.status());
    let h = r.headers().clone();
    ensure!(h["content-encoding"] == "gzip");
    ensure!(h["content-type"].to_str()?.starts_with("text/html"));
    ensure!(h["x-content-type-options"] == "nosniff");
    let csp = h["content-security-policy"].to_str()?;
    ensure!(
        csp.contains("script-src 'self'") && !csp.contains("unsafe-inline"),
        "{csp}"
    );
    ensure!(h["cache-control"] == "no-cache");
    let etag = h["etag"].clone();
    let body = r.bytes().await?;
    let mut gz = flate2::read::GzDecoder::new(&body[..]);
    let mut page = String::new();
    std::io::Read::read_to_string(&mut gz, &mut page)?;
    ensure!(
        page.contains("/ui/app.js") && !page.contains("<script>"),
        "{page}"
    );

    let r = client
        .get(format!("{base}/ui/"))
        .header("if-none-match", etag)
        .send()
        .await?;
    ensure!(r.status() == 304, "revalidation: {}", r.status());

    let r = client.get(format!("{base}/ui/app.js")).send().await?;
    ensure!(r.status() == 200 && r.headers().get("content-encoding").is_none());
    ensure!(r.headers()["content-type"]
        .to_str()?
        .starts_with("text/javascript"));
    let r = client.get(format!("{base}/ui/nope.js")).send().await?;
    ensure!(r.status() == 404, "{}", r.status());

    // The data is behind the token, the stats endpoint too.
    let r = client.get(format!("{base}/api/v1/stats")).send().await?;
    ensure!(r.status() == 401, "{}", r.status());
    let stats: Value = cp
        .admin()
        .request(reqwest::Method::GET, "/api/v1/stats")
        .send()
        .await?
        .json()
        .await?;
    ensure!(
        stats["routes"].is_array() && stats["latencyBucketsMs"].is_array(),
        "{stats}"
    );
    Ok(())
}
