//! The wire format of a batch of small objects that a mover sends to its drainer in one
//! request: per object, the key's length (4 bytes, big-endian), the key (UTF-8), the data's
//! length (8 bytes, big-endian) and the data. Decoding slices the request body without
//! copying, and refuses anything malformed as a whole.

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
}
