//! The on-disk encoding of a [`Record`]: a format byte, the version, then a tombstone or the value.
//!
//! Layout: `[format=1][counter: u64 BE][writer: u64 BE][kind: 0 tombstone | 1 value][value bytes]`.
//! A fixed binary layout keeps values as raw bytes (JSON would inflate them by a
//! third) and the format byte lets a later layout coexist with this one.

use kvorum_protocol::{Record, Version};

const FORMAT: u8 = 1;
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
