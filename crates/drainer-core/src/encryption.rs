//! Client-side encryption of a store's objects, when the operator asks for it: the keys, the
//! sealed object format and the sealed names of files. [`crate::store`] applies it as a layer
//! under everything that reads or writes objects, so the snapshot engine, the relay and the
//! restore API see plain objects while the store holds only sealed ones.
//!
//! Keys come from a file (a Kubernetes Secret mounted as one): one key per line, 32 random
//! bytes in base64, optionally after a label (`2026-12 q8Xb…`); `#` starts a comment. The
//! first key seals new objects; every key opens what it sealed, so a key is rotated by adding
//! a new first line and keeping the old ones. File names are sealed with the *last* key (the
//! oldest, the store's first), which therefore stays in the file for the store's life.
//!
//! An object is sealed in chunks of [`CHUNK`] plain bytes, each on its own:
//!
//! ```text
//! "DRE1" | key fingerprint (4) | nonce (12, random) | AES-256-GCM(chunk) | tag (16)
//! ```
//!
//! with the object's key (relative to the store's root) as associated data, so an object moved
//! to another key does not open. A chunk names the key that sealed it (its fingerprint, a
//! hash of the key, never the key), so rotation needs no rewrite. Sizes and ranges map
//! between plain and sealed bytes by arithmetic alone ([`sealed_len`], [`plain_len`],
//! [`sealed_range`]), so a ranged read of a large file costs one request, as in the clear.
//! A file's name (everything after `files/` in its key) is sealed deterministically with
//! AES-256-GCM-SIV under the volume and snapshot it belongs to, so the same name always maps
//! to the same key (resumed uploads and incremental snapshots find their objects) and listing
//! opens back to the names: the store reveals a file's size, rounded up to a chunk, and
//! whether two files of one snapshot share a name, but neither contents nor names.

mod ring;

pub use ring::{KeyRing, RELOAD_EVERY, Reload};

use aws_lc_rs::aead::{AES_256_GCM, AES_256_GCM_SIV, Aad, LessSafeKey, Nonce, UnboundKey};
use base64::Engine as _;
use std::fmt;
use std::ops::Range;

/// Plain bytes per sealed chunk.
pub const CHUNK: u64 = 64 * 1024;
const MAGIC: [u8; 4] = *b"DRE1";
const FINGERPRINT_LEN: usize = 4;
const NONCE_LEN: usize = 12;
const TAG_LEN: usize = 16;
const HEADER_LEN: usize = MAGIC.len() + FINGERPRINT_LEN + NONCE_LEN;
/// Bytes a sealed chunk adds to its plain bytes.
pub(crate) const OVERHEAD: u64 = (HEADER_LEN + TAG_LEN) as u64;
const SEALED_CHUNK: u64 = CHUNK + OVERHEAD;
/// The longest segment of a sealed name (file systems allow 255 bytes).
const NAME_SEGMENT: usize = 200;

/// Why a chunk or a name does not open.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OpenError {
    /// The bytes are not a chunk sealed by drainer (a plain object, or not drainer's).
    #[error("it is not sealed by drainer's encryption (a plain object, or another tool's)")]
    NotSealed,
    /// The chunk was sealed with a key the key file does not hold.
    #[error("it was sealed with key {0}, which is not in the key file")]
    UnknownKey(String),
    /// The chunk or name does not authenticate: damaged, changed, or moved from another key.
    #[error("it does not authenticate: damaged, changed, or moved from another object")]
    Damaged,
}

/// One key: its fingerprint, its label, and the ciphers derived from it.
struct Key {
    fingerprint: [u8; FINGERPRINT_LEN],
    label: String,
    contents: LessSafeKey,
    names: LessSafeKey,
}

/// The keys of an encrypted store: the first seals, every one opens, the last seals names.
pub struct Keys {
    keys: Vec<Key>,
}

impl fmt::Debug for Keys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.keys.iter().map(|k| (&k.label, hex(&k.fingerprint))))
            .finish()
    }
}

impl Keys {
    /// Reads a key file (see the module documentation); the error is one line naming the file.
    pub fn read(path: &std::path::Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("encryption key file {}: {e}", path.display()))?;
        Self::parse(&text).map_err(|e| format!("encryption key file {}: {e}", path.display()))
    }

    /// Parses the text of a key file.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut keys = Vec::new();
        for (number, line) in text.lines().enumerate() {
            let line = line.split('#').next().unwrap_or_default().trim();
            if line.is_empty() {
                continue;
            }
            let key = parse_line(line).map_err(|e| format!("line {}: {e}", number + 1))?;
            if keys.iter().any(|k: &Key| k.fingerprint == key.fingerprint) {
                return Err(format!("line {}: the same key is given twice", number + 1));
            }
            keys.push(key);
        }
        if keys.is_empty() {
            return Err("no key in it (one per line: 32 random bytes in base64, e.g. from `head -c 32 /dev/urandom | base64`)".into());
        }
        Ok(Self { keys })
    }

    /// The label and fingerprint of the key that seals new objects.
    pub fn sealing_key(&self) -> String {
        let key = &self.keys[0];
        format!("{} ({})", key.label, hex(&key.fingerprint))
    }

    /// Seals `plain`, the whole of an object (or a part of one that starts at a chunk
    /// boundary), stored under `object` (its key relative to the store's root). The tests'
    /// (the store seals in place, [`Keys::seal_in_place`]).
    #[cfg(test)]
    pub(crate) fn seal(&self, object: &str, plain: &[u8]) -> bytes::Bytes {
        let mut buf = bytes::BytesMut::with_capacity(sealed_len(plain.len() as u64) as usize);
        buf.extend_from_slice(plain);
        self.seal_in_place(object, &mut buf);
        buf.freeze()
    }

    /// Seals `buf` as [`Keys::seal`] does, in place: the chunks are moved to their sealed
    /// offsets from the last to the first and sealed where they land, so sealing a part needs
    /// no second buffer of its size (a large buffer grows in place).
    pub(crate) fn seal_in_place(&self, object: &str, buf: &mut bytes::BytesMut) {
        let key = &self.keys[0];
        let plain = buf.len();
        buf.resize(sealed_len(plain as u64) as usize, 0);
        let chunks = (plain as u64).div_ceil(CHUNK) as usize;
        for index in (0..chunks).rev() {
            let from = index * CHUNK as usize;
            let len = (plain - from).min(CHUNK as usize);
            let at = index * SEALED_CHUNK_LEN;
            buf.copy_within(from..from + len, at + HEADER_LEN);
            let mut nonce = [0u8; NONCE_LEN];
            aws_lc_rs::rand::fill(&mut nonce).expect("the system's random source failed");
            buf[at..at + MAGIC.len()].copy_from_slice(&MAGIC);
            buf[at + MAGIC.len()..at + MAGIC.len() + FINGERPRINT_LEN]
                .copy_from_slice(&key.fingerprint);
            buf[at + HEADER_LEN - NONCE_LEN..at + HEADER_LEN].copy_from_slice(&nonce);
            let body = at + HEADER_LEN..at + HEADER_LEN + len;
            let tag = key
                .contents
                .seal_in_place_separate_tag(
                    Nonce::assume_unique_for_key(nonce),
                    Aad::from(object.as_bytes()),
                    &mut buf[body.clone()],
                )
                .expect("AES-GCM seals any chunk of 64 KiB");
            buf[body.end..body.end + TAG_LEN].copy_from_slice(tag.as_ref());
        }
    }

    /// Opens one sealed chunk of `object` in place; the plain bytes are the slice returned.
    pub fn open<'a>(&self, object: &str, chunk: &'a mut [u8]) -> Result<&'a [u8], OpenError> {
        if chunk.len() <= HEADER_LEN + TAG_LEN || chunk[..MAGIC.len()] != MAGIC {
            return Err(OpenError::NotSealed);
        }
        let fingerprint = &chunk[MAGIC.len()..MAGIC.len() + FINGERPRINT_LEN];
        let key = self
            .keys
            .iter()
            .find(|k| k.fingerprint == fingerprint)
            .ok_or_else(|| OpenError::UnknownKey(hex(fingerprint)))?;
        let nonce = Nonce::try_assume_unique_for_key(&chunk[HEADER_LEN - NONCE_LEN..HEADER_LEN])
            .map_err(|_| OpenError::NotSealed)?;
        let plain = key
            .contents
            .open_in_place(
                nonce,
                Aad::from(object.as_bytes()),
                &mut chunk[HEADER_LEN..],
            )
            .map_err(|_| OpenError::Damaged)?;
        Ok(plain)
    }

    /// Seals a file's name (`a/b%20c`) deterministically, under `context` (the key up to
    /// `files`): base64url segments of at most 200 characters, joined by `/`.
    pub(crate) fn seal_name(&self, context: &str, name: &str) -> String {
        let key = self.names_key();
        let mut sealed = name.as_bytes().to_vec();
        key.names
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key([0; NONCE_LEN]),
                Aad::from(context.as_bytes()),
                &mut sealed,
            )
            .expect("AES-GCM-SIV seals any name");
        let text = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(sealed);
        text.as_bytes()
            .chunks(NAME_SEGMENT)
            .map(|s| std::str::from_utf8(s).expect("base64 is ASCII"))
            .collect::<Vec<_>>()
            .join("/")
    }

    /// Opens a name sealed by [`Keys::seal_name`] under the same `context`.
    pub(crate) fn open_name(&self, context: &str, sealed: &str) -> Result<String, OpenError> {
        let joined: String = sealed.split('/').collect();
        let mut bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(joined)
            .map_err(|_| OpenError::NotSealed)?;
        let plain = self
            .names_key()
            .names
            .open_in_place(
                Nonce::assume_unique_for_key([0; NONCE_LEN]),
                Aad::from(context.as_bytes()),
                &mut bytes,
            )
            .map_err(|_| OpenError::Damaged)?;
        String::from_utf8(plain.to_vec()).map_err(|_| OpenError::Damaged)
    }

    fn names_key(&self) -> &Key {
        self.keys.last().expect("a key file holds at least one key")
    }
}

/// Parses `[LABEL] BASE64` into a key.
fn parse_line(line: &str) -> Result<Key, String> {
    let words: Vec<&str> = line.split_whitespace().collect();
    let (label, encoded) = match words[..] {
        [encoded] => (None, encoded),
        [label, encoded] => (Some(label), encoded),
        _ => return Err("expected `[LABEL] KEY`, the key in base64".into()),
    };
    let secret = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .or_else(|_| base64::engine::general_purpose::STANDARD_NO_PAD.decode(encoded))
        .map_err(|_| "the key is not base64".to_owned())?;
    let secret: [u8; 32] = secret.as_slice().try_into().map_err(|_| {
        format!(
            "a key is 32 random bytes in base64 (e.g. from `head -c 32 /dev/urandom | base64`), not {} bytes",
            secret.len()
        )
    })?;
    let derive = |context: &str| blake3::derive_key(context, &secret);
    let fingerprint: [u8; FINGERPRINT_LEN] = derive("drainer 2026-12 key fingerprint")
        [..FINGERPRINT_LEN]
        .try_into()
        .expect("four bytes");
    let cipher = |algorithm, context: &str| {
        LessSafeKey::new(UnboundKey::new(algorithm, &derive(context)).expect("a 32-byte key"))
    };
    Ok(Key {
        fingerprint,
        label: label.map_or_else(|| hex(&fingerprint), str::to_owned),
        contents: cipher(&AES_256_GCM, "drainer 2026-12 object contents"),
        names: cipher(&AES_256_GCM_SIV, "drainer 2026-12 object names"),
    })
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Whether `bytes` (an object's first bytes) look like a sealed chunk: what a reader without
/// keys checks to say "this store is encrypted" instead of "this object is damaged".
pub(crate) fn looks_sealed(bytes: &[u8]) -> bool {
    bytes.len() > HEADER_LEN + TAG_LEN && bytes.starts_with(&MAGIC)
}

/// The sealed size of `plain` bytes.
pub(crate) fn sealed_len(plain: u64) -> u64 {
    plain + plain.div_ceil(CHUNK) * OVERHEAD
}

/// The plain size of a sealed object of `sealed` bytes; `None` if no sealed object has it.
pub(crate) fn plain_len(sealed: u64) -> Option<u64> {
    let (full, rest) = (sealed / SEALED_CHUNK, sealed % SEALED_CHUNK);
    match rest {
        0 => Some(full * CHUNK),
        rest if rest > OVERHEAD => Some(full * CHUNK + rest - OVERHEAD),
        _ => None,
    }
}

/// The sealed bytes that hold the plain `range` (whole chunks; the end may pass the object's).
pub(crate) fn sealed_range(plain: Range<u64>) -> Range<u64> {
    let first = plain.start / CHUNK;
    let end = plain.end.div_ceil(CHUNK).max(first);
    first * SEALED_CHUNK..end * SEALED_CHUNK
}

/// The plain offset of the first byte of the sealed chunk at `sealed_offset`.
pub(crate) fn plain_offset(sealed_offset: u64) -> u64 {
    sealed_offset / SEALED_CHUNK * CHUNK
}

/// The bytes of one sealed chunk (the last of an object may be shorter).
pub(crate) const SEALED_CHUNK_LEN: usize = SEALED_CHUNK as usize;

#[cfg(test)]
mod tests {
    use super::*;

    const KEY_A: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
    const KEY_B: &str = "ICEiIyQlJicoKSorLC0uLzAxMjM0NTY3ODk6Ozw9Pj8=";

    fn keys(text: &str) -> Keys {
        Keys::parse(text).unwrap()
    }

    fn open_all(keys: &Keys, object: &str, sealed: &[u8]) -> Result<Vec<u8>, OpenError> {
        let mut plain = Vec::new();
        for chunk in sealed.chunks(SEALED_CHUNK_LEN) {
            plain.extend_from_slice(keys.open(object, &mut chunk.to_vec())?);
        }
        Ok(plain)
    }

    #[test]
    fn sealed_objects_open_to_what_was_sealed_at_every_size() {
        let keys = keys(KEY_A);
        for size in [0, 1, 100, CHUNK - 1, CHUNK, CHUNK + 1, 3 * CHUNK + 7] {
            let plain: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
            let sealed = keys.seal("volumes/ns/pvc/x", &plain);
            assert_eq!(sealed.len() as u64, sealed_len(size), "size {size}");
            assert_eq!(plain_len(sealed.len() as u64), Some(size), "size {size}");
            assert_eq!(open_all(&keys, "volumes/ns/pvc/x", &sealed).unwrap(), plain);
            // A run of 16 plain bytes in the sealed object would be plain text showing
            // through (a shorter run turns up in random bytes by chance: one byte in 256).
            if size >= 16 {
                assert!(
                    !sealed.windows(16).any(|w| w == &plain[..16]),
                    "plain bytes show through at size {size}"
                );
            }
        }
    }

    #[test]
    fn sealing_in_place_opens_like_sealing_into_a_new_buffer() {
        let keys = keys(KEY_A);
        for size in [0, 5, CHUNK, CHUNK + 1, 5 * CHUNK - 3] {
            let plain: Vec<u8> = (0..size).map(|i| (i % 241) as u8).collect();
            let mut buf = bytes::BytesMut::from(&plain[..]);
            keys.seal_in_place("k", &mut buf);
            assert_eq!(buf.len() as u64, sealed_len(size), "size {size}");
            assert_eq!(open_all(&keys, "k", &buf).unwrap(), plain, "size {size}");
        }
    }

    #[test]
    fn a_chunk_opens_only_under_its_object_with_a_known_key_and_unchanged() {
        let (a, b) = (keys(KEY_A), keys(KEY_B));
        let sealed = a.seal("k", b"secret data");
        assert_eq!(open_all(&a, "other", &sealed), Err(OpenError::Damaged));
        let unknown = open_all(&b, "k", &sealed).unwrap_err();
        assert!(matches!(unknown, OpenError::UnknownKey(_)), "{unknown:?}");
        let mut flipped = sealed.to_vec();
        *flipped.last_mut().unwrap() ^= 1;
        assert_eq!(open_all(&a, "k", &flipped), Err(OpenError::Damaged));
        let plain = vec![b'x'; 100];
        assert_eq!(open_all(&a, "k", &plain), Err(OpenError::NotSealed));
    }

    #[test]
    fn rotation_seals_with_the_first_key_and_opens_with_any() {
        let old = keys(KEY_A);
        let rotated = keys(&format!("new {KEY_B}\nold {KEY_A}\n"));
        let before = old.seal("k", b"before");
        let after = rotated.seal("k", b"after");
        assert_eq!(open_all(&rotated, "k", &before).unwrap(), b"before");
        assert_eq!(open_all(&rotated, "k", &after).unwrap(), b"after");
        assert!(open_all(&old, "k", &after).is_err());
        // Names stay sealed with the last (oldest) key, so they map as before rotation.
        assert_eq!(old.seal_name("ctx", "a/b"), rotated.seal_name("ctx", "a/b"));
    }

    #[test]
    fn names_are_sealed_deterministically_per_context_and_open_back() {
        let keys = keys(KEY_A);
        let long = "d/".repeat(300) + "file";
        for name in ["a", "dir/file.txt", "%20x\\x01", long.as_str()] {
            let sealed = keys.seal_name("volumes/n/p/snapshots/1/files", name);
            assert_eq!(
                sealed,
                keys.seal_name("volumes/n/p/snapshots/1/files", name)
            );
            assert!(name.len() < 4 || !sealed.contains(name), "{sealed}");
            assert!(sealed.split('/').all(|s| !s.is_empty() && s.len() <= 200));
            assert_eq!(
                keys.open_name("volumes/n/p/snapshots/1/files", &sealed),
                Ok(name.to_owned())
            );
            assert_eq!(
                keys.open_name("volumes/n/p/snapshots/2/files", &sealed),
                Err(OpenError::Damaged)
            );
        }
        assert_ne!(keys.seal_name("c", "a"), keys.seal_name("c", "b"));
    }

    #[test]
    fn ranges_map_to_whole_sealed_chunks() {
        let s = SEALED_CHUNK;
        assert_eq!(sealed_range(0..1), 0..s);
        assert_eq!(sealed_range(0..CHUNK), 0..s);
        assert_eq!(sealed_range(CHUNK - 1..CHUNK + 1), 0..2 * s);
        assert_eq!(sealed_range(2 * CHUNK..3 * CHUNK), 2 * s..3 * s);
        assert_eq!(plain_offset(2 * s), 2 * CHUNK);
        assert_eq!(plain_len(5), None);
        assert_eq!(plain_len(OVERHEAD), None);
    }

    #[test]
    fn bad_key_files_are_refused_with_the_line() {
        let cases = [
            ("", "no key in it"),
            ("# only a comment\n", "no key in it"),
            ("bm90IDMyIGJ5dGVz", "line 1: a key is 32 random bytes"),
            ("a b c", "line 1: expected"),
            ("x\n%%%", "line 1: the key is not base64"),
            (
                &format!("{KEY_A}\n{KEY_A}"),
                "line 2: the same key is given twice",
            ),
        ];
        for (text, expected) in cases {
            let error = Keys::parse(text).unwrap_err();
            assert!(error.starts_with(expected), "{text:?}: {error}");
        }
        let labelled = keys(&format!("2026-12 {KEY_A} # the first key"));
        assert!(labelled.sealing_key().starts_with("2026-12 ("));
        assert!(!format!("{labelled:?}").contains(KEY_A));
    }
}
