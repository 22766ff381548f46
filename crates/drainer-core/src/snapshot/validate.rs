//! The one check of a manifest that both `restore` and `verify` apply, so that "verify OK"
//! means "restore will accept it": every entry's path stays inside the destination, entries
//! come in strictly increasing walk order (so none is listed twice), the root comes first as
//! a directory, every entry's parent is a directory entry seen earlier (so nothing goes
//! through a symlink or a file the restore created), a file's object is inside the volume's
//! snapshots and its hash is a BLAKE3 hash, a mode's type bits agree with the entry's type, and
//! a hard link (`link`) names a regular file with content listed before it as having links
//! (`nlink`), whose content and size it shares.
//!
//! It only looks at entries; it reads and writes nothing. It remembers the chain of
//! directories above the current entry and the files that have hard links, nothing else.

use super::layout::VolumeLayout;
use super::manifest::{Entry, EntryKind, path_order};
use super::{Error, Result};
use std::collections::HashMap;

/// Checks manifest entries in order; holds the chain of directories above the current entry
/// (bounded by the tree's depth), the previous path, and the files with hard links seen so far
/// (bounded by the files that have links).
#[derive(Debug)]
pub(crate) struct Validator {
    layout: VolumeLayout,
    dirs: Vec<Vec<u8>>,
    previous: Option<Vec<u8>>,
    linked: HashMap<Vec<u8>, Entry>,
}

impl Validator {
    /// A validator of a manifest of the volume laid out as `layout`.
    pub fn new(layout: VolumeLayout) -> Self {
        Self {
            layout,
            dirs: Vec::new(),
            previous: None,
            linked: HashMap::new(),
        }
    }

    /// Admits the next entry, or says why it is refused.
    pub fn admit(&mut self, entry: &Entry) -> Result<()> {
        let refuse = |reason: &str| Error::UnsafePath {
            path: String::from_utf8_lossy(&entry.path).into_owned(),
            reason: reason.to_owned(),
        };
        self.check_order(entry).map_err(refuse)?;
        check_entry(&self.layout, entry).map_err(|r| refuse(&r))?;
        if entry.path == b"." {
            return Ok(());
        }
        let components: Vec<&[u8]> = entry.path.split(|b| *b == b'/').collect();
        if components
            .iter()
            .any(|c| c.is_empty() || *c == b"." || *c == b".." || c.contains(&0))
        {
            return Err(refuse("empty, '.', '..' or NUL path component"));
        }
        let parent = &entry.path[..entry.path.len() - components.last().map_or(0, |c| c.len())];
        let parent = parent.strip_suffix(b"/").unwrap_or(parent);
        while let Some(top) = self.dirs.last() {
            if top.as_slice() == parent {
                break;
            }
            self.dirs.pop();
        }
        let parent_known =
            parent.is_empty() || self.dirs.last().is_some_and(|d| d.as_slice() == parent);
        if !parent_known {
            return Err(refuse(
                "its parent is not a directory of the snapshot (a link, a file, or out of order)",
            ));
        }
        if entry.kind == EntryKind::Dir {
            self.dirs.push(entry.path.clone());
        }
        self.check_link(entry).map_err(|r| refuse(&r))
    }

    /// A hard link names a file with content listed earlier with links, and shares its
    /// content; a file with links and content is remembered for the links after it.
    fn check_link(&mut self, entry: &Entry) -> std::result::Result<(), String> {
        let Some(first) = &entry.link else {
            if entry.kind == EntryKind::File && entry.nlink > 1 && entry.content.is_some() {
                self.linked.insert(entry.path.clone(), entry.clone());
            }
            return Ok(());
        };
        if entry.kind != EntryKind::File || entry.content.is_none() {
            return Err("only a regular file with content can be a hard link".into());
        }
        let Some(target) = self.linked.get(first) else {
            return Err(format!(
                "a hard link to {:?}, which is not a file with links listed before it",
                String::from_utf8_lossy(first)
            ));
        };
        if target.content != entry.content
            || target.size != entry.size
            || target.extents != entry.extents
        {
            return Err(format!(
                "a hard link to {:?} with other content",
                String::from_utf8_lossy(first)
            ));
        }
        Ok(())
    }

    /// The root first, once, as a directory; then strictly increasing paths.
    fn check_order(&mut self, entry: &Entry) -> std::result::Result<(), &'static str> {
        let previous = self.previous.replace(entry.path.clone());
        match previous {
            None if entry.path == b"." && entry.kind == EntryKind::Dir => Ok(()),
            None if entry.path == b"." => Err("the root must come first, once, as a directory"),
            None => Err("entry before the root directory"),
            Some(_) if entry.path == b"." => Err("the root must come first, once, as a directory"),
            Some(previous) if path_order(&previous, &entry.path).is_lt() => Ok(()),
            Some(_) => Err("listed twice or out of order (entries must be in walk order)"),
        }
    }
}

/// What one entry says about itself: a file's object and hash, a mode that fits its type.
fn check_entry(layout: &VolumeLayout, entry: &Entry) -> std::result::Result<(), String> {
    if let Some(content) = &entry.content {
        if layout.object(&content.object).is_none() {
            return Err(format!(
                "object key {:?} is outside the volume's snapshots",
                content.object
            ));
        }
        let hex = content.blake3.as_bytes();
        if hex.len() != 64
            || !hex
                .iter()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(b))
        {
            return Err(format!("{:?} is not a BLAKE3 hash", content.blake3));
        }
    }
    if let Some(extents) = &entry.extents
        && (entry.kind != EntryKind::File || !super::sparse::valid(extents, entry.size))
    {
        return Err(format!(
            "data extents {extents:?} do not fit a file of {} bytes",
            entry.size
        ));
    }
    let type_bits = entry.mode & 0o170000;
    let expected = match entry.kind {
        EntryKind::Dir => 0o040000,
        EntryKind::File => 0o100000,
        EntryKind::Symlink => 0o120000,
        EntryKind::Fifo => 0o010000,
        EntryKind::Socket => 0o140000,
        EntryKind::CharDevice => 0o020000,
        EntryKind::BlockDevice => 0o060000,
    };
    if type_bits != 0 && type_bits != expected {
        return Err(format!(
            "mode {:o} is not the mode of a {:?}",
            entry.mode, entry.kind
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::manifest::Content;

    fn entry(path: &str, kind: EntryKind) -> Entry {
        Entry {
            path: path.as_bytes().to_vec(),
            kind,
            mode: match kind {
                EntryKind::Dir => 0o40755,
                EntryKind::Symlink => 0o120777,
                _ => 0o100644,
            },
            uid: 0,
            gid: 0,
            mtime_ns: 0,
            ctime_ns: 0,
            size: 0,
            ino: 0,
            content: (kind == EntryKind::File).then(|| Content {
                blake3: blake3::hash(b"").to_hex().to_string(),
                object: "snapshots/x/files/f".into(),
                compressed: None,
            }),
            target: (kind == EntryKind::Symlink).then(|| b"t".to_vec()),
            unreadable: None,
            extents: None,
            blocks: 0,
            nlink: 0,
            link: None,
            dev: 0,
        }
    }

    /// A file with two links.
    fn linked(path: &str) -> Entry {
        Entry {
            nlink: 2,
            ..entry(path, EntryKind::File)
        }
    }

    /// A hard link at `path` to `first`.
    fn link(path: &str, first: &str) -> Entry {
        Entry {
            link: Some(first.as_bytes().to_vec()),
            ..linked(path)
        }
    }

    fn check(entries: &[Entry]) -> Result<()> {
        let volume = "a/b".parse().unwrap();
        let mut v = Validator::new(VolumeLayout::new(&Default::default(), &volume));
        entries.iter().try_for_each(|e| v.admit(e))
    }

    #[test]
    fn accepts_a_walk_ordered_tree() {
        let root = entry(".", EntryKind::Dir);
        let tree = [
            root,
            entry("a", EntryKind::Dir),
            entry("a/f", EntryKind::File),
            entry("a-", EntryKind::File),
            entry("l", EntryKind::Symlink),
        ];
        check(&tree).unwrap();
        let links = [
            entry(".", EntryKind::Dir),
            entry("a", EntryKind::Dir),
            linked("a/first"),
            link("b", "a/first"),
            link("c", "a/first"),
        ];
        check(&links).unwrap();
    }

    #[test]
    fn refuses_duplicates_disorder_links_as_parents_and_odd_modes() {
        let root = || entry(".", EntryKind::Dir);
        let mut setuid_dir = entry("d", EntryKind::Dir);
        setuid_dir.mode = 0o104755;
        let mut bad_hash = entry("f", EntryKind::File);
        bad_hash.content.as_mut().unwrap().blake3 = "zz".into();
        let cases: Vec<(&str, Vec<Entry>)> = vec![
            (
                "duplicate",
                vec![
                    root(),
                    entry("f", EntryKind::File),
                    entry("f", EntryKind::File),
                ],
            ),
            (
                "order",
                vec![
                    root(),
                    entry("b", EntryKind::File),
                    entry("a", EntryKind::File),
                ],
            ),
            (
                "under a link",
                vec![
                    root(),
                    entry("l", EntryKind::Symlink),
                    entry("l/x", EntryKind::File),
                ],
            ),
            (
                "dir under a link",
                vec![
                    root(),
                    entry("l", EntryKind::Symlink),
                    entry("l/d", EntryKind::Dir),
                ],
            ),
            ("type bits", vec![root(), setuid_dir]),
            ("hash", vec![root(), bad_hash]),
            ("two roots", vec![root(), root()]),
            ("dot-dot", vec![root(), entry("../x", EntryKind::File)]),
            ("link to nothing", vec![root(), link("f", "missing")]),
            (
                "link to a dir",
                vec![root(), entry("d", EntryKind::Dir), link("f", "d")],
            ),
            (
                "link to a file without links",
                vec![root(), entry("a", EntryKind::File), link("b", "a")],
            ),
            (
                "link to a later file",
                vec![root(), link("a", "b"), linked("b")],
            ),
            ("link to itself", vec![root(), link("a", "a")]),
            (
                "link with other content",
                vec![root(), linked("a"), {
                    let mut other = link("b", "a");
                    other.size = 9;
                    other
                }],
            ),
            (
                "link of a symlink",
                vec![
                    root(),
                    linked("a"),
                    Entry {
                        link: Some(b"a".to_vec()),
                        ..entry("l", EntryKind::Symlink)
                    },
                ],
            ),
        ];
        for (name, entries) in cases {
            let err = check(&entries).expect_err(name).to_string();
            assert!(err.contains("refusing manifest entry"), "{name}: {err}");
        }
    }
}
