//! The plugin pipeline: what runs between routing and the backend call, and
//! on the way back.
//!
//! A route's plugins (and the GlobalConfig's, which run first within each
//! phase) are built once per snapshot from their specs into a [`Chain`]:
//! each [`Plugin`] has a [`Phase`], and a request runs them phase by phase:
//!
//! ```text
//! route matched
//!   ─▶ PreRoute   maintenance, redirect, staticResponse, ipBlockList,
//!                 ipAllowList, allowedMethods, cors (answers preflights),
//!                 publicPaths, bodySizeLimit (Content-Length)
//!   ─▶ Access     apiKey (and its quotas), jwt (skipped on public paths)
//!   ─▶ Limit      rateLimit (knows the caller the access plugins found)
//!   ─▶ Transform  request changes (identity headers, body limits)
//!   ─▶ backend call
//!   ─▶ on_response  cors headers, compression (response side, in order)
//! ```
//!
//! Any request-side plugin may stop the request: [`Flow::Deny`] becomes the
//! gateway's JSON error (through the proxy's single error mapping) and is
//! counted per route and reason; [`Flow::Answer`] is sent as is (redirects,
//! static responses, preflights).
//!
//! Adding a plugin: its config struct in `nio_proto::model::plugins`, a
//! module here implementing [`Plugin`], and a line in [`build`].

mod api_key;
mod body_limit;
mod compression;
mod cors;
mod ip_list;
mod jwt;
mod maintenance;
mod methods;
mod public_paths;
mod rate_limit;
mod redirect;
mod static_response;

pub use api_key::CompiledKey;
pub use body_limit::too_large;
pub use compression::{compress, Encoding};
pub use jwt::CompiledVerifier;
pub use rate_limit::too_many;

use crate::runtime::Runtime;
use bytes::Bytes;
use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::{Method, StatusCode, Uri};
use nio_proto::model::{PluginConfig, PluginSpec};
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;

/// When a plugin runs, in this order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Phase {
    PreRoute,
    Access,
    Limit,
    Transform,
}

/// What a request-side plugin decides.
pub enum Flow {
    Continue,
    /// Refuse: answered with the gateway's error format.
    Deny(Denial),
    /// Answer at the gateway (not an error: a redirect, a preflight…).
    Answer(http::Response<Bytes>),
    /// Decide later (a plugin that must fetch something first). The
    /// pipeline awaits the future; when it resolves to `Continue`, the
    /// plugin's `on_request` runs once more to act on the request with what
    /// it waited for. Allocates; for rare paths only.
    Later(Pin<Box<dyn Future<Output = Flow> + Send + 'static>>),
}

/// A refusal: status, reason and the message for the client.
#[derive(Debug, Clone)]
pub struct Denial {
    pub status: StatusCode,
    pub reason: Reason,
    pub message: String,
    /// Extra headers (`WWW-Authenticate`, `Allow`).
    pub headers: Vec<(HeaderName, HeaderValue)>,
}

impl Denial {
    pub fn new(status: StatusCode, reason: Reason, message: impl Into<String>) -> Denial {
        Denial {
            status,
            reason,
            message: message.into(),
            headers: Vec::new(),
        }
    }

    pub fn with_header(mut self, name: HeaderName, value: HeaderValue) -> Denial {
        self.headers.push((name, value));
        self
    }
}

/// Why a request was refused: the `X-Nio-Error` code and the label of
/// `nio_plugin_denials_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    ApiKeyMissing,
    ApiKeyInvalid,
    ApiKeyForbidden,
    ApiKeyDisabled,
    ApiKeyExpired,
    JwtMissing,
    JwtInvalid,
    JwtClaims,
    IpNotAllowed,
    IpBlocked,
    MethodNotAllowed,
    CorsOrigin,
    BodyTooLarge,
    /// An API key's daily or monthly quota is used up.
    QuotaExceeded,
    /// An API key's throttle or a `rateLimit` plugin.
    RateLimited,
    /// A route with `clientAuth` and no client certificate verified by its
    /// CA (not a plugin: checked by the proxy after routing).
    ClientCertificate,
}

impl Reason {
    pub const ALL: [Reason; 16] = [
        Reason::ApiKeyMissing,
        Reason::ApiKeyInvalid,
        Reason::ApiKeyForbidden,
        Reason::ApiKeyDisabled,
        Reason::ApiKeyExpired,
        Reason::JwtMissing,
        Reason::JwtInvalid,
        Reason::JwtClaims,
        Reason::IpNotAllowed,
        Reason::IpBlocked,
        Reason::MethodNotAllowed,
        Reason::CorsOrigin,
        Reason::BodyTooLarge,
        Reason::QuotaExceeded,
        Reason::RateLimited,
        Reason::ClientCertificate,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Reason::ApiKeyMissing => "api-key-missing",
            Reason::ApiKeyInvalid => "api-key-invalid",
            Reason::ApiKeyForbidden => "api-key-forbidden",
            Reason::ApiKeyDisabled => "api-key-disabled",
            Reason::ApiKeyExpired => "api-key-expired",
            Reason::JwtMissing => "jwt-missing",
            Reason::JwtInvalid => "jwt-invalid",
            Reason::JwtClaims => "jwt-claims",
            Reason::IpNotAllowed => "ip-not-allowed",
            Reason::IpBlocked => "ip-blocked",
            Reason::MethodNotAllowed => "method-not-allowed",
            Reason::CorsOrigin => "cors-origin-denied",
            Reason::BodyTooLarge => "body-too-large",
            Reason::QuotaExceeded => "quota-exceeded",
            Reason::RateLimited => "rate-limited",
            Reason::ClientCertificate => "client-certificate-required",
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }
}

/// What plugins see of a request, and what they leave for later phases.
pub struct Ctx<'a> {
    pub method: &'a Method,
    pub uri: &'a Uri,
    /// The request headers; plugins may change them (they go upstream).
    pub headers: &'a mut HeaderMap,
    pub client_ip: IpAddr,
    /// The TLS connection the request came on (`None`: plain HTTP), with
    /// the verified client certificate if there is one.
    pub tls: Option<&'a crate::tls::TlsConn>,
    pub route: &'a crate::route::CompiledRoute,
    pub runtime: &'a Arc<Runtime>,
    pub state: &'a mut State,
}

/// Per-request plugin state, carried from the request side to the
/// response side.
#[derive(Debug, Default)]
pub struct State {
    /// `publicPaths` matched: authentication plugins let the request pass.
    pub public: bool,
    /// Who the caller is (API key id or JWT subject), for logs and events.
    pub consumer: Option<String>,
    /// The request's allowed `Origin`, for the CORS response headers.
    pub cors_origin: Option<HeaderValue>,
    /// The encoding the client accepts and a compression plugin would use.
    pub encoding: Option<Encoding>,
    /// Most bytes the request body may have (`bodySizeLimit`).
    pub max_body: Option<u64>,
    /// An `apiKey` plugin admitted the request (a second one lets it be).
    pub api_key_checked: bool,
    /// A query parameter that carried a secret: left out upstream.
    pub drop_query_param: Option<String>,
    /// A compression plugin took the response (a second one leaves it).
    pub compressing: bool,
    /// The tightest quota or rate limit the request counted against, for
    /// the response's `X-RateLimit-*` headers.
    pub rate_limit: Option<crate::quota::Allowance>,
}

/// Puts the `X-RateLimit-*` headers of the tightest limit on the response
/// (once, whichever limiting plugin gets there first).
pub fn write_rate_limit(state: &mut State, response: &mut http::response::Parts) {
    if let Some(a) = state.rate_limit.take() {
        a.write(&mut response.headers);
    }
}

pub trait Plugin: Send + Sync + std::fmt::Debug {
    fn phase(&self) -> Phase;

    /// The request side. `Continue` by default.
    fn on_request(&self, _ctx: &mut Ctx<'_>) -> Flow {
        Flow::Continue
    }

    /// The response side: change the response headers before they go to
    /// the client.
    fn on_response(&self, _state: &mut State, _response: &mut http::response::Parts) {}
}

/// The plugins of a route or of the GlobalConfig, sorted by phase (stable:
/// the written order within a phase).
#[derive(Debug, Default, Clone)]
pub struct Chain {
    plugins: Vec<Arc<dyn Plugin>>,
}

impl Chain {
    /// Builds every enabled plugin; `field` names the list in errors,
    /// `owner` the resource (`route/<name>`, `global`) for plugins whose
    /// counters outlive a snapshot.
    pub fn build(specs: &[PluginSpec], field: &str, owner: &str) -> Result<Chain, String> {
        let mut plugins = Vec::new();
        for (i, spec) in specs.iter().enumerate() {
            if !spec.enabled {
                continue;
            }
            let at = format!("{field}[{i}]");
            let config = spec
                .parse(&at)
                .map_err(|errors| nio_proto::model::join_errors(&errors))?;
            let place = format!("{owner}/{i}");
            plugins.push(build(config, &place).map_err(|e| format!("{at}: {e}"))?);
        }
        plugins.sort_by_key(|p| p.phase());
        Ok(Chain { plugins })
    }

    pub fn is_empty(&self) -> bool {
        self.plugins.is_empty()
    }

    /// `global`'s plugins and `route`'s, merged by phase (global first
    /// within a phase).
    pub fn merged<'a>(
        global: &'a Chain,
        route: &'a Chain,
    ) -> impl Iterator<Item = &'a Arc<dyn Plugin>> {
        let (mut g, mut r) = (
            global.plugins.iter().peekable(),
            route.plugins.iter().peekable(),
        );
        std::iter::from_fn(move || match (g.peek(), r.peek()) {
            (Some(a), Some(b)) if b.phase() < a.phase() => r.next(),
            (Some(_), _) => g.next(),
            (None, _) => r.next(),
        })
    }
}

/// The plugin for a parsed config: the one registry of plugin kinds.
fn build(config: PluginConfig, place: &str) -> Result<Arc<dyn Plugin>, String> {
    Ok(match config {
        PluginConfig::ApiKey(c) => Arc::new(api_key::ApiKeyPlugin::new(c)),
        PluginConfig::Jwt(c) => Arc::new(jwt::JwtPlugin::new(c)?),
        PluginConfig::IpAllowList(c) => Arc::new(ip_list::IpListPlugin::allow(&c)?),
        PluginConfig::IpBlockList(c) => Arc::new(ip_list::IpListPlugin::block(&c)?),
        PluginConfig::Cors(c) => Arc::new(cors::CorsPlugin::new(&c)?),
        PluginConfig::AllowedMethods(c) => Arc::new(methods::MethodsPlugin::new(&c)?),
        PluginConfig::Maintenance(c) => Arc::new(maintenance::MaintenancePlugin::new(&c)?),
        PluginConfig::Redirect(c) => Arc::new(redirect::RedirectPlugin::new(c)),
        PluginConfig::StaticResponse(c) => Arc::new(static_response::StaticPlugin::new(&c)?),
        PluginConfig::PublicPaths(c) => Arc::new(public_paths::PublicPathsPlugin::new(&c)?),
        PluginConfig::BodySizeLimit(c) => Arc::new(body_limit::BodyLimitPlugin::new(&c)),
        PluginConfig::Compression(c) => Arc::new(compression::CompressionPlugin::new(&c)),
        PluginConfig::RateLimit(c) => Arc::new(rate_limit::RateLimitPlugin::new(&c, place)?),
    })
}

/// A small response with a body, for plugins that answer.
pub fn answer(
    status: StatusCode,
    headers: &[(HeaderName, HeaderValue)],
    body: Bytes,
) -> http::Response<Bytes> {
    let mut resp = http::Response::new(body);
    *resp.status_mut() = status;
    for (n, v) in headers {
        resp.headers_mut().append(n.clone(), v.clone());
    }
    resp
}
