//! The conversation with the ACME server, and the task that has it when a
//! certificate is missing or due: account, order, challenges, finalize,
//! download, store, swap in.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::{anyhow, bail, Context};
use http_body_util::Full;
use hyper::body::Bytes;
use instant_acme::{
    Account, AccountCredentials, AuthorizationStatus, ChallengeType, Identifier, NewAccount,
    NewOrder, OrderStatus, RetryPolicy,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use super::{store, Certs, Issued, HTTP01_PREFIX};
use crate::config::AcmeChallenge;

/// The first retry after a failed order; doubled per failure up to
/// [`MAX_BACKOFF`]. Let's Encrypt allows 5 failed validations per name and
/// hour, so a broken setup settles at one attempt an hour.
const FIRST_BACKOFF: Duration = Duration::from_secs(10);
const MAX_BACKOFF: Duration = Duration::from_secs(3600);
/// One attempt, from the directory to the certificate, may take this long.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(180);

/// Keeps `certs` served with a valid certificate for its names, forever:
/// orders one at once when there is none (or it misses a name), otherwise
/// when [`Issued::renew_at`] comes; a failure is logged (one line per
/// attempt, naming the directory) and retried with backoff while whatever
/// is being served stays. `issued` runs after each new certificate is in.
pub async fn renew(certs: Arc<Certs>, issued: impl Fn() + Send + 'static) {
    let config = &certs.config;
    // The HTTP-01 listener of its own, when configured: bound for the
    // task's life (it answers nothing but challenges).
    let _responder = match config.http01_listen {
        Some(addr) => Some(Http01Listener::bind(addr, certs.clone()).await),
        None => None,
    };
    let mut failures = 0u32;
    loop {
        let wait = certs.renew_in(SystemTime::now());
        if !wait.is_zero() {
            tracing::debug!(
                renew_in_s = wait.as_secs(),
                "ACME certificate renewal scheduled"
            );
            tokio::time::sleep(wait).await;
        }
        let attempt = tokio::time::timeout(ATTEMPT_TIMEOUT, obtain(&certs)).await;
        match attempt
            .map_err(|_| anyhow!("no certificate after {} s", ATTEMPT_TIMEOUT.as_secs()))
            .and_then(|r| r)
        {
            Ok(new) => {
                failures = 0;
                tracing::info!(
                    names = ?new.names,
                    file = %new.file.display(),
                    not_after = new.not_after,
                    renew_in_s = (new.renew_at() - super::unix(SystemTime::now())).max(0),
                    "ACME certificate installed for new handshakes"
                );
                certs.install(new);
                issued();
            }
            Err(e) => {
                failures += 1;
                let retry = FIRST_BACKOFF
                    .saturating_mul(1 << (failures - 1).min(12))
                    .min(MAX_BACKOFF);
                tracing::warn!(
                    directory = %config.directory,
                    names = ?config.domains,
                    attempt = failures,
                    retry_in_s = retry.as_secs(),
                    error = %format!("{e:#}"),
                    "ACME order failed; what is served stays"
                );
                tokio::time::sleep(retry).await;
            }
        }
    }
}

/// One order, start to finish.
async fn obtain(certs: &Certs) -> anyhow::Result<Issued> {
    let config = &certs.config;
    let account = account(certs).await?;
    let identifiers: Vec<Identifier> = config
        .domains
        .iter()
        .map(|d| Identifier::Dns(d.clone()))
        .collect();
    let mut order = account
        .new_order(&NewOrder::new(&identifiers))
        .await
        .context("new order")?;

    // Answers stay up until this order is done, whatever happens.
    let _answers = Answers(certs);
    let wanted = match config.challenge {
        AcmeChallenge::TlsAlpn01 => ChallengeType::TlsAlpn01,
        AcmeChallenge::Http01 => ChallengeType::Http01,
    };
    let mut authorizations = order.authorizations();
    while let Some(authz) = authorizations.next().await {
        let mut authz = authz.context("authorization")?;
        match authz.status {
            AuthorizationStatus::Pending => {}
            AuthorizationStatus::Valid => continue,
            other => bail!("authorization for {} is {other:?}", authz.identifier()),
        }
        let name = authz.identifier().to_string();
        let mut challenge = authz
            .challenge(wanted.clone())
            .ok_or_else(|| anyhow!("the server offers no {wanted:?} challenge for {name}"))?;
        let key_authorization = challenge.key_authorization();
        match wanted {
            ChallengeType::TlsAlpn01 => {
                let cert = alpn_certificate(&name, key_authorization.digest().as_ref())?;
                certs.alpn.lock().unwrap().insert(name.clone(), cert);
            }
            _ => {
                certs.tokens.lock().unwrap().insert(
                    challenge.token.clone(),
                    key_authorization.as_str().to_owned(),
                );
            }
        }
        challenge
            .set_ready()
            .await
            .with_context(|| format!("challenge for {name}"))?;
    }

    let polling = RetryPolicy::new()
        .initial_delay(Duration::from_millis(250))
        .timeout(Duration::from_secs(90));
    let status = order.poll_ready(&polling).await.context("validation")?;
    if status != OrderStatus::Ready {
        return Err(anyhow!(
            "order is {status:?}: {}",
            why_invalid(&mut order).await
        ));
    }

    let key = rcgen::KeyPair::generate().context("certificate key")?;
    let mut params = rcgen::CertificateParams::new(config.domains.clone())?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    let csr = params.serialize_request(&key).context("CSR")?;
    order.finalize_csr(csr.der()).await.context("finalize")?;
    let chain_pem = order
        .poll_certificate(&polling)
        .await
        .context("certificate download")?;

    let key_pem = key.serialize_pem();
    let chain = CertificateDer::pem_slice_iter(chain_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| anyhow!("the certificate the server sent is not PEM: {e}"))?;
    let private = PrivateKeyDer::Pkcs8(key.serialize_der().into());
    let mut issued = store::from_chain(chain, private, Default::default())
        .map_err(|e| anyhow!("the certificate the server sent: {e}"))?;
    issued.file = store::save_certificate(config, &chain_pem, &key_pem)
        .with_context(|| format!("storing the certificate in {}", config.storage.display()))?;
    Ok(issued)
}

/// The stored account for this directory, or a new one (then stored).
async fn account(certs: &Certs) -> anyhow::Result<Account> {
    let config = &certs.config;
    let builder = || -> anyhow::Result<instant_acme::AccountBuilder> {
        Ok(Account::builder_with_http(http_client(config)?))
    };
    let stored = store::load_account(config)
        .with_context(|| format!("reading {}", store::account_file(config).display()))?;
    if let Some(json) = stored {
        let credentials: AccountCredentials = serde_json::from_str(&json).with_context(|| {
            format!(
                "{} is not an ACME account",
                store::account_file(config).display()
            )
        })?;
        return builder()?
            .from_credentials(credentials)
            .await
            .with_context(|| format!("directory {}", config.directory));
    }
    let contact = config.email.as_ref().map(|e| format!("mailto:{e}"));
    let contacts: Vec<&str> = contact.iter().map(String::as_str).collect();
    let (account, credentials) = builder()?
        .create(
            &NewAccount {
                contact: &contacts,
                terms_of_service_agreed: true,
                only_return_existing: false,
            },
            config.directory.clone(),
            None,
        )
        .await
        .with_context(|| format!("directory {}", config.directory))?;
    let file = store::save_account(config, &serde_json::to_string(&credentials)?)
        .with_context(|| format!("storing the account in {}", config.storage.display()))?;
    tracing::info!(directory = %config.directory, account = account.id(), file = %file.display(), "ACME account created");
    Ok(account)
}

/// The HTTPS client toward the directory: the system's roots (those the
/// backends are checked against) plus `directory_ca`'s.
fn http_client(config: &crate::config::Acme) -> anyhow::Result<Box<dyn instant_acme::HttpClient>> {
    let mut roots = crate::tls::system_roots().clone();
    if let Some(ca) = &config.directory_ca {
        crate::tls::add_roots(&mut roots, ca, std::path::Path::new("tls.acme"))
            .map_err(|e| anyhow!(e.problem))?;
    }
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_no_client_auth();
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_only()
        .enable_http1()
        .build();
    Ok(Box::new(
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build(https),
    ))
}

/// What the server said about a failed validation, per name.
async fn why_invalid(order: &mut instant_acme::Order) -> String {
    let mut reasons = Vec::new();
    let mut authorizations = order.authorizations();
    while let Some(Ok(mut authz)) = authorizations.next().await {
        let name = authz.identifier().to_string();
        if let Ok(state) = authz.refresh().await {
            for c in &state.challenges {
                if let Some(e) = &c.error {
                    reasons.push(format!("{name}: {e}"));
                }
            }
        }
    }
    if reasons.is_empty() {
        "no reason given".to_owned()
    } else {
        reasons.join("; ")
    }
}

/// The self-signed certificate that answers a TLS-ALPN-01 validation of
/// `name`: its SAN is the name, its acmeIdentifier extension (critical)
/// the SHA-256 of the key authorization (RFC 8737 §3).
fn alpn_certificate(name: &str, digest: &[u8]) -> anyhow::Result<Arc<rustls::sign::CertifiedKey>> {
    let mut params = rcgen::CertificateParams::new(vec![name.to_owned()])?;
    params.custom_extensions = vec![rcgen::CustomExtension::new_acme_identifier(digest)];
    let key = rcgen::KeyPair::generate()?;
    let cert = params.self_signed(&key)?;
    // Not `tls::certified_key`: its key check parses the certificate with
    // webpki, which refuses the critical acmeIdentifier extension; the key
    // was made for this certificate a line above.
    let signing = crate::tls::signing_key(PrivateKeyDer::Pkcs8(key.serialize_der().into()))
        .map_err(|e| anyhow!(e))?;
    Ok(Arc::new(rustls::sign::CertifiedKey::new(
        vec![cert.der().clone()],
        signing,
    )))
}

/// Clears an order's challenge answers when it ends, however it ends.
struct Answers<'a>(&'a Certs);

impl Drop for Answers<'_> {
    fn drop(&mut self) {
        self.0.alpn.lock().unwrap().clear();
        self.0.tokens.lock().unwrap().clear();
    }
}

/// `http01_listen`: a plain HTTP/1.1 listener that answers HTTP-01
/// requests and 404s everything else.
struct Http01Listener(tokio::task::JoinHandle<()>);

impl Http01Listener {
    /// Binds, retrying every 10 s (logged) while the address is taken.
    async fn bind(addr: SocketAddr, certs: Arc<Certs>) -> Http01Listener {
        let listener = loop {
            match tokio::net::TcpListener::bind(addr).await {
                Ok(l) => break l,
                Err(e) => {
                    tracing::error!(%addr, error = %e, "cannot bind tls.acme.http01_listen; retrying in 10 s");
                    tokio::time::sleep(Duration::from_secs(10)).await;
                }
            }
        };
        tracing::info!(%addr, "HTTP-01 challenge listener up");
        Http01Listener(tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                };
                let certs = certs.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        let answer = answer_http01(&certs, req.uri().path());
                        async move { Ok::<_, std::convert::Infallible>(answer) }
                    });
                    let conn = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(tcp), service);
                    // Validation requests are tiny; a silent peer goes.
                    let _ = tokio::time::timeout(Duration::from_secs(10), conn).await;
                });
            }
        }))
    }
}

impl Drop for Http01Listener {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The response to a request for `path` on an HTTP-01 responder: the key
/// authorization for a token of an order in progress, else 404.
pub fn answer_http01(certs: &Certs, path: &str) -> hyper::Response<Full<Bytes>> {
    let answer = path
        .strip_prefix(HTTP01_PREFIX)
        .and_then(|token| certs.http01_answer(token));
    let (status, body) = match answer {
        Some(a) => (hyper::StatusCode::OK, a),
        None => (hyper::StatusCode::NOT_FOUND, String::new()),
    };
    hyper::Response::builder()
        .status(status)
        .header(hyper::header::CONTENT_TYPE, "application/octet-stream")
        .body(Full::new(Bytes::from(body)))
        .expect("static response parts are valid")
}
