//! `allowedMethods`: other methods get 405 with an `Allow` header.

use super::{Ctx, Denial, Flow, Phase, Plugin, Reason};
use http::header::{HeaderValue, ALLOW};
use http::{Method, StatusCode};
use nio_proto::model::AllowedMethods;

#[derive(Debug)]
pub struct MethodsPlugin {
    methods: Vec<Method>,
    allow: HeaderValue,
}

impl MethodsPlugin {
    pub fn new(c: &AllowedMethods) -> Result<MethodsPlugin, String> {
        let methods = c
            .methods
            .iter()
            .map(|m| Method::from_bytes(m.as_bytes()).map_err(|e| format!("{m}: {e}")))
            .collect::<Result<_, _>>()?;
        let allow = HeaderValue::from_str(&c.methods.join(", ")).map_err(|e| e.to_string())?;
        Ok(MethodsPlugin { methods, allow })
    }
}

impl Plugin for MethodsPlugin {
    fn phase(&self) -> Phase {
        Phase::PreRoute
    }

    fn on_request(&self, ctx: &mut Ctx<'_>) -> Flow {
        if self.methods.contains(ctx.method) {
            return Flow::Continue;
        }
        Flow::Deny(
            Denial::new(
                StatusCode::METHOD_NOT_ALLOWED,
                Reason::MethodNotAllowed,
                format!("{} is not allowed on this route", ctx.method),
            )
            .with_header(ALLOW, self.allow.clone()),
        )
    }
}
