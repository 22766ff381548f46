//! The flags of the core's own parts, shared by every command that copies or restores: the
//! snapshot engine's tuning ([`EngineArgs`]) and the parsers of durations the commands use.
//! Plain `clap` types: the binary's command line flattens them into its subcommands.

use clap::Args;
use std::time::Duration;

/// Tuning of the snapshot engine.
#[derive(Debug, Clone, Args)]
pub struct EngineArgs {
    /// Files read and written at once [default: 16; 64 for `drainer mover`, whose every file
    /// makes a round trip to the drainer; 256 for `restore --drainer`, whose small files travel
    /// 64 to a batch, four batches at once].
    #[arg(long, env = "DRAINER_CONCURRENCY", value_parser = clap::value_parser!(u16).range(1..=256))]
    pub concurrency: Option<u16>,
    /// Part size for multipart uploads, in MiB: a power of two from 8 to 512 (files up to this
    /// size are one request).
    #[arg(long, env = "DRAINER_PART_SIZE_MIB", default_value_t = 8, value_parser = parse_part_size)]
    pub part_size_mib: u32,
    /// Memory for file data in flight, in MiB (bounds the process whatever the file sizes).
    #[arg(long, env = "DRAINER_BUFFER_MIB", default_value_t = 48, value_parser = clap::value_parser!(u32).range(16..=4096))]
    pub buffer_mib: u32,
    /// Compression of stored objects: `off`, `zstd` (level 3) or `zstd:LEVEL` (1 to 19). Each
    /// file is compressed on its own and stored compressed only when that saves at least an
    /// eighth (a large file: its first part must); sparse files are stored raw. A mover
    /// follows its drainer's setting unless given its own. [default: off]
    #[arg(long, env = "DRAINER_COMPRESSION", value_name = "off|zstd[:LEVEL]")]
    pub compression: Option<crate::snapshot::Compression>,
    /// Timeout of one object-store request, in seconds.
    #[arg(long, env = "DRAINER_STORE_TIMEOUT", default_value = "120", value_parser = parse_seconds)]
    pub store_timeout: Duration,
}

/// Client-side encryption of the store's objects (see [`crate::encryption`]).
#[derive(Debug, Clone, Default, Args)]
pub struct EncryptionArgs {
    /// A file of encryption keys (e.g. a mounted Secret), one per line: 32 random bytes in
    /// base64, optionally after a label. Objects are sealed with the first key and opened
    /// with any; file names are sealed with the last. Without it objects are stored plain.
    #[arg(long, env = "DRAINER_ENCRYPTION_KEYS", value_name = "FILE")]
    pub encryption_keys: Option<std::path::PathBuf>,
}

impl EncryptionArgs {
    /// The keys of the file given, if any; a file that cannot be read or parsed is a
    /// [`Usage`] error naming it.
    pub fn keys(&self) -> Result<Option<std::sync::Arc<crate::encryption::Keys>>, Usage> {
        let Some(path) = &self.encryption_keys else {
            return Ok(None);
        };
        crate::encryption::Keys::read(path)
            .map(|keys| Some(std::sync::Arc::new(keys)))
            .map_err(Usage)
    }

    /// `store` sealed with these keys, or as it is without them.
    pub fn apply(&self, store: crate::store::Store) -> Result<crate::store::Store, Usage> {
        Ok(self.apply_reloading(store)?.0)
    }

    /// `store` sealed with these keys, and the keys in use with the file to watch for
    /// rotations (see [`crate::encryption::KeyRing::watch`]); without a key file, the store as
    /// it is.
    pub fn apply_reloading(
        &self,
        store: crate::store::Store,
    ) -> Result<(crate::store::Store, Option<KeyFile>), Usage> {
        let (Some(path), Some(keys)) = (&self.encryption_keys, self.keys()?) else {
            return Ok((store, None));
        };
        tracing::info!(store = store.url(), key = %keys.sealing_key(), "objects are encrypted");
        let ring = crate::encryption::KeyRing::from(keys);
        let file = KeyFile {
            path: path.clone(),
            ring: ring.clone(),
        };
        Ok((store.encrypted(ring), Some(file)))
    }
}

/// A key file and the keys in use from it, for a long-running process to keep current.
#[derive(Debug, Clone)]
pub struct KeyFile {
    /// The file.
    pub path: std::path::PathBuf,
    /// The keys the store uses.
    pub ring: crate::encryption::KeyRing,
}

/// Files in flight when `--concurrency` is not given.
pub const DEFAULT_CONCURRENCY: u16 = 16;
/// Files in flight in a mover when `--concurrency` is not given.
pub const DEFAULT_MOVER_CONCURRENCY: u16 = 64;

impl EngineArgs {
    /// Files in flight: `--concurrency`, or [`DEFAULT_CONCURRENCY`].
    pub fn concurrency(&self) -> usize {
        self.concurrency.unwrap_or(DEFAULT_CONCURRENCY).into()
    }

    /// The snapshot engine's options from these flags.
    pub fn copy_options(&self, check_hash: bool) -> crate::snapshot::CopyOptions {
        const MIB: u64 = 1024 * 1024;
        crate::snapshot::CopyOptions {
            concurrency: self.concurrency(),
            part_size: u64::from(self.part_size_mib) * MIB,
            buffer_bytes: u64::from(self.buffer_mib) * MIB,
            check_hash,
            origin: None,
            compression: self.compression.unwrap_or_default(),
        }
    }
}

/// Parses a duration given in whole seconds.
pub fn parse_seconds(s: &str) -> Result<Duration, String> {
    s.parse::<u64>()
        .map(Duration::from_secs)
        .map_err(|_| format!("{s:?} is not a whole number of seconds"))
}

/// A whole number of seconds, at least one.
pub fn parse_positive_seconds(s: &str) -> Result<Duration, String> {
    match parse_seconds(s)? {
        d if d.is_zero() => Err("must be at least 1 second".to_owned()),
        d => Ok(d),
    }
}

/// A part size in MiB: a power of two, so each part's hash can be computed on its own (see
/// `snapshot::part_hash`), and at least 8 (S3's smallest part is 5 MiB).
fn parse_part_size(text: &str) -> Result<u32, String> {
    match text.parse::<u32>() {
        Ok(mib) if (8..=512).contains(&mib) && mib.is_power_of_two() => Ok(mib),
        _ => Err("a power of two from 8 to 512 (MiB)".to_owned()),
    }
}

/// A `STORE_URL`, checked as [`crate::store::check_url`] does, so a URL that would be read
/// as something else (`file:relative`, `file://`, a dropped query) is a usage error.
pub fn parse_store_url(text: &str) -> Result<String, String> {
    crate::store::check_url(text)
        .map(|_| text.to_owned())
        .map_err(|e| e.to_string())
}

/// Malformed arguments: the command exits 2, as for the argument parser's own errors.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Usage(pub String);

/// The certificates of a PEM bundle (`--cacert`, `--mover-cacert`): at least one, all well
/// formed, or a one-line reason.
pub fn pem_certificates(
    pem: &[u8],
) -> Result<Vec<rustls::pki_types::CertificateDer<'static>>, String> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let ders = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("not a PEM certificate bundle: {e}"))?;
    if ders.is_empty() {
        return Err("no CERTIFICATE in it".into());
    }
    Ok(ders)
}
