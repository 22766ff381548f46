//! Compression of stored objects: the setting ([`Compression`]), what a manifest records of a
//! compressed object ([`Compressed`]), the decision to keep a compressed form ([`shrink`]) and
//! the streaming decoder restore and verify read through ([`Inflater`]).
//!
//! An object is compressed on its own (one zstd frame, so `zstd -d` reads it) and kept
//! compressed only when that saves at least [`MIN_SAVING_DIVISOR`]th of its bytes; otherwise it
//! is stored raw, as it would be without compression. Large data that does not shrink is
//! recognised from a sample of its first bytes, so incompressible files cost a small fraction
//! of a full compression attempt. This module only transforms bytes: it does no I/O.

use serde::{Deserialize, Serialize};

/// The compressed form must save at least `1 / MIN_SAVING_DIVISOR` of the raw bytes.
pub(crate) const MIN_SAVING_DIVISOR: usize = 8;
/// Objects smaller than this are stored raw (a frame's header would eat the saving).
const MIN_SIZE: usize = 128;
/// Data larger than [`SAMPLE`] is first probed on its first [`SAMPLE`] bytes.
const SAMPLE: usize = 64 * 1024;
/// The zstd level of `zstd` without one.
pub(crate) const DEFAULT_LEVEL: i32 = 3;
/// Decompressed bytes produced per call of the decoder.
const OUT_PIECE: usize = 256 * 1024;

/// Whether and how a copy compresses the objects it stores.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Compression {
    /// Objects are stored raw.
    #[default]
    Off,
    /// Objects are zstd-compressed at this level (1 to 19) where it pays.
    Zstd {
        /// The zstd level.
        level: i32,
    },
}

impl std::str::FromStr for Compression {
    type Err = String;

    /// `off`, `zstd` (level [`DEFAULT_LEVEL`]) or `zstd:LEVEL` (1 to 19).
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let bad = || format!("{text:?}: expected off, zstd or zstd:LEVEL (a level from 1 to 19)");
        match text {
            "off" | "none" => Ok(Self::Off),
            "zstd" => Ok(Self::Zstd {
                level: DEFAULT_LEVEL,
            }),
            _ => {
                let level = text.strip_prefix("zstd:").ok_or_else(bad)?;
                match level.parse::<i32>() {
                    Ok(level) if (1..=19).contains(&level) => Ok(Self::Zstd { level }),
                    _ => Err(bad()),
                }
            }
        }
    }
}

impl std::fmt::Display for Compression {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Off => f.write_str("off"),
            Self::Zstd { level } => write!(f, "zstd:{level}"),
        }
    }
}

/// How a stored object is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Codec {
    /// One or more zstd frames, back to back.
    Zstd,
}

impl Codec {
    /// The name written in manifests and the ledger.
    pub fn name(self) -> &'static str {
        match self {
            Self::Zstd => "zstd",
        }
    }

    /// The codec of a name written by [`Codec::name`].
    pub(crate) fn from_name(name: &str) -> Option<Self> {
        (name == "zstd").then_some(Self::Zstd)
    }
}

/// What a manifest records of an object stored compressed (the entry's `size` stays the raw
/// size; its hash is the raw content's).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Compressed {
    /// How the object is compressed.
    pub codec: Codec,
    /// The object's size in the store.
    pub stored_size: u64,
}

/// The compressed form of `data`, if compression is on and it saves at least
/// `1 / MIN_SAVING_DIVISOR` of the bytes. Data larger than a sample is probed on its first
/// bytes first: when those do not shrink, the whole is not tried.
pub fn shrink(data: &[u8], compression: Compression) -> Option<Vec<u8>> {
    let Compression::Zstd { level } = compression else {
        return None;
    };
    if data.len() < MIN_SIZE {
        return None;
    }
    if data.len() > 4 * SAMPLE {
        let probe = frame(&data[..SAMPLE], level).ok()?;
        if !pays(SAMPLE, probe.len()) {
            return None;
        }
    }
    let packed = frame(data, level).ok()?;
    pays(data.len(), packed.len()).then_some(packed)
}

/// One zstd frame of `data`, with its content checksum, so that a damaged object fails to
/// decode rather than decoding to other bytes.
pub fn frame(data: &[u8], level: i32) -> std::io::Result<Vec<u8>> {
    let mut compressor = zstd::bulk::Compressor::new(level)?;
    compressor.set_parameter(zstd::zstd_safe::CParameter::ChecksumFlag(true))?;
    compressor.compress(data)
}

/// Whether `packed` bytes for `raw` bytes saves enough to keep the compressed form.
fn pays(raw: usize, packed: usize) -> bool {
    packed <= raw - raw / MIN_SAVING_DIVISOR
}

/// A streaming zstd decoder: compressed pieces in, raw pieces out through a small buffer, with
/// the raw size bounded by what the manifest says.
pub(crate) struct Inflater {
    decoder: zstd::stream::raw::Decoder<'static>,
    out: Vec<u8>,
    produced: u64,
    limit: u64,
    frame_done: bool,
}

impl std::fmt::Debug for Inflater {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inflater")
            .field("produced", &self.produced)
            .field("limit", &self.limit)
            .finish()
    }
}

impl Inflater {
    /// A decoder of an object whose raw content is `limit` bytes.
    pub fn new(codec: Codec, limit: u64) -> std::io::Result<Self> {
        match codec {
            Codec::Zstd => Ok(Self {
                decoder: zstd::stream::raw::Decoder::new()?,
                out: vec![0; OUT_PIECE],
                produced: 0,
                limit,
                frame_done: true,
            }),
        }
    }

    /// Decodes `input`, handing each raw piece to `sink` in order. Fails on corrupt data or
    /// when the raw content would exceed its limit.
    pub(crate) fn feed(
        &mut self,
        input: &[u8],
        sink: &mut impl FnMut(&[u8]) -> std::io::Result<()>,
    ) -> std::io::Result<()> {
        use zstd::stream::raw::{InBuffer, Operation, OutBuffer};
        let mut input = InBuffer::around(input);
        loop {
            let consumed = input.pos();
            let mut output = OutBuffer::around(&mut self.out[..]);
            let hint = self.decoder.run(&mut input, &mut output)?;
            let written = output.pos();
            // A call that moved nothing (no input left, a full buffer drained exactly before)
            // says what the next frame needs, not whether the last one ended.
            if written > 0 || input.pos() > consumed {
                self.frame_done = hint == 0;
            }
            if written > 0 {
                self.produced += written as u64;
                if self.produced > self.limit {
                    return Err(std::io::Error::other(format!(
                        "decompresses to more than the {} bytes recorded",
                        self.limit
                    )));
                }
                sink(&self.out[..written])?;
            }
            if input.pos() == input.src.len() && written < self.out.len() {
                return Ok(());
            }
        }
    }

    /// Checks that the data ended with a whole frame; returns the raw bytes produced.
    pub fn finish(&self) -> std::io::Result<u64> {
        if !self.frame_done {
            return Err(std::io::Error::other("compressed data ends inside a frame"));
        }
        Ok(self.produced)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inflate(packed: &[u8], limit: u64, piece: usize) -> std::io::Result<Vec<u8>> {
        let mut inflater = Inflater::new(Codec::Zstd, limit)?;
        let mut raw = Vec::new();
        for chunk in packed.chunks(piece) {
            inflater.feed(chunk, &mut |p| {
                raw.extend_from_slice(p);
                Ok(())
            })?;
        }
        inflater.finish()?;
        Ok(raw)
    }

    fn text(len: usize) -> Vec<u8> {
        (0..)
            .flat_map(|i: u64| format!("row {i}: status=ok region=eu-west\n").into_bytes())
            .take(len)
            .collect()
    }

    fn random(len: usize) -> Vec<u8> {
        use rand::RngCore;
        let mut data = vec![0; len];
        rand::rng().fill_bytes(&mut data);
        data
    }

    #[test]
    fn settings_parse_and_print() {
        let zstd = |level| Compression::Zstd { level };
        for (text, parsed) in [
            ("off", Compression::Off),
            ("zstd", zstd(3)),
            ("zstd:19", zstd(19)),
        ] {
            assert_eq!(text.parse::<Compression>().unwrap(), parsed);
        }
        assert_eq!(zstd(7).to_string(), "zstd:7");
        for bad in ["gzip", "zstd:0", "zstd:20", "zstd:", "zstd:x", ""] {
            let e = bad.parse::<Compression>().unwrap_err();
            assert!(e.contains("expected off, zstd"), "{e}");
        }
    }

    #[test]
    fn compressible_data_shrinks_and_comes_back_exactly() {
        let zstd = Compression::Zstd { level: 3 };
        // The last length decodes to exactly two output buffers.
        for len in [MIN_SIZE, 10_000, 5 * SAMPLE + 17, 2 * OUT_PIECE] {
            let raw = text(len);
            let packed = shrink(&raw, zstd).expect("text shrinks");
            assert!(pays(len, packed.len()), "{} of {}", packed.len(), len);
            if len >= 10_000 {
                assert!(packed.len() * 4 < raw.len(), "{} of {}", packed.len(), len);
            }
            for piece in [1, 7, 4096, packed.len()] {
                assert_eq!(inflate(&packed, len as u64, piece).unwrap(), raw);
            }
        }
    }

    #[test]
    fn data_that_does_not_shrink_enough_is_kept_raw() {
        let zstd = Compression::Zstd { level: 3 };
        assert!(shrink(&random(100_000), zstd).is_none());
        assert!(shrink(&random(5 * SAMPLE), zstd).is_none(), "probed");
        assert!(shrink(&text(MIN_SIZE - 1), zstd).is_none(), "too small");
        assert!(shrink(&text(100_000), Compression::Off).is_none(), "off");
        // 7/8 random and 1/8 zeros saves less than an eighth.
        let mut mixed = random(70_000);
        mixed.extend(vec![0; 9_000]);
        assert!(shrink(&mixed, zstd).is_none());
        assert!(pays(800, 700) && !pays(800, 701));
    }

    #[test]
    fn bad_streams_are_errors() {
        let raw = text(50_000);
        let packed = shrink(&raw, Compression::Zstd { level: 3 }).unwrap();
        let truncated = inflate(&packed[..packed.len() - 5], 50_000, 4096);
        assert!(truncated.is_err(), "truncated");
        let longer = inflate(&packed, 49_999, 4096).unwrap_err();
        assert!(
            longer.to_string().contains("more than the 49999 bytes"),
            "{longer}"
        );
        assert!(inflate(b"not zstd at all", 100, 4).is_err());
        // Two frames back to back read as their contents back to back.
        let mut two = packed.clone();
        two.extend_from_slice(&packed);
        assert_eq!(
            inflate(&two, 100_000, 999).unwrap(),
            [raw.clone(), raw].concat()
        );
    }
}
