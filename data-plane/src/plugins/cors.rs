//! `cors`: Cross-Origin Resource Sharing at the gateway.
//!
//! A preflight (`OPTIONS` with `Origin` and `Access-Control-Request-Method`)
//! is answered here — 204 with the allowed methods, headers and max age
//! when the origin and method are allowed, 403 otherwise — and never reaches
//! the backend. Other requests from an allowed origin get
//! `Access-Control-Allow-Origin` (and the credentials and exposed headers
//! settings) on their response; from another origin they pass without CORS
//! headers, so the browser withholds the response from the page.

use super::{answer, Ctx, Denial, Flow, Phase, Plugin, Reason, State};
use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use http::{Method, StatusCode};
use nio_proto::model::Cors;

#[derive(Debug)]
pub struct CorsPlugin {
    any_origin: bool,
    origins: Vec<String>,
    methods: Vec<Method>,
    allow_methods: HeaderValue,
    /// The headers a preflight may ask for; with `echo_headers`
    /// (`allowedHeaders: ["*"]`) whatever it asks.
    allow_headers: Option<HeaderValue>,
    echo_headers: bool,
    expose_headers: Option<HeaderValue>,
    credentials: bool,
    max_age: Option<HeaderValue>,
}

fn joined(list: &[String]) -> Result<Option<HeaderValue>, String> {
    if list.is_empty() {
        return Ok(None);
    }
    HeaderValue::from_str(&list.join(", "))
        .map(Some)
        .map_err(|e| e.to_string())
}

impl CorsPlugin {
    pub fn new(c: &Cors) -> Result<CorsPlugin, String> {
        let methods = c
            .allowed_methods
            .iter()
            .map(|m| Method::from_bytes(m.as_bytes()).map_err(|e| format!("{m}: {e}")))
            .collect::<Result<_, _>>()?;
        let echo_headers = c.allowed_headers.iter().any(|h| h == "*");
        Ok(CorsPlugin {
            any_origin: c.allowed_origins.iter().any(|o| o == "*"),
            origins: c.allowed_origins.clone(),
            methods,
            allow_methods: HeaderValue::from_str(&c.allowed_methods.join(", "))
                .map_err(|e| e.to_string())?,
            allow_headers: if echo_headers {
                None
            } else {
                joined(&c.allowed_headers)?
            },
            echo_headers,
            expose_headers: joined(&c.exposed_headers)?,
            credentials: c.allow_credentials,
            max_age: c.max_age.map(|d| HeaderValue::from(d.as_secs())),
        })
    }

    fn allowed(&self, origin: &HeaderValue) -> bool {
        self.any_origin
            || origin
                .to_str()
                .is_ok_and(|o| self.origins.iter().any(|a| a.eq_ignore_ascii_case(o)))
    }

    /// What `Access-Control-Allow-Origin` says for an allowed origin.
    fn allow_origin(&self, origin: &HeaderValue) -> HeaderValue {
        if self.any_origin && !self.credentials {
            HeaderValue::from_static("*")
        } else {
            origin.clone()
        }
    }
}

impl Plugin for CorsPlugin {
    fn phase(&self) -> Phase {
        Phase::PreRoute
    }

    fn on_request(&self, ctx: &mut Ctx<'_>) -> Flow {
        let Some(origin) = ctx.headers.get(header::ORIGIN).cloned() else {
            return Flow::Continue;
        };
        let requested = ctx
            .headers
            .get(header::ACCESS_CONTROL_REQUEST_METHOD)
            .cloned();
        let preflight = *ctx.method == Method::OPTIONS && requested.is_some();
        if !preflight {
            if self.allowed(&origin) {
                ctx.state.cors_origin = Some(origin);
            }
            return Flow::Continue;
        }
        let method_ok = requested
            .and_then(|m| Method::from_bytes(m.as_bytes()).ok())
            .is_some_and(|m| self.methods.contains(&m));
        if !self.allowed(&origin) || !method_ok {
            return Flow::Deny(Denial::new(
                StatusCode::FORBIDDEN,
                Reason::CorsOrigin,
                "this origin or method is not allowed by the route's CORS policy",
            ));
        }
        let mut headers: Vec<(HeaderName, HeaderValue)> = vec![
            (
                header::ACCESS_CONTROL_ALLOW_ORIGIN,
                self.allow_origin(&origin),
            ),
            (
                header::ACCESS_CONTROL_ALLOW_METHODS,
                self.allow_methods.clone(),
            ),
            (header::VARY, HeaderValue::from_static("Origin")),
        ];
        let asked = ctx
            .headers
            .get(header::ACCESS_CONTROL_REQUEST_HEADERS)
            .cloned();
        let allowed_headers = match (&self.allow_headers, self.echo_headers) {
            (Some(h), _) => Some(h.clone()),
            (None, true) => asked,
            (None, false) => None,
        };
        if let Some(h) = allowed_headers {
            headers.push((header::ACCESS_CONTROL_ALLOW_HEADERS, h));
        }
        if self.credentials {
            headers.push((
                header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
                HeaderValue::from_static("true"),
            ));
        }
        if let Some(age) = &self.max_age {
            headers.push((header::ACCESS_CONTROL_MAX_AGE, age.clone()));
        }
        Flow::Answer(answer(StatusCode::NO_CONTENT, &headers, Bytes::new()))
    }

    fn on_response(&self, state: &mut State, response: &mut http::response::Parts) {
        let Some(origin) = &state.cors_origin else {
            return;
        };
        let h = &mut response.headers;
        h.insert(
            header::ACCESS_CONTROL_ALLOW_ORIGIN,
            self.allow_origin(origin),
        );
        h.append(header::VARY, HeaderValue::from_static("Origin"));
        if self.credentials {
            h.insert(
                header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
                HeaderValue::from_static("true"),
            );
        }
        if let Some(expose) = &self.expose_headers {
            h.insert(header::ACCESS_CONTROL_EXPOSE_HEADERS, expose.clone());
        }
    }
}
