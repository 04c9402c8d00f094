//! `Certificate`: a PEM certificate chain and, for serving, its private key
//! — for TLS termination by SNI on data planes, or as trust material (a CA
//! for client certificates or for backends).
//!
//! Checked on write: the chain parses (leaf first), the leaf has not
//! expired, and the key (when given) parses and belongs to the leaf. The
//! admin API shows what the certificate is ([`CertificateInfo`]: subject,
//! SANs, issuer, validity, fingerprint) and never the private key; a write
//! without `privateKey` keeps the stored one. Keys go to data planes only
//! over the authenticated sync stream.

use super::FieldError;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::time::{Duration, SystemTime};

#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CertificateSpec {
    /// PEM, the leaf first, then intermediates.
    pub certificate: String,
    /// PEM (PKCS#8, PKCS#1 or SEC1). Absent for trust material (a CA).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub private_key: Option<String>,
    /// Served to TLS clients whose SNI matches no certificate's names (or
    /// who send none). At most one certificate should say so; if several
    /// do, the first by name is used.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub default: bool,
}

impl std::fmt::Debug for CertificateSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key.
        f.debug_struct("CertificateSpec")
            .field(
                "certificate",
                &format!("{} bytes of PEM", self.certificate.len()),
            )
            .field(
                "private_key",
                &self.private_key.as_ref().map(|_| "<redacted>"),
            )
            .field("default", &self.default)
            .finish()
    }
}

/// What the admin API shows of a certificate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CertificateInfo {
    pub subject: String,
    pub issuer: String,
    /// DNS names and IP addresses the leaf is valid for.
    pub sans: Vec<String>,
    pub not_before: String,
    pub not_after: String,
    /// SHA-256 of the leaf (DER), hex.
    pub fingerprint: String,
    pub is_ca: bool,
    pub chain_length: usize,
    pub has_private_key: bool,
}

impl CertificateSpec {
    /// The chain, leaf first.
    pub fn chain(&self) -> Result<Vec<CertificateDer<'static>>, String> {
        let chain = CertificateDer::pem_slice_iter(self.certificate.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("not a PEM certificate chain: {e}"))?;
        if chain.is_empty() {
            return Err(
                "no certificate found; paste the PEM chain, starting with -----BEGIN CERTIFICATE-----"
                    .into(),
            );
        }
        Ok(chain)
    }

    pub fn key(&self) -> Option<Result<PrivateKeyDer<'static>, String>> {
        self.private_key.as_ref().map(|pem| {
            PrivateKeyDer::from_pem_slice(pem.as_bytes())
                .map_err(|e| format!("not a PEM private key (PKCS#8, PKCS#1 or SEC1): {e}"))
        })
    }

    /// Subject, SANs, issuer, validity of the leaf.
    pub fn info(&self) -> Result<CertificateInfo, String> {
        let chain = self.chain()?;
        let (_, leaf) = x509_parser::parse_x509_certificate(&chain[0])
            .map_err(|e| format!("the leaf certificate cannot be read: {e}"))?;
        let mut sans = Vec::new();
        if let Ok(Some(ext)) = leaf.subject_alternative_name() {
            for name in &ext.value.general_names {
                match name {
                    x509_parser::extensions::GeneralName::DNSName(d) => sans.push(d.to_string()),
                    x509_parser::extensions::GeneralName::IPAddress(ip) => {
                        sans.push(format_ip(ip));
                    }
                    _ => {}
                }
            }
        }
        let time = |t: x509_parser::time::ASN1Time| {
            let secs = u64::try_from(t.timestamp()).unwrap_or(0);
            humantime::format_rfc3339_seconds(SystemTime::UNIX_EPOCH + Duration::from_secs(secs))
                .to_string()
        };
        Ok(CertificateInfo {
            subject: leaf.subject().to_string(),
            issuer: leaf.issuer().to_string(),
            sans,
            not_before: time(leaf.validity().not_before),
            not_after: time(leaf.validity().not_after),
            fingerprint: hex::encode(Sha256::digest(chain[0].as_ref())),
            is_ca: leaf.is_ca(),
            chain_length: chain.len(),
            has_private_key: self.private_key.is_some(),
        })
    }

    pub(super) fn validate(&self, errors: &mut Vec<FieldError>) {
        let chain = match self.chain() {
            Ok(c) => c,
            Err(m) => {
                errors.push(FieldError::new("spec.certificate", m));
                return;
            }
        };
        for (i, der) in chain.iter().enumerate() {
            if let Err(e) = x509_parser::parse_x509_certificate(der) {
                errors.push(FieldError::new(
                    "spec.certificate",
                    format!("certificate {} of the chain cannot be read: {e}", i + 1),
                ));
                return;
            }
        }
        if let Err(m) = self.info() {
            errors.push(FieldError::new("spec.certificate", m));
        }
        if self.default && self.private_key.is_none() {
            errors.push(FieldError::new(
                "spec.default",
                "a default certificate is served, so it needs its privateKey",
            ));
        }
        match self.key() {
            None => {}
            Some(Err(m)) => errors.push(FieldError::new("spec.privateKey", m)),
            Some(Ok(key)) => {
                if let Err(m) = key_matches(chain, &key) {
                    errors.push(FieldError::new("spec.privateKey", m));
                }
            }
        }
    }
}

impl CertificateSpec {
    /// Refuses a certificate that is not valid now. Checked when a
    /// Certificate is written, not in [`CertificateSpec::validate`]: that
    /// also runs on every snapshot a data plane receives, and a stored
    /// certificate expiring must not make the whole configuration refused.
    pub fn check_current(&self) -> Result<(), FieldError> {
        let info = self
            .info()
            .map_err(|m| FieldError::new("spec.certificate", m))?;
        let chain = self
            .chain()
            .map_err(|m| FieldError::new("spec.certificate", m))?;
        let valid = x509_parser::parse_x509_certificate(&chain[0])
            .map(|(_, c)| c.validity().is_valid())
            .unwrap_or(false);
        if valid {
            Ok(())
        } else {
            Err(FieldError::new(
                "spec.certificate",
                format!(
                    "the certificate is not valid now (valid from {} to {}); renew it",
                    info.not_before, info.not_after
                ),
            ))
        }
    }
}

/// Whether `key` is the private key of the chain's leaf.
fn key_matches(chain: Vec<CertificateDer<'static>>, key: &PrivateKeyDer<'_>) -> Result<(), String> {
    let signing = rustls::crypto::ring::sign::any_supported_type(key)
        .map_err(|e| format!("the key cannot be used for TLS: {e}"))?;
    rustls::sign::CertifiedKey::new(chain, signing)
        .keys_match()
        .map_err(|_| {
            "this private key does not belong to the certificate (the leaf's public key differs)"
                .to_string()
        })
}

fn format_ip(bytes: &[u8]) -> String {
    match bytes.len() {
        4 => std::net::Ipv4Addr::from(<[u8; 4]>::try_from(bytes).unwrap_or_default()).to_string(),
        16 => std::net::Ipv6Addr::from(<[u8; 16]>::try_from(bytes).unwrap_or_default()).to_string(),
        _ => hex::encode(bytes),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{CertificateParams, DnType, KeyPair};

    /// A self-signed certificate for `api.test`, valid from `from` to `to`
    /// (days from now), and its key.
    fn issue(from: i64, to: i64) -> (String, String) {
        let mut params =
            CertificateParams::new(vec!["api.test".into(), "*.api.test".into()]).unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, "api.test");
        let today = time::OffsetDateTime::now_utc();
        params.not_before = today + time::Duration::days(from);
        params.not_after = today + time::Duration::days(to);
        let key = KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    fn errors(spec: &CertificateSpec) -> String {
        let mut errors = Vec::new();
        spec.validate(&mut errors);
        super::super::join_errors(&errors)
    }

    #[test]
    fn a_valid_pair_is_described_and_never_shows_its_key() {
        let (cert, key) = issue(-1, 365);
        let spec = CertificateSpec {
            certificate: cert,
            private_key: Some(key.clone()),
            default: false,
        };
        assert_eq!(errors(&spec), "");
        let info = spec.info().unwrap();
        assert_eq!(info.sans, ["api.test", "*.api.test"]);
        assert!(info.subject.contains("api.test"));
        assert!(info.has_private_key && !info.is_ca);
        assert_eq!(info.fingerprint.len(), 64);
        assert!(!format!("{spec:?}").contains(&key[40..80]));
    }

    #[test]
    fn expired_unreadable_and_mismatched_are_refused() {
        let (old, old_key) = issue(-400, -30);
        let expired = CertificateSpec {
            certificate: old,
            private_key: Some(old_key),
            default: false,
        };
        assert_eq!(
            errors(&expired),
            "",
            "a snapshot may carry an expired certificate"
        );
        let err = expired.check_current().unwrap_err().to_string();
        assert!(
            err.contains("spec.certificate: the certificate is not valid now"),
            "{err}"
        );
        let (cert, _) = issue(-1, 30);
        let (_, other_key) = issue(-1, 30);
        let mismatched = CertificateSpec {
            certificate: cert.clone(),
            private_key: Some(other_key),
            default: false,
        };
        assert!(errors(&mismatched).contains("spec.privateKey: this private key does not belong"));
        let garbage = CertificateSpec {
            certificate: "hello".into(),
            private_key: None,
            default: false,
        };
        assert!(errors(&garbage).contains("spec.certificate: no certificate found"));
        let bad_key = CertificateSpec {
            certificate: cert,
            private_key: Some(
                "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n".into(),
            ),
            default: false,
        };
        assert!(errors(&bad_key).contains("spec.privateKey"));
    }
}
