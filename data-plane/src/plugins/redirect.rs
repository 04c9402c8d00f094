//! `redirect`: answers with a redirect to `to`, optionally keeping the
//! request's path and query.

use super::{answer, Ctx, Flow, Phase, Plugin};
use bytes::Bytes;
use http::header::{HeaderValue, LOCATION};
use http::StatusCode;
use nio_proto::model::Redirect;

#[derive(Debug)]
pub struct RedirectPlugin {
    to: String,
    status: StatusCode,
    keep_path: bool,
}

impl RedirectPlugin {
    pub fn new(c: Redirect) -> RedirectPlugin {
        RedirectPlugin {
            status: StatusCode::from_u16(c.status).unwrap_or(StatusCode::FOUND),
            to: c.to.trim_end_matches('/').to_string(),
            keep_path: c.keep_path,
        }
    }
}

impl Plugin for RedirectPlugin {
    fn phase(&self) -> Phase {
        Phase::PreRoute
    }

    fn on_request(&self, ctx: &mut Ctx<'_>) -> Flow {
        let location = if self.keep_path {
            let pq = ctx.uri.path_and_query().map_or("/", |p| p.as_str());
            format!("{}{pq}", self.to)
        } else if self.to.is_empty() {
            "/".to_string()
        } else {
            self.to.clone()
        };
        let headers = HeaderValue::from_str(&location)
            .map(|v| vec![(LOCATION, v)])
            .unwrap_or_default();
        Flow::Answer(answer(self.status, &headers, Bytes::new()))
    }
}
