//! The on-disk encoding of what a node holds for a key: a format byte, then the record.
//!
//! Strong record: `[format=1][counter: u64 BE][writer: u64 BE][kind: 0 tombstone | 1 value][value bytes]`.
//! Causal state: `[format=2][actors: u32 BE]([actor: u64][counter: u64])*[siblings: u32 BE]
//! ([actor: u64][counter: u64][timestamp: u64][kind: u8][length: u32][value bytes])*`, integers big-endian.
//! A fixed binary layout keeps values as raw bytes (JSON would inflate them by a
//! third). Both layouts are canonical (a causal state's siblings are ordered by
//! dot, its context by actor), so equal states have equal bytes, which the
//! anti-entropy digests rely on.

use kvorum_protocol::causal::{CausalState, Dot, Sibling, VersionVector};
use kvorum_protocol::storage::Held;
use kvorum_protocol::{Record, Version};

const FORMAT: u8 = 1;
const CAUSAL_FORMAT: u8 = 2;
const HEADER: usize = 1 + 8 + 8 + 1;
const TOMBSTONE: u8 = 0;
const VALUE: u8 = 1;

/// Bytes on disk that are not a record this build can read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("corrupt record on disk: {0}")]
pub struct CorruptRecord(pub &'static str);

/// Encodes a record for storage.
pub fn encode(record: &Record) -> Vec<u8> {
    let value_len = record.value.as_ref().map_or(0, Vec::len);
    let mut bytes = Vec::with_capacity(HEADER + value_len);
    bytes.push(FORMAT);
    bytes.extend_from_slice(&record.version.counter.to_be_bytes());
    bytes.extend_from_slice(&record.version.writer.to_be_bytes());
    match &record.value {
        None => bytes.push(TOMBSTONE),
        Some(value) => {
            bytes.push(VALUE);
            bytes.extend_from_slice(value);
        }
    }
    bytes
}

/// Reads only the version, without copying the value.
pub fn decode_version(bytes: &[u8]) -> Result<Version, CorruptRecord> {
    if bytes.len() < HEADER {
        return Err(CorruptRecord("shorter than the record header"));
    }
    if bytes[0] != FORMAT {
        return Err(CorruptRecord("unknown record format"));
    }
    let word = |at: usize| {
        let mut buffer = [0u8; 8];
        buffer.copy_from_slice(&bytes[at..at + 8]);
        u64::from_be_bytes(buffer)
    };
    Ok(Version {
        counter: word(1),
        writer: word(9),
    })
}

/// Reads a strong record's version and whether it is a tombstone, without copying the value.
pub fn decode_header(bytes: &[u8]) -> Result<(Version, bool), CorruptRecord> {
    let version = decode_version(bytes)?;
    Ok((version, bytes[HEADER - 1] == TOMBSTONE))
}

/// Decodes a stored record.
pub fn decode(bytes: &[u8]) -> Result<Record, CorruptRecord> {
    let version = decode_version(bytes)?;
    let value = match bytes[HEADER - 1] {
        TOMBSTONE if bytes.len() == HEADER => None,
        TOMBSTONE => return Err(CorruptRecord("tombstone with trailing bytes")),
        VALUE => Some(bytes[HEADER..].to_vec()),
        _ => return Err(CorruptRecord("unknown record kind")),
    };
    Ok(Record { version, value })
}

/// Encodes an eventual keyspace's causal state for storage.
pub fn encode_causal(state: &CausalState) -> Vec<u8> {
    let values: usize = state
        .siblings()
        .iter()
        .map(|s| 29 + s.value.as_ref().map_or(0, Vec::len))
        .sum();
    let mut bytes = Vec::with_capacity(9 + 16 * state.context().entries().count() + values);
    bytes.push(CAUSAL_FORMAT);
    let actors: Vec<(u64, u64)> = state.context().entries().collect();
    bytes.extend_from_slice(&(actors.len() as u32).to_be_bytes());
    for (actor, counter) in actors {
        bytes.extend_from_slice(&actor.to_be_bytes());
        bytes.extend_from_slice(&counter.to_be_bytes());
    }
    bytes.extend_from_slice(&(state.siblings().len() as u32).to_be_bytes());
    for sibling in state.siblings() {
        bytes.extend_from_slice(&sibling.dot.actor.to_be_bytes());
        bytes.extend_from_slice(&sibling.dot.counter.to_be_bytes());
        bytes.extend_from_slice(&sibling.timestamp.to_be_bytes());
        match &sibling.value {
            None => {
                bytes.push(TOMBSTONE);
                bytes.extend_from_slice(&0u32.to_be_bytes());
            }
            Some(value) => {
                bytes.push(VALUE);
                bytes.extend_from_slice(&(value.len() as u32).to_be_bytes());
                bytes.extend_from_slice(value);
            }
        }
    }
    bytes
}

/// Reads big-endian integers off the front of a byte slice.
struct Cursor<'a>(&'a [u8]);

impl Cursor<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], CorruptRecord> {
        if self.0.len() < n {
            return Err(CorruptRecord("causal state cut short"));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn u64(&mut self) -> Result<u64, CorruptRecord> {
        let mut buffer = [0u8; 8];
        buffer.copy_from_slice(self.take(8)?);
        Ok(u64::from_be_bytes(buffer))
    }

    fn u32(&mut self) -> Result<u32, CorruptRecord> {
        let mut buffer = [0u8; 4];
        buffer.copy_from_slice(self.take(4)?);
        Ok(u32::from_be_bytes(buffer))
    }
}

/// Decodes a stored causal state.
pub fn decode_causal(bytes: &[u8]) -> Result<CausalState, CorruptRecord> {
    let Some((&CAUSAL_FORMAT, rest)) = bytes.split_first() else {
        return Err(CorruptRecord("not a causal state"));
    };
    let mut cursor = Cursor(rest);
    let mut context = VersionVector::new();
    for _ in 0..cursor.u32()? {
        let (actor, counter) = (cursor.u64()?, cursor.u64()?);
        context.add(Dot { actor, counter });
    }
    let count = cursor.u32()?;
    let mut siblings = Vec::new();
    for _ in 0..count {
        let dot = Dot {
            actor: cursor.u64()?,
            counter: cursor.u64()?,
        };
        let timestamp = cursor.u64()?;
        let kind = cursor.take(1)?[0];
        let length = cursor.u32()? as usize;
        let value = match kind {
            TOMBSTONE if length == 0 => None,
            VALUE => Some(cursor.take(length)?.to_vec()),
            _ => return Err(CorruptRecord("unknown sibling kind")),
        };
        siblings.push(Sibling {
            dot,
            timestamp,
            value,
        });
    }
    if !cursor.0.is_empty() {
        return Err(CorruptRecord("causal state with trailing bytes"));
    }
    CausalState::new(siblings, context).map_err(|_| CorruptRecord("inconsistent causal state"))
}

/// Decodes whatever a node holds for a key, by its format byte.
pub fn decode_held(bytes: &[u8]) -> Result<Held, CorruptRecord> {
    match bytes.first() {
        Some(&CAUSAL_FORMAT) => decode_causal(bytes).map(Held::Causal),
        _ => decode(bytes).map(Held::Strong),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip() {
        let records = [
            Record {
                version: Version {
                    counter: 1,
                    writer: 2,
                },
                value: Some(b"world".to_vec()),
            },
            Record {
                version: Version {
                    counter: u64::MAX,
                    writer: 0,
                },
                value: Some(Vec::new()),
            },
            Record {
                version: Version {
                    counter: 3,
                    writer: u64::MAX,
                },
                value: None,
            },
        ];
        for record in records {
            let bytes = encode(&record);
            assert_eq!(decode(&bytes), Ok(record.clone()));
            assert_eq!(decode_version(&bytes), Ok(record.version));
        }
    }

    #[test]
    fn causal_states_round_trip_and_corruption_is_refused() {
        let (a, _) = CausalState::empty().write(1, None, Some(b"one".to_vec()), 5);
        let (b, _) = CausalState::empty().write(2, None, None, 6);
        let (c, _) = CausalState::empty().write(3, None, Some(Vec::new()), 7);
        let state = a.join(&b).join(&c);
        for state in [CausalState::empty(), a, state] {
            let bytes = encode_causal(&state);
            assert_eq!(decode_causal(&bytes), Ok(state.clone()));
            assert_eq!(decode_held(&bytes), Ok(Held::Causal(state.clone())));
            for cut in 0..bytes.len() {
                assert!(decode_causal(&bytes[..cut]).is_err(), "cut at {cut}");
            }
            let mut trailing = bytes.clone();
            trailing.push(0);
            assert!(decode_causal(&trailing).is_err());
        }
        let strong = Record {
            version: Version::default(),
            value: None,
        };
        assert_eq!(decode_held(&encode(&strong)), Ok(Held::Strong(strong)));
    }

    #[test]
    fn an_empty_value_is_not_a_tombstone() {
        let empty = Record {
            version: Version::default(),
            value: Some(Vec::new()),
        };
        assert!(!decode(&encode(&empty)).expect("decodes").is_tombstone());
    }

    #[test]
    fn corrupt_bytes_are_refused() {
        let good = encode(&Record {
            version: Version::default(),
            value: None,
        });
        let mut wrong_format = good.clone();
        wrong_format[0] = 9;
        let mut wrong_kind = good.clone();
        wrong_kind[HEADER - 1] = 7;
        let mut trailing = good.clone();
        trailing.push(1);
        for bad in [
            &good[..5],
            &wrong_format[..],
            &wrong_kind[..],
            &trailing[..],
        ] {
            assert!(decode(bad).is_err(), "{bad:?}");
        }
    }
}
