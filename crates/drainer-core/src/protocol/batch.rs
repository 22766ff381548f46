//! The wire formats of batches of small objects. Writes (a mover to its drainer): per object,
//! the key's length (4 bytes, big-endian), the key (UTF-8), the data's length (8 bytes,
//! big-endian) and the data. Reads (a restore through a drainer): a JSON list of
//! [`ReadRequest`]s, answered per read with one byte of [`ReadOutcome`] kind, the object's
//! size (8 bytes), the data's length (8 bytes) and the data (or the error's message).
//! Decoding slices the body without copying, and refuses anything malformed as a whole.

use bytes::{Buf, BufMut, Bytes, BytesMut};

/// Objects of at most this size travel in batches; larger ones go on their own.
pub const SMALL_OBJECT: usize = 256 * 1024;
/// The most objects in one batch.
pub const MAX_OBJECTS: usize = 64;

/// Encodes `(key, data)` pairs into one request body.
pub fn encode<'a>(objects: impl IntoIterator<Item = (&'a str, &'a [u8])>) -> Bytes {
    let mut body = BytesMut::new();
    for (key, data) in objects {
        body.reserve(12 + key.len() + data.len());
        body.put_u32(key.len() as u32);
        body.put_slice(key.as_bytes());
        body.put_u64(data.len() as u64);
        body.put_slice(data);
    }
    body.freeze()
}

/// Decodes a request body into `(key, data)` pairs; a truncated body, a key that is not
/// UTF-8 or more than [`MAX_OBJECTS`] objects is an error.
pub fn decode(mut body: Bytes) -> Result<Vec<(String, Bytes)>, String> {
    let mut objects = Vec::new();
    while body.has_remaining() {
        if objects.len() == MAX_OBJECTS {
            return Err(format!("a batch holds at most {MAX_OBJECTS} objects"));
        }
        let key_len = take_len(&mut body, 4)?;
        let key = take(&mut body, key_len)?;
        let key = String::from_utf8(key.to_vec())
            .map_err(|_| format!("object {} has a key that is not UTF-8", objects.len()))?;
        let data_len = take_len(&mut body, 8)?;
        let data = take(&mut body, data_len)?;
        objects.push((key, data));
    }
    Ok(objects)
}

/// One range of one object, in a batch of reads.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReadRequest {
    /// The key, relative to the volume.
    pub key: String,
    /// The first byte.
    pub start: u64,
    /// The byte after the last.
    pub end: u64,
}

/// `POST /v1/volumes/{ns}/{pvc}/objects/batch`: up to [`MAX_OBJECTS`] reads of at most
/// [`SMALL_OBJECT`] bytes each.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReadBatch {
    /// The reads, answered in this order.
    pub reads: Vec<ReadRequest>,
}

/// What one read of a batch found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReadOutcome {
    /// The bytes asked for, and the whole object's size.
    Data {
        /// The object's size.
        size: u64,
        /// The range's bytes.
        bytes: Bytes,
    },
    /// No such object.
    NotFound(String),
    /// The read failed (the message says why).
    Failed(String),
}

/// Encodes the answers to a batch of reads in one buffer (as a drainer streams them).
#[cfg(test)]
fn encode_reads(outcomes: &[ReadOutcome]) -> Bytes {
    let mut body = BytesMut::new();
    for outcome in outcomes {
        for chunk in encode_read(outcome.clone()) {
            body.put_slice(&chunk);
        }
    }
    body.freeze()
}

/// Encodes one answer as the two chunks of a streamed body, its 17-byte head and its data,
/// without copying the data: a drainer sends each answer as it is read, so a batch's
/// memory is the reads in flight, not the whole answer.
pub fn encode_read(outcome: ReadOutcome) -> [Bytes; 2] {
    let (kind, size, data) = match outcome {
        ReadOutcome::Data { size, bytes } => (0, size, bytes),
        ReadOutcome::NotFound(why) => (1, 0, Bytes::from(why)),
        ReadOutcome::Failed(why) => (2, 0, Bytes::from(why)),
    };
    let mut head = BytesMut::with_capacity(17);
    head.put_u8(kind);
    head.put_u64(size);
    head.put_u64(data.len() as u64);
    [head.freeze(), data]
}

/// Decodes the answers to a batch of `count` reads; a body that does not hold exactly that
/// many well-formed answers is an error.
pub fn decode_reads(mut body: Bytes, count: usize) -> Result<Vec<ReadOutcome>, String> {
    let mut outcomes = Vec::with_capacity(count);
    while body.has_remaining() {
        if outcomes.len() == count {
            return Err(format!("more than the {count} answers asked for"));
        }
        let kind = take(&mut body, 1)?[0];
        let size = take_len(&mut body, 8)? as u64;
        let data_len = take_len(&mut body, 8)?;
        let data = take(&mut body, data_len)?;
        let text = || String::from_utf8_lossy(&data).into_owned();
        outcomes.push(match kind {
            0 => ReadOutcome::Data { size, bytes: data },
            1 => ReadOutcome::NotFound(text()),
            2 => ReadOutcome::Failed(text()),
            other => return Err(format!("unknown answer kind {other}")),
        });
    }
    if outcomes.len() != count {
        return Err(format!("{} answers to {count} reads", outcomes.len()));
    }
    Ok(outcomes)
}

fn take_len(body: &mut Bytes, width: usize) -> Result<usize, String> {
    if body.remaining() < width {
        return Err("truncated batch".into());
    }
    let len = match width {
        4 => u64::from(body.get_u32()),
        _ => body.get_u64(),
    };
    usize::try_from(len).map_err(|_| "length out of range".to_owned())
}

fn take(body: &mut Bytes, len: usize) -> Result<Bytes, String> {
    if body.remaining() < len {
        return Err("truncated batch".into());
    }
    Ok(body.split_to(len))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_round_trip_and_refuse_malformed_bodies() {
        let objects: [(&str, &[u8]); 3] = [("a/b", b"one"), ("empty", b""), ("ü/\n", &[0, 255])];
        let body = encode(objects);
        let back = decode(body.clone()).unwrap();
        assert_eq!(back.len(), 3);
        for ((key, data), (k, d)) in objects.iter().zip(&back) {
            assert_eq!(key, k);
            assert_eq!(*data, d.as_ref());
        }
        assert!(decode(Bytes::new()).unwrap().is_empty());
        for cut in [1, 5, body.len() - 1] {
            let err = decode(body.slice(..cut)).unwrap_err();
            assert_eq!(err, "truncated batch", "cut at {cut}");
        }
        let huge_len = [0xff_u8; 4];
        assert!(decode(Bytes::copy_from_slice(&huge_len)).is_err());
        let not_utf8 = encode([("x", b"1".as_slice())]);
        let mut raw = not_utf8.to_vec();
        raw[4] = 0xff;
        assert!(decode(Bytes::from(raw)).unwrap_err().contains("UTF-8"));
        let many: Vec<(String, Vec<u8>)> =
            (0..=MAX_OBJECTS).map(|i| (i.to_string(), vec![])).collect();
        let too_many = encode(many.iter().map(|(k, d)| (k.as_str(), d.as_slice())));
        assert!(decode(too_many).unwrap_err().contains("at most"));
    }

    #[test]
    fn read_answers_round_trip_and_must_match_the_reads_asked_for() {
        let outcomes = vec![
            ReadOutcome::Data {
                size: 10,
                bytes: Bytes::from_static(b"abc"),
            },
            ReadOutcome::NotFound("no object x".into()),
            ReadOutcome::Data {
                size: 0,
                bytes: Bytes::new(),
            },
            ReadOutcome::Failed("disk on fire".into()),
        ];
        let body = encode_reads(&outcomes);
        assert_eq!(decode_reads(body.clone(), 4).unwrap(), outcomes);
        assert!(
            decode_reads(body.clone(), 3)
                .unwrap_err()
                .contains("more than")
        );
        assert!(
            decode_reads(body.clone(), 5)
                .unwrap_err()
                .contains("4 answers to 5")
        );
        for cut in [1, 9, 17, 18, body.len() - 1] {
            assert!(decode_reads(body.slice(..cut), 4).is_err(), "cut at {cut}");
        }
        let mut raw = body.to_vec();
        raw[0] = 7;
        assert!(
            decode_reads(Bytes::from(raw), 4)
                .unwrap_err()
                .contains("kind 7")
        );
        assert!(decode_reads(Bytes::new(), 0).unwrap().is_empty());
    }
}
