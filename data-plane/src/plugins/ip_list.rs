//! `ipAllowList` / `ipBlockList`: who may call, by client address (the
//! socket peer, or behind `--trusted-proxies` the forwarded client).

use super::{Ctx, Denial, Flow, Phase, Plugin, Reason};
use http::StatusCode;
use nio_proto::model::{Cidr, IpList};

#[derive(Debug)]
pub struct IpListPlugin {
    cidrs: Vec<Cidr>,
    /// Allow list (only these) or block list (all but these).
    allow: bool,
}

impl IpListPlugin {
    pub fn allow(c: &IpList) -> Result<IpListPlugin, String> {
        Self::new(c, true)
    }

    pub fn block(c: &IpList) -> Result<IpListPlugin, String> {
        Self::new(c, false)
    }

    fn new(c: &IpList, allow: bool) -> Result<IpListPlugin, String> {
        let cidrs = c
            .cidrs
            .iter()
            .map(|s| s.parse())
            .collect::<Result<_, _>>()?;
        Ok(IpListPlugin { cidrs, allow })
    }
}

impl Plugin for IpListPlugin {
    fn phase(&self) -> Phase {
        Phase::PreRoute
    }

    fn on_request(&self, ctx: &mut Ctx<'_>) -> Flow {
        let listed = self.cidrs.iter().any(|c| c.contains(ctx.client_ip));
        match (self.allow, listed) {
            (true, false) => Flow::Deny(Denial::new(
                StatusCode::FORBIDDEN,
                Reason::IpNotAllowed,
                "your address may not call this route",
            )),
            (false, true) => Flow::Deny(Denial::new(
                StatusCode::FORBIDDEN,
                Reason::IpBlocked,
                "your address is blocked",
            )),
            _ => Flow::Continue,
        }
    }
}
