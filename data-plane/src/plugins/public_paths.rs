//! `publicPaths`: requests under these path prefixes skip the route's
//! authentication plugins (`apiKey`, `jwt`): a health page or public docs
//! behind an otherwise protected route.

use super::{Ctx, Flow, Phase, Plugin};
use nio_proto::model::PublicPaths;

#[derive(Debug)]
pub struct PublicPathsPlugin {
    prefixes: Vec<String>,
}

impl PublicPathsPlugin {
    pub fn new(c: &PublicPaths) -> Result<PublicPathsPlugin, String> {
        Ok(PublicPathsPlugin {
            prefixes: c.paths.clone(),
        })
    }
}

/// `/docs` covers `/docs` and `/docs/x`, not `/docsx`.
fn under(prefix: &str, path: &str) -> bool {
    path.starts_with(prefix)
        && (prefix.ends_with('/')
            || path.len() == prefix.len()
            || path.as_bytes().get(prefix.len()) == Some(&b'/'))
}

impl Plugin for PublicPathsPlugin {
    fn phase(&self) -> Phase {
        // Before Access, whatever the written order.
        Phase::PreRoute
    }

    fn on_request(&self, ctx: &mut Ctx<'_>) -> Flow {
        let path = ctx.uri.path();
        if self.prefixes.iter().any(|p| under(p, path)) {
            ctx.state.public = true;
        }
        Flow::Continue
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn prefixes_on_segments() {
        assert!(super::under("/docs", "/docs"));
        assert!(super::under("/docs", "/docs/a"));
        assert!(!super::under("/docs", "/docsx"));
        assert!(super::under("/", "/anything"));
    }
}
