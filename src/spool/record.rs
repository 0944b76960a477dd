//! The on-disk record format of a spool segment, and nothing else: pure encode/decode over
//! byte slices, so it can be tested without files.
//!
//! A segment file starts with a 16-byte [`SEGMENT_HEADER`] and holds records back to back:
//!
//! ```text
//! magic     4 bytes  C3 5A 9E 71 (C3 5A is invalid UTF-8, so it never occurs inside a
//!                    JSON payload: a resync after corruption rarely meets a false start)
//! body_len  u32 LE   length of the body
//! crc       u32 LE   crc32 of body_len (4 bytes LE) followed by the body
//! body:
//!   flags        u8      bit 0: the event was tagged rate-limited
//!   received_at  i64 LE  when ingestd first read the event, ms since the Unix epoch
//!   channel_len  u16 LE
//!   channel      channel_len bytes (UTF-8)
//!   payload      the rest: the original message bytes
//! ```

use bytes::Bytes;
use chrono::{DateTime, TimeZone, Utc};

/// Identifies a spool segment file, format version 1.
pub const SEGMENT_HEADER: [u8; 16] = *b"ingestd-spool-v1";
/// Starts every record.
pub const RECORD_MAGIC: [u8; 4] = [0xC3, 0x5A, 0x9E, 0x71];
/// magic + body_len + crc.
pub const RECORD_HEADER_BYTES: usize = 12;
/// flags + received_at + channel_len.
const BODY_FIXED_BYTES: usize = 11;
/// Larger bodies are refused when writing and treated as corruption when reading, so a
/// damaged length field cannot make the reader buffer gigabytes.
pub const MAX_BODY_BYTES: usize = 64 * 1024 * 1024;

const FLAG_RATE_LIMITED: u8 = 1;

/// What is needed to rebuild an event: the rest comes from decoding `payload` again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub channel: String,
    pub payload: Bytes,
    pub received_at: DateTime<Utc>,
    pub rate_limited: bool,
}

/// Why a record cannot be written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    #[error("record body is {0} bytes, the spool takes at most {MAX_BODY_BYTES}")]
    TooLarge(usize),
    #[error("channel name is {0} bytes, the spool takes at most 65535")]
    ChannelTooLong(usize),
}

/// The encoded size of a record with this channel and payload.
pub fn encoded_len(channel_len: usize, payload_len: usize) -> usize {
    RECORD_HEADER_BYTES + BODY_FIXED_BYTES + channel_len + payload_len
}

/// Appends the encoded record to `out`.
pub fn encode_into(record: &Record, out: &mut Vec<u8>) -> Result<usize, EncodeError> {
    encode_parts_into(
        &record.channel,
        &record.payload,
        record.received_at,
        record.rate_limited,
        out,
    )
}

/// Appends a record made of these parts to `out`; returns its encoded length.
pub fn encode_parts_into(
    channel: &str,
    payload: &[u8],
    received_at: DateTime<Utc>,
    rate_limited: bool,
    out: &mut Vec<u8>,
) -> Result<usize, EncodeError> {
    let channel_len = channel.len();
    if channel_len > u16::MAX as usize {
        return Err(EncodeError::ChannelTooLong(channel_len));
    }
    let body_len = BODY_FIXED_BYTES + channel_len + payload.len();
    if body_len > MAX_BODY_BYTES {
        return Err(EncodeError::TooLarge(body_len));
    }
    out.reserve(RECORD_HEADER_BYTES + body_len);
    out.extend_from_slice(&RECORD_MAGIC);
    let body_len_bytes = (body_len as u32).to_le_bytes();
    out.extend_from_slice(&body_len_bytes);
    let crc_at = out.len();
    out.extend_from_slice(&[0; 4]);
    let body_at = out.len();
    let flags = if rate_limited { FLAG_RATE_LIMITED } else { 0 };
    out.push(flags);
    out.extend_from_slice(&received_at.timestamp_millis().to_le_bytes());
    out.extend_from_slice(&(channel_len as u16).to_le_bytes());
    out.extend_from_slice(channel.as_bytes());
    out.extend_from_slice(payload);
    let crc = checksum(&body_len_bytes, &out[body_at..]);
    out[crc_at..crc_at + 4].copy_from_slice(&crc.to_le_bytes());
    Ok(RECORD_HEADER_BYTES + body_len)
}

pub fn encode(record: &Record) -> Result<Vec<u8>, EncodeError> {
    let mut out = Vec::new();
    encode_into(record, &mut out)?;
    Ok(out)
}

fn checksum(body_len_bytes: &[u8; 4], body: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(body_len_bytes);
    hasher.update(body);
    hasher.finalize()
}

/// The result of looking for a record at the start of a byte slice.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decoded {
    /// A valid record and how many bytes it took.
    Record { record: Record, len: usize },
    /// The header is plausible but the slice ends before the record does: more bytes are
    /// needed, or (at the end of a file) the tail is torn.
    Incomplete,
    /// Not a valid record: wrong magic, impossible length, checksum mismatch, bad body.
    Corrupt,
}

/// Decodes the record at the start of `bytes`.
pub fn decode(bytes: &[u8]) -> Decoded {
    let magic_len = bytes.len().min(RECORD_MAGIC.len());
    if bytes[..magic_len] != RECORD_MAGIC[..magic_len] {
        return Decoded::Corrupt;
    }
    if bytes.len() < RECORD_HEADER_BYTES {
        return Decoded::Incomplete;
    }
    let body_len_bytes: [u8; 4] = bytes[4..8].try_into().expect("4 bytes");
    let body_len = u32::from_le_bytes(body_len_bytes) as usize;
    if !(BODY_FIXED_BYTES..=MAX_BODY_BYTES).contains(&body_len) {
        return Decoded::Corrupt;
    }
    let total = RECORD_HEADER_BYTES + body_len;
    if bytes.len() < total {
        return Decoded::Incomplete;
    }
    let stored_crc = u32::from_le_bytes(bytes[8..12].try_into().expect("4 bytes"));
    let body = &bytes[RECORD_HEADER_BYTES..total];
    if checksum(&body_len_bytes, body) != stored_crc {
        return Decoded::Corrupt;
    }
    let flags = body[0];
    let received_millis = i64::from_le_bytes(body[1..9].try_into().expect("8 bytes"));
    let channel_len = u16::from_le_bytes(body[9..11].try_into().expect("2 bytes")) as usize;
    let Some(channel_bytes) = body.get(BODY_FIXED_BYTES..BODY_FIXED_BYTES + channel_len) else {
        return Decoded::Corrupt;
    };
    let Ok(channel) = std::str::from_utf8(channel_bytes) else {
        return Decoded::Corrupt;
    };
    let Some(received_at) = Utc.timestamp_millis_opt(received_millis).single() else {
        return Decoded::Corrupt;
    };
    let record = Record {
        channel: channel.to_string(),
        payload: Bytes::copy_from_slice(&body[BODY_FIXED_BYTES + channel_len..]),
        received_at,
        rate_limited: flags & FLAG_RATE_LIMITED != 0,
    };
    Decoded::Record { record, len: total }
}

/// Where the next record might start after a corrupt one: the next occurrence of the
/// record magic at or after `from`, or a partial magic at the very end (so a caller that
/// can read more bytes does not skip over a record split across two reads).
pub fn find_magic(bytes: &[u8], from: usize) -> Option<usize> {
    let mut position = from;
    while position < bytes.len() {
        let rest = &bytes[position..];
        let offset = rest.iter().position(|byte| *byte == RECORD_MAGIC[0])?;
        let candidate = position + offset;
        let available = (bytes.len() - candidate).min(RECORD_MAGIC.len());
        if bytes[candidate..candidate + available] == RECORD_MAGIC[..available] {
            return Some(candidate);
        }
        position = candidate + 1;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(payload: &str) -> Record {
        Record {
            channel: "events.eu".to_string(),
            payload: Bytes::from(payload.to_string()),
            received_at: Utc.timestamp_millis_opt(1_764_000_000_123).unwrap(),
            rate_limited: true,
        }
    }

    #[test]
    fn round_trip() {
        let record = sample(r#"{"user_id":"u1","event_type":"click","timestamp":1}"#);
        let encoded = encode(&record).unwrap();
        assert_eq!(
            encoded.len(),
            encoded_len(record.channel.len(), record.payload.len())
        );
        assert_eq!(
            decode(&encoded),
            Decoded::Record {
                record: record.clone(),
                len: encoded.len()
            }
        );
        let plain = Record {
            rate_limited: false,
            channel: String::new(),
            ..record
        };
        let encoded_plain = encode(&plain).unwrap();
        assert!(
            matches!(decode(&encoded_plain), Decoded::Record { record, .. } if record == plain)
        );
    }

    #[test]
    fn records_follow_each_other() {
        let first = sample("{\"a\":1}");
        let second = sample("{\"b\":2}");
        let mut bytes = encode(&first).unwrap();
        let first_len = bytes.len();
        encode_into(&second, &mut bytes).unwrap();
        let Decoded::Record { record, len } = decode(&bytes) else {
            panic!("first record decodes");
        };
        assert_eq!((record, len), (first, first_len));
        assert!(
            matches!(decode(&bytes[len..]), Decoded::Record { record, .. } if record == second)
        );
    }

    #[test]
    fn any_flipped_bit_is_detected() {
        let encoded = encode(&sample("{\"amount\":12.5}")).unwrap();
        for index in 0..encoded.len() {
            for bit in 0..8 {
                let mut damaged = encoded.clone();
                damaged[index] ^= 1 << bit;
                let decoded = decode(&damaged);
                assert!(
                    matches!(decoded, Decoded::Corrupt | Decoded::Incomplete),
                    "flip of bit {bit} at byte {index} went unnoticed: {decoded:?}"
                );
            }
        }
    }

    #[test]
    fn checksum_mismatch_is_corrupt() {
        let mut encoded = encode(&sample("{\"x\":1}")).unwrap();
        let last = encoded.len() - 1;
        encoded[last] = b'#';
        assert_eq!(decode(&encoded), Decoded::Corrupt);
    }

    #[test]
    fn torn_tail_is_incomplete_at_every_cut() {
        let encoded = encode(&sample("{\"x\":1}")).unwrap();
        for cut in 1..encoded.len() {
            assert_eq!(decode(&encoded[..cut]), Decoded::Incomplete, "cut at {cut}");
        }
    }

    #[test]
    fn impossible_length_is_corrupt_not_incomplete() {
        let mut encoded = encode(&sample("{}")).unwrap();
        encoded[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(decode(&encoded), Decoded::Corrupt);
        encoded[4..8].copy_from_slice(&3u32.to_le_bytes());
        assert_eq!(decode(&encoded), Decoded::Corrupt);
    }

    #[test]
    fn oversized_records_are_refused() {
        let record = Record {
            payload: Bytes::from(vec![b' '; MAX_BODY_BYTES]),
            ..sample("")
        };
        assert!(matches!(encode(&record), Err(EncodeError::TooLarge(_))));
    }

    #[test]
    fn magic_is_found_after_garbage_and_at_a_split_end() {
        let encoded = encode(&sample("{}")).unwrap();
        let mut bytes = b"garbage \xC3 more".to_vec();
        let start = bytes.len();
        bytes.extend_from_slice(&encoded);
        assert_eq!(find_magic(&bytes, 0), Some(start));
        assert_eq!(find_magic(&bytes, start + 1), None);
        let split = [b'x', 0xC3, 0x5A];
        assert_eq!(find_magic(&split, 0), Some(1));
    }
}
