//! Where things live in a store: volume prefixes, snapshot ids, and object keys for files.
//!
//! ```text
//! {root}/volumes/{ns}/{pvc}/latest                        {"snapshot": ID}
//! {root}/volumes/{ns}/{pvc}/snapshots/{ID}/files/{path}   the file's bytes (zstd where compressed)
//! {root}/volumes/{ns}/{pvc}/snapshots/{ID}/manifest.jsonl every entry, see `manifest`
//! {root}/volumes/{ns}/{pvc}/snapshots/{ID}/snapshot.json  written last: the snapshot is complete
//! ```
//!
//! File keys keep the file's own name wherever the store allows it, so a first snapshot can be
//! browsed as plain files. The mapping from names to key segments is injective, which is what
//! lets two different names never share an object.

use crate::volume::VolumeId;
use object_store::path::{Path, PathPart};
use std::fmt;
use std::str::FromStr;

/// Longest key segment written: a file name on a local store may have 255 bytes, and
/// object_store's local backend stages uploads as `NAME#N`, so leave room for that suffix.
const MAX_SEGMENT: usize = 230;

/// Identifier of a snapshot: its UTC creation time and a random suffix, so ids sort by age.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SnapshotId(String);

impl SnapshotId {
    /// A new id for a snapshot taken now.
    pub fn generate() -> Self {
        let now = chrono::Utc::now().format("%Y%m%dT%H%M%S%.3fZ").to_string();
        Self(format!(
            "{}-{:04x}",
            now.replace('.', ""),
            rand::random::<u16>()
        ))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for SnapshotId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for SnapshotId {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let valid = !s.is_empty()
            && s.len() <= 64
            && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
        if valid {
            Ok(Self(s.to_owned()))
        } else {
            Err(format!(
                "{s:?} is not a snapshot id (letters, digits and '-')"
            ))
        }
    }
}

/// Which snapshot a command reads: a given id, the volume's latest, or the newest completed
/// before a time (see `select`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SnapshotSelector {
    /// The snapshot the volume's `latest` pointer names.
    Latest,
    /// One snapshot by id.
    Id(SnapshotId),
    /// The newest complete snapshot completed before this time.
    Before(chrono::DateTime<chrono::Utc>),
}

impl FromStr for SnapshotSelector {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "latest" => Ok(Self::Latest),
            id => id.parse().map(Self::Id),
        }
    }
}

/// Keys of one volume inside a store.
#[derive(Debug, Clone)]
pub struct VolumeLayout {
    prefix: Path,
}

impl VolumeLayout {
    /// The layout of `volume` under the store prefix `root`.
    pub fn new(root: &Path, volume: &VolumeId) -> Self {
        let prefix = root
            .clone()
            .join("volumes")
            .join(volume.namespace.as_str())
            .join(volume.name.as_str());
        Self { prefix }
    }

    /// The volume's prefix.
    pub fn prefix(&self) -> &Path {
        &self.prefix
    }

    /// The `latest` pointer.
    pub fn latest(&self) -> Path {
        self.prefix.clone().join("latest")
    }

    /// The prefix that holds every snapshot.
    pub fn snapshots(&self) -> Path {
        self.prefix.clone().join("snapshots")
    }

    /// The prefix of one snapshot.
    pub fn snapshot(&self, id: &SnapshotId) -> Path {
        self.snapshots().join(id.as_str())
    }

    /// The snapshot's manifest.
    pub fn manifest(&self, id: &SnapshotId) -> Path {
        self.snapshot(id).join("manifest.jsonl")
    }

    /// The snapshot's summary, whose presence marks the snapshot complete.
    pub fn summary(&self, id: &SnapshotId) -> Path {
        self.snapshot(id).join("snapshot.json")
    }

    /// The key, relative to the volume prefix, under which snapshot `id` stores the file at
    /// `rel_path` (slash-separated bytes, as in the manifest).
    pub(crate) fn file_key(id: &SnapshotId, rel_path: &[u8]) -> String {
        let mut key = format!("snapshots/{id}/files");
        for name in rel_path.split(|b| *b == b'/') {
            key.push('/');
            key.push_str(&segment_key(name));
        }
        key
    }

    /// The absolute key of a manifest-relative object key; `None` when the key is not one
    /// that drainer writes (a manifest must not point outside its volume).
    pub fn object(&self, relative_key: &str) -> Option<Path> {
        let relative = Path::parse(relative_key).ok()?;
        let mut parts = relative.parts();
        if parts.next()?.as_ref() != "snapshots" {
            return None;
        }
        Some(self.prefix.parts().chain(relative.parts()).collect())
    }
}

/// The key segment for one file name: the name itself, except that ASCII control characters,
/// `%`, `\` and `#` become `%XX` (control characters are not valid in keys, `#` followed by
/// digits is reserved by object_store's local backend, `%` is our escape, and Azure turns a `\`
/// in a blob name into `/`). Bytes that are not UTF-8 become `%xHH`; a segment longer than a
/// file name may be is cut and ends in `%~` and a hash. Every `%` of a name is escaped, so `%x`
/// and `%~` cannot come from a name, and no two names share a segment. (Snapshots made before
/// wrote `\xHH` for such bytes; their manifests name those keys, which restore reads as they
/// are.)
pub(crate) fn segment_key(name: &[u8]) -> String {
    let mut segment = String::with_capacity(name.len());
    for chunk in name.utf8_chunks() {
        for c in chunk.valid().chars() {
            if c.is_ascii_control() || matches!(c, '%' | '\\' | '#') {
                segment.push_str(&format!("%{:02X}", c as u32));
            } else {
                segment.push(c);
            }
        }
        for byte in chunk.invalid() {
            segment.push_str(&format!("%x{byte:02X}"));
        }
    }
    if segment.len() > MAX_SEGMENT {
        let digest = blake3::hash(name).to_hex();
        let mut cut = MAX_SEGMENT - 18;
        while !segment.is_char_boundary(cut) || segment.as_bytes()[cut - 2..cut].contains(&b'%') {
            cut -= 1;
        }
        segment.truncate(cut);
        segment.push_str("%~");
        segment.push_str(&digest[..16]);
    }
    debug_assert!(PathPart::parse(&segment).is_ok(), "{segment:?}");
    segment
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_plain_names() {
        assert_eq!(segment_key(b"report 2024.txt"), "report 2024.txt");
        assert_eq!(segment_key("données".as_bytes()), "données");
        assert_eq!(segment_key(b"a#1"), "a%231");
        assert_eq!(segment_key(b"tab\there"), "tab%09here");
    }

    #[test]
    fn keys_hold_no_backslash() {
        assert_eq!(segment_key(b"dir-\xc3"), "dir-%xC3");
        assert_eq!(segment_key(b"a\\b"), "a%5Cb");
        for name in [&b"a\xffb"[..], b"\\", b"x\\xFF", b"\xff\xfe%x"] {
            assert!(!segment_key(name).contains('\\'), "{name:?}");
        }
    }

    #[test]
    fn encodes_names_injectively() {
        let names: [&[u8]; 10] = [
            b"a\xffb",
            b"a%xFFb",
            b"a%25xFFb",
            b"a\\xFFb",
            b"a%5CxFFb",
            b"a%b",
            b"a%25b",
            b"new\nline",
            b"x~y",
            b"x%7Ey",
        ];
        let keys: std::collections::HashSet<_> = names.iter().map(|n| segment_key(n)).collect();
        assert_eq!(keys.len(), names.len(), "{keys:?}");
    }

    #[test]
    fn bounds_segment_length() {
        let long = "#".repeat(255);
        let key = segment_key(long.as_bytes());
        assert!(key.len() <= MAX_SEGMENT, "{}", key.len());
        let other = format!("{}$", "#".repeat(254));
        assert_ne!(key, segment_key(other.as_bytes()));
        let cjk = "語".repeat(76); // 228 bytes, kept as is
        assert_eq!(segment_key(cjk.as_bytes()), cjk);
    }

    #[test]
    fn snapshot_ids_sort_by_time_and_parse() {
        let a = SnapshotId::generate();
        std::thread::sleep(std::time::Duration::from_millis(2));
        let b = SnapshotId::generate();
        assert!(a < b);
        assert_eq!(a.as_str().parse::<SnapshotId>().unwrap(), a);
        assert!("../x".parse::<SnapshotId>().is_err());
        assert!("".parse::<SnapshotId>().is_err());
    }
}
