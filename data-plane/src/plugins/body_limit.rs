//! `bodySizeLimit`: a request body over `maxBytes` gets 413 — at once when
//! its `Content-Length` says so, or as soon as a streamed body crosses the
//! limit (the backend call is then abandoned).

use super::{Ctx, Denial, Flow, Phase, Plugin, Reason};
use http::header::CONTENT_LENGTH;
use http::StatusCode;
use nio_proto::model::BodySizeLimit;

#[derive(Debug)]
pub struct BodyLimitPlugin {
    max: u64,
}

impl BodyLimitPlugin {
    pub fn new(c: &BodySizeLimit) -> BodyLimitPlugin {
        BodyLimitPlugin { max: c.max_bytes }
    }
}

/// The 413 answer, also used when a streamed body crosses the limit.
pub fn too_large(max: u64) -> Denial {
    Denial::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        Reason::BodyTooLarge,
        format!("the request body is larger than {max} bytes"),
    )
}

impl Plugin for BodyLimitPlugin {
    fn phase(&self) -> Phase {
        Phase::PreRoute
    }

    fn on_request(&self, ctx: &mut Ctx<'_>) -> Flow {
        let declared = ctx
            .headers
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > self.max) {
            return Flow::Deny(too_large(self.max));
        }
        let max = ctx.state.max_body.map_or(self.max, |m| m.min(self.max));
        ctx.state.max_body = Some(max);
        Flow::Continue
    }
}
