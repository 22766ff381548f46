//! BLAKE3 of the objects the relay receives, comparable with the manifest's hashes.
//!
//! A small object arrives whole and is hashed whole. A large one arrives in parts, in any
//! order, over any replica, across restarts: each part is hashed on its own as a subtree of
//! the BLAKE3 tree of the whole object (its chaining value, at its offset), and the object's
//! hash is merged from the parts' values when the upload completes. That works when every part
//! but the last has the same power-of-two size (at least one BLAKE3 chunk), which is then a
//! complete subtree of the object's tree; any other part size leaves large objects unhashed.

use axum::body::Bytes;
use blake3::hazmat::{
    ChainingValue, HasherExt, Mode, merge_subtrees_non_root, merge_subtrees_root,
};
use drainer_core::ledger::RelayPart;

/// What the relay keeps of a part it received: its chaining value and, for part 0, its hash
/// alone (the object's when it has one part). Hex, as the ledger keeps them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct PartHash {
    pub cv: String,
    pub alone: Option<String>,
}

/// Whether parts of `part_size` bytes are complete subtrees of an object's BLAKE3 tree.
pub(super) fn part_size_hashable(part_size: u64) -> bool {
    part_size.is_power_of_two() && part_size >= blake3::CHUNK_LEN as u64
}

/// The hash of part `idx` (`chunks`, as received) of an upload whose parts have `part_size`
/// bytes, or `None` if that size is not [`part_size_hashable`].
pub(super) fn hash_part(part_size: u64, idx: u64, chunks: &[Bytes]) -> Option<PartHash> {
    if !part_size_hashable(part_size) {
        return None;
    }
    let mut hasher = blake3::Hasher::new();
    hasher.set_input_offset(idx.checked_mul(part_size)?);
    for chunk in chunks {
        hasher.update(chunk);
    }
    let alone = (idx == 0).then(|| hasher.finalize().to_hex().to_string());
    Some(PartHash {
        cv: blake3::Hash::from(hasher.finalize_non_root())
            .to_hex()
            .to_string(),
        alone,
    })
}

/// The BLAKE3 (hex) of an object completed from `parts` (every index from 0, in order, all
/// but the last of one hashable size, as the completion has checked), or `None` if a part
/// was not received by the drainer (or before it kept hashes).
pub(super) fn object_hash(parts: &[RelayPart]) -> Option<String> {
    match parts {
        [] => None,
        [only] => only.alone.clone(),
        _ => {
            let cvs = parts
                .iter()
                .map(|p| p.cv.as_deref().and_then(decode_cv))
                .collect::<Option<Vec<ChainingValue>>>()?;
            let split = left_count(cvs.len());
            let (left, right) = cvs.split_at(split);
            let root = merge_subtrees_root(&merge(left), &merge(right), Mode::Hash);
            Some(root.to_hex().to_string())
        }
    }
}

/// The chaining value of the subtree over `cvs` (one or more equal parts, the last possibly
/// shorter), merged as BLAKE3's tree does: the left subtree takes the largest power of two
/// of parts that leaves at least one to the right.
fn merge(cvs: &[ChainingValue]) -> ChainingValue {
    if let [only] = cvs {
        return *only;
    }
    let (left, right) = cvs.split_at(left_count(cvs.len()));
    merge_subtrees_non_root(&merge(left), &merge(right), Mode::Hash)
}

/// How many of `n` (≥ 2) parts the left subtree holds.
fn left_count(n: usize) -> usize {
    debug_assert!(n >= 2);
    1 << (usize::BITS - 1 - (n - 1).leading_zeros())
}

fn decode_cv(hex: &str) -> Option<ChainingValue> {
    blake3::Hash::from_hex(hex).ok().map(|h| *h.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Splits `data` into parts of `part_size`, hashes them out of order as the relay would,
    /// and merges them.
    fn merged(data: &[u8], part_size: usize) -> Option<String> {
        let mut parts: Vec<RelayPart> = data
            .chunks(part_size)
            .enumerate()
            .rev()
            .map(|(idx, bytes)| {
                let halves = bytes.split_at(bytes.len() / 2);
                let chunks = [
                    Bytes::copy_from_slice(halves.0),
                    Bytes::copy_from_slice(halves.1),
                ];
                let hash = hash_part(part_size as u64, idx as u64, &chunks).unwrap();
                RelayPart {
                    idx: idx as u64,
                    part_id: String::new(),
                    len: bytes.len() as u64,
                    cv: Some(hash.cv),
                    alone: hash.alone,
                }
            })
            .collect();
        parts.sort_by_key(|p| p.idx);
        object_hash(&parts)
    }

    #[test]
    fn merged_part_hashes_are_the_whole_objects_blake3() {
        let data: Vec<u8> = (0..200_000u32).map(|i| (i * 31 % 251) as u8).collect();
        for part_size in [1024, 2048, 4096, 65536] {
            for len in [
                1,
                1023,
                1024,
                1025,
                2048,
                3000,
                4096 * 3 + 1,
                65536,
                131_073,
                200_000,
            ] {
                let object = &data[..len];
                assert_eq!(
                    merged(object, part_size).as_deref(),
                    Some(blake3::hash(object).to_hex().as_str()),
                    "part size {part_size}, length {len}"
                );
            }
        }
    }

    #[test]
    fn parts_of_other_sizes_or_not_received_leave_the_object_unhashed() {
        for size in [0, 512, 1000, 3 * 1024, 5 * 1024 * 1024] {
            assert!(
                hash_part(size, 0, &[Bytes::from_static(b"x")]).is_none(),
                "{size}"
            );
        }
        assert!(hash_part(8 << 20, 1, &[Bytes::from_static(b"x")]).is_some());
        let part = |idx, cv: Option<&str>| RelayPart {
            idx,
            part_id: String::new(),
            len: 1,
            cv: cv.map(str::to_owned),
            alone: None,
        };
        let cv = "00".repeat(32);
        assert_eq!(object_hash(&[part(0, Some(&cv)), part(1, None)]), None);
        assert_eq!(object_hash(&[part(0, Some(&cv))]), None, "no hash alone");
        assert_eq!(
            object_hash(&[part(0, Some("zz")), part(1, Some(&cv))]),
            None
        );
        assert_eq!(object_hash(&[]), None);
    }

    #[test]
    fn the_left_subtree_takes_the_largest_power_of_two_that_leaves_one() {
        let cases = [(2, 1), (3, 2), (4, 2), (5, 4), (8, 4), (9, 8), (17, 16)];
        for (n, left) in cases {
            assert_eq!(left_count(n), left, "{n}");
        }
    }
}
