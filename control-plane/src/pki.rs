//! The control plane's small certificate authority: the TLS identity of the
//! gRPC listener, and one client certificate per data plane.
//!
//! ```text
//! data plane                                   control plane (CA in data dir)
//!   key pair + CSR ── Enroll(id, CSR) ──────────▶ join token ok? ─▶ sign: CN=id,
//!                     over TLS, Bearer <join>                      clientAuth, 30 days
//!   stores cert+key ◀── certificate, CA ────────
//!   Sync over mTLS ─────────────────────────────▶ chain to our CA, not expired (rustls),
//!                                                 CN == Hello.id, not revoked
//!   at 2/3 of its life: Enroll over mTLS ───────▶ same id, not revoked ─▶ new certificate
//! ```
//!
//! Files, in `<data dir>/pki/`: `ca.pem` and `ca-key.pem` (created on first
//! start unless `--ca-cert`/`--ca-key` supply the CA), `server.pem` and
//! `server-key.pem` (the gRPC listener's certificate, issued again at each
//! start for `--grpc-tls-names` unless `--grpc-tls-cert`/`--grpc-tls-key`
//! are given), `revoked.json` (data-plane ids and when they were revoked).
//! Keys are written with mode 0600.
//!
//! Revoking a data plane refuses every certificate issued to its id
//! before that moment — at its next stream or renewal, and on its open
//! stream at once. It can join again with the join token (a new
//! certificate), which is how a replaced machine comes back.

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose,
};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::watch;

#[derive(Debug, Clone)]
pub struct PkiOptions {
    /// A CA to use instead of the one created in the data dir.
    pub ca: Option<(PathBuf, PathBuf)>,
    /// A serving certificate for the gRPC listener instead of one issued
    /// by the CA.
    pub server: Option<(PathBuf, PathBuf)>,
    /// Names (DNS or IP) data planes reach the gRPC listener by.
    pub server_names: Vec<String>,
    /// How long a data-plane certificate is valid.
    pub validity: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{what}: {reason}")]
    Invalid { what: String, reason: String },
}

/// Revocations: data-plane id → when (seconds since the epoch).
pub type Revoked = Arc<BTreeMap<String, u64>>;

pub struct Pki {
    issuer: rcgen::Certificate,
    issuer_key: KeyPair,
    pub ca_pem: String,
    pub server_cert_pem: String,
    pub server_key_pem: String,
    validity: Duration,
    revoked_path: PathBuf,
    revoked: watch::Sender<Revoked>,
}

impl std::fmt::Debug for Pki {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pki").finish_non_exhaustive()
    }
}

/// Who a client certificate says it is.
#[derive(Debug, Clone)]
pub struct Identity {
    /// The data plane's id (the subject's CN).
    pub id: String,
    pub not_before: u64,
    pub not_after: u64,
}

impl Identity {
    pub fn expires(&self) -> String {
        rfc3339(self.not_after)
    }
}

fn rfc3339(secs: u64) -> String {
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(secs)).to_string()
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn invalid(what: impl Into<String>) -> impl FnOnce(rcgen::Error) -> PkiError {
    let what = what.into();
    move |e| PkiError::Invalid {
        what,
        reason: e.to_string(),
    }
}

fn read(path: &Path) -> Result<String, PkiError> {
    std::fs::read_to_string(path).map_err(|source| PkiError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// Writes `data` to `path` atomically (a synced temporary file renamed
/// over it), readable by the owner only when `private`.
pub fn write_file(path: &Path, data: &[u8], private: bool) -> Result<(), PkiError> {
    let io = |source| PkiError::Io {
        path: path.to_path_buf(),
        source,
    };
    let tmp = path.with_extension("tmp");
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, if private { 0o600 } else { 0o644 });
    let mut f = opts.open(&tmp).map_err(io)?;
    f.write_all(data).and_then(|()| f.sync_all()).map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}

impl Pki {
    pub fn load_or_create(data_dir: &Path, opts: &PkiOptions) -> Result<Pki, PkiError> {
        let dir = data_dir.join("pki");
        std::fs::create_dir_all(&dir).map_err(|source| PkiError::Io {
            path: dir.clone(),
            source,
        })?;
        let (ca_cert, ca_key) = match &opts.ca {
            Some((cert, key)) => (cert.clone(), key.clone()),
            None => (dir.join("ca.pem"), dir.join("ca-key.pem")),
        };
        if opts.ca.is_none() && !ca_cert.exists() {
            let (pem, key) = new_ca()?;
            write_file(&ca_key, key.as_bytes(), true)?;
            write_file(&ca_cert, pem.as_bytes(), false)?;
            tracing::info!(path = %ca_cert.display(), "created the control plane's CA for data-plane certificates");
        }
        let ca_pem = read(&ca_cert)?;
        let issuer_key = KeyPair::from_pem(&read(&ca_key)?)
            .map_err(invalid(format!("CA key {}", ca_key.display())))?;
        // rcgen signs with a Certificate: rebuilt from the CA's own fields
        // and key (issuer name and key identifier are those of ca.pem).
        let issuer = CertificateParams::from_ca_cert_pem(&ca_pem)
            .and_then(|p| p.self_signed(&issuer_key))
            .map_err(invalid(format!("CA certificate {}", ca_cert.display())))?;
        let (server_cert_pem, server_key_pem) = match &opts.server {
            Some((cert, key)) => (read(cert)?, read(key)?),
            None => {
                let (cert, key) = issue_server(&issuer, &issuer_key, &opts.server_names)?;
                write_file(&dir.join("server-key.pem"), key.as_bytes(), true)?;
                write_file(&dir.join("server.pem"), cert.as_bytes(), false)?;
                (cert, key)
            }
        };
        let revoked_path = dir.join("revoked.json");
        let revoked: BTreeMap<String, u64> = match std::fs::read_to_string(&revoked_path) {
            Ok(text) => serde_json::from_str(&text).map_err(|e| PkiError::Invalid {
                what: revoked_path.display().to_string(),
                reason: e.to_string(),
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(source) => {
                return Err(PkiError::Io {
                    path: revoked_path,
                    source,
                })
            }
        };
        Ok(Pki {
            issuer,
            issuer_key,
            ca_pem,
            server_cert_pem,
            server_key_pem,
            validity: opts.validity,
            revoked_path,
            revoked: watch::Sender::new(Arc::new(revoked)),
        })
    }

    /// A certificate for data plane `id`, for the public key of `csr_pem`.
    pub fn issue(&self, id: &str, csr_pem: &str) -> Result<(String, Identity), String> {
        let csr = CertificateSigningRequestParams::from_pem(csr_pem)
            .map_err(|e| format!("csr_pem is not a PEM certificate signing request: {e}"))?;
        let mut params = CertificateParams::default();
        params.distinguished_name.push(DnType::CommonName, id);
        params
            .distinguished_name
            .push(DnType::OrganizationName, "Nio data plane");
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        // Only this control plane checks these certificates, on its own
        // clock: no slack before now. After a revocation of the id, the
        // new certificate starts after it.
        let mut not_before = now_secs();
        if let Some(at) = self.revoked.borrow().get(id) {
            not_before = not_before.max(at + 1);
        }
        let not_before = time::OffsetDateTime::from_unix_timestamp(
            i64::try_from(not_before).unwrap_or(i64::MAX),
        )
        .map_err(|e| format!("clock: {e}"))?;
        params.not_before = not_before;
        params.not_after = not_before + self.validity;
        let mut serial = rand::random::<[u8; 16]>();
        serial[0] &= 0x7f;
        params.serial_number = Some(serial.to_vec().into());
        let cert = params
            .signed_by(&csr.public_key, &self.issuer, &self.issuer_key)
            .map_err(|e| format!("cannot sign: {e}"))?;
        let identity = self.identify(cert.der())?;
        Ok((cert.pem(), identity))
    }

    /// Reads a client certificate (already verified against the CA by the
    /// TLS layer) and refuses one that is revoked.
    pub fn identify(&self, der: &[u8]) -> Result<Identity, String> {
        let (_, cert) = x509_parser::parse_x509_certificate(der)
            .map_err(|e| format!("unreadable client certificate: {e}"))?;
        let id = cert
            .subject()
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
            .ok_or("the client certificate has no CN (data-plane id)")?
            .to_string();
        let validity = cert.validity();
        let identity = Identity {
            id,
            not_before: u64::try_from(validity.not_before.timestamp()).unwrap_or(0),
            not_after: u64::try_from(validity.not_after.timestamp()).unwrap_or(0),
        };
        if self.is_revoked(&identity, &self.revoked.borrow()) {
            return Err(format!(
                "the certificate of data plane \"{}\" was revoked; enroll it again with the join token",
                identity.id
            ));
        }
        Ok(identity)
    }

    fn is_revoked(&self, identity: &Identity, revoked: &Revoked) -> bool {
        revoked
            .get(&identity.id)
            .is_some_and(|at| identity.not_before <= *at)
    }

    /// Revokes every certificate issued to `id` until now; persisted
    /// before it returns.
    pub fn revoke(&self, id: &str) -> Result<String, PkiError> {
        let mut all = (**self.revoked.borrow()).clone();
        let at = now_secs();
        all.insert(id.to_string(), at);
        let json = serde_json::to_vec_pretty(&all).unwrap_or_default();
        write_file(&self.revoked_path, &json, false)?;
        self.revoked.send_replace(Arc::new(all));
        Ok(rfc3339(at))
    }

    /// Resolves once `identity` is revoked.
    pub async fn revoked(&self, identity: &Identity) {
        let mut rx = self.revoked.subscribe();
        let _ = rx
            .wait_for(|revoked| self.is_revoked(identity, revoked))
            .await;
    }
}

/// A new CA: its certificate and key (PEM).
pub fn new_ca() -> Result<(String, String), PkiError> {
    let mut params = CertificateParams::default();
    params
        .distinguished_name
        .push(DnType::CommonName, "Nio control plane CA");
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::minutes(5);
    params.not_after = now + time::Duration::days(3650);
    let key = KeyPair::generate().map_err(invalid("CA key"))?;
    let cert = params.self_signed(&key).map_err(invalid("CA"))?;
    Ok((cert.pem(), key.serialize_pem()))
}

fn issue_server(
    issuer: &rcgen::Certificate,
    issuer_key: &KeyPair,
    names: &[String],
) -> Result<(String, String), PkiError> {
    let mut params = CertificateParams::new(names.to_vec()).map_err(invalid("--grpc-tls-names"))?;
    params
        .distinguished_name
        .push(DnType::CommonName, "nio-control-plane");
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::minutes(5);
    params.not_after = now + time::Duration::days(365);
    let key = KeyPair::generate().map_err(invalid("server key"))?;
    let cert = params
        .signed_by(&key, issuer, issuer_key)
        .map_err(invalid("server certificate"))?;
    Ok((cert.pem(), key.serialize_pem()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn csr(id: &str) -> String {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::default();
        params.distinguished_name.push(DnType::CommonName, id);
        params.serialize_request(&key).unwrap().pem().unwrap()
    }

    #[test]
    fn issues_revokes_and_survives_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let opts = PkiOptions {
            ca: None,
            server: None,
            server_names: vec!["localhost".into(), "127.0.0.1".into()],
            validity: Duration::from_secs(3600),
        };
        let pki = Pki::load_or_create(dir.path(), &opts).unwrap();
        // The CSR's subject is ignored: the id is what the CA decides.
        let (pem, identity) = pki.issue("dp-1", &csr("someone-else")).unwrap();
        assert_eq!(identity.id, "dp-1");
        assert!(identity.not_after - identity.not_before >= 3600);
        assert!(pem.contains("BEGIN CERTIFICATE"));
        assert!(pki.issue("dp-1", "garbage").is_err());

        let der = rustls_pki_types::CertificateDer::from(
            x509_parser::pem::parse_x509_pem(pem.as_bytes())
                .unwrap()
                .1
                .contents,
        );
        pki.revoke("dp-1").unwrap();
        let err = pki.identify(&der).unwrap_err();
        assert!(err.contains("revoked"), "{err}");

        // Same CA after a restart, and the revocation is remembered.
        let again = Pki::load_or_create(dir.path(), &opts).unwrap();
        assert_eq!(again.ca_pem, pki.ca_pem);
        assert!(again.identify(&der).is_err());
        // Enrolling again after the revocation gives a certificate that works.
        let (pem, _) = again.issue("dp-1", &csr("dp-1")).unwrap();
        let der = rustls_pki_types::CertificateDer::from(
            x509_parser::pem::parse_x509_pem(pem.as_bytes())
                .unwrap()
                .1
                .contents,
        );
        assert_eq!(again.identify(&der).unwrap().id, "dp-1");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join("pki/ca-key.pem"))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }
}
