//! TLS for drainer's API: the certificate chain and key it serves, read from PEM files
//! (`--tls-cert`, `--tls-key`) and read again whenever either file changes, so that new
//! connections get a rotated certificate without a restart (a Secret mounted from
//! cert-manager is rotated by swapping the `..data` symlink under its files). A pair that does
//! not load (unreadable, malformed, or a key that is not the certificate's) is logged and the
//! pair in use kept. HTTP/1.1 only, as [`super::serve`] serves.
//!
//! It only makes the acceptor and keeps its certificate current; the connections, their limits
//! and their timeouts (the handshake included) are [`super::serve`]'s.

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How often the certificate and key files are read to see whether they changed.
pub(crate) const RELOAD_EVERY: Duration = Duration::from_secs(2);

/// A certificate and key that cannot be served.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A file holds no PEM object of the kind wanted, or a malformed one.
    #[error("{path}: {what}")]
    Pem {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        what: String,
    },
    /// rustls refused the pair (an unsupported key, or a key that is not the certificate's).
    #[error("{cert} and {key} do not make a certificate drainer can serve: {source}")]
    Pair {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
        /// Why.
        #[source]
        source: rustls::Error,
    },
}

/// The two PEM files of a served certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// The certificate chain, the server's own certificate first.
    pub cert: PathBuf,
    /// Its private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

/// The contents of the two files, as last read.
type Contents = (Vec<u8>, Vec<u8>);

/// The served certificate, kept current with its files.
pub struct ServerTls {
    files: TlsFiles,
    provider: Arc<CryptoProvider>,
    current: Arc<Current>,
    acceptor: tokio_rustls::TlsAcceptor,
    /// What the files held when last read (loaded or not), so a bad pair is logged once.
    seen: Mutex<Contents>,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ServerTls({})", self.files.cert.display())
    }
}

/// The certificate handed to each new handshake.
#[derive(Debug)]
struct Current(RwLock<Arc<CertifiedKey>>);

impl ResolvesServerCert for Current {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.0.read().ok().map(|key| Arc::clone(&key))
    }
}

/// What one look at the files found.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Reload {
    /// The files hold what they held.
    Unchanged,
    /// A new pair was loaded: new connections get it.
    Loaded,
    /// A new pair did not load: the one in use stays.
    Refused(String),
}

impl ServerTls {
    /// Loads the pair `files` names; an error names the file and what is wrong with it.
    pub fn load(files: TlsFiles) -> Result<Self, Error> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let contents = read(&files)?;
        let key = certified(&files, &contents, &provider)?;
        let current = Arc::new(Current(RwLock::new(Arc::new(key))));
        let mut config = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()
            .map_err(|source| Error::Pair {
                cert: files.cert.clone(),
                key: files.key.clone(),
                source,
            })?
            .with_no_client_auth()
            .with_cert_resolver(Arc::clone(&current) as Arc<dyn ResolvesServerCert>);
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Self {
            files,
            provider,
            current,
            acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(config)),
            seen: Mutex::new(contents),
        })
    }

    /// The acceptor of new connections, which always serves the current pair.
    pub(crate) fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        self.acceptor.clone()
    }

    /// Reads the files again and, if they changed, loads the new pair.
    pub(crate) fn reload(&self) -> Reload {
        let contents = match read(&self.files) {
            Ok(contents) => contents,
            // A file missing for a moment (a symlink being swapped) is looked at next time.
            Err(e) => return Reload::Refused(e.to_string()),
        };
        let Ok(mut seen) = self.seen.lock() else {
            return Reload::Unchanged;
        };
        if *seen == contents {
            return Reload::Unchanged;
        }
        let loaded = certified(&self.files, &contents, &self.provider);
        *seen = contents;
        match loaded {
            Ok(key) => {
                if let Ok(mut current) = self.current.0.write() {
                    *current = Arc::new(key);
                }
                Reload::Loaded
            }
            Err(e) => Reload::Refused(e.to_string()),
        }
    }

    /// Looks at the files every `every` until `stop`, logging each change.
    pub async fn watch(self: Arc<Self>, every: Duration, stop: CancellationToken) {
        let mut refusal_logged = false;
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(every) => {}
            }
            match self.reload() {
                Reload::Unchanged => refusal_logged = false,
                Reload::Loaded => {
                    refusal_logged = false;
                    tracing::info!(cert = %self.files.cert.display(), "TLS certificate reloaded");
                }
                Reload::Refused(why) if !refusal_logged => {
                    refusal_logged = true;
                    tracing::warn!(error = %why, "new TLS certificate not loaded; serving the previous one");
                }
                Reload::Refused(_) => {}
            }
        }
    }
}

fn read(files: &TlsFiles) -> Result<Contents, Error> {
    let read = |path: &Path| {
        std::fs::read(path).map_err(|source| Error::Read {
            path: path.to_owned(),
            source,
        })
    };
    Ok((read(&files.cert)?, read(&files.key)?))
}

/// The pair the contents hold, checked: the key must be the first certificate's.
fn certified(
    files: &TlsFiles,
    (cert, key): &Contents,
    provider: &CryptoProvider,
) -> Result<CertifiedKey, Error> {
    let pem = |path: &Path, what: String| Error::Pem {
        path: path.to_owned(),
        what,
    };
    let chain = CertificateDer::pem_slice_iter(cert)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem(&files.cert, format!("not a PEM certificate chain: {e}")))?;
    if chain.is_empty() {
        return Err(pem(&files.cert, "no CERTIFICATE in it".into()));
    }
    let key = PrivateKeyDer::from_pem_slice(key)
        .map_err(|e| pem(&files.key, format!("no PEM private key in it: {e}")))?;
    CertifiedKey::from_der(chain, key, provider).map_err(|source| Error::Pair {
        cert: files.cert.clone(),
        key: files.key.clone(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(name: &str) -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec![name.to_owned()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        (cert.pem(), key.serialize_pem())
    }

    fn write(files: &TlsFiles, (cert, key): &(String, String)) {
        std::fs::write(&files.cert, cert).unwrap();
        std::fs::write(&files.key, key).unwrap();
    }

    fn served(tls: &ServerTls) -> Vec<u8> {
        tls.current.0.read().unwrap().cert[0].to_vec()
    }

    #[test]
    fn a_changed_pair_is_loaded_and_a_bad_one_refused_once() {
        let dir = tempfile::tempdir().unwrap();
        let files = TlsFiles {
            cert: dir.path().join("tls.crt"),
            key: dir.path().join("tls.key"),
        };
        let first = pair("first");
        write(&files, &first);
        let tls = ServerTls::load(files.clone()).unwrap();
        let served_first = served(&tls);
        assert_eq!(tls.reload(), Reload::Unchanged);

        let second = pair("second");
        write(&files, &second);
        assert_eq!(tls.reload(), Reload::Loaded);
        assert_ne!(served(&tls), served_first);
        let served_second = served(&tls);

        // The certificate of one pair with the key of another: refused once, then unchanged.
        let third = pair("third");
        write(&files, &(third.0.clone(), second.1.clone()));
        assert!(matches!(tls.reload(), Reload::Refused(why) if why.contains("tls.crt")));
        assert_eq!(tls.reload(), Reload::Unchanged);
        assert_eq!(served(&tls), served_second);

        // A key file gone for a moment: refused each time, and the pair in use kept.
        std::fs::remove_file(&files.key).unwrap();
        assert!(matches!(tls.reload(), Reload::Refused(why) if why.contains("tls.key")));
        write(&files, &third);
        assert_eq!(tls.reload(), Reload::Loaded);
    }

    #[test]
    fn a_pair_that_does_not_load_names_its_file() {
        let dir = tempfile::tempdir().unwrap();
        let files = TlsFiles {
            cert: dir.path().join("tls.crt"),
            key: dir.path().join("tls.key"),
        };
        let (cert, key) = pair("drainer");
        let cases = [
            ("not PEM".to_owned(), key.clone(), "tls.crt"),
            (cert.clone(), "not PEM".to_owned(), "tls.key"),
            (key.clone(), key.clone(), "no CERTIFICATE"),
            (cert.clone(), pair("other").1, "do not make a certificate"),
        ];
        for (cert, key, expected) in cases {
            write(&files, &(cert, key));
            let error = ServerTls::load(files.clone()).unwrap_err().to_string();
            assert!(error.contains(expected), "{expected} in: {error}");
        }
    }
}
