//! API-key secrets: issued and rotated by the control plane, stored only
//! as salted HMACs, shown once.
//!
//! A secret is 32 random bytes in hex; the client presents `id.secret`
//! (or the id and secret separately). What is stored, snapshotted and sent
//! to data planes is `credentials: [{salt, hash, notAfter}]`; the admin API
//! never returns them (see [`redact`]), and whatever a write says about them
//! is ignored: the stored ones stay (see the store).

use nio_proto::model::{credential_hash, ApiKey, Credential};
use serde_json::{json, Value};
use std::time::{Duration, SystemTime};

/// A freshly issued secret, to show once.
#[derive(Debug)]
pub struct Issued {
    pub client_id: String,
    pub client_secret: String,
}

impl Issued {
    /// What the admin API answers next to the resource.
    pub fn to_value(&self) -> Value {
        json!({
            "clientId": self.client_id,
            "clientSecret": self.client_secret,
            "token": format!("{}.{}", self.client_id, self.client_secret),
            "notice": "the secret is shown only now; store it safely",
        })
    }
}

/// Adds a new secret to `key`. Secrets issued before stop working at once
/// (`grace` zero) or after `grace`; ones already past their end are dropped.
pub fn issue(key: &mut ApiKey, grace: Duration, now: SystemTime) -> Issued {
    let secret: [u8; 32] = rand::random();
    let salt: [u8; 16] = rand::random();
    let client_secret = hex::encode(secret);
    let until = now + grace;
    key.spec.credentials.retain_mut(|c| {
        let end = c
            .not_after
            .as_deref()
            .and_then(|t| nio_proto::model::parse_time(t).ok())
            .map_or(until, |t| t.min(until));
        c.not_after = Some(humantime::format_rfc3339_seconds(end).to_string());
        !grace.is_zero() && end > now
    });
    key.spec.credentials.push(Credential {
        salt: hex::encode(salt),
        hash: hex::encode(credential_hash(&salt, client_secret.as_bytes())),
        not_after: None,
    });
    Issued {
        client_id: key.metadata.name.clone(),
        client_secret,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nio_proto::model::AnyResource;

    fn key() -> ApiKey {
        let v = json!({"apiVersion": "nio.dev/v1", "kind": "ApiKey", "metadata": {"name": "app"}, "spec": {}});
        match AnyResource::from_value(v).unwrap() {
            AnyResource::ApiKey(k) => k,
            _ => unreachable!(),
        }
    }

    #[test]
    fn rotation_keeps_the_old_secret_for_the_grace_period_only() {
        let now = SystemTime::now();
        let mut k = key();
        let first = issue(&mut k, Duration::ZERO, now);
        assert_eq!(k.spec.credentials.len(), 1);
        assert_eq!(first.client_id, "app");
        assert_eq!(first.client_secret.len(), 64);
        let second = issue(&mut k, Duration::from_secs(3600), now);
        assert_ne!(first.client_secret, second.client_secret);
        assert_eq!(k.spec.credentials.len(), 2);
        assert!(k.spec.credentials[0].not_after.is_some());
        assert!(k.spec.credentials[1].not_after.is_none());
        issue(&mut k, Duration::ZERO, now);
        assert_eq!(k.spec.credentials.len(), 1, "no grace: only the newest");
        let shown = crate::admin::shown(&AnyResource::ApiKey(k));
        assert!(shown["spec"].get("credentials").is_none());
        assert_eq!(shown["status"]["secrets"].as_array().unwrap().len(), 1);
        assert!(!shown.to_string().contains(&second.client_secret));
    }
}
