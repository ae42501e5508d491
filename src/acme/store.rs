//! `[tls.acme] storage`: the account's credentials and the certificate with
//! its key, as files an operator can read (PEM) and back up.
//!
//! ```text
//! storage/
//!   account-<directory>.json     instant-acme's credentials (key inside), 0600
//!   <first domain>.pem           the chain ACME issued
//!   <first domain>-key.pem       its key (PKCS#8), 0600
//! ```
//! Files are written to a temporary name and renamed, so a crash never
//! leaves half a certificate for the next start to trip over.

use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use super::{unix, Issued};
use crate::config::Acme;

/// The stored certificate for `config`'s names, if there is one that covers
/// them all and has not expired. A file that is there but unusable is
/// logged once (a new certificate will be ordered).
pub(super) fn load_certificate(config: &Acme) -> Option<Issued> {
    let (cert, key) = certificate_files(config);
    if !cert.exists() {
        return None;
    }
    match read_certificate(&cert, &key) {
        Ok(issued) if issued.not_after <= unix(SystemTime::now()) => {
            tracing::warn!(file = %cert.display(), "stored ACME certificate has expired; ordering a new one");
            None
        }
        Ok(issued) if !issued.covers(&config.domains) => {
            tracing::info!(file = %cert.display(), names = ?issued.names, "stored ACME certificate does not cover every name in tls.acme.domains; serving it for the names it has and ordering a new one");
            Some(issued)
        }
        Ok(issued) => Some(issued),
        Err(e) => {
            tracing::warn!(file = %cert.display(), error = %e, "stored ACME certificate is unusable; ordering a new one");
            None
        }
    }
}

/// Reads a chain and its key into something to serve.
pub(super) fn read_certificate(cert: &Path, key: &Path) -> Result<Issued, String> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .and_then(|iter| iter.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("cannot read {}: {e}", cert.display()))?;
    let private = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| format!("cannot read {}: {e}", key.display()))?;
    from_chain(chain, private, cert.to_path_buf())
}

/// A chain (leaf first) and its key as an [`Issued`].
pub(super) fn from_chain(
    chain: Vec<CertificateDer<'static>>,
    private: PrivateKeyDer<'static>,
    file: PathBuf,
) -> Result<Issued, String> {
    let leaf = chain
        .first()
        .ok_or_else(|| "no certificate in the chain".to_owned())
        .and_then(|der| crate::tls::Leaf::parse(der))?;
    let key = crate::tls::certified_key(chain, private)?;
    Ok(Issued {
        key,
        names: leaf.names,
        not_before: leaf.not_before,
        not_after: leaf.not_after,
        file,
    })
}

/// Writes the chain and key where [`load_certificate`] finds them.
pub(super) fn save_certificate(
    config: &Acme,
    chain_pem: &str,
    key_pem: &str,
) -> io::Result<PathBuf> {
    ensure_dir(&config.storage)?;
    let (cert, key) = certificate_files(config);
    write_atomically(&key, key_pem.as_bytes(), 0o600)?;
    write_atomically(&cert, chain_pem.as_bytes(), 0o644)?;
    Ok(cert)
}

pub(super) fn load_account(config: &Acme) -> io::Result<Option<String>> {
    match std::fs::read_to_string(account_file(config)) {
        Ok(s) => Ok(Some(s)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

pub(super) fn save_account(config: &Acme, json: &str) -> io::Result<PathBuf> {
    ensure_dir(&config.storage)?;
    let file = account_file(config);
    write_atomically(&file, json.as_bytes(), 0o600)?;
    Ok(file)
}

/// One account per directory: a staging account is not a production one.
pub(super) fn account_file(config: &Acme) -> PathBuf {
    let name: String = config
        .directory
        .trim_start_matches("https://")
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    config.storage.join(format!("account-{name}.json"))
}

fn certificate_files(config: &Acme) -> (PathBuf, PathBuf) {
    let first = &config.domains[0];
    (
        config.storage.join(format!("{first}.pem")),
        config.storage.join(format!("{first}-key.pem")),
    )
}

/// The directory, private to the user sluice runs as (it holds keys).
fn ensure_dir(dir: &Path) -> io::Result<()> {
    if !dir.is_dir() {
        std::fs::create_dir_all(dir)?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    }
    Ok(())
}

fn write_atomically(path: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, path)
}
