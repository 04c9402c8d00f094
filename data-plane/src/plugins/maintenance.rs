//! `maintenance`: every request gets the configured answer (globally from
//! the GlobalConfig, or for one route).

use super::{answer, Ctx, Flow, Phase, Plugin};
use bytes::Bytes;
use http::header::{HeaderName, HeaderValue, CONTENT_TYPE, RETRY_AFTER};
use http::StatusCode;
use nio_proto::model::Maintenance;

#[derive(Debug)]
pub struct MaintenancePlugin {
    status: StatusCode,
    headers: Vec<(HeaderName, HeaderValue)>,
    body: Bytes,
}

impl MaintenancePlugin {
    pub fn new(c: &Maintenance) -> Result<MaintenancePlugin, String> {
        let status = StatusCode::from_u16(c.status).map_err(|e| e.to_string())?;
        let mut headers = vec![(
            CONTENT_TYPE,
            HeaderValue::from_str(&c.content_type).map_err(|e| format!("contentType: {e}"))?,
        )];
        if let Some(secs) = c.retry_after {
            headers.push((RETRY_AFTER, HeaderValue::from(secs)));
        }
        Ok(MaintenancePlugin {
            status,
            headers,
            body: Bytes::from(c.body.clone()),
        })
    }
}

impl Plugin for MaintenancePlugin {
    fn phase(&self) -> Phase {
        Phase::PreRoute
    }

    fn on_request(&self, _ctx: &mut Ctx<'_>) -> Flow {
        Flow::Answer(answer(self.status, &self.headers, self.body.clone()))
    }
}
