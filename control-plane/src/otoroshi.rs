//! Converts an Otoroshi full export (`GET /api/otoroshi.json`) into Nio
//! resources, with a report of what was converted and what was not, and
//! why. The mapping is documented in `docs/migrating-from-otoroshi.md`.
//!
//! One rule throughout: a conversion never widens access. An Otoroshi
//! service protected by something Nio has no equivalent for (an auth
//! module, a client-certificate validator, an access validator,
//! restrictions, an unknown security plugin) is not converted; an API key
//! with restrictions or read-only access is not converted. Everything else
//! Nio cannot express is converted without it and named in the report.
//!
//! API-key secrets: Otoroshi exports `clientSecret` in clear. It becomes a
//! Nio credential (`HMAC-SHA256(salt, secret)` under a fresh random salt,
//! the scheme of [`crate::apikeys`]), so clients keep their secret. The
//! secret itself is never logged or returned.

use nio_proto::model::{credential_hash, is_dns_label, AnyResource, Credential, Kind};
use serde_json::{json, Map, Value};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

/// What [`convert`] produced.
#[derive(Debug)]
pub struct Converted {
    pub resources: Vec<AnyResource>,
    pub report: Report,
}

/// One line of the report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The Otoroshi entity: `serviceDescriptor my-service`, `apiKey abc`.
    pub source: String,
    /// Converted: what it became and anything left behind; not converted:
    /// why.
    pub message: String,
}

#[derive(Debug, Default)]
pub struct Report {
    pub converted: Vec<Entry>,
    pub not_converted: Vec<Entry>,
}

impl Report {
    fn ok(&mut self, source: impl Into<String>, message: impl Into<String>) {
        self.converted.push(Entry {
            source: source.into(),
            message: message.into(),
        });
    }

    fn skip(&mut self, source: impl Into<String>, message: impl Into<String>) {
        self.not_converted.push(Entry {
            source: source.into(),
            message: message.into(),
        });
    }

    pub fn to_value(&self) -> Value {
        let list = |l: &[Entry]| -> Value {
            l.iter()
                .map(|e| json!({"source": e.source, "message": e.message}))
                .collect()
        };
        json!({"converted": list(&self.converted), "notConverted": list(&self.not_converted)})
    }
}

/// A valid Nio name from anything: lowercase, runs of other characters
/// become `-`, at most 63.
pub fn dns_name(s: &str) -> String {
    let mut out = String::new();
    for c in s.chars() {
        let c = c.to_ascii_lowercase();
        if c.is_ascii_lowercase() || c.is_ascii_digit() {
            out.push(c);
        } else if !out.ends_with('-') {
            out.push('-');
        }
    }
    let mut out: String = out.trim_matches('-').chars().take(63).collect();
    while out.ends_with('-') {
        out.pop();
    }
    if out.is_empty() {
        "unnamed".into()
    } else {
        out
    }
}

/// Names already taken, per kind: a second `my-service` becomes `my-service-2`.
#[derive(Default)]
struct Names(HashMap<Kind, HashSet<String>>);

impl Names {
    fn take(&mut self, kind: Kind, wanted: &str) -> String {
        let base = dns_name(wanted);
        let taken = self.0.entry(kind).or_default();
        let mut name = base.clone();
        let mut n = 2;
        while taken.contains(&name) {
            let suffix = format!("-{n}");
            let keep: String = base.chars().take(63 - suffix.len()).collect();
            name = format!("{}{suffix}", keep.trim_end_matches('-'));
            n += 1;
        }
        taken.insert(name.clone());
        name
    }
}

/// The label a route carries for each Otoroshi group it is in.
pub fn group_label(group_id: &str) -> String {
    let prefix = "group.otoroshi.io/";
    let id: String = group_id
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '-'
            }
        })
        .take(63 - prefix.len())
        .collect();
    format!("{prefix}{id}")
}

fn s<'a>(v: &'a Value, key: &str) -> Option<&'a str> {
    v.get(key).and_then(Value::as_str).filter(|s| !s.is_empty())
}

fn b(v: &Value, key: &str) -> bool {
    v.get(key).and_then(Value::as_bool).unwrap_or(false)
}

fn arr<'a>(v: &'a Value, key: &str) -> &'a [Value] {
    v.get(key)
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or(&[])
}

fn strs(v: &Value, key: &str) -> Vec<String> {
    arr(v, key)
        .iter()
        .filter_map(Value::as_str)
        .map(str::to_string)
        .collect()
}

fn str_map(v: &Value, key: &str) -> BTreeMap<String, String> {
    v.get(key)
        .and_then(Value::as_object)
        .map(|o| {
            o.iter()
                .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
                .collect()
        })
        .unwrap_or_default()
}

/// Decodes and validates a resource built from JSON.
fn resource(value: Value) -> Result<AnyResource, String> {
    let r = AnyResource::from_value(value).map_err(|e| e.to_string())?;
    r.validate().map_err(|e| e.to_string())?;
    Ok(r)
}

fn envelope(kind: Kind, name: &str, labels: &BTreeMap<String, String>, spec: Value) -> Value {
    let mut metadata = json!({ "name": name });
    if !labels.is_empty() {
        metadata["labels"] = json!(labels);
    }
    json!({"apiVersion": nio_proto::API_VERSION, "kind": kind.as_str(), "metadata": metadata, "spec": spec})
}

/// Options of a conversion.
#[derive(Debug, Default, Clone)]
pub struct ConvertOptions {
    /// Every Backend gets this one target instead of Otoroshi's (also makes
    /// services with TLS targets convertible).
    pub rewrite_targets: Option<String>,
}

/// What a service or route becomes, before it is checked.
struct Service {
    source: String,
    name: String,
    groups: Vec<String>,
    route_spec: Map<String, Value>,
    backend_spec: Value,
    notes: Vec<String>,
    /// Set when it must not be converted.
    blocked: Option<String>,
}

/// Converts an Otoroshi export with default options.
pub fn convert(export: &Value) -> Result<Converted, String> {
    convert_with(export, &ConvertOptions::default())
}

/// Converts an Otoroshi export. Fails only when the document is not an
/// Otoroshi export at all; everything else goes in the report.
pub fn convert_with(export: &Value, options: &ConvertOptions) -> Result<Converted, String> {
    let Some(doc) = export.as_object() else {
        return Err("the body is not an Otoroshi export (a JSON object)".into());
    };
    let known = [
        "serviceDescriptors",
        "routes",
        "apiKeys",
        "serviceGroups",
        "jwtVerifiers",
    ];
    if !known.iter().any(|k| doc.contains_key(*k)) {
        return Err(format!(
            "the body is not an Otoroshi export: it has none of {}; export it with GET /api/otoroshi.json (or Danger zone > Full export)",
            known.join(", ")
        ));
    }
    let mut report = Report::default();
    let mut names = Names::default();
    let mut resources = Vec::new();

    // Groups: labels on routes.
    for g in arr(export, "serviceGroups") {
        if let Some(id) = s(g, "id") {
            report.ok(
                format!("serviceGroup {id}"),
                format!("label {}=true on the routes of the group", group_label(id)),
            );
        }
    }

    // JWT verifiers.
    let mut verifiers: HashMap<String, String> = HashMap::new();
    for v in arr(export, "jwtVerifiers") {
        let id = s(v, "id").unwrap_or("?");
        let source = format!("jwtVerifier {id}");
        match jwt_verifier(v) {
            Ok((spec, notes)) => {
                let name = names.take(Kind::JwtVerifier, s(v, "name").unwrap_or(id));
                match resource(envelope(Kind::JwtVerifier, &name, &BTreeMap::new(), spec)) {
                    Ok(r) => {
                        verifiers.insert(id.to_string(), name.clone());
                        resources.push(r);
                        report.ok(source, with_notes(format!("jwtverifier/{name}"), &notes));
                    }
                    Err(e) => report.skip(source, e),
                }
            }
            Err(reason) => report.skip(source, reason),
        }
    }

    // Services and routes.
    let mut services: Vec<Service> = Vec::new();
    for d in arr(export, "serviceDescriptors") {
        services.push(service_descriptor(d, &verifiers, options));
    }
    for r in arr(export, "routes") {
        services.push(new_route(r, &verifiers, options));
    }
    // Otoroshi id -> Nio route name; group id -> route names.
    let mut route_of: HashMap<String, String> = HashMap::new();
    let mut group_routes: HashMap<String, Vec<String>> = HashMap::new();
    for (svc, raw) in services.into_iter().zip(
        arr(export, "serviceDescriptors")
            .iter()
            .chain(arr(export, "routes")),
    ) {
        if let Some(reason) = svc.blocked {
            report.skip(svc.source, reason);
            continue;
        }
        let name = names.take(Kind::Route, &svc.name);
        let labels: BTreeMap<String, String> = svc
            .groups
            .iter()
            .map(|g| (group_label(g), "true".to_string()))
            .collect();
        let mut route_spec = svc.route_spec;
        route_spec.insert("backend".into(), json!(name));
        let backend = resource(envelope(Kind::Backend, &name, &labels, svc.backend_spec));
        let route = resource(envelope(
            Kind::Route,
            &name,
            &labels,
            Value::Object(route_spec),
        ));
        match (backend, route) {
            (Ok(backend), Ok(route)) => {
                resources.push(backend);
                resources.push(route);
                if let Some(id) = s(raw, "id") {
                    route_of.insert(id.to_string(), name.clone());
                }
                for g in &svc.groups {
                    group_routes
                        .entry(g.clone())
                        .or_default()
                        .push(name.clone());
                }
                report.ok(
                    svc.source,
                    with_notes(format!("route/{name}, backend/{name}"), &svc.notes),
                );
            }
            (Err(e), _) | (_, Err(e)) => report.skip(svc.source, e),
        }
    }

    // API keys.
    for k in arr(export, "apiKeys") {
        let id = s(k, "clientId").unwrap_or("?");
        let source = format!("apiKey {id}");
        match api_key(k, &mut names, &route_of, &group_routes) {
            Ok((r, notes)) => {
                let name = r.name().to_string();
                resources.push(r);
                report.ok(source, with_notes(format!("apikey/{name}"), &notes));
            }
            Err(reason) => report.skip(source, reason),
        }
    }

    // Certificates: the chain and key as they are, when Nio accepts them
    // (parseable, key matching, not expired).
    for c in arr(export, "certificates") {
        let id = s(c, "id").unwrap_or("?");
        let source = format!("certificate {id}");
        let Some(chain) = s(c, "chain").filter(|p| !p.trim().is_empty()) else {
            report.skip(source, "no PEM chain");
            continue;
        };
        let key = s(c, "privateKey").filter(|k| !k.trim().is_empty());
        let name = names.take(Kind::Certificate, s(c, "name").unwrap_or(id));
        let resource = AnyResource::from_value(json!({
            "apiVersion": nio_proto::API_VERSION, "kind": "Certificate",
            "metadata": {"name": name},
            "spec": {"certificate": chain, "privateKey": key},
        }))
        .map_err(|e| e.to_string())
        .and_then(|r| r.validate().map(|()| r).map_err(|e| e.to_string()))
        .and_then(|r| match &r {
            AnyResource::Certificate(c) => c
                .spec
                .check_current()
                .map(|()| r)
                .map_err(|e| e.to_string()),
            _ => Ok(r),
        });
        match resource {
            Ok(r) => {
                resources.push(r);
                report.ok(source, format!("certificate/{name}"));
            }
            Err(e) => report.skip(source, e),
        }
    }

    // Everything else, by collection.
    let others: [(&str, &str); 11] = [
        ("authConfigs", "Nio has no login modules (OAuth2/OIDC/LDAP/basic auth pages); use JWT verification or API keys"),
        ("clientValidators", "client-certificate validation needs TLS, which Nio does not terminate yet"),
        ("scripts", "Otoroshi scripts (JVM plugins) have no Nio equivalent"),
        ("tcpServices", "Nio proxies HTTP only"),
        ("dataExporters", "Nio has an access log and Prometheus metrics, no event exporters yet"),
        ("simpleAdmins", "Otoroshi back-office users; Nio's admin API uses one admin token"),
        ("admins", "Otoroshi back-office users; Nio's admin API uses one admin token"),
        ("tenants", "Nio has no tenants; use labels"),
        ("teams", "Nio has no teams; use labels"),
        ("errorTemplates", "Nio answers errors in its own JSON format"),
        ("backends", "stored backends are converted only where a route uses them inline"),
    ];
    for (key, reason) in others {
        let n = arr(export, key).len();
        if n > 0 {
            report.skip(format!("{key} ({n})"), reason);
        }
    }
    if let Some(config) = export.get("config") {
        let ip = config.get("ipFiltering").cloned().unwrap_or(Value::Null);
        if !arr(&ip, "whitelist").is_empty() || !arr(&ip, "blacklist").is_empty() {
            report.skip(
                "config.ipFiltering",
                "global IP lists are not converted; add ipAllowList/ipBlockList to the GlobalConfig",
            );
        }
    }
    Ok(Converted { resources, report })
}

fn with_notes(what: String, notes: &[String]) -> String {
    if notes.is_empty() {
        what
    } else {
        format!(
            "{what}; notes (not converted or changed): {}",
            notes.join("; ")
        )
    }
}

/// A path regex Otoroshi uses (`/health`, `/health.*`, `/api/.*`) as a
/// Nio path prefix, when it is one.
/// Otoroshi matches patterns against the whole path, so only a pattern
/// ending in `.*` is a prefix; an exact one (`/health`) is not converted
/// (converting it to a prefix would open everything under it).
fn regex_prefix(pattern: &str) -> Option<String> {
    let p = pattern.trim_start_matches('^').trim_end_matches('$');
    let p = p.strip_suffix("/.*").or_else(|| p.strip_suffix(".*"))?;
    let p = if p.is_empty() { "/" } else { p };
    let plain = p.starts_with('/')
        && !p.contains([
            '.', '*', '+', '?', '[', ']', '(', ')', '{', '}', '|', '\\', '^', '$',
        ]);
    plain.then(|| p.to_string())
}

/// Never wider than Otoroshi: one apiKey plugin; and no publicPaths next to
/// a jwt plugin (Nio's public paths skip the token too, Otoroshi's only
/// the API key).
fn narrow(plugins: &mut Vec<Value>, notes: &mut Vec<String>) {
    let kind = |p: &Value| p["kind"].as_str().unwrap_or_default().to_string();
    let mut seen_key = false;
    plugins.retain(|p| {
        let first = !(kind(p) == "apiKey" && seen_key);
        seen_key |= kind(p) == "apiKey";
        first
    });
    if plugins.iter().any(|p| kind(p) == "jwt") && plugins.iter().any(|p| kind(p) == "publicPaths")
    {
        plugins.retain(|p| kind(p) != "publicPaths");
        notes.push("public patterns on a JWT-verified service: the token and key stay required on the whole route".into());
    }
}

fn is_everything(pattern: &str) -> bool {
    matches!(pattern, "/.*" | ".*" | "^/.*" | "/*" | "^.*$" | "^/.*$")
}

/// Access control from public/private patterns: the apiKey plugin and
/// publicPaths, or notes.
fn access_plugins(
    public: &[String],
    private: &[String],
    plugins: &mut Vec<Value>,
    notes: &mut Vec<String>,
) {
    if public.iter().any(|p| is_everything(p)) && private.is_empty() {
        return; // a public service
    }
    plugins.push(json!({"kind": "apiKey"}));
    if public.iter().any(|p| is_everything(p)) {
        notes.push(format!(
            "public except {}: Nio requires the API key on the whole route (split the route to make parts public)",
            private.join(", ")
        ));
        return;
    }
    let mut paths = Vec::new();
    for p in public {
        match regex_prefix(p) {
            Some(prefix) => paths.push(prefix),
            None => notes.push(format!(
                "public pattern \"{p}\" is not a path prefix (the API key stays required there)"
            )),
        }
    }
    if !paths.is_empty() {
        if !private.is_empty() {
            // Nio has no private-inside-public: keep the key required
            // everywhere rather than open the private parts.
            notes.push(format!(
                "public patterns with private exceptions ({}): the API key stays required on the whole route",
                private.join(", ")
            ));
            return;
        }
        plugins.push(json!({"kind": "publicPaths", "config": {"paths": paths}}));
    }
}

fn lb_policy(lb: Option<&Value>, notes: &mut Vec<String>) -> Option<Value> {
    let t = lb.and_then(|l| s(l, "type"))?;
    Some(match t {
        "RoundRobin" => return None,
        "Random" => json!({"policy": "random"}),
        "LeastConnections" => json!({"policy": "leastConnections"}),
        "PowerOfTwoRandomChoices" => json!({"policy": "powerOfTwoChoices"}),
        "IpAddressHash" | "Sticky" => {
            json!({"policy": "consistentHash", "hashOn": {"clientIp": true}})
        }
        other => {
            notes.push(format!(
                "load balancing {other} (weighted round robin is used)"
            ));
            return None;
        }
    })
}

/// Backend settings from Otoroshi's client config (`clientConfig` or the
/// new engine's `client`), camelCase or snake_case.
fn client_settings(c: &Value, spec: &mut Map<String, Value>) {
    let num = |a: &str, b: &str| c.get(a).or_else(|| c.get(b)).and_then(Value::as_u64);
    let mut timeouts = Map::new();
    if let Some(ms) = num("connectionTimeout", "connection_timeout") {
        timeouts.insert("connect".into(), json!(format!("{ms}ms")));
    }
    if let Some(ms) = num("callTimeout", "call_timeout") {
        timeouts.insert("request".into(), json!(format!("{ms}ms")));
    }
    if let Some(ms) = num("idleTimeout", "idle_timeout") {
        timeouts.insert("idle".into(), json!(format!("{ms}ms")));
    }
    if !timeouts.is_empty() {
        spec.insert("timeouts".into(), Value::Object(timeouts));
    }
    if let Some(n) = num("retries", "retries") {
        let mut retries = json!({"maxRetries": n.min(10)});
        if let Some(ms) = num("retryInitialDelay", "retry_initial_delay") {
            retries["backoff"] = json!(format!("{ms}ms"));
        }
        spec.insert("retries".into(), retries);
    }
    if c.get("useCircuitBreaker").and_then(Value::as_bool) == Some(false) {
        spec.insert("circuitBreaker".into(), json!({"enabled": false}));
    }
}

fn health_check(h: &Value, spec: &mut Map<String, Value>) {
    if !b(h, "enabled") {
        return;
    }
    let url = s(h, "url").unwrap_or("/");
    let path = if url.starts_with('/') {
        url.to_string()
    } else {
        url.split_once("://")
            .map(|(_, rest)| rest.find('/').map_or("/", |i| &rest[i..]).to_string())
            .unwrap_or_else(|| "/".into())
    };
    spec.insert("healthCheck".into(), json!({ "path": path }));
}

/// Targets: `(url, weight)` with a plain-HTTP scheme, or why not.
fn targets(
    list: impl Iterator<Item = (bool, String, u64)>,
    options: &ConvertOptions,
) -> Result<Vec<Value>, String> {
    let mut out = Vec::new();
    for (tls, host, weight) in list {
        if let Some(url) = &options.rewrite_targets {
            return Ok(vec![json!({ "url": url })]);
        }
        if tls {
            return Err(format!(
                "target {host} is reached over TLS, which Nio does not do toward backends yet (import with rewriteTargets to point it elsewhere)"
            ));
        }
        out.push(json!({"url": format!("http://{host}"), "weight": weight.clamp(1, 1000)}));
    }
    if out.is_empty() {
        if let Some(url) = &options.rewrite_targets {
            return Ok(vec![json!({ "url": url })]);
        }
        return Err("no targets".into());
    }
    Ok(out)
}

/// A legacy service descriptor.
fn service_descriptor(
    d: &Value,
    verifiers: &HashMap<String, String>,
    options: &ConvertOptions,
) -> Service {
    let name = s(d, "name").or(s(d, "id")).unwrap_or("service").to_string();
    let mut svc = Service {
        source: format!("serviceDescriptor {name}"),
        name: name.clone(),
        groups: {
            let mut g = strs(d, "groups");
            if let Some(id) = s(d, "groupId") {
                if !g.iter().any(|x| x == id) {
                    g.insert(0, id.to_string());
                }
            }
            g
        },
        route_spec: Map::new(),
        backend_spec: Value::Null,
        notes: Vec::new(),
        blocked: None,
    };
    let block = |why: &str| {
        Some(format!(
            "{why}; converting it would open it to anyone, so it is left out"
        ))
    };
    if d.get("enabled").and_then(Value::as_bool) == Some(false) {
        svc.blocked = Some("disabled in Otoroshi".into());
        return svc;
    }
    if b(d, "privateApp") || s(d, "authConfigRef").is_some() {
        svc.blocked = block(
            "protected by an Otoroshi auth module (private app), which Nio has no equivalent for",
        );
        return svc;
    }
    if s(d, "clientValidatorRef").is_some() {
        svc.blocked = block("protected by a client-certificate validator, which needs TLS");
        return svc;
    }
    if d.get("accessValidator")
        .is_some_and(|a| b(a, "enabled") && !arr(a, "refs").is_empty())
    {
        svc.blocked = block("protected by access validator plugins");
        return svc;
    }
    if d.get("restrictions").is_some_and(|r| b(r, "enabled")) {
        svc.blocked = block("restricted by allowed/forbidden path rules");
        return svc;
    }
    let notes = &mut svc.notes;
    // Frontend.
    let mut hosts: BTreeSet<String> = strs(d, "hosts").into_iter().collect();
    if hosts.is_empty() || d.get("handleLegacyDomain").and_then(Value::as_bool) != Some(false) {
        if let Some(domain) = s(d, "domain") {
            let host = match (s(d, "subdomain"), s(d, "env")) {
                (None, _) => domain.to_string(),
                (Some(sub), None | Some("prod")) => format!("{sub}.{domain}"),
                (Some(sub), Some(env)) => format!("{sub}.{env}.{domain}"),
            };
            hosts.insert(host);
        }
    }
    let matching_root = s(d, "matchingRoot").map(str::to_string);
    let mut paths: Vec<String> = strs(d, "paths");
    if let Some(m) = &matching_root {
        paths.insert(0, m.clone());
    }
    let strip = d.get("stripPath").and_then(Value::as_bool).unwrap_or(true);
    let root = s(d, "root").unwrap_or("/");
    let mut frontend = json!({ "hosts": hosts });
    if !paths.is_empty() {
        frontend["paths"] = json!(paths);
    }
    if root != "/" {
        let r = root.trim_end_matches('/');
        let rewrite = match (&matching_root, strip) {
            (Some(m), false) => format!("{r}{m}"),
            _ => r.to_string(),
        };
        frontend["rewrite"] = json!(if rewrite.is_empty() {
            "/".into()
        } else {
            rewrite
        });
    } else if matching_root.is_some() && strip {
        frontend["stripPath"] = json!(true);
    }
    let headers: Vec<Value> = str_map(d, "matchingHeaders")
        .into_iter()
        .map(|(name, value)| json!({"name": name, "value": value}))
        .collect();
    if !headers.is_empty() {
        frontend["headers"] = json!(headers);
    }
    svc.route_spec.insert("frontend".into(), frontend);
    // Headers toward the backend and the client.
    let mut set = str_map(d, "additionalHeaders");
    if let Some(host) = set.remove("Host").or_else(|| set.remove("host")) {
        svc.route_spec.insert("hostOverride".into(), json!(host));
    } else if d.get("overrideHost").and_then(Value::as_bool) == Some(false) {
        svc.route_spec.insert("preserveHost".into(), json!(true));
    }
    let req = json!({"set": set, "remove": strs(d, "removeHeadersIn")});
    let resp =
        json!({"set": str_map(d, "additionalHeadersOut"), "remove": strs(d, "removeHeadersOut")});
    for (key, rules) in [("requestHeaders", req), ("responseHeaders", resp)] {
        let empty = rules["set"].as_object().is_none_or(Map::is_empty)
            && rules["remove"].as_array().is_none_or(Vec::is_empty);
        if !empty {
            svc.route_spec.insert(key.into(), rules);
        }
    }
    if !str_map(d, "missingOnlyHeadersIn").is_empty()
        || !str_map(d, "missingOnlyHeadersOut").is_empty()
    {
        notes.push("missing-only headers".into());
    }
    // Plugins, in the order Nio runs them.
    let mut plugins = Vec::new();
    if b(d, "maintenanceMode") {
        plugins.push(json!({"kind": "maintenance"}));
    } else if b(d, "buildMode") {
        plugins.push(json!({"kind": "maintenance", "config": {"body": "{\"error\":\"service under construction\"}"}}));
    }
    if let Some(r) = d.get("redirection").filter(|r| b(r, "enabled")) {
        let code = r.get("code").and_then(Value::as_u64).unwrap_or(303);
        plugins.push(json!({"kind": "redirect", "config": {"to": s(r, "to").unwrap_or("/"), "status": code}}));
    }
    if let Some(ip) = d.get("ipFiltering") {
        let white = strs(ip, "whitelist");
        let black = strs(ip, "blacklist");
        if !white.is_empty() {
            plugins.push(json!({"kind": "ipAllowList", "config": {"cidrs": white}}));
        }
        if !black.is_empty() {
            plugins.push(json!({"kind": "ipBlockList", "config": {"cidrs": black}}));
        }
    }
    if let Some(c) = d.get("cors").filter(|c| b(c, "enabled")) {
        plugins.push(cors(c, notes));
    }
    access_plugins(
        &strs(d, "publicPatterns"),
        &strs(d, "privatePatterns"),
        &mut plugins,
        notes,
    );
    if let Some(j) = d.get("jwtVerifier").filter(|j| b(j, "enabled")) {
        let mut ids = strs(j, "ids");
        if let Some(id) = s(j, "id") {
            ids.insert(0, id.to_string());
        }
        match ids.first().and_then(|id| verifiers.get(id)) {
            Some(v) => plugins.push(json!({"kind": "jwt", "config": {"verifier": v}})),
            None => {
                svc.blocked = block("verified by a JWT verifier that was not converted");
                return svc;
            }
        }
        if !arr(j, "excludedPatterns").is_empty() {
            notes.push("JWT excluded patterns (the token is required on the whole route)".into());
        }
    }
    if d.get("gzip").is_some_and(|g| b(g, "enabled")) {
        plugins.push(json!({"kind": "compression", "config": {"algorithms": ["gzip"]}}));
    }
    narrow(&mut plugins, notes);
    if !plugins.is_empty() {
        svc.route_spec.insert("plugins".into(), json!(plugins));
    }
    // What is not converted but does not widen access.
    if b(d, "forceHttps") {
        notes.push("forceHttps (TLS is not available in Nio yet)".into());
    }
    if b(d, "enforceSecureCommunication") {
        notes.push("Otoroshi exchange protocol (secCom): backends that check the Otoroshi-State challenge must stop".into());
    }
    if d.get("canary").is_some_and(|c| b(c, "enabled")) {
        notes.push("canary targets".into());
    }
    if !strs(d, "transformerRefs").is_empty() || s(d, "transformerRef").is_some() {
        notes.push("request transformers".into());
    }
    if d.get("preRouting").is_some_and(|p| b(p, "enabled"))
        || d.get("plugins").is_some_and(|p| b(p, "enabled"))
    {
        notes.push("Otoroshi plugins (preRouting/plugins)".into());
    }
    if d.get("chaosConfig").is_some_and(|c| b(c, "enabled")) {
        notes.push("chaos engineering (Snow Monkey)".into());
    }
    if let Some(routing) = d.get("apiKeyConstraints").and_then(|c| c.get("routing")) {
        let constrained = routing.as_object().is_some_and(|o| {
            o.values().any(|v| {
                v.as_array().is_some_and(|a| !a.is_empty())
                    || v.as_object().is_some_and(|m| !m.is_empty())
            })
        });
        if constrained {
            svc.blocked = block("restricted to API keys with given tags or metadata, which Nio cannot express; converting it would let any authorized key in");
            return svc;
        }
    }
    if arr(d, "publicPatterns").is_empty() || !is_everything(&strs(d, "publicPatterns").join("")) {
        if let Some(c) = d.get("apiKeyConstraints") {
            if c.get("customHeadersAuth").is_some_and(|h| b(h, "enabled")) {
                notes.push("API keys in Otoroshi-Client-Id/Otoroshi-Client-Secret headers: clients must send Nio-Client-Id/Nio-Client-Secret, Basic or Bearer id.secret".into());
            }
        }
    }
    // Backend.
    let t = targets(
        arr(d, "targets").iter().map(|t| {
            let scheme = s(t, "scheme").unwrap_or("http");
            (
                scheme != "http",
                s(t, "host").unwrap_or_default().to_string(),
                t.get("weight").and_then(Value::as_u64).unwrap_or(1),
            )
        }),
        options,
    );
    with_backend(
        svc,
        t,
        d.get("targetsLoadBalancing"),
        d.get("clientConfig"),
        d.get("healthCheck"),
    )
}

/// The converted service with its Backend: the targets and the settings
/// Nio has an equivalent for (load balancing, timeouts, health check).
fn with_backend(
    mut svc: Service,
    targets: Result<Vec<Value>, String>,
    lb: Option<&Value>,
    client: Option<&Value>,
    health: Option<&Value>,
) -> Service {
    let mut backend = Map::new();
    match targets {
        Ok(t) => {
            backend.insert("targets".into(), json!(t));
        }
        Err(e) => {
            svc.blocked = Some(e);
            return svc;
        }
    }
    if let Some(lb) = lb_policy(lb, &mut svc.notes) {
        backend.insert("loadBalancing".into(), lb);
    }
    if let Some(c) = client {
        client_settings(c, &mut backend);
    }
    if let Some(h) = health {
        health_check(h, &mut backend);
    }
    svc.backend_spec = Value::Object(backend);
    svc
}

fn cors(c: &Value, notes: &mut Vec<String>) -> Value {
    let origin = s(c, "allowOrigin")
        .or(s(c, "allow_origin"))
        .unwrap_or("*")
        .to_string();
    let pick = |a: &str, b_: &str| {
        let v = strs(c, a);
        if v.is_empty() {
            strs(c, b_)
        } else {
            v
        }
    };
    let mut config = json!({ "allowedOrigins": [origin.clone()] });
    let methods = pick("allowMethods", "allow_methods");
    if !methods.is_empty() {
        config["allowedMethods"] = json!(methods);
    }
    let allow = pick("allowHeaders", "allow_headers");
    if !allow.is_empty() {
        config["allowedHeaders"] = json!(allow);
    }
    let expose = pick("exposeHeaders", "expose_headers");
    if !expose.is_empty() {
        config["exposedHeaders"] = json!(expose);
    }
    let creds = c
        .get("allowCredentials")
        .or_else(|| c.get("allow_credentials"))
        .and_then(Value::as_bool)
        .unwrap_or(false);
    if creds && origin == "*" {
        notes.push("CORS credentials with origin \"*\" (browsers refuse it; left out)".into());
    } else if creds {
        config["allowCredentials"] = json!(true);
    }
    if let Some(age) = c
        .get("maxAge")
        .or_else(|| c.get("max_age"))
        .and_then(Value::as_u64)
    {
        config["maxAge"] = json!(format!("{age}s"));
    }
    json!({"kind": "cors", "config": config})
}

/// A new-engine route.
fn new_route(r: &Value, verifiers: &HashMap<String, String>, options: &ConvertOptions) -> Service {
    let name = s(r, "name").or(s(r, "id")).unwrap_or("route").to_string();
    let mut svc = Service {
        source: format!("route {name}"),
        name,
        groups: strs(r, "groups"),
        route_spec: Map::new(),
        backend_spec: Value::Null,
        notes: Vec::new(),
        blocked: None,
    };
    if r.get("enabled").and_then(Value::as_bool) == Some(false) {
        svc.blocked = Some("disabled in Otoroshi".into());
        return svc;
    }
    let f = r.get("frontend").cloned().unwrap_or(Value::Null);
    let mut hosts = BTreeSet::new();
    let mut paths = BTreeSet::new();
    for domain in strs(&f, "domains") {
        match domain.split_once('/') {
            Some((h, p)) => {
                hosts.insert(h.to_string());
                paths.insert(format!("/{p}"));
            }
            None => {
                hosts.insert(domain);
            }
        }
    }
    let mut frontend = json!({ "hosts": hosts });
    if !paths.is_empty() {
        frontend["paths"] = json!(paths);
        if b(&f, "strip_path") {
            frontend["stripPath"] = json!(true);
        }
    }
    if b(&f, "exact") {
        frontend["exact"] = json!(true);
    }
    let methods = strs(&f, "methods");
    if !methods.is_empty() {
        frontend["methods"] = json!(methods);
    }
    for (key, nio) in [("headers", "headers"), ("query", "query")] {
        let m: Vec<Value> = str_map(&f, key)
            .into_iter()
            .map(|(name, value)| json!({"name": name, "value": value}))
            .collect();
        if !m.is_empty() {
            frontend[nio] = json!(m);
        }
    }
    let backend_def = r.get("backend").cloned().unwrap_or(Value::Null);
    if let Some(root) = s(&backend_def, "root").filter(|r| *r != "/") {
        frontend["rewrite"] = json!(root.trim_end_matches('/'));
        frontend.as_object_mut().map(|o| o.remove("stripPath"));
    }
    svc.route_spec.insert("frontend".into(), frontend);
    if s(r, "backend_ref").is_some() {
        svc.blocked = Some("uses a stored backend (backend_ref); inline it in Otoroshi or create the Backend by hand".into());
        return svc;
    }
    // Plugins.
    let mut plugins = Vec::new();
    let mut override_host = false;
    let mut req_set = BTreeMap::new();
    let mut resp_set = BTreeMap::new();
    let mut req_remove = Vec::new();
    let mut resp_remove = Vec::new();
    for p in arr(r, "plugins") {
        if p.get("enabled").and_then(Value::as_bool) == Some(false) {
            continue;
        }
        let full = s(p, "plugin").unwrap_or("?");
        let short = full.rsplit('.').next().unwrap_or(full);
        let c = p.get("config").cloned().unwrap_or(Value::Null);
        let excluded = !arr(p, "include").is_empty() || !arr(p, "exclude").is_empty();
        match short {
            "OverrideHost" => override_host = true,
            "ApikeyCalls" => plugins.push(json!({"kind": "apiKey"})),
            "Cors" => plugins.push(cors(&c, &mut svc.notes)),
            "IpAddressAllowedList" => plugins.push(json!({"kind": "ipAllowList", "config": {"cidrs": strs(&c, "addresses")}})),
            "IpAddressBlockList" => plugins.push(json!({"kind": "ipBlockList", "config": {"cidrs": strs(&c, "addresses")}})),
            "MaintenanceMode" => plugins.push(json!({"kind": "maintenance"})),
            "BuildMode" => plugins.push(json!({"kind": "maintenance", "config": {"body": "{\"error\":\"service under construction\"}"}})),
            "Redirection" => plugins.push(json!({"kind": "redirect", "config": {
                "to": s(&c, "to").unwrap_or("/"),
                "status": c.get("code").and_then(Value::as_u64).unwrap_or(303)}})),
            "AllowHttpMethods" => plugins.push(json!({"kind": "allowedMethods", "config": {"methods": strs(&c, "allowed")}})),
            "GzipResponseCompressor" => plugins.push(json!({"kind": "compression", "config": {"algorithms": ["gzip"]}})),
            "StaticResponse" => plugins.push(json!({"kind": "staticResponse", "config": {
                "status": c.get("status").and_then(Value::as_u64).unwrap_or(200),
                "headers": str_map(&c, "headers"),
                "body": s(&c, "body").unwrap_or_default()}})),
            "AdditionalHeadersIn" => req_set.extend(str_map(&c, "headers")),
            "AdditionalHeadersOut" => resp_set.extend(str_map(&c, "headers")),
            "RemoveHeadersIn" => req_remove.extend(strs(&c, "names")),
            "RemoveHeadersOut" => resp_remove.extend(strs(&c, "names")),
            "PublicPrivatePaths" => {
                access_plugins(
                    &strs(&c, "public_patterns"),
                    &strs(&c, "private_patterns"),
                    &mut plugins,
                    &mut svc.notes,
                );
            }
            "JwtVerification" | "JwtVerificationOnly" => {
                let ids = strs(&c, "verifiers");
                match ids.first().and_then(|id| verifiers.get(id)) {
                    Some(v) => plugins.push(json!({"kind": "jwt", "config": {"verifier": v}})),
                    None => {
                        svc.blocked = Some("verified by a JWT verifier that was not converted; converting it would open it to anyone, so it is left out".into());
                        return svc;
                    }
                }
            }
            other => {
                let lower = other.to_ascii_lowercase();
                let guards = ["auth", "apikey", "jwt", "validator", "restriction", "mtls", "cert", "ip", "quota", "throttl", "biscuit", "oauth", "oidc", "basic"];
                if guards.iter().any(|g| lower.contains(g)) {
                    svc.blocked = Some(format!("protected by the Otoroshi plugin {other}, which Nio has no equivalent for; converting it would open it to anyone, so it is left out"));
                    return svc;
                }
                svc.notes.push(format!("plugin {other}"));
            }
        }
        if excluded && short != "OverrideHost" {
            svc.notes.push(format!(
                "include/exclude paths of plugin {short} (it applies to the whole route)"
            ));
        }
    }
    if !override_host {
        svc.route_spec.insert("preserveHost".into(), json!(true));
    }
    narrow(&mut plugins, &mut svc.notes);
    if !plugins.is_empty() {
        // Nio runs publicPaths in PreRoute wherever it is listed; keep order.
        svc.route_spec.insert("plugins".into(), json!(plugins));
    }
    for (key, set, remove) in [
        ("requestHeaders", req_set, req_remove),
        ("responseHeaders", resp_set, resp_remove),
    ] {
        if !set.is_empty() || !remove.is_empty() {
            svc.route_spec
                .insert(key.into(), json!({"set": set, "remove": remove}));
        }
    }
    // Backend.
    let t = targets(
        arr(&backend_def, "targets").iter().map(|t| {
            let host = s(t, "hostname").unwrap_or_default();
            let port = t.get("port").and_then(Value::as_u64).unwrap_or(80);
            (
                b(t, "tls"),
                format!("{host}:{port}"),
                t.get("weight").and_then(Value::as_u64).unwrap_or(1),
            )
        }),
        options,
    );
    with_backend(
        svc,
        t,
        backend_def.get("load_balancing"),
        backend_def.get("client"),
        backend_def.get("health_check"),
    )
}

/// A JWT verifier: the spec of a Nio JwtVerifier, or why not.
fn jwt_verifier(v: &Value) -> Result<(Value, Vec<String>), String> {
    let mut notes = Vec::new();
    if v.get("enabled").and_then(Value::as_bool) == Some(false) {
        return Err("disabled in Otoroshi".into());
    }
    let algo = v.get("algoSettings").cloned().unwrap_or(Value::Null);
    let size = algo.get("size").and_then(Value::as_u64).unwrap_or(256);
    let mut spec = json!({});
    match s(&algo, "type") {
        Some("HSAlgoSettings") => {
            if b(&algo, "base64") {
                return Err("an HMAC secret stored base64-encoded; decode it and create the JwtVerifier by hand".into());
            }
            let secret = s(&algo, "secret").ok_or("HMAC verifier without a secret")?;
            if secret.contains("${") {
                return Err(format!("the secret is an Otoroshi configuration reference ({secret}); create the JwtVerifier by hand with the real secret"));
            }
            spec["algorithms"] = json!([format!("HS{size}")]);
            spec["keys"] = json!([{ "secret": secret }]);
        }
        Some(t @ ("RSAlgoSettings" | "ESAlgoSettings")) => {
            let key = s(&algo, "publicKey").ok_or("no public key")?;
            let pem = if key.contains("-----BEGIN") {
                key.to_string()
            } else {
                format!("-----BEGIN PUBLIC KEY-----\n{key}\n-----END PUBLIC KEY-----\n")
            };
            let family = if t == "RSAlgoSettings" { "RS" } else { "ES" };
            spec["algorithms"] = json!([format!("{family}{size}")]);
            spec["keys"] = json!([{ "publicKeyPem": pem }]);
        }
        Some("JWKSAlgoSettings") => {
            let url = s(&algo, "url").ok_or("JWKS verifier without a URL")?;
            spec["jwksUrl"] = json!(url);
            spec["algorithms"] = json!(["RS256", "ES256"]);
            notes.push("JWKS algorithms set to RS256, ES256; check them".into());
        }
        other => {
            return Err(format!(
                "algorithm settings {} have no Nio equivalent",
                other.unwrap_or("(none)")
            ))
        }
    }
    if let Some(src) = v.get("source") {
        let name = s(src, "name");
        match (s(src, "type"), name) {
            (Some("InHeader"), Some(h)) => {
                let mut source = json!({ "header": h });
                if let Some(prefix) = s(src, "remove") {
                    source["prefix"] = json!(prefix);
                }
                spec["source"] = source;
            }
            (Some("InQueryParam"), Some(q)) => spec["source"] = json!({ "query": q }),
            (Some("InCookie"), Some(c)) => spec["source"] = json!({ "cookie": c }),
            _ => {}
        }
    }
    let settings = v
        .get("strategy")
        .and_then(|st| st.get("verificationSettings"));
    if settings
        .and_then(|vs| vs.get("arrayFields"))
        .and_then(Value::as_object)
        .is_some_and(|m| !m.is_empty())
    {
        return Err("checks array claims (arrayFields), which are not converted; the services it guards are left out".into());
    }
    let fields = settings.map(|vs| str_map(vs, "fields")).unwrap_or_default();
    let mut claims = Vec::new();
    for (k, val) in fields {
        match k.as_str() {
            "iss" => spec["issuer"] = json!(val),
            "aud" => spec["audiences"] = json!([val]),
            _ => claims.push(json!({"name": k, "equals": val})),
        }
    }
    if !claims.is_empty() {
        spec["claims"] = json!(claims);
    }
    if let Some(t) = v.get("strategy").and_then(|st| s(st, "type")) {
        if t != "PassThrough" {
            notes.push(format!(
                "strategy {t} (Nio verifies, it does not re-sign or transform tokens)"
            ));
        }
    }
    Ok((spec, notes))
}

/// An API key, or why it is not converted.
fn api_key(
    k: &Value,
    names: &mut Names,
    route_of: &HashMap<String, String>,
    group_routes: &HashMap<String, Vec<String>>,
) -> Result<(AnyResource, Vec<String>), String> {
    let id = s(k, "clientId").ok_or("no clientId")?;
    let secret = s(k, "clientSecret").ok_or("no clientSecret")?;
    if k.get("restrictions").is_some_and(|r| b(r, "enabled")) {
        return Err("restricted to some paths, which Nio API keys cannot express; converting it would widen its access".into());
    }
    if b(k, "readOnly") {
        return Err("read-only (GET only), which Nio API keys cannot express; converting it would widen its access".into());
    }
    let mut notes = Vec::new();
    let name = names.take(Kind::ApiKey, id);
    if name != id {
        notes.push(format!(
            "renamed: Nio client ids are DNS labels, so clients must now send the id \"{name}\" (the secret is unchanged)"
        ));
    }
    // Authorized entities: group_x, service_x, route_x (or the legacy
    // authorizedGroup / authorizedGroups).
    let mut groups = Vec::new();
    let mut services = Vec::new();
    for e in strs(k, "authorizedEntities") {
        if let Some(g) = e.strip_prefix("group_") {
            groups.push(g.to_string());
        } else if let Some(s) = e
            .strip_prefix("service_")
            .or_else(|| e.strip_prefix("route_"))
        {
            services.push(s.to_string());
        } else {
            services.push(e);
        }
    }
    if groups.is_empty() && services.is_empty() {
        groups.extend(strs(k, "authorizedGroups"));
        if let Some(g) = s(k, "authorizedGroup") {
            groups.push(g.to_string());
        }
    }
    groups.dedup();
    let mut spec = json!({});
    if groups.len() == 1 && services.is_empty() {
        spec["routeSelector"] = json!({"matchLabels": {group_label(&groups[0]): "true"}});
    } else {
        let mut routes: BTreeSet<String> = BTreeSet::new();
        for g in &groups {
            routes.extend(group_routes.get(g).cloned().unwrap_or_default());
        }
        for sv in &services {
            match route_of.get(sv) {
                Some(r) => {
                    routes.insert(r.clone());
                }
                None => notes.push(format!("authorized on {sv}, which was not converted")),
            }
        }
        if routes.is_empty() {
            return Err("authorized on nothing that was converted (an API key without routes would open every route to it)".into());
        }
        spec["routes"] = json!(routes);
    }
    if k.get("enabled").and_then(Value::as_bool) == Some(false) {
        spec["enabled"] = json!(false);
    }
    // RFC 3339 stops at year 9999 (253402300799 s): later means never.
    if let Some(ms) = k
        .get("validUntil")
        .and_then(Value::as_u64)
        .filter(|ms| *ms / 1000 < 253_402_300_799)
    {
        let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms);
        spec["expiresAt"] = json!(humantime::format_rfc3339_seconds(t).to_string());
    }
    let mut meta = BTreeMap::new();
    for (mk, mv) in str_map(k, "metadata") {
        let ok = !mk.is_empty()
            && mk.len() <= 64
            && mk.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-')
            && mv.len() <= 1024
            && mv.bytes().all(|c| c == b' ' || c.is_ascii_graphic());
        if ok {
            meta.insert(mk, mv);
        } else {
            notes.push(format!(
                "metadata \"{mk}\" (not a valid header name or value)"
            ));
        }
    }
    if !meta.is_empty() {
        spec["metadata"] = json!(meta);
    }
    let tags = strs(k, "tags");
    if !tags.is_empty() {
        spec["tags"] = json!(tags);
    }
    let salt: [u8; 16] = rand::random();
    let credential = Credential {
        salt: hex::encode(salt),
        hash: hex::encode(credential_hash(&salt, secret.as_bytes())),
        not_after: None,
    };
    spec["credentials"] = json!([credential]);
    // Otoroshi writes 10,000,000 for "no quota".
    let quota = |field: &str| {
        k.get(field)
            .and_then(Value::as_u64)
            .filter(|q| (1..10_000_000).contains(q))
    };
    let mut quotas = serde_json::Map::new();
    if let Some(q) = quota("throttlingQuota") {
        quotas.insert("throttle".into(), json!({"requests": q, "per": "1s"}));
    }
    for (field, window) in [("dailyQuota", "daily"), ("monthlyQuota", "monthly")] {
        if let Some(q) = quota(field) {
            quotas.insert(window.into(), json!(q));
        }
    }
    if !quotas.is_empty() {
        spec["quotas"] = Value::Object(quotas);
    }
    if k.get("rotation").is_some_and(|r| b(r, "enabled")) {
        notes.push("automatic rotation (use POST .../rotate)".into());
    }
    if b(k, "allowClientIdOnly") {
        notes.push("client-id-only calls (Nio always checks the secret)".into());
    }
    let mut labels = BTreeMap::new();
    if is_dns_label(&dns_name(id)) && name != id {
        labels.insert(
            "otoroshi.io/client-id".to_string(),
            id.chars().take(63).collect(),
        );
    }
    let r = resource(envelope(Kind::ApiKey, &name, &labels, spec))?;
    Ok((r, notes))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn fixture(name: &str) -> Value {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../e2e/fixtures/otoroshi")
            .join(name);
        let text = std::fs::read_to_string(&path).unwrap();
        serde_json::from_str(&text).unwrap()
    }

    fn names(c: &Converted, kind: Kind) -> Vec<String> {
        c.resources
            .iter()
            .filter(|r| r.kind() == kind)
            .map(|r| r.name().to_string())
            .collect()
    }

    fn get<'a>(c: &'a Converted, kind: Kind, name: &str) -> &'a AnyResource {
        c.resources
            .iter()
            .find(|r| r.kind() == kind && r.name() == name)
            .unwrap()
    }

    #[test]
    fn tunnel_export_converts_descriptor_route_and_keys() {
        let c = convert(&fixture("tunnel-remote-export.json")).unwrap();
        assert_eq!(names(&c, Kind::Route), ["otoroshi-admin-api", "whoami"]);
        let AnyResource::Route(admin) = get(&c, Kind::Route, "otoroshi-admin-api") else {
            unreachable!()
        };
        assert_eq!(admin.spec.frontend.hosts, ["otoroshi-api.oto.tools"]);
        assert_eq!(
            admin.spec.host_override.as_deref(),
            Some("otoroshi-admin-internal-api.oto.tools")
        );
        let kinds: Vec<&str> = admin.spec.plugins.iter().map(|p| p.kind.as_str()).collect();
        // Otoroshi's `/health` is an exact pattern: not a prefix, so not
        // converted (the key stays required there rather than under it).
        assert_eq!(kinds, ["apiKey"]);
        let report = c.report.to_value().to_string();
        assert!(
            report.contains("public pattern \\\"/health\\\" is not a path prefix"),
            "{report}"
        );
        assert_eq!(
            admin
                .metadata
                .labels
                .get("group.otoroshi.io/admin-api-group")
                .map(String::as_str),
            Some("true")
        );
        let AnyResource::Route(whoami) = get(&c, Kind::Route, "whoami") else {
            unreachable!()
        };
        assert_eq!(whoami.spec.frontend.hosts, ["whoami-next-gen.oto.tools"]);
        assert!(whoami.spec.plugins.is_empty(), "a public route");
        let AnyResource::Backend(be) = get(&c, Kind::Backend, "whoami") else {
            unreachable!()
        };
        assert_eq!(be.spec.targets[0].url, "http://service:80");

        assert_eq!(
            names(&c, Kind::ApiKey),
            ["admin-api-apikey-id", "hqo0254xsym4nh3s"]
        );
        let AnyResource::ApiKey(k) = get(&c, Kind::ApiKey, "admin-api-apikey-id") else {
            unreachable!()
        };
        // The Otoroshi secret still works: same HMAC scheme as the control plane.
        let cred = &k.spec.credentials[0];
        let salt = hex::decode(&cred.salt).unwrap();
        assert_eq!(
            cred.hash,
            hex::encode(credential_hash(&salt, b"admin-api-apikey-secret"))
        );
        assert_eq!(
            k.spec.route_selector.as_ref().unwrap().match_labels
                ["group.otoroshi.io/admin-api-group"],
            "true"
        );
        // Its throttle came along; the "no quota" daily and monthly did not.
        let quotas = k.spec.quotas.as_ref().unwrap();
        assert_eq!(quotas.throttle.as_ref().unwrap().requests, 10_000);
        assert_eq!((quotas.daily, quotas.monthly), (None, None));
        let report = c.report.to_value().to_string();
        assert!(
            !report.contains("admin-api-apikey-secret"),
            "no secret in the report"
        );
        assert!(report.contains("renamed"), "{report}");
        assert!(report.contains("certificate otoroshi-root-ca"), "{report}");
        assert!(
            report.contains("is not valid now"),
            "expired ones are reported: {report}"
        );
    }

    #[test]
    fn mtls_export_leaves_out_what_it_cannot_protect() {
        let c = convert(&fixture("mtls-demo-export.json")).unwrap();
        assert_eq!(names(&c, Kind::Route), ["otoroshi-admin-api"]);
        let skipped: Vec<&str> = c
            .report
            .not_converted
            .iter()
            .map(|e| e.source.as_str())
            .collect();
        assert!(
            skipped.contains(&"serviceDescriptor my-service"),
            "{skipped:?}"
        );
        assert!(
            skipped.contains(&"serviceDescriptor my-web-service"),
            "{skipped:?}"
        );
        let why = &c
            .report
            .not_converted
            .iter()
            .find(|e| e.source == "serviceDescriptor my-web-service")
            .unwrap()
            .message;
        assert!(why.contains("auth module"), "{why}");
        // The default key is authorized on the default group, whose
        // services were left out: a selector that matches nothing converted.
        assert_eq!(names(&c, Kind::ApiKey).len(), 2);
        // Every resource is valid on its own.
        for r in &c.resources {
            r.validate().unwrap();
        }
    }

    #[test]
    fn rewritten_targets_make_tls_services_convertible() {
        let c = convert_with(
            &fixture("mtls-demo-export.json"),
            &ConvertOptions {
                rewrite_targets: Some("http://127.0.0.1:9".into()),
            },
        )
        .unwrap();
        // my-service is still left out (client validator), not for TLS.
        let why = &c
            .report
            .not_converted
            .iter()
            .find(|e| e.source == "serviceDescriptor my-service")
            .unwrap()
            .message;
        assert!(why.contains("client-certificate"), "{why}");
    }

    #[test]
    fn names_and_patterns() {
        assert_eq!(dns_name("9HFCzZIPUQQvfxkq"), "9hfczzipuqqvfxkq");
        assert_eq!(dns_name("My Service!"), "my-service");
        assert_eq!(dns_name("__"), "unnamed");
        let mut n = Names::default();
        assert_eq!(n.take(Kind::Route, "a"), "a");
        assert_eq!(n.take(Kind::Route, "A"), "a-2");
        assert_eq!(regex_prefix("/health"), None, "exact in Otoroshi");
        assert_eq!(regex_prefix("^/$"), None);
        assert_eq!(regex_prefix("/health.*"), Some("/health".into()));
        assert_eq!(regex_prefix("/api/.*"), Some("/api".into()));
        assert_eq!(regex_prefix("/a[0-9]+"), None);
    }

    #[test]
    fn jwt_verifiers_and_the_services_they_guard() {
        let export = json!({
            "jwtVerifiers": [{
                "id": "v1", "name": "Partner tokens", "enabled": true,
                "source": {"type": "InHeader", "name": "Authorization", "remove": "Bearer "},
                "algoSettings": {"type": "HSAlgoSettings", "size": 256, "secret": "a-long-enough-shared-secret-for-hs256"},
                "strategy": {"type": "PassThrough", "verificationSettings": {"fields": {"iss": "partner"}}}
            }, {
                "id": "v2", "name": "conf", "enabled": true,
                "algoSettings": {"type": "HSAlgoSettings", "size": 512, "secret": "${config.app.claim.sharedKey}"}
            }],
            "serviceDescriptors": [{
                "id": "s1", "name": "partners", "domain": "example.com", "subdomain": "partners", "env": "prod",
                "targets": [{"host": "10.0.0.1:8080", "scheme": "http"}],
                "publicPatterns": ["/.*"],
                "jwtVerifier": {"type": "ref", "id": "v1", "enabled": true, "excludedPatterns": []},
                "cors": {"enabled": true, "allowOrigin": "https://app.example.com", "allowMethods": ["GET"], "allowCredentials": true}
            }, {
                "id": "s2", "name": "legacy", "domain": "example.com", "subdomain": "legacy",
                "targets": [{"host": "10.0.0.2:8080", "scheme": "http"}],
                "publicPatterns": ["/.*"],
                "jwtVerifier": {"type": "ref", "id": "v2", "enabled": true}
            }]
        });
        let c = convert(&export).unwrap();
        assert_eq!(names(&c, Kind::JwtVerifier), ["partner-tokens"]);
        let AnyResource::Route(r) = get(&c, Kind::Route, "partners") else {
            unreachable!()
        };
        let kinds: Vec<&str> = r.spec.plugins.iter().map(|p| p.kind.as_str()).collect();
        assert_eq!(kinds, ["cors", "jwt"]);
        assert_eq!(r.spec.plugins[1].config["verifier"], "partner-tokens");
        assert!(
            names(&c, Kind::Route).len() == 1,
            "legacy's verifier was not converted"
        );
        let skipped = c.report.to_value().to_string();
        assert!(skipped.contains("configuration reference"), "{skipped}");
    }

    #[test]
    fn not_an_export() {
        assert!(convert(&json!({"kind": "Route"})).is_err());
        assert!(convert(&json!([])).is_err());
    }
}
