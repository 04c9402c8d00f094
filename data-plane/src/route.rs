//! A Route compiled for the request path: its conditions (methods, header
//! and query matchers), how it rewrites the path and the Host header, and
//! its header rules. Built once per snapshot from the spec, so a request
//! never parses configuration: regexes are compiled, header names parsed.

use crate::metrics::RouteStats;
use crate::plugins::Chain;
use crate::router::{matched_len, params};
use crate::upstream::BackendPool;
use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::Method;
use nio_proto::model::{
    compile_regex, HeaderRules, Matcher, PathPattern, Route, RouteTls, Segment, Sparse,
};
use std::collections::BTreeMap;
use std::sync::Arc;

#[derive(Debug)]
pub struct CompiledRoute {
    /// Shared with the runtime's map of routes, the router and the metrics.
    pub name: Arc<str>,
    pub hosts: Vec<String>,
    pub paths: Box<[Arc<PathPattern>]>,
    pub exact: bool,
    /// Method, header and query conditions; a pointer for the many routes
    /// without any.
    conditions: Option<Box<Conditions>>,
    pub backend: Arc<BackendPool>,
    /// `stripPath` is a rewrite to `/`.
    rewrite: Option<Box<PathPattern>>,
    host: HostRule,
    pub request_headers: CompiledRules,
    pub response_headers: CompiledRules,
    pub access_log: bool,
    /// Percentage of requests that become GatewayEvents.
    event_sample_percent: u8,
    /// The Route's labels (API keys may select routes by label).
    pub labels: Sparse<BTreeMap<String, String>>,
    pub plugins: Chain,
    pub stats: Arc<RouteStats>,
    /// HTTPS redirect and client certificates.
    pub tls: Sparse<RouteTls>,
    pub client_subject_header: Option<Box<HeaderName>>,
}

#[derive(Debug)]
struct Conditions {
    methods: Vec<Method>,
    headers: Vec<(HeaderName, Test)>,
    query: Vec<(String, Test)>,
}

#[derive(Debug)]
enum Test {
    Equals(String),
    Regex(regex::Regex),
    Present(bool),
}

impl Test {
    fn check(&self, value: Option<&[u8]>) -> bool {
        match (self, value) {
            (Test::Present(want), v) => v.is_some() == *want,
            (Test::Equals(s), Some(v)) => s.as_bytes() == v,
            (Test::Regex(re), Some(v)) => std::str::from_utf8(v).is_ok_and(|v| re.is_match(v)),
            (_, None) => false,
        }
    }
}

/// What Host header the backend sees.
#[derive(Debug)]
pub enum HostRule {
    /// The target's `host:port`.
    Target,
    /// The client's.
    Preserve,
    Override(HeaderValue),
}

/// Header rules with names and values parsed; a pointer when there are
/// none (most routes of a large table), 72 bytes more when there are.
#[derive(Debug, Default)]
pub struct CompiledRules(Option<Box<Rules>>);

#[derive(Debug)]
struct Rules {
    remove: Vec<HeaderName>,
    set: Vec<(HeaderName, HeaderValue)>,
    add: Vec<(HeaderName, HeaderValue)>,
}

impl CompiledRules {
    pub fn is_empty(&self) -> bool {
        self.0.is_none()
    }

    fn new(rules: &HeaderRules) -> Result<CompiledRules, String> {
        let name = |n: &str| HeaderName::from_bytes(n.as_bytes()).map_err(|e| format!("{n}: {e}"));
        let pair = |(n, v): (&String, &String)| -> Result<_, String> {
            Ok((
                name(n)?,
                HeaderValue::from_str(v).map_err(|e| format!("{n}: {e}"))?,
            ))
        };
        let rules = Rules {
            remove: rules
                .remove
                .iter()
                .map(|n| name(n))
                .collect::<Result<_, _>>()?,
            set: rules.set.iter().map(pair).collect::<Result<_, _>>()?,
            add: rules.add.iter().map(pair).collect::<Result<_, _>>()?,
        };
        let empty = rules.remove.is_empty() && rules.set.is_empty() && rules.add.is_empty();
        Ok(CompiledRules((!empty).then(|| Box::new(rules))))
    }

    pub fn apply(&self, headers: &mut HeaderMap) {
        let Some(rules) = &self.0 else {
            return;
        };
        for n in &rules.remove {
            headers.remove(n);
        }
        for (n, v) in &rules.set {
            headers.insert(n.clone(), v.clone());
        }
        for (n, v) in &rules.add {
            headers.append(n.clone(), v.clone());
        }
    }
}

impl CompiledRoute {
    pub fn new(
        route: &Route,
        name: Arc<str>,
        backend: Arc<BackendPool>,
        stats: Arc<RouteStats>,
    ) -> Result<CompiledRoute, String> {
        let spec = &route.spec;
        let f = &spec.frontend;
        let paths = f
            .paths
            .iter()
            .map(|p| PathPattern::parse(p).map(Arc::new))
            .collect::<Result<Vec<_>, _>>()?
            .into_boxed_slice();
        let methods: Vec<Method> = f
            .methods
            .iter()
            .map(|m| Method::from_bytes(m.as_bytes()).map_err(|e| format!("{m}: {e}")))
            .collect::<Result<_, _>>()?;
        let headers: Vec<_> = f
            .headers
            .iter()
            .map(|m| {
                let name = HeaderName::from_bytes(m.name.as_bytes())
                    .map_err(|e| format!("{}: {e}", m.name))?;
                Ok((name, test(m)?))
            })
            .collect::<Result<_, String>>()?;
        let query: Vec<_> = f
            .query
            .iter()
            .map(|m| Ok((m.name.clone(), test(m)?)))
            .collect::<Result<_, String>>()?;
        let conditions =
            (!(methods.is_empty() && headers.is_empty() && query.is_empty())).then(|| {
                Box::new(Conditions {
                    methods,
                    headers,
                    query,
                })
            });
        let rewrite = match (&f.rewrite, f.strip_path) {
            (Some(r), _) => Some(PathPattern::parse(r)?),
            (None, true) => Some(PathPattern::parse("/")?),
            (None, false) => None,
        };
        let host = match (&spec.host_override, spec.preserve_host) {
            (Some(h), _) => HostRule::Override(
                HeaderValue::from_str(h).map_err(|e| format!("hostOverride: {e}"))?,
            ),
            (None, true) => HostRule::Preserve,
            (None, false) => HostRule::Target,
        };
        Ok(CompiledRoute {
            plugins: Chain::build(&spec.plugins, "spec.plugins", &format!("route/{name}"))?,
            name,
            hosts: f.hosts.clone(),
            paths,
            exact: f.exact,
            conditions,
            backend,
            rewrite: rewrite.map(Box::new),
            host,
            request_headers: CompiledRules::new(&spec.request_headers)?,
            response_headers: CompiledRules::new(&spec.response_headers)?,
            access_log: spec.access_log,
            event_sample_percent: spec.event_sample_percent,
            labels: route.metadata.labels.clone().into(),
            stats,
            tls: spec.tls.clone(),
            client_subject_header: spec
                .tls
                .client_subject_header
                .as_deref()
                .map(|h| HeaderName::from_bytes(h.as_bytes()).map_err(|e| format!("{h}: {e}")))
                .transpose()?
                .map(Box::new),
        })
    }

    /// Whether this request becomes a GatewayEvent.
    pub fn sample_event(&self) -> bool {
        match self.event_sample_percent {
            0 => false,
            100.. => true,
            p => rand::random_range(0..100u8) < p,
        }
    }

    /// Method, header and query conditions, for ranking ties.
    pub fn conditions(&self) -> u32 {
        self.conditions.as_ref().map_or(0, |c| {
            u32::from(!c.methods.is_empty()) + c.headers.len() as u32 + c.query.len() as u32
        })
    }

    /// Whether the request meets this route's conditions.
    pub fn accepts(&self, method: &Method, headers: &HeaderMap, query: Option<&str>) -> bool {
        let Some(c) = &self.conditions else {
            return true;
        };
        (c.methods.is_empty() || c.methods.contains(method))
            && c.headers
                .iter()
                .all(|(name, t)| t.check(headers.get(name).map(HeaderValue::as_bytes)))
            && c.query.iter().all(|(name, t)| {
                let value = query.and_then(|q| query_param(q, name));
                t.check(value.as_deref().map(str::as_bytes))
            })
    }

    pub fn host_rule(&self) -> &HostRule {
        &self.host
    }

    /// The path and query the backend gets, when the route changes it.
    /// `None`: the request's own.
    pub fn rewrite(
        &self,
        pattern: &PathPattern,
        path: &str,
        query: Option<&str>,
    ) -> Option<String> {
        let template = self.rewrite.as_ref()?;
        let mut out = String::with_capacity(path.len() + 16);
        for seg in &template.segments {
            out.push('/');
            match seg {
                Segment::Literal(l) => out.push_str(l),
                Segment::Param(p) => {
                    if let Some((_, v)) = params(pattern, path).find(|(n, _)| *n == &**p) {
                        out.push_str(v);
                    }
                }
            }
        }
        let rest = &path[matched_len(pattern, path).min(path.len())..];
        if rest.is_empty()
            && (out.is_empty() || template.trailing_slash && !template.segments.is_empty())
        {
            out.push('/');
        }
        out.push_str(rest);
        if let Some(q) = query {
            out.push('?');
            out.push_str(q);
        }
        Some(out)
    }
}

fn test(m: &Matcher) -> Result<Test, String> {
    Ok(match (&m.value, &m.regex, m.present) {
        (Some(v), _, _) => Test::Equals(v.clone()),
        (_, Some(re), _) => Test::Regex(compile_regex(re)?),
        (_, _, Some(p)) => Test::Present(p),
        _ => return Err(format!("{}: no condition", m.name)),
    })
}

/// The first value of `name` in a query string, percent-decoded (`+` is a
/// space). A name without `=` has the empty value.
pub fn query_param(query: &str, name: &str) -> Option<String> {
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (decode(k) == name).then(|| decode(v))
    })
}

/// `path?query` without the parameter `name` (all its occurrences).
pub fn without_query_param(path_and_query: &str, name: &str) -> String {
    let Some((path, query)) = path_and_query.split_once('?') else {
        return path_and_query.to_string();
    };
    let kept: Vec<&str> = query
        .split('&')
        .filter(|pair| decode(pair.split_once('=').map_or(*pair, |(k, _)| k)) != name)
        .collect();
    if kept.is_empty() {
        path.to_string()
    } else {
        format!("{path}?{}", kept.join("&"))
    }
}

fn decode(s: &str) -> String {
    if !s.contains(['%', '+']) {
        return s.to_string();
    }
    let hex = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let decoded = match bytes[i] {
            b'%' => bytes
                .get(i + 1..i + 3)
                .and_then(|h| Some(hex(h[0])? << 4 | hex(h[1])?)),
            _ => None,
        };
        match (decoded, bytes[i]) {
            (Some(b), _) => {
                out.push(b);
                i += 3;
            }
            (None, b'+') => {
                out.push(b' ');
                i += 1;
            }
            (None, b) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_params_are_decoded() {
        assert_eq!(query_param("a=1&b=x%20y+z", "b").as_deref(), Some("x y z"));
        assert_eq!(query_param("flag&a=1", "flag").as_deref(), Some(""));
        assert_eq!(query_param("a=%zz%4", "a").as_deref(), Some("%zz%4"));
        assert_eq!(query_param("a=1", "b"), None);
        assert_eq!(without_query_param("/p?apikey=x.y&a=1", "apikey"), "/p?a=1");
        assert_eq!(without_query_param("/p?apikey=x.y", "apikey"), "/p");
        assert_eq!(without_query_param("/p", "apikey"), "/p");
        assert_eq!(query_param("a=%C3%A9%", "a").as_deref(), Some("é%"));
        assert_eq!(query_param("a=é%é", "a").as_deref(), Some("é%é"));
    }
}
