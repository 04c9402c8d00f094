//! The admin web UI's static assets, served at `/ui/` without
//! authentication (they hold no data: every page asks the admin API, with
//! the operator's token, for what it shows).
//!
//! The files under `control-plane/ui/` are compiled into the binary, so a
//! user needs no Node.js and no separate server. Each is kept with its
//! gzip encoding (made once, on first use); answers carry an `ETag`,
//! `Cache-Control: no-cache` (the browser revalidates and gets `304` while
//! the binary is the same) and security headers, a Content-Security-Policy
//! without inline script among them. This module must not serve anything
//! that depends on configuration or state.

use axum::extract::Path;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::Router;
use http::{header, HeaderMap, HeaderValue, StatusCode};
use std::io::Write;
use std::sync::OnceLock;

/// Path (under `/ui/`), content type, content.
const FILES: &[(&str, &str, &[u8])] = &[
    (
        "index.html",
        "text/html; charset=utf-8",
        include_bytes!("../../ui/index.html"),
    ),
    (
        "style.css",
        "text/css; charset=utf-8",
        include_bytes!("../../ui/style.css"),
    ),
    (
        "app.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../ui/app.js"),
    ),
    (
        "api.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../ui/api.js"),
    ),
    (
        "components.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../ui/components.js"),
    ),
    (
        "pages/overview.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../ui/pages/overview.js"),
    ),
    (
        "pages/resources.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../ui/pages/resources.js"),
    ),
    (
        "pages/apikeys.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../ui/pages/apikeys.js"),
    ),
    (
        "pages/fleet.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../ui/pages/fleet.js"),
    ),
    (
        "pages/events.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../ui/pages/events.js"),
    ),
    (
        "vendor/preact-htm.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../ui/vendor/preact-htm.js"),
    ),
    (
        "favicon.svg",
        "image/svg+xml",
        include_bytes!("../../ui/favicon.svg"),
    ),
];

/// Scripts and styles from this origin only; the API on this origin only;
/// no framing. No `'unsafe-inline'`: the UI sets styles through the DOM.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
     connect-src 'self'; font-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

struct Asset {
    path: &'static str,
    content_type: &'static str,
    raw: &'static [u8],
    gzip: Vec<u8>,
    etag: String,
}

fn assets() -> &'static [Asset] {
    static ASSETS: OnceLock<Vec<Asset>> = OnceLock::new();
    ASSETS.get_or_init(|| {
        FILES
            .iter()
            .map(|&(path, content_type, raw)| Asset {
                path,
                content_type,
                raw,
                gzip: gzip(raw),
                etag: format!("\"{:016x}\"", fnv1a(raw)),
            })
            .collect()
    })
}

fn gzip(raw: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    // Writing to a Vec cannot fail.
    let _ = enc.write_all(raw);
    enc.finish().unwrap_or_default()
}

/// A content hash for the `ETag` (not a security property).
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// `/ui` (redirect), `/ui/` (the page) and `/ui/{*path}` (its assets).
pub fn router<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route("/", get(|| async { Redirect::to("/ui/") }))
        .route("/ui", get(|| async { Redirect::to("/ui/") }))
        .route(
            "/ui/",
            get(|h: HeaderMap| async move { serve("index.html", &h) }),
        )
        .route(
            "/ui/{*path}",
            get(|Path(path): Path<String>, h: HeaderMap| async move { serve(&path, &h) }),
        )
}

fn serve(path: &str, headers: &HeaderMap) -> Response {
    // Unknown paths get the page: the UI routes with `#/…`, but a
    // bookmarked `/ui/routes` should not be a dead end.
    let asset = assets().iter().find(|a| a.path == path).or_else(|| {
        (!path.contains('.'))
            .then(|| assets().iter().find(|a| a.path == "index.html"))
            .flatten()
    });
    let Some(asset) = asset else {
        return (StatusCode::NOT_FOUND, security_headers(), "no such UI file").into_response();
    };
    let fresh = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == asset.etag));
    let etag = HeaderValue::from_str(&asset.etag).unwrap_or(HeaderValue::from_static("\"\""));
    let common = (
        security_headers(),
        [
            (header::ETAG, etag),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
            (header::VARY, HeaderValue::from_static("accept-encoding")),
        ],
    );
    if fresh {
        return (StatusCode::NOT_MODIFIED, common).into_response();
    }
    let content_type = (
        header::CONTENT_TYPE,
        HeaderValue::from_static(asset.content_type),
    );
    if accepts_gzip(headers) && asset.gzip.len() < asset.raw.len() {
        (
            common,
            [
                content_type,
                (header::CONTENT_ENCODING, HeaderValue::from_static("gzip")),
            ],
            asset.gzip.clone(),
        )
            .into_response()
    } else {
        (common, [content_type], asset.raw).into_response()
    }
}

fn accepts_gzip(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|enc| {
            let mut parts = enc.split(';');
            let name = parts.next().unwrap_or_default().trim();
            let refused = parts.any(|p| matches!(p.trim(), "q=0" | "q=0.0" | "q=0.00" | "q=0.000"));
            (name.eq_ignore_ascii_case("gzip") || name == "*") && !refused
        })
}

fn security_headers() -> [(header::HeaderName, HeaderValue); 4] {
    [
        (
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(CSP),
        ),
        (
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ),
        (header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY")),
        (
            header::REFERRER_POLICY,
            HeaderValue::from_static("no-referrer"),
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every file in `ui/` (but the vendored licences and notes) is served:
    /// a file added there and not listed in `FILES` would be a broken page.
    #[test]
    fn every_ui_file_is_embedded() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("ui");
        let mut on_disk = Vec::new();
        let mut dirs = vec![root.clone()];
        while let Some(dir) = dirs.pop() {
            for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{dir:?}: {e}")) {
                let path = entry.map(|e| e.path()).unwrap_or_default();
                if path.is_dir() {
                    dirs.push(path);
                } else {
                    let rel = path.strip_prefix(&root).unwrap_or(&path);
                    let rel = rel.to_string_lossy().replace('\\', "/");
                    let name = rel.rsplit('/').next().unwrap_or_default();
                    if !name.starts_with("LICENSE") && !name.ends_with(".md") {
                        on_disk.push(rel);
                    }
                }
            }
        }
        on_disk.sort();
        let mut listed: Vec<String> = FILES.iter().map(|f| f.0.to_string()).collect();
        listed.sort();
        assert_eq!(on_disk, listed);
    }

    #[test]
    fn gzip_only_when_accepted() {
        let mut h = HeaderMap::new();
        assert!(!accepts_gzip(&h));
        h.insert(
            header::ACCEPT_ENCODING,
            HeaderValue::from_static("gzip, deflate, br"),
        );
        assert!(accepts_gzip(&h));
        h.insert(
            header::ACCEPT_ENCODING,
            HeaderValue::from_static("br, gzip;q=0"),
        );
        assert!(!accepts_gzip(&h));
    }

    #[test]
    fn revalidation_answers_304() {
        let mut h = HeaderMap::new();
        let first = serve("app.js", &h);
        assert_eq!(first.status(), StatusCode::OK);
        let etag = first.headers()[header::ETAG].clone();
        h.insert(header::IF_NONE_MATCH, etag);
        assert_eq!(serve("app.js", &h).status(), StatusCode::NOT_MODIFIED);
        assert_eq!(serve("nope.js", &h).status(), StatusCode::NOT_FOUND);
        assert_eq!(serve("routes", &HeaderMap::new()).status(), StatusCode::OK);
    }
}
