//! Sparse files: finding their data extents, and hashing their logical content.
//!
//! A file whose allocated blocks cover less than its size may have holes. Its data extents are
//! found with `SEEK_DATA`/`SEEK_HOLE`; when there is at least one hole, the file is stored
//! sparse: its object holds the data extents' bytes one after the other (holes are not
//! stored), and its manifest entry lists the extents as `"extents": [[offset, length], …]`.
//! Its hash is still the BLAKE3 of the logical content (holes read as zeros), computed by
//! feeding zeros for the holes, which are never read. Restore writes the extents at their
//! offsets into a file of the full size, so the holes stay holes. Dense files (no extents
//! listed, and every manifest from before this) are stored and restored as before.

use std::fs::File;

/// One data extent: `[offset, length]` in the file.
pub(crate) type Extent = [u64; 2];

/// The data extents of `file` (of `size` bytes, `blocks` 512-byte blocks allocated), or `None`
/// when it has no hole and is stored as a plain object.
pub(crate) fn data_extents(
    file: &File,
    size: u64,
    blocks: u64,
) -> std::io::Result<Option<Vec<Extent>>> {
    if blocks.saturating_mul(512) >= size {
        return Ok(None);
    }
    let mut extents = Vec::new();
    let mut at = 0;
    while at < size {
        let start = match rustix::fs::seek(file, rustix::fs::SeekFrom::Data(at)) {
            Ok(start) => start,
            Err(rustix::io::Errno::NXIO) => break,
            // A filesystem without SEEK_DATA: read it all.
            Err(rustix::io::Errno::INVAL | rustix::io::Errno::OPNOTSUPP) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        if start >= size {
            break;
        }
        let end = rustix::fs::seek(file, rustix::fs::SeekFrom::Hole(start))?.min(size);
        extents.push([start, end - start]);
        at = end;
    }
    rustix::fs::seek(file, rustix::fs::SeekFrom::Start(0))?;
    if extents == [[0, size]] {
        return Ok(None);
    }
    Ok(Some(extents))
}

/// Whether `extents` can describe a file of `size` bytes: in order, not overlapping, not
/// empty, inside the file.
pub fn valid(extents: &[Extent], size: u64) -> bool {
    let mut end = 0;
    extents.iter().all(|[offset, len]| {
        let ok = *len > 0 && *offset >= end && offset.checked_add(*len).is_some_and(|e| e <= size);
        end = offset.saturating_add(*len);
        ok
    })
}

/// The number of bytes a sparse file's object holds: its extents' lengths.
pub(crate) fn stored_len(extents: &[Extent]) -> u64 {
    extents.iter().map(|[_, len]| len).sum()
}

/// Hashes the logical content of a sparse file from its stored bytes: the packed data of its
/// extents arrives in order through [`LogicalHasher::data`], and the holes are hashed as zeros.
pub(crate) struct LogicalHasher {
    hasher: blake3::Hasher,
    extents: Vec<Extent>,
    /// The extent the next data byte belongs to, and how far into it.
    next: usize,
    into: u64,
    /// Logical bytes hashed so far.
    pos: u64,
}

static ZEROS: [u8; 64 * 1024] = [0; 64 * 1024];

impl LogicalHasher {
    /// A hasher of a file with these extents.
    pub fn new(extents: &[Extent]) -> Self {
        Self {
            hasher: blake3::Hasher::new(),
            extents: extents.to_vec(),
            next: 0,
            into: 0,
            pos: 0,
        }
    }

    fn zeros_to(&mut self, end: u64) {
        while self.pos < end {
            let n = (end - self.pos).min(ZEROS.len() as u64);
            self.hasher.update(&ZEROS[..n as usize]);
            self.pos += n;
        }
    }

    /// Feeds the next packed bytes; returns, for each piece, the file offset it belongs at.
    /// Bytes beyond the extents are ignored (and reported as `None` offsets by the caller's
    /// length check).
    pub fn data<'d>(&mut self, mut chunk: &'d [u8]) -> Vec<(u64, &'d [u8])> {
        let mut pieces = Vec::new();
        while !chunk.is_empty() {
            let Some([offset, len]) = self.extents.get(self.next).copied() else {
                break;
            };
            self.zeros_to(offset);
            let n = (len - self.into).min(chunk.len() as u64) as usize;
            let (piece, rest) = chunk.split_at(n);
            self.hasher.update(piece);
            pieces.push((offset + self.into, piece));
            self.pos += n as u64;
            self.into += n as u64;
            if self.into == len {
                self.next += 1;
                self.into = 0;
            }
            chunk = rest;
        }
        pieces
    }

    /// The hash of the whole file of `size` bytes (the rest hashed as zeros).
    pub fn finalize(mut self, size: u64) -> blake3::Hash {
        self.zeros_to(size);
        self.hasher.finalize()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Seek, SeekFrom, Write};

    #[test]
    fn finds_the_data_of_a_sparse_file_and_hashes_it_as_the_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sparse");
        let mut file = File::create(&path).unwrap();
        file.set_len(64 << 20).unwrap();
        file.seek(SeekFrom::Start(8 << 20)).unwrap();
        file.write_all(&[7u8; 4096]).unwrap();
        file.sync_all().unwrap();
        let file = File::open(&path).unwrap();
        let meta = file.metadata().unwrap();
        use std::os::unix::fs::MetadataExt;
        let extents = data_extents(&file, meta.len(), meta.blocks())
            .unwrap()
            .expect("the file has holes");
        assert!(valid(&extents, meta.len()), "{extents:?}");
        assert_eq!(stored_len(&extents), 4096, "{extents:?}");
        let mut hasher = LogicalHasher::new(&extents);
        let pieces = hasher.data(&[7u8; 4096]);
        assert_eq!(pieces.len(), 1);
        assert_eq!(pieces[0].0, 8 << 20);
        assert_eq!(
            hasher.finalize(meta.len()),
            blake3::hash(&std::fs::read(&path).unwrap())
        );
    }

    #[test]
    fn dense_files_have_no_extents_and_bad_extents_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dense");
        std::fs::write(&path, vec![1u8; 10000]).unwrap();
        let file = File::open(&path).unwrap();
        use std::os::unix::fs::MetadataExt;
        let meta = file.metadata().unwrap();
        assert_eq!(
            data_extents(&file, meta.len(), meta.blocks()).unwrap(),
            None
        );
        assert!(valid(&[[0, 10], [20, 5]], 25));
        assert!(!valid(&[[0, 10], [5, 5]], 25), "overlap");
        assert!(!valid(&[[20, 10]], 25), "past the end");
        assert!(!valid(&[[0, 0]], 25), "empty");
        assert!(!valid(&[[u64::MAX, 2]], 25), "overflow");
    }
}
