//! The BLAKE3 hash of a large file, computed part by part.
//!
//! BLAKE3 is a tree: a part of a power-of-two size that starts at a multiple of that size is a
//! subtree, whose chaining value can be computed on its own and combined with the others into
//! the file's hash. A copy records each stored part's chaining value with the part, so a copy
//! that resumes an interrupted upload never reads the parts already stored again, and the hash
//! is the same plain `blake3` of the file's bytes that the manifest documents.

use blake3::hazmat::{
    ChainingValue, HasherExt, Mode, left_subtree_len, merge_subtrees_non_root, merge_subtrees_root,
};

/// Whether `part_size` allows hashing by parts: a power of two of at least one BLAKE3 chunk.
pub fn is_valid_part_size(part_size: u64) -> bool {
    part_size.is_power_of_two() && part_size >= blake3::CHUNK_LEN as u64
}

/// The hash of one part.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartHash {
    /// The part's chaining value, as a subtree of the file.
    pub chaining_value: ChainingValue,
    /// For the first part: the hash of the file if this part is all of it.
    pub whole: Option<blake3::Hash>,
}

/// Hashes the part that starts at byte `offset` of its file; `data` is not empty.
pub fn part(offset: u64, data: &[u8]) -> PartHash {
    let mut hasher = part_hasher(offset);
    hasher.update(data);
    finish_part(&hasher, offset)
}

/// A hasher for the part that starts at byte `offset` of its file, fed a piece at a time.
pub(crate) fn part_hasher(offset: u64) -> blake3::Hasher {
    let mut hasher = blake3::Hasher::new();
    hasher.set_input_offset(offset);
    hasher
}

/// The hash of a part fed (not empty) to [`part_hasher`]`(offset)`.
pub(crate) fn finish_part(hasher: &blake3::Hasher, offset: u64) -> PartHash {
    PartHash {
        chaining_value: hasher.finalize_non_root(),
        whole: (offset == 0).then(|| hasher.finalize()),
    }
}

/// The hash of a file of `len` bytes, `len` > `part_size`, from its parts' chaining values, in
/// order: every part `part_size` bytes but the last. `None` when the parts cannot be those of
/// such a file (their count does not match, or the sizes are not ones a hash can be combined
/// for): the caller reads the file again rather than trusting them.
pub(crate) fn combine(parts: &[ChainingValue], part_size: u64, len: u64) -> Option<blake3::Hash> {
    let fits = is_valid_part_size(part_size)
        && len > part_size
        && len.div_ceil(part_size) == parts.len() as u64;
    if !fits {
        return None;
    }
    let left = left_subtree_len(len);
    Some(merge_subtrees_root(
        &subtree(parts, part_size, 0, left),
        &subtree(parts, part_size, left, len - left),
        Mode::Hash,
    ))
}

/// The chaining value of the subtree of `len` bytes at `start`: a part, or two merged subtrees
/// (BLAKE3 splits at the largest power of two below the length, a multiple of the part size).
fn subtree(parts: &[ChainingValue], part_size: u64, start: u64, len: u64) -> ChainingValue {
    if len <= part_size {
        return parts[(start / part_size) as usize];
    }
    let left = left_subtree_len(len);
    merge_subtrees_non_root(
        &subtree(parts, part_size, start, left),
        &subtree(parts, part_size, start + left, len - left),
        Mode::Hash,
    )
}

/// A chaining value as hex, as the ledger records it.
pub fn to_hex(cv: &ChainingValue) -> String {
    blake3::Hash::from_bytes(*cv).to_hex().to_string()
}

/// A chaining value from hex.
pub(crate) fn from_hex(hex: &str) -> Option<ChainingValue> {
    blake3::Hash::from_hex(hex).ok().map(|h| *h.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 31 % 251) as u8).collect()
    }

    #[test]
    fn parts_combine_into_the_plain_blake3_of_the_file() {
        for part_size in [1024_u64, 4096, 16384] {
            let p = part_size as usize;
            for len in [
                p + 1,
                2 * p,
                2 * p + 1,
                3 * p - 1,
                3 * p,
                4 * p,
                4 * p + 1,
                5 * p + 7,
                8 * p,
                13 * p + 1000,
            ] {
                let bytes = data(len);
                let parts: Vec<_> = bytes
                    .chunks(p)
                    .enumerate()
                    .map(|(i, chunk)| part((i * p) as u64, chunk).chaining_value)
                    .collect();
                assert_eq!(
                    combine(&parts, part_size, len as u64),
                    Some(blake3::hash(&bytes)),
                    "part size {part_size}, length {len}"
                );
            }
        }
    }

    #[test]
    fn parts_that_do_not_fit_the_length_give_no_hash() {
        let cv = part(0, &data(1024)).chaining_value;
        assert_eq!(combine(&[cv], 1024, 3000), None);
        assert_eq!(combine(&[cv, cv, cv, cv], 1024, 3000), None);
        assert_eq!(combine(&[cv, cv], 1000, 1500), None);
    }

    #[test]
    fn a_first_part_that_is_the_whole_file_knows_its_hash() {
        for len in [1, 1024, 4096] {
            let bytes = data(len);
            assert_eq!(part(0, &bytes).whole, Some(blake3::hash(&bytes)));
        }
        assert_eq!(part(4096, &data(10)).whole, None);
    }

    #[test]
    fn part_sizes_must_be_powers_of_two_of_at_least_a_chunk() {
        assert!(is_valid_part_size(8 << 20));
        assert!(is_valid_part_size(1024));
        assert!(!is_valid_part_size(5 << 20));
        assert!(!is_valid_part_size(512));
        let cv = part(0, b"x").chaining_value;
        assert_eq!(from_hex(&to_hex(&cv)), Some(cv));
        assert_eq!(from_hex("zz"), None);
    }
}
