//! TLS material: the server config for the listeners (certificate chains and
//! keys from PEM files, chosen by SNI through [`Sites`], ALPN) and the client
//! config for `https://` backends.
//! Errors while loading name the config file, line and key, like every other
//! config error, because operators fix them in the same place.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rustls::crypto::aws_lc_rs as provider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::{BackendTls, Config, ConfigError, Located};

/// Certificates expiring sooner than this are warned about (still loaded).
pub const EXPIRY_WARNING: Duration = Duration::from_secs(14 * 24 * 3600);

/// What loading `[tls]` gives: the listeners' server config and the
/// certificates it chooses from.
#[derive(Debug)]
pub struct Loaded {
    pub server_config: Arc<ServerConfig>,
    pub sites: Arc<Sites>,
}

/// Loads `[tls]` from a validated config. `Ok(None)` when there is no
/// `[tls]`. Every certificate is parsed once here; a handshake only looks
/// names up in [`Sites`]. Fails on a file that cannot be read, a key that
/// does not match its certificate, an expired certificate, or a name two
/// certificates claim; warns (one log line) on one expiring within
/// [`EXPIRY_WARNING`].
pub fn load(
    config: &Config,
    acme: Option<Arc<crate::acme::Certs>>,
) -> Result<Option<Loaded>, ConfigError> {
    let Some(tls) = &config.tls else {
        return Ok(None);
    };
    let provider = server_provider();
    let now = SystemTime::now();
    let mut sites = Sites::default();
    for files in &tls.files {
        let site = load_site(&config.path, &files.cert, &files.key, &provider, now)?;
        sites.add(&config.path, &files.cert, site)?;
    }
    if let Some(certs) = acme {
        // One certificate per name, as between files.
        for name in &certs.config.domains {
            if let Some(&i) = sites.exact.get(name) {
                return Err(certs.config.domains_at.error(
                    &config.path,
                    format!(
                        "{name} is claimed by both {} and [tls.acme]: a name may be claimed by one certificate only",
                        sites.sites[i].file.display()
                    ),
                ));
            }
        }
        if let Some(ca) = &certs.config.directory_ca {
            add_roots(&mut RootCertStore::empty(), ca, &config.path)?;
        }
        sites.acme = Some(certs);
    }
    let sites = Arc::new(sites);
    let at = match (tls.files.first(), &tls.acme) {
        (Some(f), _) => f.key.key.clone(),
        (None, Some(a)) => a.domains_at.key.clone(),
        (None, None) => "tls".to_owned(),
    };
    let server_config = server_config_with(provider, sites.clone()).map_err(|e| {
        ConfigError::new(
            &config.path,
            None,
            at.clone(),
            format!("cannot build the TLS config: {e}"),
        )
    })?;
    Ok(Some(Loaded {
        server_config,
        sites,
    }))
}

/// What sluice reads off a leaf certificate.
#[derive(Debug)]
pub struct Leaf {
    /// SAN DNS names, lower case, wildcards as `*.suffix`.
    pub names: Vec<String>,
    /// notBefore and notAfter, Unix seconds.
    pub not_before: i64,
    pub not_after: i64,
    /// notAfter as the certificate writes it, for messages.
    pub not_after_text: String,
}

impl Leaf {
    pub fn parse(der: &CertificateDer<'_>) -> Result<Leaf, String> {
        let (_, parsed) = x509_parser::parse_x509_certificate(der).map_err(|e| e.to_string())?;
        let mut names = Vec::new();
        if let Ok(Some(san)) = parsed.subject_alternative_name() {
            for n in &san.value.general_names {
                if let x509_parser::extensions::GeneralName::DNSName(dns) = n {
                    names.push(dns.trim_end_matches('.').to_ascii_lowercase());
                }
            }
        }
        Ok(Leaf {
            names,
            not_before: parsed.validity().not_before.timestamp(),
            not_after: parsed.validity().not_after.timestamp(),
            not_after_text: parsed.validity().not_after.to_string(),
        })
    }
}

/// A key sluice can sign handshakes with.
pub fn signing_key(
    private: PrivateKeyDer<'static>,
) -> Result<Arc<dyn rustls::sign::SigningKey>, String> {
    server_provider()
        .key_provider
        .load_private_key(private)
        .map_err(|e| format!("unsupported private key: {e}"))
}

/// A chain and its key, ready to serve; fails on a key of a kind the
/// provider cannot sign with, or one that does not match the leaf.
pub fn certified_key(
    chain: Vec<CertificateDer<'static>>,
    private: PrivateKeyDer<'static>,
) -> Result<Arc<CertifiedKey>, String> {
    let certified = CertifiedKey::new(chain, signing_key(private)?);
    match certified.keys_match() {
        // aws-lc-rs can always tell; another provider might not.
        Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {
            Ok(Arc::new(certified))
        }
        Err(_) => Err("the private key does not match the certificate".to_owned()),
    }
}

/// One certificate ready to serve: the chain and key, its SAN DNS names
/// (lower case, wildcards as `*.suffix`), and when it expires.
#[derive(Debug)]
pub struct Site {
    pub key: Arc<CertifiedKey>,
    pub names: Vec<String>,
    /// The certificate file, for metrics and logs.
    pub file: PathBuf,
    /// notAfter, as Unix seconds.
    pub not_after: i64,
}

fn load_site(
    file: &Path,
    cert: &Located<PathBuf>,
    key: &Located<PathBuf>,
    provider: &rustls::crypto::CryptoProvider,
    now: SystemTime,
) -> Result<Site, ConfigError> {
    let cert_path = &cert.value;
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert_path)
        .and_then(|iter| iter.collect::<Result<Vec<_>, _>>())
        .map_err(|e| {
            cert.error(
                file,
                format!("cannot load certificate chain {}: {e}", cert_path.display()),
            )
        })?;
    let Some(leaf) = chain.first() else {
        return Err(cert.error(
            file,
            format!("no certificate found in {}", cert_path.display()),
        ));
    };
    let leaf = Leaf::parse(leaf).map_err(|e| {
        cert.error(
            file,
            format!("cannot parse certificate {}: {e}", cert_path.display()),
        )
    })?;
    let not_after = leaf.not_after;
    let now_secs = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let left = not_after - now_secs;
    if left <= 0 {
        return Err(cert.error(
            file,
            format!(
                "certificate {} expired {} ({} days ago)",
                cert_path.display(),
                leaf.not_after_text,
                -left / 86_400
            ),
        ));
    }
    if left < EXPIRY_WARNING.as_secs() as i64 {
        tracing::warn!(
            key = %cert.key,
            file = %cert_path.display(),
            days_left = left / 86_400,
            not_after = %leaf.not_after_text,
            "certificate expires within 14 days"
        );
    }
    let key_path = &key.value;
    // PrivateKeyDer's PEM reader accepts PKCS#8, PKCS#1 (RSA) and SEC1 (EC).
    let private = PrivateKeyDer::from_pem_file(key_path).map_err(|e| {
        key.error(
            file,
            format!("cannot load private key {}: {e}", key_path.display()),
        )
    })?;
    let signing = provider
        .key_provider
        .load_private_key(private)
        .map_err(|e| {
            key.error(
                file,
                format!("unsupported private key {}: {e}", key_path.display()),
            )
        })?;
    let certified = CertifiedKey::new(chain, signing);
    match certified.keys_match() {
        // aws-lc-rs can always tell; another provider might not.
        Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {}
        Err(_) => {
            return Err(key.error(
                file,
                format!(
                    "private key {} does not match certificate {}",
                    key_path.display(),
                    cert_path.display()
                ),
            ))
        }
    }
    Ok(Site {
        key: Arc::new(certified),
        names: leaf.names,
        file: cert_path.clone(),
        not_after,
    })
}

/// The certificates of one snapshot and the SNI names they serve; rustls
/// asks it for every handshake ([`ResolvesServerCert`]). The first site is
/// the default: it answers an unknown or missing SNI. An exact name wins
/// over a `*.` wildcard; a name may be claimed by one certificate only.
#[derive(Debug, Default)]
pub struct Sites {
    sites: Vec<Site>,
    /// Exact names and wildcard suffixes (`*.example.com` is stored as
    /// `example.com`) → index into `sites`.
    exact: HashMap<String, usize>,
    wildcard: HashMap<String, usize>,
    /// `[tls.acme]`'s names and certificate, which change without a reload.
    acme: Option<Arc<crate::acme::Certs>>,
}

/// What [`Sites::pick`] returns for the ACME certificate.
pub const ACME_SITE: usize = usize::MAX;

impl Sites {
    fn add(&mut self, file: &Path, at: &Located<PathBuf>, site: Site) -> Result<(), ConfigError> {
        let index = self.sites.len();
        for name in &site.names {
            let (map, key) = match name.strip_prefix("*.") {
                Some(suffix) => (&mut self.wildcard, suffix.to_owned()),
                None => (&mut self.exact, name.clone()),
            };
            if let Some(&other) = map.get(&key) {
                if other != index {
                    return Err(at.error(
                        file,
                        format!(
                            "{name} is claimed by both {} and {}: a name may be claimed by one certificate only",
                            self.sites[other].file.display(),
                            site.file.display()
                        ),
                    ));
                }
            }
            map.insert(key, index);
        }
        self.sites.push(site);
        Ok(())
    }

    /// The certificates from files, default first.
    pub fn sites(&self) -> &[Site] {
        &self.sites
    }

    /// The ACME state, with `[tls.acme]`.
    pub fn acme(&self) -> Option<&Arc<crate::acme::Certs>> {
        self.acme.as_ref()
    }

    /// The certificate served for `name` (an SNI or a request's host, no
    /// port): an index into [`Sites::sites`], or [`ACME_SITE`]. Exact file
    /// names, then the ACME names, then wildcards, then the default (the
    /// first file; ACME's certificate when there are no files).
    pub fn pick(&self, name: Option<&str>) -> usize {
        let fallback = if self.sites.is_empty() { ACME_SITE } else { 0 };
        let Some(name) = name.filter(|_| self.sites.len() > 1 || self.acme.is_some()) else {
            return fallback;
        };
        let name = name.trim_end_matches('.');
        let lower;
        let name = if name.bytes().any(|b| b.is_ascii_uppercase()) {
            lower = name.to_ascii_lowercase();
            lower.as_str()
        } else {
            name
        };
        if let Some(&i) = self.exact.get(name) {
            return i;
        }
        if self.acme.as_ref().is_some_and(|a| a.covers(name)) {
            return ACME_SITE;
        }
        name.split_once('.')
            .and_then(|(_, suffix)| self.wildcard.get(suffix).copied())
            .unwrap_or(fallback)
    }

    /// Whether a request for `host` may be served on a connection whose
    /// handshake chose certificate `served`: only if that host would have
    /// been given the same certificate (RFC 9110 §15.5.20, so h2 connection
    /// coalescing cannot reach another site). With one certificate, always.
    pub fn serves(&self, served: usize, host: Option<&str>) -> bool {
        (self.sites.len() <= 1 && self.acme.is_none()) || self.pick(host) == served
    }
}

impl ResolvesServerCert for Sites {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        // A TLS-ALPN-01 validation offers only acme-tls/1 (RFC 8737 §3)
        // and gets the challenge certificate, or no handshake.
        let validation = hello
            .alpn()
            .is_some_and(|mut p| p.any(|p| p == crate::acme::ACME_TLS_ALPN));
        if validation {
            let acme = self.acme.as_ref()?;
            return acme.challenge_certificate(hello.server_name()?);
        }
        match self.pick(hello.server_name()) {
            ACME_SITE => {
                // Before the first issuance, or for a name the stored
                // certificate lacks: no handshake (never another site's).
                let issued = self.acme.as_ref()?.current()?;
                let name = hello
                    .server_name()
                    .map(|n| n.trim_end_matches('.').to_ascii_lowercase());
                match name {
                    Some(n) if !issued.names.contains(&n) => None,
                    _ => Some(issued.key.clone()),
                }
            }
            i => self.sites.get(i).map(|s| s.key.clone()),
        }
    }
}

/// The listeners' crypto (aws-lc-rs: ring has no ML-KEM).
///
/// Key exchange, in the server's order: the hybrid post-quantum
/// X25519MLKEM768 first (what current browsers send), then X25519 and P-256
/// (contract).
///
/// Cipher suites, in the server's order of preference: Mozilla's
/// recommended order, AES-128-GCM first. Chosen by the server, not the
/// client, because most clients list AES-256-GCM-SHA384 first, whose
/// SHA-384 key schedule costs more than SHA-256's, and AES-128 needs 10
/// rounds per block to AES-256's 14 for every record after. All three TLS
/// 1.3 suites and the ECDHE-AEAD TLS 1.2 suites stay on offer.
fn server_provider() -> rustls::crypto::CryptoProvider {
    use rustls::crypto::aws_lc_rs::cipher_suite::*;
    use rustls::crypto::aws_lc_rs::kx_group::{SECP256R1, X25519, X25519MLKEM768};
    rustls::crypto::CryptoProvider {
        cipher_suites: vec![
            TLS13_AES_128_GCM_SHA256,
            TLS13_AES_256_GCM_SHA384,
            TLS13_CHACHA20_POLY1305_SHA256,
            TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
            TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
            TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
            TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
            TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
            TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
        ],
        kx_groups: vec![X25519MLKEM768, X25519, SECP256R1],
        ..provider::default_provider()
    }
}

/// A server config with one certificate, offering h2 and http/1.1 by ALPN.
pub fn server_config(
    certs: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<Arc<ServerConfig>, rustls::Error> {
    let config = ServerConfig::builder_with_provider(Arc::new(server_provider()))
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
    finish(config)
}

/// A server config choosing certificates with `resolver`.
fn server_config_with(
    provider: rustls::crypto::CryptoProvider,
    sites: Arc<Sites>,
) -> Result<Arc<ServerConfig>, rustls::Error> {
    let alpn_01 = sites
        .acme
        .as_ref()
        .is_some_and(|a| a.config.challenge == crate::config::AcmeChallenge::TlsAlpn01);
    let config = ServerConfig::builder_with_provider(Arc::new(provider))
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_cert_resolver(sites);
    let mut config = finish(config)?;
    if alpn_01 {
        // Chosen only by a client that offers nothing else: the CA's
        // validation. The server closes such a connection after the
        // handshake.
        Arc::get_mut(&mut config)
            .expect("not shared yet")
            .alpn_protocols
            .push(crate::acme::ACME_TLS_ALPN.to_vec());
    }
    Ok(config)
}

/// ALPN (h2, http/1.1), the server's cipher order and resumption.
fn finish(mut config: ServerConfig) -> Result<Arc<ServerConfig>, rustls::Error> {
    config.ignore_client_order = true;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    // Resumption keeps reconnect storms cheap: stateless tickets (keys
    // rotated by rustls every 6 h) plus a session cache larger than the
    // default 256 entries for clients that resume by ID.
    config.ticketer = provider::Ticketer::new()?;
    config.session_storage = rustls::server::ServerSessionMemoryCache::new(32 * 1024);
    Ok(Arc::new(config))
}

/// The client config toward a route's `https://` backends: verification
/// against `backend_ca` or the system roots, and a client certificate when
/// `backend_cert`/`backend_key` are set (mTLS). SNI comes from the backend URL.
pub fn backend_client_config(
    route: &BackendTls,
    file: &Path,
) -> Result<Arc<ClientConfig>, ConfigError> {
    let roots = match &route.ca {
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            add_roots(&mut roots, ca, file)?;
            roots
        }
        None => system_roots().clone(),
    };
    let builder = ClientConfig::builder_with_provider(Arc::new(provider::default_provider()))
        .with_safe_default_protocol_versions()
        .expect("aws-lc-rs supports the default protocol versions")
        .with_root_certificates(roots);
    let mut config = match (&route.cert, &route.key) {
        (Some(cert), Some(key)) => {
            let chain = CertificateDer::pem_file_iter(&cert.value)
                .and_then(|iter| iter.collect::<Result<Vec<_>, _>>())
                .map_err(|e| {
                    cert.error(
                        file,
                        format!(
                            "cannot load client certificate {}: {e}",
                            cert.value.display()
                        ),
                    )
                })?;
            let private = PrivateKeyDer::from_pem_file(&key.value).map_err(|e| {
                key.error(
                    file,
                    format!("cannot load client key {}: {e}", key.value.display()),
                )
            })?;
            builder.with_client_auth_cert(chain, private).map_err(|e| {
                key.error(
                    file,
                    format!("client key does not fit the certificate: {e}"),
                )
            })?
        }
        _ => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Adds the certificates of the PEM bundle `ca` to `roots`; fails, naming
/// the file, when it cannot be read or holds no usable certificate.
pub fn add_roots(
    roots: &mut RootCertStore,
    ca: &Located<PathBuf>,
    file: &Path,
) -> Result<(), ConfigError> {
    let certs = CertificateDer::pem_file_iter(&ca.value)
        .and_then(|iter| iter.collect::<Result<Vec<_>, _>>())
        .map_err(|e| {
            ca.error(
                file,
                format!("cannot load CA bundle {}: {e}", ca.value.display()),
            )
        })?;
    let (added, _) = roots.add_parsable_certificates(certs);
    if added == 0 {
        return Err(ca.error(
            file,
            format!("no usable CA certificate in {}", ca.value.display()),
        ));
    }
    Ok(())
}

/// The system's roots, read once per process.
pub(crate) fn system_roots() -> &'static RootCertStore {
    static ROOTS: std::sync::OnceLock<RootCertStore> = std::sync::OnceLock::new();
    ROOTS.get_or_init(|| {
        let mut roots = RootCertStore::empty();
        // A single unparsable system certificate must not take the proxy down.
        let (added, _) =
            roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
        tracing::debug!(added, "system root certificates loaded");
        roots
    })
}
