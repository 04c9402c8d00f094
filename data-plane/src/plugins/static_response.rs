//! `staticResponse`: answers at the gateway with a fixed status, headers
//! and body (mocks, stubs, `robots.txt`).

use super::{answer, Ctx, Flow, Phase, Plugin};
use bytes::Bytes;
use http::header::{HeaderName, HeaderValue};
use http::StatusCode;
use nio_proto::model::StaticResponse;

#[derive(Debug)]
pub struct StaticPlugin {
    status: StatusCode,
    headers: Vec<(HeaderName, HeaderValue)>,
    body: Bytes,
}

impl StaticPlugin {
    pub fn new(c: &StaticResponse) -> Result<StaticPlugin, String> {
        let headers = c
            .headers
            .iter()
            .map(|(n, v)| {
                Ok((
                    HeaderName::from_bytes(n.as_bytes()).map_err(|e| format!("{n}: {e}"))?,
                    HeaderValue::from_str(v).map_err(|e| format!("{n}: {e}"))?,
                ))
            })
            .collect::<Result<_, String>>()?;
        Ok(StaticPlugin {
            status: StatusCode::from_u16(c.status).map_err(|e| e.to_string())?,
            headers,
            body: Bytes::from(c.body.clone()),
        })
    }
}

impl Plugin for StaticPlugin {
    fn phase(&self) -> Phase {
        Phase::PreRoute
    }

    fn on_request(&self, _ctx: &mut Ctx<'_>) -> Flow {
        Flow::Answer(answer(self.status, &self.headers, self.body.clone()))
    }
}
