//! The manifest: one JSON object per line describing every entry of a snapshot.
//!
//! ```text
//! {"drainer_manifest":1,"volume":"shop/data-web-4","snapshot":"…","parent":"…"|null,"created":"…"}
//! {"path":".","type":"dir","mode":16877,"uid":0,"gid":0,"mtime_ns":…}
//! {"path":"a.txt","type":"file","mode":33188,…,"size":5,"ctime_ns":…,"blake3":"…","object":"snapshots/…/files/a.txt"}
//! {"path_b64":"…","type":"symlink",…,"target":"../a.txt"}
//! {"path":"sock","type":"socket",…,"skipped":"sockets are not copied"}
//! {"path":"secret","type":"file",…,"size":9,"skipped":"unreadable: Permission denied (os error 13)"}
//! {"path":"z-same","type":"file",…,"nlink":2,"link":"a.txt","blake3":"…","object":"snapshots/…/files/a.txt"}
//! {"path":"app.log","type":"file",…,"size":90000,"blake3":"…","object":"…","compression":"zstd","stored_size":8123}
//! {"end":{"entries":6,"files":2,"bytes":10,"skipped":1,"unreadable":1}}
//! ```
//!
//! Hard links: a regular file with more than one link records `nlink`; every entry after the
//! first of the same file (same device and inode) names that first entry in `link` (`link_b64`
//! when not UTF-8) and repeats its hash and object, so a reader that ignores `link` restores a
//! copy of the same bytes.
//!
//! Compression: an entry whose object is compressed says how (`compression`) and the object's
//! size (`stored_size`); its `size` and `blake3` stay the raw content's. Without them (every
//! manifest written before compression existed) the object holds the raw bytes.
//!
//! Entries come in walk order: depth first, siblings sorted by their bytes, which is the order
//! of [`path_order`]. Paths and symlink targets that are not valid UTF-8 are written as base64
//! (`path_b64`, `target_b64`). The final `end` line makes a truncated manifest detectable.
//! This module only encodes and decodes; it does no I/O of its own.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde::{Deserialize, Serialize};
use std::cmp::Ordering;

/// Version written in every manifest header.
pub(crate) const FORMAT_VERSION: u32 = 1;

/// What kind of filesystem object an entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EntryKind {
    /// A directory.
    Dir,
    /// A regular file.
    File,
    /// A symbolic link (stored as a link, never followed).
    Symlink,
    /// A named pipe (recorded, not copied).
    Fifo,
    /// A Unix socket (recorded, not copied).
    Socket,
    /// A character device (recorded, not copied).
    CharDevice,
    /// A block device (recorded, not copied).
    BlockDevice,
}

impl EntryKind {
    /// Whether entries of this kind are recorded but have no content in a snapshot.
    pub(crate) fn is_special(self) -> bool {
        matches!(
            self,
            Self::Fifo | Self::Socket | Self::CharDevice | Self::BlockDevice
        )
    }
}

/// Where a file's bytes are and what they hash to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Content {
    /// BLAKE3 of the bytes, lower-case hex.
    pub blake3: String,
    /// The object holding the bytes, relative to the volume prefix.
    pub object: String,
    /// How the object is compressed, when it is (`None`: the object holds the raw bytes, as
    /// in every manifest written before compression existed).
    pub compressed: Option<super::compress::Compressed>,
}

/// One entry of a snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Slash-separated path relative to the volume root; `.` is the root itself.
    pub path: Vec<u8>,
    /// The kind of object.
    pub kind: EntryKind,
    /// Permission and type bits (`st_mode`).
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Modification time, nanoseconds since the epoch.
    pub mtime_ns: i64,
    /// Status-change time, nanoseconds since the epoch (change detection only).
    pub ctime_ns: i64,
    /// Size in bytes (files and symlinks).
    pub size: u64,
    /// Inode number at snapshot time (change detection only).
    pub ino: u64,
    /// The content of a regular file.
    pub content: Option<Content>,
    /// A symlink's target, as raw bytes.
    pub target: Option<Vec<u8>>,
    /// For a regular file that could not be read: why. Such a file has no content in the
    /// snapshot, and the snapshot says so (see `Totals::unreadable`).
    pub unreadable: Option<String>,
    /// For a sparse file: its data extents, `[offset, length]` in order; its object holds
    /// their bytes one after the other (see `sparse`). `None` for a plain object.
    pub extents: Option<Vec<super::sparse::Extent>>,
    /// 512-byte blocks allocated when the file was scanned (whether it may have holes); not
    /// written to the manifest.
    pub blocks: u64,
    /// For a regular file with hard links: its link count (`st_nlink`) at copy time; 0 when it
    /// has one link, or is not a regular file.
    pub nlink: u64,
    /// For a hard link: the path of the snapshot's first entry of the same file (earlier in
    /// walk order), whose content this entry shares.
    pub link: Option<Vec<u8>>,
    /// The device the entry was scanned on (with `ino`, what finds hard links); not written to
    /// the manifest.
    pub dev: u64,
}

impl Entry {
    /// Whether `self` (a freshly scanned file) looks unchanged since `previous` was recorded:
    /// same kind, size, mtime, ctime and inode.
    pub(crate) fn unchanged_since(&self, previous: &Entry) -> bool {
        self.kind == previous.kind
            && self.size == previous.size
            && self.mtime_ns == previous.mtime_ns
            && self.ctime_ns == previous.ctime_ns
            && self.ino == previous.ino
    }
}

/// The first line of a manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Header {
    /// Format version ([`FORMAT_VERSION`]).
    pub drainer_manifest: u32,
    /// `namespace/pvc`.
    pub volume: String,
    /// The snapshot id.
    pub snapshot: String,
    /// The snapshot this one was taken incrementally against.
    pub parent: Option<String>,
    /// When the snapshot was started (RFC 3339).
    pub created: String,
}

/// Counts written on the last line of a manifest.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Totals {
    /// Every entry, the root included.
    pub entries: u64,
    /// Regular files.
    pub files: u64,
    /// Bytes in regular files.
    pub bytes: u64,
    /// Special files recorded but not copied.
    pub skipped: u64,
    /// Regular files that could not be read, recorded without content.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub unreadable: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl Totals {
    /// Counts one more entry.
    pub fn add(&mut self, entry: &Entry) {
        self.entries += 1;
        match entry.kind {
            EntryKind::File if entry.unreadable.is_some() => self.unreadable += 1,
            EntryKind::File => {
                self.files += 1;
                self.bytes += entry.size;
            }
            kind if kind.is_special() => self.skipped += 1,
            _ => {}
        }
    }
}

/// One decoded line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Line {
    /// The header.
    Header(Header),
    /// An entry.
    Entry(Entry),
    /// The end marker.
    End(Totals),
}

/// A manifest line that could not be decoded.
#[derive(Debug, thiserror::Error)]
#[error("manifest line {line}: {reason}")]
pub(crate) struct DecodeError {
    /// 1-based line number.
    pub line: u64,
    /// What is wrong.
    pub reason: String,
}

#[derive(Serialize, Deserialize)]
struct WireEntry {
    #[serde(skip_serializing_if = "Option::is_none")]
    path: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    path_b64: Option<String>,
    #[serde(rename = "type")]
    kind: EntryKind,
    mode: u32,
    uid: u32,
    gid: u32,
    mtime_ns: i64,
    #[serde(default)]
    ctime_ns: i64,
    #[serde(default)]
    size: u64,
    #[serde(default)]
    ino: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    blake3: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    object: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    compression: Option<super::compress::Codec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    stored_size: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    target: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    target_b64: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    skipped: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    extents: Option<Vec<super::sparse::Extent>>,
    #[serde(default, skip_serializing_if = "is_zero")]
    nlink: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    link: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    link_b64: Option<String>,
}

#[derive(Serialize, Deserialize)]
struct WireEnd {
    end: Totals,
}

fn split_bytes(bytes: &[u8]) -> (Option<String>, Option<String>) {
    match std::str::from_utf8(bytes) {
        Ok(text) => (Some(text.to_owned()), None),
        Err(_) => (None, Some(BASE64.encode(bytes))),
    }
}

fn join_bytes(text: Option<String>, b64: Option<String>) -> Result<Option<Vec<u8>>, String> {
    match (text, b64) {
        (Some(text), None) => Ok(Some(text.into_bytes())),
        (None, Some(b64)) => BASE64
            .decode(b64)
            .map(Some)
            .map_err(|e| format!("bad base64: {e}")),
        (None, None) => Ok(None),
        (Some(_), Some(_)) => Err("both text and base64 forms given".into()),
    }
}

/// Encodes the header as one line (with its newline).
pub(crate) fn encode_header(header: &Header) -> Vec<u8> {
    let mut line = serde_json::to_vec(header).expect("header serializes");
    line.push(b'\n');
    line
}

/// Encodes the end marker as one line (with its newline).
pub(crate) fn encode_end(totals: &Totals) -> Vec<u8> {
    let mut line = serde_json::to_vec(&WireEnd {
        end: totals.clone(),
    })
    .expect("totals serialize");
    line.push(b'\n');
    line
}

/// Appends one entry as a line (with its newline) to `out`.
pub(crate) fn encode_entry(entry: &Entry, out: &mut Vec<u8>) {
    let (path, path_b64) = split_bytes(&entry.path);
    let (target, target_b64) = match &entry.target {
        Some(t) => split_bytes(t),
        None => (None, None),
    };
    let (link, link_b64) = match &entry.link {
        Some(l) => split_bytes(l),
        None => (None, None),
    };
    let compressed = entry.content.as_ref().and_then(|c| c.compressed);
    let wire = WireEntry {
        path,
        path_b64,
        kind: entry.kind,
        mode: entry.mode,
        uid: entry.uid,
        gid: entry.gid,
        mtime_ns: entry.mtime_ns,
        ctime_ns: entry.ctime_ns,
        size: entry.size,
        ino: entry.ino,
        blake3: entry.content.as_ref().map(|c| c.blake3.clone()),
        object: entry.content.as_ref().map(|c| c.object.clone()),
        compression: compressed.map(|c| c.codec),
        stored_size: compressed.map(|c| c.stored_size),
        target,
        target_b64,
        skipped: match &entry.unreadable {
            Some(reason) => Some(format!("unreadable: {reason}")),
            None => entry
                .kind
                .is_special()
                .then(|| "special files are recorded, not copied".to_owned()),
        },
        extents: entry.extents.clone(),
        nlink: entry.nlink,
        link,
        link_b64,
    };
    serde_json::to_writer(&mut *out, &wire).expect("entry serializes");
    out.push(b'\n');
}

/// Decodes line number `line_no` (1-based) of a manifest.
pub(crate) fn decode_line(line_no: u64, text: &[u8]) -> Result<Line, DecodeError> {
    let error = |reason: String| DecodeError {
        line: line_no,
        reason,
    };
    if line_no == 1 {
        let header: Header = serde_json::from_slice(text).map_err(|e| error(e.to_string()))?;
        if header.drainer_manifest != FORMAT_VERSION {
            return Err(error(format!(
                "unsupported manifest version {}",
                header.drainer_manifest
            )));
        }
        return Ok(Line::Header(header));
    }
    if text.starts_with(b"{\"end\"") {
        let end: WireEnd = serde_json::from_slice(text).map_err(|e| error(e.to_string()))?;
        return Ok(Line::End(end.end));
    }
    let wire: WireEntry = serde_json::from_slice(text).map_err(|e| error(e.to_string()))?;
    entry_from_wire(wire).map(Line::Entry).map_err(error)
}

fn entry_from_wire(wire: WireEntry) -> Result<Entry, String> {
    let path = join_bytes(wire.path, wire.path_b64)?.ok_or("entry without a path")?;
    let target = join_bytes(wire.target, wire.target_b64)?;
    let link = join_bytes(wire.link, wire.link_b64)?;
    let unreadable = match (wire.kind, &wire.skipped) {
        (EntryKind::File, Some(skipped)) => Some(
            skipped
                .strip_prefix("unreadable: ")
                .unwrap_or(skipped)
                .to_owned(),
        ),
        _ => None,
    };
    let compressed = match (wire.compression, wire.stored_size) {
        (Some(codec), Some(stored_size)) => {
            Some(super::compress::Compressed { codec, stored_size })
        }
        (None, None) => None,
        _ => return Err("compression and stored_size come together".into()),
    };
    let content = match (wire.kind, wire.blake3, wire.object) {
        (EntryKind::File, Some(blake3), Some(object)) if unreadable.is_none() => Some(Content {
            blake3,
            object,
            compressed,
        }),
        (EntryKind::File, None, None) if unreadable.is_some() => None,
        (EntryKind::File, _, _) => {
            return Err("file entry needs blake3 and object, or a reason it was skipped".into());
        }
        _ => None,
    };
    if wire.kind == EntryKind::Symlink && target.is_none() {
        return Err("symlink entry without a target".into());
    }
    Ok(Entry {
        path,
        kind: wire.kind,
        mode: wire.mode,
        uid: wire.uid,
        gid: wire.gid,
        mtime_ns: wire.mtime_ns,
        ctime_ns: wire.ctime_ns,
        size: wire.size,
        ino: wire.ino,
        content,
        target,
        unreadable,
        extents: wire.extents,
        blocks: 0,
        nlink: wire.nlink,
        link,
        dev: 0,
    })
}

/// The walk order of manifest paths: component by component, each compared as bytes, so a
/// directory comes right before its contents. (Mapping `/` to the lowest byte does exactly
/// that, as names never contain NUL.) The root `.` sorts first.
pub(crate) fn path_order(a: &[u8], b: &[u8]) -> Ordering {
    match (a == b".", b == b".") {
        (true, true) => return Ordering::Equal,
        (true, false) => return Ordering::Less,
        (false, true) => return Ordering::Greater,
        _ => {}
    }
    let key = |byte: &u8| if *byte == b'/' { 0 } else { *byte };
    a.iter().map(key).cmp(b.iter().map(key))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(path: &[u8], kind: EntryKind) -> Entry {
        Entry {
            path: path.to_vec(),
            kind,
            mode: 0o100644,
            uid: 1,
            gid: 2,
            mtime_ns: 1_700_000_000_123_456_789,
            ctime_ns: 5,
            size: 3,
            ino: 9,
            content: (kind == EntryKind::File).then(|| Content {
                blake3: "ab".into(),
                object: "snapshots/x/files/a".into(),
                compressed: None,
            }),
            target: (kind == EntryKind::Symlink).then(|| b"t\xff".to_vec()),
            unreadable: None,
            extents: None,
            blocks: 0,
            nlink: 0,
            link: None,
            dev: 0,
        }
    }

    #[test]
    fn entries_round_trip_including_raw_bytes() {
        for e in [
            entry(b"a/b c", EntryKind::File),
            entry(b"bad\xfe\n", EntryKind::Symlink),
            entry(b"sock", EntryKind::Socket),
            entry(b".", EntryKind::Dir),
            Entry {
                content: None,
                unreadable: Some("Permission denied (os error 13)".into()),
                ..entry(b"secret", EntryKind::File)
            },
            Entry {
                extents: Some(vec![[0, 4096], [1 << 30, 10]]),
                ..entry(b"sparse", EntryKind::File)
            },
            Entry {
                nlink: 3,
                ..entry(b"first", EntryKind::File)
            },
            Entry {
                content: Some(Content {
                    blake3: "cd".into(),
                    object: "snapshots/x/files/z".into(),
                    compressed: Some(super::super::compress::Compressed {
                        codec: super::super::compress::Codec::Zstd,
                        stored_size: 1,
                    }),
                }),
                ..entry(b"zipped", EntryKind::File)
            },
            Entry {
                nlink: 3,
                link: Some(b"first".to_vec()),
                ..entry(b"second", EntryKind::File)
            },
            Entry {
                nlink: 2,
                link: Some(b"raw-\xff".to_vec()),
                ..entry(b"third", EntryKind::File)
            },
        ] {
            let mut line = Vec::new();
            encode_entry(&e, &mut line);
            assert_eq!(line.iter().filter(|b| **b == b'\n').count(), 1);
            let decoded = decode_line(2, &line[..line.len() - 1]).unwrap();
            assert_eq!(decoded, Line::Entry(e));
        }
    }

    #[test]
    fn header_and_end_round_trip() {
        let header = Header {
            drainer_manifest: FORMAT_VERSION,
            volume: "a/b".into(),
            snapshot: "s".into(),
            parent: None,
            created: "now".into(),
        };
        let line = encode_header(&header);
        assert_eq!(
            decode_line(1, &line[..line.len() - 1]).unwrap(),
            Line::Header(header)
        );
        let totals = Totals {
            entries: 3,
            files: 1,
            bytes: 7,
            skipped: 1,
            unreadable: 2,
        };
        let line = encode_end(&totals);
        assert_eq!(
            decode_line(9, &line[..line.len() - 1]).unwrap(),
            Line::End(totals)
        );
    }

    #[test]
    fn a_manifest_line_without_compression_reads_as_raw_and_raw_writes_none() {
        // A file entry as manifests were written before compression existed.
        let old = br#"{"path":"a","type":"file","mode":33188,"uid":0,"gid":0,"mtime_ns":1,"size":5,"blake3":"ab","object":"snapshots/s/files/a"}"#;
        let Line::Entry(e) = decode_line(2, old).unwrap() else {
            panic!("an entry")
        };
        assert_eq!(e.content.as_ref().unwrap().compressed, None);
        let mut line = Vec::new();
        encode_entry(&e, &mut line);
        let text = String::from_utf8(line).unwrap();
        assert!(
            !text.contains("compression") && !text.contains("stored_size"),
            "{text}"
        );
        let half = br#"{"path":"a","type":"file","mode":0,"uid":0,"gid":0,"mtime_ns":1,"size":5,"blake3":"ab","object":"o","compression":"zstd"}"#;
        assert!(decode_line(2, half).is_err());
        let unknown = br#"{"path":"a","type":"file","mode":0,"uid":0,"gid":0,"mtime_ns":1,"size":5,"blake3":"ab","object":"o","compression":"lzma","stored_size":3}"#;
        assert!(decode_line(2, unknown).is_err());
    }

    #[test]
    fn refuses_malformed_lines() {
        assert!(decode_line(2, b"{\"type\":\"file\"}").is_err());
        assert!(decode_line(2, b"not json").is_err());
        let file_without_hash =
            br#"{"path":"a","type":"file","mode":0,"uid":0,"gid":0,"mtime_ns":0}"#;
        assert!(decode_line(2, file_without_hash).is_err());
        let bad_version =
            br#"{"drainer_manifest":99,"volume":"a/b","snapshot":"s","parent":null,"created":""}"#;
        assert!(decode_line(1, bad_version).is_err());
    }

    #[test]
    fn path_order_is_depth_first_walk_order() {
        let mut paths: Vec<&[u8]> = vec![b"a.c", b"a/b", b".", b"a", b"b", b"a/b/c", b"a-"];
        paths.sort_by(|x, y| path_order(x, y));
        let expected: Vec<&[u8]> = vec![b".", b"a", b"a/b", b"a/b/c", b"a-", b"a.c", b"b"];
        assert_eq!(paths, expected);
    }
}
