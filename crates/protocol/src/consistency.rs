//! Consistency levels and the quorum arithmetic behind them.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// How many of a key's replicas must answer before a request succeeds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ConsistencyLevel {
    /// One replica: fast, possibly stale; strong keyspaces accept it only for reads.
    One,
    /// A majority, `⌊RF/2⌋ + 1` replicas.
    Quorum,
    /// Every replica.
    All,
}

impl ConsistencyLevel {
    /// The number of replicas this level needs out of `replication_factor`.
    pub fn required(self, replication_factor: usize) -> usize {
        match self {
            ConsistencyLevel::One => replication_factor.min(1),
            ConsistencyLevel::Quorum => quorum(replication_factor),
            ConsistencyLevel::All => replication_factor,
        }
    }

    /// The lowercase name used in query strings and headers.
    pub fn as_str(self) -> &'static str {
        match self {
            ConsistencyLevel::One => "one",
            ConsistencyLevel::Quorum => "quorum",
            ConsistencyLevel::All => "all",
        }
    }
}

/// A majority of `replication_factor`: `⌊RF/2⌋ + 1`.
pub fn quorum(replication_factor: usize) -> usize {
    replication_factor / 2 + 1
}

/// The replication factors in use: every keyspace's, and the full set's.
pub fn replication_factors(
    state: &crate::metadata::MetadataState,
    set_size: usize,
) -> std::collections::BTreeSet<usize> {
    state
        .keyspaces
        .values()
        .map(|k| k.replication_factor)
        .chain(std::iter::once(set_size))
        .collect()
}

/// Whether the `available` replicas include a read quorum of every prefix of
/// the set a keyspace uses (a keyspace with RF r lives on the first r): only
/// then is every write a quorum acknowledged, in any keyspace, on one of them.
/// A node catching up from its peers leaves itself out of `available`.
pub fn covers_every_prefix(
    replicas: &[crate::NodeId],
    available: impl Fn(&crate::NodeId) -> bool,
    replication_factors: &std::collections::BTreeSet<usize>,
) -> bool {
    replication_factors.iter().all(|&rf| {
        let prefix = &replicas[..rf.min(replicas.len())];
        let have = prefix.iter().filter(|n| available(n)).count();
        // A read quorum of r intersects every write quorum of r: r - q(r) + 1 members.
        have + quorum(prefix.len()) > prefix.len()
    })
}

/// A consistency level name that is not `one`, `quorum` or `all`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown consistency level {0:?}: use one, quorum or all")]
pub struct UnknownConsistency(pub String);

impl FromStr for ConsistencyLevel {
    type Err = UnknownConsistency;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text.to_ascii_lowercase().as_str() {
            "one" => Ok(ConsistencyLevel::One),
            "quorum" => Ok(ConsistencyLevel::Quorum),
            "all" => Ok(ConsistencyLevel::All),
            _ => Err(UnknownConsistency(text.chars().take(32).collect())),
        }
    }
}

impl fmt::Display for ConsistencyLevel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quorum_is_a_strict_majority() {
        let table = [(1, 1), (2, 2), (3, 2), (4, 3), (5, 3), (6, 4), (7, 4)];
        for (rf, expected) in table {
            assert_eq!(quorum(rf), expected, "RF {rf}");
            // Two quorums always intersect: that is what makes strong reads see strong writes.
            assert!(2 * quorum(rf) > rf, "RF {rf}");
        }
    }

    #[test]
    fn levels_need_one_a_majority_or_all() {
        let table = [
            (ConsistencyLevel::One, 3, 1),
            (ConsistencyLevel::Quorum, 3, 2),
            (ConsistencyLevel::All, 3, 3),
            (ConsistencyLevel::One, 5, 1),
            (ConsistencyLevel::Quorum, 5, 3),
            (ConsistencyLevel::All, 5, 5),
            (ConsistencyLevel::Quorum, 1, 1),
        ];
        for (level, rf, expected) in table {
            assert_eq!(level.required(rf), expected, "{level} of RF {rf}");
        }
    }

    #[test]
    fn level_names_parse_case_insensitively_and_others_are_refused() {
        assert_eq!("QUORUM".parse(), Ok(ConsistencyLevel::Quorum));
        assert_eq!("one".parse(), Ok(ConsistencyLevel::One));
        assert_eq!("All".parse(), Ok(ConsistencyLevel::All));
        assert!("two".parse::<ConsistencyLevel>().is_err());
        assert!("".parse::<ConsistencyLevel>().is_err());
    }
}
