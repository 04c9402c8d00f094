//! TLS on the data plane, with rustls: terminating client connections on
//! the HTTPS listener, and the client side toward `https://` targets.
//!
//! **Termination.** [`ServerTls`] is compiled with each runtime from the
//! snapshot's Certificate resources (those with a private key) and the
//! routes that ask for client certificates. The listener reads the
//! ClientHello first, then picks the [`ServerConfig`] for its SNI from the
//! runtime current at that moment — so a replaced certificate is served by
//! the next handshake while established connections keep theirs. The
//! certificate is chosen by SNI: a certificate naming the host exactly,
//! then one with the matching `*.` wildcard (one label, as clients check
//! it), then the certificate marked `default`; with none, the handshake is
//! refused. ALPN offers `h2` and `http/1.1`; TLS 1.2 and 1.3 only.
//!
//! **Client certificates.** A host some route of which has `clientAuth:
//! optional|required` gets a config that asks for a certificate and
//! verifies it against the union of those routes' CAs (unauthenticated
//! clients are let through the handshake). Which of the CAs a certificate
//! chains to is recorded per connection ([`TlsConn`]); the route decides
//! after routing (see `proxy.rs`) — so one host can mix open and mTLS
//! paths, and the refusal is a readable HTTP 403 instead of a TLS alert.
//!
//! **Toward backends.** [`client_config`] builds the rustls client config
//! of a Backend: the system roots (or the Backend's CA), an optional client
//! certificate, or — only when `dangerouslySkipVerify` is set — no
//! verification.

use nio_proto::model::{AnyResource, BackendTls, CertificateSpec, ClientAuth, Config, Kind};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{ring, CryptoProvider};
use rustls::server::danger::ClientCertVerifier;
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, OnceLock};

pub(crate) fn provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    PROVIDER
        .get_or_init(|| Arc::new(ring::default_provider()))
        .clone()
}

/// What a TLS connection tells the requests it carries.
#[derive(Debug, Default)]
pub struct TlsConn {
    /// The verified client certificate, if the client sent one.
    pub client: Option<ClientCert>,
}

/// A client certificate that verified against at least one route CA.
#[derive(Debug)]
pub struct ClientCert {
    /// The leaf's subject, RFC 4514 style (`CN=alice,O=Example`).
    pub subject: String,
    /// The Certificate resources (CAs) it chains to.
    pub cas: Vec<Arc<str>>,
}

impl ClientCert {
    pub fn verified_by(&self, ca: &str) -> bool {
        self.cas.iter().any(|c| &**c == ca)
    }
}

/// The termination side of one runtime.
#[derive(Debug)]
pub struct ServerTls {
    /// Hosts without client authentication.
    plain: Arc<ServerConfig>,
    /// Hosts where some route asks for client certificates, by exact name,
    /// by wildcard suffix (`.example.com`, longest first), and for routes
    /// on any host.
    mtls_exact: HashMap<String, Arc<HostAuth>>,
    mtls_wildcard: Vec<(String, Arc<HostAuth>)>,
    mtls_any: Option<Arc<HostAuth>>,
}

#[derive(Debug)]
struct HostAuth {
    config: Arc<ServerConfig>,
    /// Each CA the config accepts, with its own verifier, to tell which one
    /// a client certificate chains to.
    cas: Vec<(Arc<str>, Arc<dyn ClientCertVerifier>)>,
}

/// The route settings the termination side depends on: (hosts, CA) of
/// each route with client authentication.
pub type ClientAuthRoutes<'a> = Vec<(&'a [String], &'a str)>;

impl ServerTls {
    /// From the Certificates in `config` and the routes asking for client
    /// certificates. `None` when there is no certificate to serve.
    pub fn build(
        config: &Config,
        routes: &ClientAuthRoutes<'_>,
    ) -> Result<Option<ServerTls>, String> {
        let certs = CertTable::build(config)?;
        if certs.is_empty() {
            return Ok(None);
        }
        let certs = Arc::new(certs);
        let plain = Arc::new(server_config(certs.clone(), None)?);
        // CA names per host pattern ("" = any host).
        let mut by_host: BTreeMap<String, BTreeSet<&str>> = BTreeMap::new();
        for (hosts, ca) in routes {
            if hosts.is_empty() {
                by_host.entry(String::new()).or_default().insert(ca);
            }
            for h in hosts.iter() {
                by_host
                    .entry(h.to_ascii_lowercase())
                    .or_default()
                    .insert(ca);
            }
        }
        let any: BTreeSet<&str> = by_host.get("").cloned().unwrap_or_default();
        let wildcards: Vec<(String, BTreeSet<&str>)> = by_host
            .iter()
            .filter_map(|(h, cas)| Some((h.strip_prefix('*')?.to_string(), cas.clone())))
            .collect();
        // A name can be served by its exact routes, any wildcard route that
        // covers it, and routes on any host: the config asks for the union.
        let covering = |name: &str| {
            let mut all = any.clone();
            for (suffix, cas) in &wildcards {
                if name.ends_with(suffix.as_str()) && name.len() > suffix.len() {
                    all.extend(cas.iter().copied());
                }
            }
            all
        };
        let mut verifiers: HashMap<String, Arc<dyn ClientCertVerifier>> = HashMap::new();
        let mut host_auth = |cas: BTreeSet<&str>| -> Result<Arc<HostAuth>, String> {
            let mut roots = RootCertStore::empty();
            let mut each = Vec::new();
            for ca in cas {
                let ca_roots = ca_roots(config, ca)?;
                for r in ca_roots.roots.iter() {
                    roots.roots.push(r.clone());
                }
                let v = match verifiers.get(ca) {
                    Some(v) => v.clone(),
                    None => {
                        let v = client_verifier(ca_roots)?;
                        verifiers.insert(ca.to_string(), v.clone());
                        v
                    }
                };
                each.push((Arc::<str>::from(ca), v));
            }
            Ok(Arc::new(HostAuth {
                config: Arc::new(server_config(certs.clone(), Some(client_verifier(roots)?))?),
                cas: each,
            }))
        };
        let mut mtls_exact = HashMap::new();
        let mut mtls_wildcard = Vec::new();
        for (host, cas) in &by_host {
            if host.is_empty() {
                continue;
            }
            match host.strip_prefix('*') {
                Some(suffix) => {
                    let mut all = covering(&format!("x{suffix}"));
                    all.extend(cas.iter().copied());
                    mtls_wildcard.push((suffix.to_string(), host_auth(all)?));
                }
                None => {
                    let mut all = covering(host);
                    all.extend(cas.iter().copied());
                    mtls_exact.insert(host.clone(), host_auth(all)?);
                }
            }
        }
        mtls_wildcard.sort_by_key(|(suffix, _)| std::cmp::Reverse(suffix.len()));
        let mtls_any = if any.is_empty() {
            None
        } else {
            Some(host_auth(any.clone())?)
        };
        Ok(Some(ServerTls {
            plain,
            mtls_exact,
            mtls_wildcard,
            mtls_any,
        }))
    }

    fn host_auth(&self, sni: Option<&str>) -> Option<&Arc<HostAuth>> {
        let Some(name) = sni.map(str::to_ascii_lowercase) else {
            return self.mtls_any.as_ref();
        };
        self.mtls_exact
            .get(&name)
            .or_else(|| {
                self.mtls_wildcard
                    .iter()
                    .find(|(suffix, _)| {
                        name.ends_with(suffix.as_str()) && name.len() > suffix.len()
                    })
                    .map(|(_, auth)| auth)
            })
            .or(self.mtls_any.as_ref())
    }

    /// The config for a ClientHello's SNI.
    pub fn config_for(&self, sni: Option<&str>) -> Arc<ServerConfig> {
        match self.host_auth(sni) {
            Some(auth) => auth.config.clone(),
            None => self.plain.clone(),
        }
    }

    /// What the connection's requests learn: the client certificate, with
    /// the CAs (of those asked for this SNI) it chains to.
    pub fn connection(&self, sni: Option<&str>, peer: Option<&[CertificateDer<'_>]>) -> TlsConn {
        let (Some(chain), Some(auth)) = (peer, self.host_auth(sni)) else {
            return TlsConn::default();
        };
        let Some((leaf, intermediates)) = chain.split_first() else {
            return TlsConn::default();
        };
        let now = UnixTime::now();
        let cas = auth
            .cas
            .iter()
            .filter(|(_, v)| {
                auth.cas.len() == 1 || v.verify_client_cert(leaf, intermediates, now).is_ok()
            })
            .map(|(name, _)| name.clone())
            .collect();
        let subject = x509_parser::parse_x509_certificate(leaf)
            .map(|(_, c)| c.subject().to_string())
            .unwrap_or_default();
        TlsConn {
            client: Some(ClientCert { subject, cas }),
        }
    }
}

fn server_config(
    certs: Arc<CertTable>,
    verifier: Option<Arc<dyn ClientCertVerifier>>,
) -> Result<ServerConfig, String> {
    let builder = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| e.to_string())?;
    let builder = match verifier {
        Some(v) => builder.with_client_cert_verifier(v),
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_cert_resolver(certs);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

fn client_verifier(roots: RootCertStore) -> Result<Arc<dyn ClientCertVerifier>, String> {
    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
        .allow_unauthenticated()
        .build()
        .map_err(|e| format!("client CA: {e}"))
}

/// The certificates of a Certificate resource as trust anchors.
fn ca_roots(config: &Config, name: &str) -> Result<RootCertStore, String> {
    let spec = certificate(config, name)?;
    let mut roots = RootCertStore::empty();
    for der in spec.chain()? {
        roots
            .add(der)
            .map_err(|e| format!("Certificate \"{name}\" cannot be a CA: {e}"))?;
    }
    Ok(roots)
}

fn certificate<'a>(config: &'a Config, name: &str) -> Result<&'a CertificateSpec, String> {
    match config.get(Kind::Certificate, name) {
        Some(AnyResource::Certificate(c)) => Ok(&c.spec),
        _ => Err(format!("Certificate \"{name}\" does not exist")),
    }
}

/// Serving certificates by name.
#[derive(Debug, Default)]
struct CertTable {
    /// Lowercase DNS names and `*.suffix` wildcards from the SANs.
    by_name: HashMap<String, Arc<CertifiedKey>>,
    default: Option<Arc<CertifiedKey>>,
}

impl CertTable {
    /// When several certificates name the same host, the one valid the
    /// longest wins (so a renewed certificate takes over from the old one
    /// as soon as both are loaded); then the first by resource name.
    fn build(config: &Config) -> Result<CertTable, String> {
        let mut table = CertTable::default();
        let mut until: HashMap<String, i64> = HashMap::new();
        for r in config.iter() {
            let AnyResource::Certificate(c) = r else {
                continue;
            };
            let Some(key) = c.spec.key() else {
                continue;
            };
            let name = &c.metadata.name;
            let bad = |e: String| format!("certificate \"{name}\": {e}");
            let chain = c.spec.chain().map_err(bad)?;
            let signing = ring::sign::any_supported_type(&key.map_err(bad)?)
                .map_err(|e| bad(format!("the key cannot be used for TLS: {e}")))?;
            let (_, leaf) = x509_parser::parse_x509_certificate(&chain[0])
                .map_err(|e| bad(format!("the leaf certificate cannot be read: {e}")))?;
            let not_after = leaf.validity().not_after.timestamp();
            let names = c.spec.info().map_err(bad)?.sans;
            if !leaf.validity().is_valid() {
                tracing::warn!(certificate = %name, "serving a certificate that is not valid now (expired or not yet valid); replace it");
            }
            let certified = Arc::new(CertifiedKey::new(chain, signing));
            for san in names {
                let san = san.to_ascii_lowercase();
                if until.get(&san).is_some_and(|t| *t >= not_after) {
                    continue;
                }
                until.insert(san.clone(), not_after);
                table.by_name.insert(san, certified.clone());
            }
            if c.spec.default && table.default.is_none() {
                table.default = Some(certified);
            }
        }
        Ok(table)
    }

    fn is_empty(&self) -> bool {
        self.by_name.is_empty() && self.default.is_none()
    }

    fn find(&self, sni: Option<&str>) -> Option<Arc<CertifiedKey>> {
        let found = sni.and_then(|name| {
            let name = name.to_ascii_lowercase();
            self.by_name.get(&name).or_else(|| {
                let (_, parent) = name.split_once('.')?;
                self.by_name.get(&format!("*.{parent}"))
            })
        });
        found.or(self.default.as_ref()).cloned()
    }
}

impl ResolvesServerCert for CertTable {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let found = self.find(hello.server_name());
        if found.is_none() {
            tracing::debug!(sni = ?hello.server_name(), "no certificate for this name and no default; handshake refused");
        }
        found
    }
}

/// The system's trusted roots (read once), or Mozilla's when the system
/// has none.
fn system_roots() -> Arc<RootCertStore> {
    static ROOTS: OnceLock<Arc<RootCertStore>> = OnceLock::new();
    ROOTS
        .get_or_init(|| {
            let mut roots = RootCertStore::empty();
            let native = rustls_native_certs::load_native_certs();
            let (added, _) = roots.add_parsable_certificates(native.certs);
            if added == 0 {
                tracing::info!("no system CA certificates found; trusting the Mozilla root set for https:// targets");
                roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
            }
            Arc::new(roots)
        })
        .clone()
}

/// The Certificate resources a Backend's TLS uses, as they were when its
/// pool was built (a pool is rebuilt when they change).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct BackendTlsSources {
    pub ca: Option<CertificateSpec>,
    pub client_certificate: Option<CertificateSpec>,
}

impl BackendTlsSources {
    pub fn resolve(config: &Config, tls: &BackendTls) -> Result<BackendTlsSources, String> {
        let get = |name: &Option<String>| {
            name.as_ref()
                .map(|n| certificate(config, n).cloned())
                .transpose()
        };
        Ok(BackendTlsSources {
            ca: get(&tls.ca)?,
            client_certificate: get(&tls.client_certificate)?,
        })
    }
}

/// The client config toward a Backend's `https://` targets.
pub fn client_config(
    tls: &BackendTls,
    sources: &BackendTlsSources,
) -> Result<ClientConfig, String> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| e.to_string())?;
    let builder = if tls.dangerously_skip_verify {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerification))
    } else {
        let roots = match &sources.ca {
            Some(ca) => {
                let mut roots = RootCertStore::empty();
                for der in ca.chain()? {
                    roots.add(der).map_err(|e| format!("spec.tls.ca: {e}"))?;
                }
                Arc::new(roots)
            }
            None => system_roots(),
        };
        builder.with_root_certificates(roots)
    };
    match &sources.client_certificate {
        Some(c) => {
            let key: PrivateKeyDer<'static> = c
                .key()
                .ok_or("spec.tls.clientCertificate: the Certificate has no privateKey")??;
            builder
                .with_client_auth_cert(c.chain()?, key)
                .map_err(|e| format!("spec.tls.clientCertificate: {e}"))
        }
        None => Ok(builder.with_no_client_auth()),
    }
}

/// `dangerouslySkipVerify`: accepts any server certificate (signatures
/// are still checked, so the handshake itself is sound).
#[derive(Debug)]
struct NoVerification;

impl ServerCertVerifier for NoVerification {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &provider().signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &provider().signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// The routes of `routes` that ask for client certificates.
pub fn client_auth_routes<'a>(
    routes: impl Iterator<Item = &'a crate::route::CompiledRoute>,
) -> ClientAuthRoutes<'a> {
    routes
        .filter(|r| r.tls.client_auth != ClientAuth::None)
        .filter_map(|r| Some((r.hosts.as_slice(), r.tls.client_ca.as_deref()?)))
        .collect()
}
