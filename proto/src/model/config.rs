//! [`Config`]: every resource at one revision, and the checks that span
//! resources (a Route's Backend must exist).

use super::{AnyResource, Backend, FieldError, Kind, PluginSpec, Route, ValidationError};
use std::collections::BTreeMap;
use std::sync::Arc;

/// The plugin list of a resource that has one.
fn plugins_of(r: &AnyResource) -> Option<&[PluginSpec]> {
    match r {
        AnyResource::Route(r) => Some(&r.spec.plugins),
        AnyResource::GlobalConfig(g) => Some(&g.spec.plugins),
        _ => None,
    }
}

/// The JwtVerifier a `jwt` plugin names.
fn verifier_of(p: &PluginSpec) -> Option<&str> {
    (p.kind == "jwt")
        .then(|| p.config.get("verifier")?.as_str())
        .flatten()
}

fn verifiers(plugins: &[PluginSpec]) -> impl Iterator<Item = &str> {
    plugins.iter().filter_map(verifier_of)
}

/// All resources of one revision, ordered by kind then name.
///
/// A persistent map: cloning is O(1) and a changed copy shares everything
/// it did not change, so a write (or a delta on a data plane) costs
/// O(log n) rather than a copy of 10,000 routes.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Config {
    resources: imbl::OrdMap<(Kind, String), Arc<AnyResource>>,
}

impl Config {
    pub fn get(&self, kind: Kind, name: &str) -> Option<&AnyResource> {
        self.resources.get(&(kind, name.to_string())).map(|r| &**r)
    }

    /// Inserts or replaces; returns the previous resource of that kind and name.
    pub fn insert(&mut self, resource: AnyResource) -> Option<Arc<AnyResource>> {
        self.resources.insert(
            (resource.kind(), resource.name().to_string()),
            Arc::new(resource),
        )
    }

    pub fn remove(&mut self, kind: Kind, name: &str) -> Option<Arc<AnyResource>> {
        self.resources.remove(&(kind, name.to_string()))
    }

    pub fn iter(&self) -> impl Iterator<Item = &AnyResource> {
        self.resources.values().map(|r| &**r)
    }

    pub fn of_kind(&self, kind: Kind) -> impl Iterator<Item = &AnyResource> {
        self.resources
            .range((kind, String::new())..)
            .take_while(move |((k, _), _)| *k == kind)
            .map(|(_, r)| &**r)
    }

    pub fn routes(&self) -> impl Iterator<Item = &Route> {
        self.of_kind(Kind::Route).filter_map(|r| match r {
            AnyResource::Route(r) => Some(r),
            _ => None,
        })
    }

    pub fn backends(&self) -> impl Iterator<Item = &Backend> {
        self.of_kind(Kind::Backend).filter_map(|r| match r {
            AnyResource::Backend(b) => Some(&**b),
            _ => None,
        })
    }

    pub fn len(&self) -> usize {
        self.resources.len()
    }

    pub fn is_empty(&self) -> bool {
        self.resources.is_empty()
    }

    /// Keys of the resources that differ between `old` and `self` (added,
    /// changed or removed). Cheap when one was derived from the other: the
    /// maps share structure and shared parts are skipped.
    pub fn changed_since(&self, old: &Config) -> Vec<(Kind, String)> {
        old.resources
            .diff(&self.resources)
            .map(|item| match item {
                imbl::ordmap::DiffItem::Add(k, _)
                | imbl::ordmap::DiffItem::Remove(k, _)
                | imbl::ordmap::DiffItem::Update { new: (k, _), .. } => k.clone(),
            })
            .collect()
    }

    /// Whether a data plane with `labels` receives this route.
    pub fn route_selected(route: &Route, labels: &BTreeMap<String, String>) -> bool {
        route
            .spec
            .data_plane_selector
            .as_ref()
            .is_none_or(|s| s.matches(|k| labels.get(k).map(String::as_str)))
    }

    /// What a data plane with `labels` receives: the routes whose
    /// `dataPlaneSelector` matches (or that have none) and the backends those
    /// routes use. Ordered by kind, then name.
    pub fn select<'a>(
        &'a self,
        labels: &'a BTreeMap<String, String>,
    ) -> impl Iterator<Item = &'a AnyResource> + 'a {
        let selected = |r: &Route| Config::route_selected(r, labels);
        let needed: std::collections::HashSet<&str> = self
            .routes()
            .filter(|r| selected(r))
            .map(|r| r.spec.backend.as_str())
            .collect();
        self.iter().filter(move |r| match r {
            AnyResource::Route(route) => selected(route),
            AnyResource::Backend(b) => needed.contains(b.metadata.name.as_str()),
            // Keys, verifiers, certificates and global settings are
            // shared by routes: every data plane gets them.
            AnyResource::ApiKey(_)
            | AnyResource::JwtVerifier(_)
            | AnyResource::GlobalConfig(_)
            | AnyResource::Certificate(_) => true,
            // The control plane's own.
            AnyResource::EventExporter(_) => false,
        })
    }

    /// Resources that refer to `kind/name` (to refuse deleting what is in use).
    pub fn users_of(&self, kind: Kind, name: &str) -> Vec<String> {
        match kind {
            Kind::Backend => self
                .routes()
                .filter(|r| r.spec.backend == name)
                .map(|r| format!("route \"{}\"", r.metadata.name))
                .collect(),
            Kind::JwtVerifier => {
                self.naming(|r| plugins_of(r).is_some_and(|p| verifiers(p).any(|v| v == name)))
            }
            Kind::Certificate => {
                self.naming(|r| certificates_of(r).iter().any(|(_, c)| *c == name))
            }
            Kind::Route | Kind::ApiKey | Kind::GlobalConfig | Kind::EventExporter => Vec::new(),
        }
    }

    /// `kind "name"` of each resource for which `uses` holds.
    fn naming(&self, uses: impl Fn(&AnyResource) -> bool) -> Vec<String> {
        self.iter()
            .filter(|r| uses(r))
            .map(|r| {
                format!(
                    "{} \"{}\"",
                    r.kind().as_str().to_ascii_lowercase(),
                    r.name()
                )
            })
            .collect()
    }

    /// Checks one resource's references against this configuration.
    pub fn check_references(&self, resource: &AnyResource) -> Result<(), ValidationError> {
        let mut errors = Vec::new();
        if let AnyResource::Route(r) = resource {
            if !r.spec.backend.is_empty() && self.get(Kind::Backend, &r.spec.backend).is_none() {
                errors.push(FieldError::new(
                    "spec.backend",
                    format!(
                        "backend \"{}\" does not exist; create it first or fix the name",
                        r.spec.backend
                    ),
                ));
            }
        }
        for (field, name) in certificates_of(resource) {
            match self.get(Kind::Certificate, name) {
                None => errors.push(FieldError::new(
                    field,
                    format!(
                        "Certificate \"{name}\" does not exist; create it first or fix the name"
                    ),
                )),
                Some(AnyResource::Certificate(c))
                    if field == "spec.tls.clientCertificate" && c.spec.private_key.is_none() =>
                {
                    errors.push(FieldError::new(
                        field,
                        format!("Certificate \"{name}\" has no privateKey, so it cannot be presented to targets"),
                    ));
                }
                Some(_) => {}
            }
        }
        if let Some(plugins) = plugins_of(resource) {
            for (i, p) in plugins.iter().enumerate() {
                if let Some(v) = verifier_of(p) {
                    if self.get(Kind::JwtVerifier, v).is_none() {
                        errors.push(FieldError::new(
                            format!("spec.plugins[{i}].config.verifier"),
                            format!("JwtVerifier \"{v}\" does not exist; create it first or fix the name"),
                        ));
                    }
                }
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(ValidationError {
                kind: resource.kind().to_string(),
                name: resource.name().to_string(),
                errors,
            })
        }
    }

    /// Checks only what changed: each changed resource that is present, on
    /// its own and its references; for each one that is gone, that nothing
    /// still refers to it. Enough after a delta to a valid configuration.
    pub fn validate_changed(&self, changed: &[(Kind, String)]) -> Result<(), Vec<ValidationError>> {
        let mut errors = Vec::new();
        for (kind, name) in changed {
            match self.get(*kind, name) {
                Some(r) => {
                    if let Err(e) = r.validate().and_then(|()| self.check_references(r)) {
                        errors.push(e);
                    }
                }
                None => {
                    let users = self.users_of(*kind, name);
                    if !users.is_empty() {
                        errors.push(ValidationError {
                            kind: kind.to_string(),
                            name: name.clone(),
                            errors: vec![FieldError::new(
                                "",
                                format!("removed but still used by {}", users.join(", ")),
                            )],
                        });
                    }
                }
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors)
        }
    }

    /// Every resource on its own and every reference between them.
    pub fn validate(&self) -> Result<(), Vec<ValidationError>> {
        let errors: Vec<ValidationError> = self
            .iter()
            .filter_map(|r| r.validate().and_then(|()| self.check_references(r)).err())
            .collect();
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors)
        }
    }
}

impl FromIterator<AnyResource> for Config {
    fn from_iter<T: IntoIterator<Item = AnyResource>>(iter: T) -> Self {
        let mut c = Config::default();
        for r in iter {
            c.insert(r);
        }
        c
    }
}

/// The Certificate resources a resource refers to, with the field naming
/// each.
fn certificates_of(resource: &AnyResource) -> Vec<(&'static str, &str)> {
    let refs = match resource {
        AnyResource::Route(r) => vec![("spec.tls.clientCa", &r.spec.tls.client_ca)],
        AnyResource::Backend(b) => vec![
            ("spec.tls.ca", &b.spec.tls.ca),
            ("spec.tls.clientCertificate", &b.spec.tls.client_certificate),
        ],
        _ => Vec::new(),
    };
    refs.into_iter()
        .filter_map(|(field, name)| Some((field, name.as_deref()?)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn res(v: serde_json::Value) -> AnyResource {
        AnyResource::from_value(v).unwrap()
    }

    /// The minimal pair from DESIGN.md must be accepted exactly as written.
    #[test]
    fn design_minimal_pair_is_valid() {
        let yaml = r#"
apiVersion: nio.dev/v1
kind: Backend
metadata: {name: orders}
spec:
  targets:
    - url: http://10.0.0.12:8080
    - url: http://10.0.0.13:8080
      weight: 2
---
apiVersion: nio.dev/v1
kind: Route
metadata: {name: orders-api}
spec:
  frontend:
    hosts: [api.example.com]
    paths: [/orders]
  backend: orders
"#;
        let config: Config = yaml
            .split("---")
            .map(|doc| res(serde_yaml::from_str(doc).unwrap()))
            .collect();
        assert_eq!(config.validate(), Ok(()));
        assert_eq!(config.routes().count(), 1);
        assert_eq!(config.backends().next().unwrap().spec.targets[1].weight, 2);
    }

    #[test]
    fn selection_by_data_plane_labels() {
        let config: Config = [
            res(json!({"apiVersion": "nio.dev/v1", "kind": "Backend", "metadata": {"name": "eu-b"},
                "spec": {"targets": [{"url": "http://127.0.0.1:1"}]}})),
            res(json!({"apiVersion": "nio.dev/v1", "kind": "Backend", "metadata": {"name": "all-b"},
                "spec": {"targets": [{"url": "http://127.0.0.1:2"}]}})),
            res(json!({"apiVersion": "nio.dev/v1", "kind": "Backend", "metadata": {"name": "unused"},
                "spec": {"targets": [{"url": "http://127.0.0.1:3"}]}})),
            res(json!({"apiVersion": "nio.dev/v1", "kind": "Route", "metadata": {"name": "eu"},
                "spec": {"frontend": {}, "backend": "eu-b", "dataPlaneSelector": {"matchLabels": {"zone": "eu"}}}})),
            res(json!({"apiVersion": "nio.dev/v1", "kind": "Route", "metadata": {"name": "all"},
                "spec": {"frontend": {}, "backend": "all-b"}})),
        ]
        .into_iter()
        .collect();
        let names = |labels: &[(&str, &str)]| {
            let labels = labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            config
                .select(&labels)
                .map(|r| r.name().to_string())
                .collect::<Vec<_>>()
        };
        assert_eq!(
            names(&[("zone", "eu"), ("tier", "edge")]),
            ["all", "eu", "all-b", "eu-b"]
        );
        assert_eq!(names(&[("zone", "us")]), ["all", "all-b"]);
    }

    #[test]
    fn route_to_missing_backend_is_refused() {
        let config: Config = [res(json!({
            "apiVersion": "nio.dev/v1", "kind": "Route", "metadata": {"name": "r"},
            "spec": {"frontend": {"paths": ["/"]}, "backend": "ghost"}
        }))]
        .into_iter()
        .collect();
        let errs = config.validate().unwrap_err();
        assert_eq!(errs[0].errors[0].field, "spec.backend");
        assert!(errs[0]
            .to_string()
            .contains("backend \"ghost\" does not exist"));
    }
}
