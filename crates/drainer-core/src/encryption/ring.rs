//! The keys a running drainer uses, kept current with their file: `drainer serve` reads the
//! key file again every [`RELOAD_EVERY`] and takes a changed one without a restart (a key is
//! rotated by adding a new first line to the Secret), so new objects are sealed with the new
//! first key while every key still opens what it sealed.
//!
//! A reload never makes stored data unreadable: a new file that does not parse, that drops a
//! key in use (every object that key sealed would no longer open), or whose last key (the one
//! that seals file names, for the store's life) is another, is refused with an error naming
//! the file, and the keys in use are kept. Dropping a key is a restart's deliberate act.
//! Each store operation takes the keys current when it starts ([`KeyRing::current`]).

use super::{Keys, hex};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How often `drainer serve` reads the key file to see whether it changed.
pub const RELOAD_EVERY: Duration = Duration::from_secs(2);

/// The keys in use, which a reload may replace.
#[derive(Clone)]
pub struct KeyRing(Arc<RwLock<Arc<Keys>>>);

impl std::fmt::Debug for KeyRing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.current().fmt(f)
    }
}

impl From<Arc<Keys>> for KeyRing {
    fn from(keys: Arc<Keys>) -> Self {
        Self(Arc::new(RwLock::new(keys)))
    }
}

impl From<Keys> for KeyRing {
    fn from(keys: Keys) -> Self {
        Arc::new(keys).into()
    }
}

/// What a reload of the key file did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reload {
    /// The file says what is in use.
    Unchanged,
    /// The file's new keys are in use; the fingerprints of those added.
    Loaded(Vec<String>),
    /// The file's new contents were refused (why, naming the file); the keys in use are kept.
    Refused(String),
}

impl KeyRing {
    /// The keys in use now.
    pub fn current(&self) -> Arc<Keys> {
        Arc::clone(&self.0.read().expect("key ring lock"))
    }

    /// Takes the keys of the file at `path` if they may replace those in use (see the module
    /// documentation).
    pub fn reload(&self, path: &Path) -> Reload {
        let new = match Keys::read(path) {
            Ok(keys) => keys,
            Err(why) => return Reload::Refused(why),
        };
        let current = self.current();
        let fingerprints = |keys: &Keys| -> Vec<String> {
            keys.keys.iter().map(|k| hex(&k.fingerprint)).collect()
        };
        let (old, now) = (fingerprints(&current), fingerprints(&new));
        if old == now {
            return Reload::Unchanged;
        }
        let file = path.display();
        if let Some(dropped) = old.iter().find(|f| !now.contains(f)) {
            return Reload::Refused(format!(
                "encryption key file {file}: key {dropped} is gone from it, and what it sealed would no longer open; restart drainer to drop a key"
            ));
        }
        if old.last() != now.last() {
            return Reload::Refused(format!(
                "encryption key file {file}: its last key must stay {} (it seals file names for the store's life); add new keys before it",
                old.last().map(String::as_str).unwrap_or_default()
            ));
        }
        let added = now.into_iter().filter(|f| !old.contains(f)).collect();
        *self.0.write().expect("key ring lock") = Arc::new(new);
        Reload::Loaded(added)
    }

    /// Reloads the key file at `path` every `every` until `stop` is cancelled, logging what
    /// changed and what was refused.
    pub async fn watch(self, path: PathBuf, every: Duration, stop: CancellationToken) {
        let mut ticks = tokio::time::interval(every);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = ticks.tick() => {}
            }
            let (ring, file) = (self.clone(), path.clone());
            let reload = tokio::task::spawn_blocking(move || ring.reload(&file)).await;
            match reload {
                Ok(Reload::Unchanged) => {}
                Ok(Reload::Loaded(added)) => tracing::info!(
                    file = %path.display(),
                    sealing_key = %self.current().sealing_key(),
                    ?added,
                    "encryption keys reloaded"
                ),
                Ok(Reload::Refused(why)) => {
                    tracing::error!(file = %path.display(), %why, "encryption keys not reloaded; the keys in use are kept")
                }
                Err(e) => {
                    tracing::error!(file = %path.display(), error = %e, "reading the encryption keys failed")
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: u8) -> String {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD.encode([n; 32])
    }

    fn write(path: &Path, keys: &[u8]) {
        let lines: Vec<String> = keys.iter().map(|n| format!("k{n} {}", key(*n))).collect();
        std::fs::write(path, lines.join("\n")).unwrap();
    }

    #[test]
    fn a_rotated_key_file_is_taken_and_one_that_would_lose_data_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys");
        write(&path, &[1]);
        let ring = KeyRing::from(Keys::read(&path).unwrap());
        let first = ring.current().sealing_key();
        assert_eq!(ring.reload(&path), Reload::Unchanged);

        // Rotation: a new first key; the old one stays, last, and still seals names.
        write(&path, &[2, 1]);
        assert!(matches!(ring.reload(&path), Reload::Loaded(added) if added.len() == 1));
        assert!(ring.current().sealing_key().starts_with("k2 "));
        assert_ne!(ring.current().sealing_key(), first);
        assert_eq!(ring.reload(&path), Reload::Unchanged);

        for (keys, says) in [
            (&[2u8][..], "is gone from it"),
            (&[3, 2, 1, 4][..], "its last key must stay"),
        ] {
            write(&path, keys);
            let refused = ring.reload(&path);
            assert!(
                matches!(&refused, Reload::Refused(why) if why.contains(says) && why.contains("keys")),
                "{keys:?}: {refused:?}"
            );
            assert!(ring.current().sealing_key().starts_with("k2 "), "kept");
        }
        std::fs::write(&path, "not a key").unwrap();
        assert!(matches!(ring.reload(&path), Reload::Refused(why) if why.contains("line 1")));
        std::fs::remove_file(&path).unwrap();
        assert!(matches!(ring.reload(&path), Reload::Refused(_)));
        assert!(ring.current().sealing_key().starts_with("k2 "), "kept");
    }

    #[test]
    fn what_a_reloaded_ring_seals_opens_with_the_keys_before_and_after() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys");
        write(&path, &[1]);
        let ring = KeyRing::from(Keys::read(&path).unwrap());
        let before = ring.current().seal("o", b"sealed before");
        write(&path, &[2, 1]);
        assert!(matches!(ring.reload(&path), Reload::Loaded(_)));
        let after = ring.current().seal("o", b"sealed after");
        let keys = ring.current();
        for (sealed, plain) in [
            (before, &b"sealed before"[..]),
            (after, &b"sealed after"[..]),
        ] {
            let mut chunk = sealed.to_vec();
            assert_eq!(keys.open("o", &mut chunk).unwrap(), plain);
        }
    }
}
