//! Pure quorum logic: counting replies against a level, and resolving what a read saw.

use kvorum_protocol::{NodeId, Record};

/// Where a fan-out stands against the number of successes it needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TallyState {
    /// Enough replicas succeeded.
    Met,
    /// Not yet decided.
    Pending,
    /// Too many failed for the level to be met.
    Impossible,
}

/// Counts successes and failures of a fan-out to `asked` replicas that needs `required`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tally {
    required: usize,
    asked: usize,
    succeeded: usize,
    failed: usize,
}

impl Tally {
    /// A tally for `required` successes out of `asked` calls.
    pub fn new(required: usize, asked: usize) -> Self {
        Self {
            required,
            asked,
            succeeded: 0,
            failed: 0,
        }
    }

    /// Records one success.
    pub fn succeed(&mut self) {
        self.succeeded += 1;
    }

    /// Records one failure.
    pub fn fail(&mut self) {
        self.failed += 1;
    }

    /// Successes so far.
    pub fn succeeded(&self) -> usize {
        self.succeeded
    }

    /// Whether the level is met, still possible, or out of reach.
    pub fn state(&self) -> TallyState {
        if self.succeeded >= self.required {
            TallyState::Met
        } else if self.asked - self.failed < self.required {
            TallyState::Impossible
        } else {
            TallyState::Pending
        }
    }
}

/// What a set of read replies says about a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadResolution {
    /// The record with the highest version, if any replica had one.
    pub newest: Option<Record>,
    /// Replicas that hold the newest version (all of them when nobody had a record).
    pub holders: Vec<NodeId>,
    /// Replicas that replied with an older version or none: candidates for write-back.
    pub stale: Vec<NodeId>,
}

/// Finds the newest record among `replies` and which replicas lag behind it.
pub fn resolve_read(replies: &[(NodeId, Option<Record>)]) -> ReadResolution {
    let newest = replies
        .iter()
        .filter_map(|(_, record)| record.as_ref())
        .max_by_key(|record| record.version)
        .cloned();
    let newest_version = newest.as_ref().map(|r| r.version);
    let (holders, stale) = replies
        .iter()
        .partition::<Vec<_>, _>(|(_, record)| record.as_ref().map(|r| r.version) == newest_version);
    ReadResolution {
        newest,
        holders: holders.into_iter().map(|(n, _)| *n).collect(),
        stale: stale.into_iter().map(|(n, _)| *n).collect(),
    }
}

#[cfg(test)]
mod tests {
    use kvorum_protocol::Version;

    use super::*;

    fn record(counter: u64, writer: u64) -> Option<Record> {
        Some(Record {
            version: Version { counter, writer },
            value: Some(vec![counter as u8]),
        })
    }

    #[test]
    fn a_tally_is_met_pending_or_impossible() {
        // (required, asked, successes, failures, state)
        let table = [
            (2, 3, 0, 0, TallyState::Pending),
            (2, 3, 1, 0, TallyState::Pending),
            (2, 3, 2, 0, TallyState::Met),
            (2, 3, 1, 1, TallyState::Pending),
            (2, 3, 0, 2, TallyState::Impossible),
            (3, 3, 2, 1, TallyState::Impossible),
            (3, 3, 3, 0, TallyState::Met),
            (1, 3, 0, 2, TallyState::Pending),
            (1, 3, 0, 3, TallyState::Impossible),
            (0, 0, 0, 0, TallyState::Met),
        ];
        for (required, asked, successes, failures, expected) in table {
            let mut tally = Tally::new(required, asked);
            (0..successes).for_each(|_| tally.succeed());
            (0..failures).for_each(|_| tally.fail());
            assert_eq!(
                tally.state(),
                expected,
                "{required} of {asked}, {successes} ok, {failures} failed"
            );
        }
    }

    #[test]
    fn agreeing_replicas_need_no_repair() {
        let resolution = resolve_read(&[(NodeId(1), record(2, 1)), (NodeId(2), record(2, 1))]);
        assert_eq!(resolution.newest, record(2, 1));
        assert_eq!(resolution.holders, vec![NodeId(1), NodeId(2)]);
        assert!(resolution.stale.is_empty());
    }

    #[test]
    fn the_highest_version_wins_and_laggards_are_stale() {
        let resolution = resolve_read(&[
            (NodeId(1), record(1, 9)),
            (NodeId(2), record(2, 0)),
            (NodeId(3), None),
            (NodeId(4), record(2, 1)),
        ]);
        assert_eq!(resolution.newest, record(2, 1));
        assert_eq!(resolution.holders, vec![NodeId(4)]);
        assert_eq!(resolution.stale, vec![NodeId(1), NodeId(2), NodeId(3)]);
    }

    #[test]
    fn nobody_having_the_key_is_agreement() {
        let resolution = resolve_read(&[(NodeId(1), None), (NodeId(2), None)]);
        assert_eq!(resolution.newest, None);
        assert_eq!(resolution.holders.len(), 2);
        assert!(resolution.stale.is_empty());
    }

    #[test]
    fn a_tombstone_is_a_version_like_any_other() {
        let tombstone = Some(Record {
            version: Version {
                counter: 3,
                writer: 0,
            },
            value: None,
        });
        let resolution = resolve_read(&[(NodeId(1), record(2, 0)), (NodeId(2), tombstone.clone())]);
        assert_eq!(resolution.newest, tombstone);
        assert_eq!(resolution.stale, vec![NodeId(1)]);
    }
}
