//! Certificates made in the tests (rcgen): a CA and the server certificates it signs, written
//! as PEM files the way drainer is given them, and laid out as a Kubernetes Secret volume is
//! (files that are symlinks through `..data`, which a rotation swaps).

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use std::path::{Path, PathBuf};

/// A certificate authority of a test.
pub struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

/// A server certificate and its key, as PEM.
pub struct Pair {
    /// The certificate.
    pub cert: String,
    /// Its private key.
    pub key: String,
}

impl Ca {
    /// A new CA named `name`.
    pub fn new(name: &str) -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params.distinguished_name.push(DnType::CommonName, name);
        let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        Self { issuer }
    }

    /// The CA's certificate, as PEM (what `--cacert` is given).
    pub fn pem(&self) -> String {
        self.issuer.pem()
    }

    /// A server certificate for `names` (DNS names or IP addresses), signed by this CA.
    pub fn issue(&self, names: &[&str]) -> Pair {
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let mut params = CertificateParams::new(names).unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, "drainer");
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Pair {
            cert: cert.pem(),
            key: key.serialize_pem(),
        }
    }

    /// Writes the CA's certificate to `dir/NAME` and returns its path.
    pub fn write(&self, dir: &Path, name: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, self.pem()).unwrap();
        path
    }
}

/// A directory laid out as the kubelet lays out a Secret volume: `tls.crt`, `tls.key` and
/// `ca.crt` are symlinks to `..data/NAME`, and `..data` to a timestamped directory that a new
/// version replaces at once.
pub struct SecretDir {
    /// The directory.
    pub dir: PathBuf,
    version: u32,
}

impl SecretDir {
    /// The layout in `dir` (created), holding `pair` and `ca`.
    pub fn new(dir: &Path, pair: &Pair, ca: &Ca) -> Self {
        std::fs::create_dir_all(dir).unwrap();
        let mut secret = Self {
            dir: dir.to_owned(),
            version: 0,
        };
        secret.rotate(pair, ca);
        for name in ["tls.crt", "tls.key", "ca.crt"] {
            std::os::unix::fs::symlink(format!("..data/{name}"), dir.join(name)).unwrap();
        }
        secret
    }

    /// Replaces the contents as the kubelet does: a new version directory, then `..data`
    /// swapped to it by a rename.
    pub fn rotate(&mut self, pair: &Pair, ca: &Ca) {
        self.version += 1;
        let version = format!(
            "..2026_12_01_00_00_{:02}.{}",
            self.version,
            std::process::id()
        );
        let versioned = self.dir.join(&version);
        std::fs::create_dir(&versioned).unwrap();
        std::fs::write(versioned.join("tls.crt"), &pair.cert).unwrap();
        std::fs::write(versioned.join("tls.key"), &pair.key).unwrap();
        std::fs::write(versioned.join("ca.crt"), ca.pem()).unwrap();
        let tmp = self.dir.join("..data_tmp");
        std::os::unix::fs::symlink(&version, &tmp).unwrap();
        std::fs::rename(&tmp, self.dir.join("..data")).unwrap();
    }

    /// The certificate file.
    pub fn cert(&self) -> PathBuf {
        self.dir.join("tls.crt")
    }

    /// The key file.
    pub fn key(&self) -> PathBuf {
        self.dir.join("tls.key")
    }
}

/// A client that trusts only `ca` (no system roots), with a short timeout and no pooled
/// connections (so every request makes a new handshake).
pub fn client_trusting(ca: &Ca) -> reqwest::Client {
    let roots = reqwest::Certificate::from_pem_bundle(ca.pem().as_bytes()).unwrap();
    reqwest::Client::builder()
        .tls_certs_only(roots)
        .pool_max_idle_per_host(0)
        .timeout(std::time::Duration::from_secs(10))
        .build()
        .unwrap()
}
