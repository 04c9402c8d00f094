//! `rateLimit`: at most `limit` requests per `per` for each client — by
//! address, by the API key (or JWT subject) the access plugins found, or by
//! a header's value — on a route or, in the GlobalConfig, for all of them.
//!
//! Runs after the access plugins (so `by: apiKey` knows the caller). Each
//! data plane admits its part of the limit (`limit / data planes`,
//! rounded up; see `crate::quota`). Refusals are 429 with `Retry-After`;
//! admitted requests get the `X-RateLimit-*` headers of the tightest limit.

use super::{Ctx, Denial, Flow, Phase, Plugin, Reason, State};
use crate::quota::{self, Allowance, Buckets};
use http::header::HeaderName;
use http::StatusCode;
use nio_proto::model::{RateLimit, RateLimitBy};
use std::sync::Arc;

#[derive(Debug)]
pub struct RateLimitPlugin {
    limit: u64,
    per: u64,
    by: RateLimitBy,
    header: Option<HeaderName>,
    buckets: Arc<Buckets>,
}

impl RateLimitPlugin {
    /// `place` names the plugin's spot in the configuration: its counters
    /// carry over to the next snapshot while the place and config stay.
    pub fn new(c: &RateLimit, place: &str) -> Result<RateLimitPlugin, String> {
        let header = c
            .header
            .as_deref()
            .map(|h| HeaderName::from_bytes(h.as_bytes()).map_err(|e| format!("header: {e}")))
            .transpose()?;
        let per = c.per.as_secs().max(1);
        Ok(RateLimitPlugin {
            limit: c.limit,
            per,
            by: c.by,
            header,
            buckets: quota::buckets(&format!(
                "{place}/{}/{per}/{:?}/{:?}",
                c.limit, c.by, c.header
            )),
        })
    }
}

impl Plugin for RateLimitPlugin {
    fn phase(&self) -> Phase {
        Phase::Limit
    }

    fn on_request(&self, ctx: &mut Ctx<'_>) -> Flow {
        let now = quota::now_secs();
        let (limit, per) = (self.limit, self.per);
        let counted = match (self.by, &ctx.state.consumer, &self.header) {
            (RateLimitBy::ApiKey, Some(consumer), _) => {
                self.buckets.hit((1u8, consumer.as_str()), limit, per, now)
            }
            (RateLimitBy::Header, _, Some(h)) => {
                let value = ctx.headers.get(h).map_or(&b""[..], |v| v.as_bytes());
                self.buckets.hit((2u8, value), limit, per, now)
            }
            _ => self.buckets.hit((0u8, ctx.client_ip), limit, per, now),
        };
        match counted {
            Ok(a) => {
                ctx.state.rate_limit = Some(Allowance::tighter(ctx.state.rate_limit, a));
                Flow::Continue
            }
            Err(a) => Flow::Deny(too_many(
                Reason::RateLimited,
                "too many requests; retry later",
                &a,
            )),
        }
    }

    fn on_response(&self, state: &mut State, response: &mut http::response::Parts) {
        super::write_rate_limit(state, response);
    }
}

/// A 429 with the allowance's headers.
pub fn too_many(reason: Reason, message: &str, a: &Allowance) -> Denial {
    let mut d = Denial::new(StatusCode::TOO_MANY_REQUESTS, reason, message);
    d.headers = a.refusal_headers();
    d
}
