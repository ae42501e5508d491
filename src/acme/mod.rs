//! Certificates obtained and renewed over ACME (RFC 8555), `[tls.acme]`.
//!
//! [`Certs`] is what the TLS resolver reads on every handshake: the issued
//! certificate for the configured names, and the answers to challenges in
//! progress (a TLS-ALPN-01 certificate per name, RFC 8737; an HTTP-01 key
//! authorization per token). [`renew`] is the one task per process that
//! talks to the ACME server (`order`), keeps the account and certificate
//! under `storage` (`store`) and swaps a new certificate in without a
//! reload. A reload that keeps `[tls.acme]` as it was keeps the same
//! [`Certs`] and the task (`Certs::reuse`).
//!
//! The ACME protocol itself is `instant-acme`'s: it speaks only the protocol,
//! so the challenges are answered by sluice's own listeners and resolver,
//! where the CA's validation will actually arrive. (`rustls-acme` owns the
//! acceptor and the resolver itself and has no HTTP-01; sluice already has
//! both, with SNI and h2 rules of its own.)

mod order;
mod store;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwapOption;
use rustls::sign::CertifiedKey;

use crate::config::{Acme, AcmeChallenge};

pub use order::{answer_http01, renew};

/// The ALPN protocol of the TLS-ALPN-01 challenge (RFC 8737 §6.2).
pub const ACME_TLS_ALPN: &[u8] = b"acme-tls/1";

/// The path prefix of HTTP-01 challenge requests (RFC 8555 §8.3).
pub const HTTP01_PREFIX: &str = "/.well-known/acme-challenge/";

/// A certificate ACME issued, ready to serve.
#[derive(Debug)]
pub struct Issued {
    pub key: Arc<CertifiedKey>,
    /// The DNS names in its SAN, lower case.
    pub names: Vec<String>,
    /// notBefore and notAfter, Unix seconds.
    pub not_before: i64,
    pub not_after: i64,
    /// Where it is stored, for metrics and logs.
    pub file: std::path::PathBuf,
}

impl Issued {
    /// When to renew: 30 days before expiry, or once two thirds of the
    /// lifetime have passed for certificates shorter than 90 days (a 6-day
    /// certificate would otherwise be renewed the moment it arrives). For
    /// Let's Encrypt's 90-day certificates both are day 60.
    pub fn renew_at(&self) -> i64 {
        let lifetime = (self.not_after - self.not_before).max(0);
        (self.not_after - 30 * 86_400).max(self.not_before + lifetime * 2 / 3)
    }

    /// Whether it serves every name in `domains`.
    pub fn covers(&self, domains: &[String]) -> bool {
        domains.iter().all(|d| self.names.contains(d))
    }
}

/// The ACME state the resolver and the HTTP-01 responder read: shared by
/// the snapshots of one `[tls.acme]` config and by its renewal task.
#[derive(Debug)]
pub struct Certs {
    pub config: Acme,
    issued: ArcSwapOption<Issued>,
    /// TLS-ALPN-01: the challenge certificate for each name being validated.
    alpn: Mutex<HashMap<String, Arc<CertifiedKey>>>,
    /// HTTP-01: key authorization by token.
    tokens: Mutex<HashMap<String, String>>,
}

impl Certs {
    /// The state for `config`: the certificate stored under `storage` when
    /// there is a valid one for these names (a stored file that cannot be
    /// read is logged, and a new certificate is ordered), none otherwise.
    /// Nothing here touches the network.
    pub fn open(config: Acme) -> Certs {
        let issued = store::load_certificate(&config);
        Certs {
            config,
            issued: ArcSwapOption::new(issued.map(Arc::new)),
            alpn: Mutex::default(),
            tokens: Mutex::default(),
        }
    }

    /// `previous` when it was opened for the same `[tls.acme]`, else a new
    /// one: a reload keeps the certificate in memory and the renewal task.
    pub fn reuse(config: &Acme, previous: Option<&Arc<Certs>>) -> Arc<Certs> {
        match previous {
            Some(p) if p.config.same_as(config) => p.clone(),
            _ => Arc::new(Certs::open(config.clone())),
        }
    }

    /// The certificate being served, if one has been issued.
    pub fn current(&self) -> Option<Arc<Issued>> {
        self.issued.load_full()
    }

    /// Whether `name` (lower case, no trailing dot) is one of the ACME names.
    pub fn covers(&self, name: &str) -> bool {
        self.config.domains.iter().any(|d| d == name)
    }

    /// The certificate for a TLS-ALPN-01 validation of `name`.
    pub fn challenge_certificate(&self, name: &str) -> Option<Arc<CertifiedKey>> {
        if self.config.challenge != AcmeChallenge::TlsAlpn01 {
            return None;
        }
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        self.alpn.lock().unwrap().get(&name).cloned()
    }

    /// The key authorization for an HTTP-01 request of `token`.
    pub fn http01_answer(&self, token: &str) -> Option<String> {
        if self.config.challenge != AcmeChallenge::Http01 {
            return None;
        }
        self.tokens.lock().unwrap().get(token).cloned()
    }

    /// Seconds until the current certificate should be renewed (0: now).
    fn renew_in(&self, now: SystemTime) -> Duration {
        let now = unix(now);
        match self.current() {
            Some(issued) if issued.covers(&self.config.domains) => {
                Duration::from_secs(issued.renew_at().saturating_sub(now).max(0) as u64)
            }
            _ => Duration::ZERO,
        }
    }

    /// One line for `sluice check`: what is stored and when it renews, or
    /// that a certificate will be ordered.
    pub fn describe(&self, now: SystemTime) -> String {
        let now = unix(now);
        let days = |t: i64| (t - now) as f64 / 86_400.0;
        match self.current() {
            Some(issued) => format!(
                "tls.acme: {} serves {} until notAfter {} ({:.1} days); renewal {}",
                issued.file.display(),
                issued.names.join(", "),
                issued.not_after,
                days(issued.not_after),
                if issued.covers(&self.config.domains) {
                    format!("in {:.1} days", days(issued.renew_at()).max(0.0))
                } else {
                    "at start: it lacks a name of tls.acme.domains".to_owned()
                }
            ),
            None => format!(
                "tls.acme: no certificate stored under {} yet for {}; ordered from {} when sluice starts",
                self.config.storage.display(),
                self.config.domains.join(", "),
                self.config.directory
            ),
        }
    }

    fn install(&self, issued: Issued) {
        self.issued.store(Some(Arc::new(issued)));
    }
}

fn unix(t: SystemTime) -> i64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn issued(not_before: i64, not_after: i64) -> Issued {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["a.test".to_owned()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let der = rustls_pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into());
        let signing = rustls::crypto::aws_lc_rs::default_provider()
            .key_provider
            .load_private_key(der)
            .unwrap();
        Issued {
            key: Arc::new(CertifiedKey::new(vec![cert.der().clone()], signing)),
            names: vec!["a.test".into()],
            not_before,
            not_after,
            file: "a.pem".into(),
        }
    }

    /// 90-day certificates renew at day 60 (30 days before expiry); longer
    /// ones 30 days before; short-lived ones after two thirds of their life.
    #[test]
    fn renewal_time() {
        let day = 86_400;
        assert_eq!(issued(0, 90 * day).renew_at(), 60 * day);
        assert_eq!(issued(0, 365 * day).renew_at(), 335 * day);
        assert_eq!(issued(0, 6 * day).renew_at(), 4 * day);
        assert_eq!(issued(1000, 1060).renew_at(), 1040);
    }
}
