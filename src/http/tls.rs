//! HTTPS on the main listener (`CAP_HTTP_TLS_CERT`, `CAP_HTTP_TLS_KEY`), for
//! installations without a TLS-terminating ingress.
//!
//! The certificate is re-read when its files change, without a restart:
//! [`ReloadingCert`] looks at the files' metadata at most every
//! [`RELOAD_CHECK`], during a handshake, and serves a new pair from the next
//! handshake on. A pair that does not load (half-written, a key that does
//! not match the certificate) is logged and the previous one kept, so a
//! renewal tool that writes the two files one after the other never takes
//! the listener down.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// How often, at most, the files are looked at.
pub const RELOAD_CHECK: Duration = Duration::from_secs(2);

/// Where the certificate chain and its key are (PEM).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// The server configuration for the main listener: TLS 1.2 and 1.3 with
/// the ring provider, the certificate from [`ReloadingCert`]. Fails when
/// the files do not load now.
pub fn server_config(files: &TlsFiles) -> Result<rustls::ServerConfig, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let resolver = ReloadingCert::load(files.clone(), provider.clone())?;
    Ok(rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(resolver)))
}

/// Serves the certificate in [`TlsFiles`], re-reading it when the files change.
#[derive(Debug)]
pub struct ReloadingCert {
    files: TlsFiles,
    provider: Arc<CryptoProvider>,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    current: Arc<CertifiedKey>,
    /// The files as last read (loaded or refused): read again only when
    /// they differ from this.
    seen: Stamps,
    checked_at: Instant,
}

/// What tells us a file changed: a rename (a Kubernetes Secret's update, an
/// atomic write) changes the inode, an edit in place the time or length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    modified: Option<SystemTime>,
    inode: u64,
    len: u64,
}

type Stamps = (Option<Stamp>, Option<Stamp>);

fn stamp(path: &Path) -> Option<Stamp> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).ok().map(|m| Stamp {
        modified: m.modified().ok(),
        inode: m.ino(),
        len: m.len(),
    })
}

impl ReloadingCert {
    pub fn load(files: TlsFiles, provider: Arc<CryptoProvider>) -> Result<ReloadingCert, String> {
        let seen = (stamp(&files.cert), stamp(&files.key));
        let current = Arc::new(read(&files, &provider)?);
        Ok(ReloadingCert {
            files,
            provider,
            state: Mutex::new(State {
                current,
                seen,
                checked_at: Instant::now(),
            }),
        })
    }

    /// The pair to serve, re-read first when the files changed since the
    /// last look (at most every [`RELOAD_CHECK`]).
    fn current(&self) -> Arc<CertifiedKey> {
        let mut state = self.state.lock().unwrap();
        if state.checked_at.elapsed() >= RELOAD_CHECK {
            state.checked_at = Instant::now();
            let now = (stamp(&self.files.cert), stamp(&self.files.key));
            if now != state.seen {
                state.seen = now;
                match read(&self.files, &self.provider) {
                    Ok(pair) => {
                        state.current = Arc::new(pair);
                        tracing::info!(cert = %self.files.cert.display(), "TLS certificate reloaded");
                    }
                    Err(error) => tracing::error!(
                        %error,
                        "TLS certificate files changed but do not load; still serving the previous certificate"
                    ),
                }
            }
        }
        state.current.clone()
    }
}

impl ResolvesServerCert for ReloadingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

/// Reads the chain and the key, and checks that they belong together.
fn read(files: &TlsFiles, provider: &CryptoProvider) -> Result<CertifiedKey, String> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&files.cert)
        .and_then(|certs| certs.collect())
        .map_err(|e| format!("CAP_HTTP_TLS_CERT {}: {e}", files.cert.display()))?;
    if chain.is_empty() {
        return Err(format!(
            "CAP_HTTP_TLS_CERT {}: no certificate in it",
            files.cert.display()
        ));
    }
    // The PEM text is wiped once parsed; the parsed key goes to rustls.
    let key_pem = zeroize::Zeroizing::new(
        std::fs::read(&files.key)
            .map_err(|e| format!("CAP_HTTP_TLS_KEY {}: {e}", files.key.display()))?,
    );
    let key = PrivateKeyDer::from_pem_slice(&key_pem)
        .map_err(|e| format!("CAP_HTTP_TLS_KEY {}: {e}", files.key.display()))?;
    CertifiedKey::from_der(chain, key, provider).map_err(|e| {
        format!(
            "CAP_HTTP_TLS_KEY {} does not fit CAP_HTTP_TLS_CERT {}: {e}",
            files.key.display(),
            files.cert.display()
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_pair(dir: &Path, name: &str) -> (String, String) {
        let cert = rcgen::generate_simple_self_signed(vec![name.to_string()]).unwrap();
        let (cert_pem, key_pem) = (cert.cert.pem(), cert.signing_key.serialize_pem());
        std::fs::write(dir.join("cert.pem"), &cert_pem).unwrap();
        std::fs::write(dir.join("key.pem"), &key_pem).unwrap();
        (cert_pem, key_pem)
    }

    fn served(resolver: &ReloadingCert) -> Vec<u8> {
        resolver.current().cert[0].to_vec()
    }

    #[test]
    fn changed_files_are_served_after_the_check_and_broken_ones_keep_the_old_pair() {
        let dir = tempfile::tempdir().unwrap();
        let files = TlsFiles {
            cert: dir.path().join("cert.pem"),
            key: dir.path().join("key.pem"),
        };
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        write_pair(dir.path(), "one.test");
        let resolver = ReloadingCert::load(files.clone(), provider.clone()).unwrap();
        let first = served(&resolver);

        // A certificate without its new key yet: refused, the old pair stays.
        let other = rcgen::generate_simple_self_signed(vec!["two.test".to_string()]).unwrap();
        std::fs::write(&files.cert, other.cert.pem()).unwrap();
        resolver.state.lock().unwrap().checked_at -= RELOAD_CHECK;
        assert_eq!(served(&resolver), first, "a mismatched pair is not served");

        // The key follows: the new pair is served.
        std::fs::write(&files.key, other.signing_key.serialize_pem()).unwrap();
        assert_eq!(served(&resolver), first, "not before the next check");
        resolver.state.lock().unwrap().checked_at -= RELOAD_CHECK;
        assert_eq!(served(&resolver), other.cert.der().to_vec());

        // Garbage: the pair before it stays.
        std::fs::write(&files.cert, "not a certificate").unwrap();
        resolver.state.lock().unwrap().checked_at -= RELOAD_CHECK;
        assert_eq!(served(&resolver), other.cert.der().to_vec());

        std::fs::remove_file(&files.key).unwrap();
        let err = ReloadingCert::load(files, provider).unwrap_err();
        assert!(err.contains("CAP_HTTP_TLS"), "{err}");
    }
}
