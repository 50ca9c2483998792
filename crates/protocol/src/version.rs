//! Record versions for strong keyspaces, and the records storage nodes keep.
//!
//! A strong write takes a version strictly higher than every version a quorum
//! reported in its prepare phase; replicas keep a record only if its version is
//! higher than the one they hold. Two coordinators that prepare concurrently pick
//! the same counter, so the version carries a per-write random `writer` tag that
//! makes the two distinct and totally ordered.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use serde_with::{base64::Base64, serde_as};

/// A totally ordered version: first by `counter`, then by `writer`.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct Version {
    /// Grows by one over the highest version the writer's prepare phase saw.
    pub counter: u64,
    /// A tag unique to the write, breaking ties between concurrent writers.
    pub writer: u64,
}

impl Version {
    /// The largest counter a version may carry; replicas refuse higher ones.
    pub const MAX_COUNTER: u64 = u64::MAX - 1;

    /// The first version above `highest` (or above nothing), tagged with `writer`;
    /// `None` once the key's counter has reached [`Self::MAX_COUNTER`].
    pub fn next_after(highest: Option<Version>, writer: u64) -> Option<Version> {
        let counter = highest.map_or(0, |v| v.counter).checked_add(1)?;
        (counter <= Self::MAX_COUNTER).then_some(Version { counter, writer })
    }

    /// Whether a replica may store this version.
    pub fn is_valid(self) -> bool {
        self.counter <= Self::MAX_COUNTER
    }

    /// The opaque text form used in the `X-Kvorum-Context` header.
    pub fn to_token(self) -> String {
        self.to_string()
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "v1.{:x}.{:x}", self.counter, self.writer)
    }
}

/// A context token that is not one Kvorum issued.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "malformed context token {0:?}: send back the X-Kvorum-Context value of a response unchanged"
)]
pub struct VersionTokenError(pub String);

impl FromStr for Version {
    type Err = VersionTokenError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let error = || VersionTokenError(text.chars().take(64).collect());
        let mut parts = text.split('.');
        if parts.next() != Some("v1") {
            return Err(error());
        }
        let mut number = || {
            parts
                .next()
                .filter(|p| !p.is_empty() && p.len() <= 16)
                .and_then(|p| u64::from_str_radix(p, 16).ok())
                .ok_or_else(error)
        };
        let counter = number()?;
        let writer = number()?;
        if parts.next().is_some() {
            return Err(error());
        }
        Ok(Version { counter, writer })
    }
}

/// What a replica holds for one key: a version and a value, or a tombstone.
#[serde_as]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// The version the value was written with.
    pub version: Version,
    /// The value bytes (base64 in JSON), or `None` for a tombstone left by a delete.
    #[serde_as(as = "Option<Base64>")]
    pub value: Option<Vec<u8>>,
}

impl Record {
    /// Whether this record marks the key deleted.
    pub fn is_tombstone(&self) -> bool {
        self.value.is_none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(counter: u64, writer: u64) -> Version {
        Version { counter, writer }
    }

    #[test]
    fn versions_order_by_counter_then_writer() {
        let mut versions = vec![v(2, 1), v(1, 9), v(2, 0), v(1, 0), v(3, 0)];
        versions.sort();
        assert_eq!(versions, vec![v(1, 0), v(1, 9), v(2, 0), v(2, 1), v(3, 0)]);
    }

    #[test]
    fn the_next_version_is_strictly_higher_than_any_with_the_same_counter() {
        assert_eq!(Version::next_after(None, 7), Some(v(1, 7)));
        let highest = v(5, u64::MAX);
        let next = Version::next_after(Some(highest), 0).expect("room above 5");
        assert!(next > highest);
        assert_eq!(next, v(6, 0));
    }

    #[test]
    fn the_counter_never_wraps() {
        let last = v(Version::MAX_COUNTER - 1, 0);
        assert_eq!(
            Version::next_after(Some(last), 3),
            Some(v(Version::MAX_COUNTER, 3))
        );
        assert_eq!(
            Version::next_after(Some(v(Version::MAX_COUNTER, 0)), 3),
            None
        );
        assert_eq!(Version::next_after(Some(v(u64::MAX, 0)), 3), None);
        assert!(v(Version::MAX_COUNTER, 0).is_valid());
        assert!(!v(u64::MAX, 0).is_valid());
    }

    #[test]
    fn tokens_round_trip_and_garbage_is_refused() {
        for version in [v(0, 0), v(1, 2), v(u64::MAX, u64::MAX)] {
            assert_eq!(version.to_token().parse::<Version>(), Ok(version));
        }
        for bad in [
            "",
            "v1",
            "v1.1",
            "v2.1.1",
            "v1.1.1.1",
            "v1.x.1",
            "v1..1",
            "v1.11111111111111111.1",
        ] {
            assert!(bad.parse::<Version>().is_err(), "{bad}");
        }
    }

    #[test]
    fn records_carry_values_as_base64_in_json() {
        let record = Record {
            version: v(1, 2),
            value: Some(b"world".to_vec()),
        };
        let json = serde_json::to_string(&record).expect("serialize");
        assert_eq!(
            json,
            r#"{"version":{"counter":1,"writer":2},"value":"d29ybGQ="}"#
        );
        assert_eq!(
            serde_json::from_str::<Record>(&json).expect("deserialize"),
            record
        );
        let tombstone = Record {
            version: v(3, 4),
            value: None,
        };
        assert!(tombstone.is_tombstone());
    }
}
