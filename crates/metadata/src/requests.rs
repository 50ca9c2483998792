//! The outcomes of recent requests, so that a retried request id is applied
//! once: bounded by count, and by age on the proposers' clocks.

use std::collections::{BTreeMap, VecDeque};

use kvorum_protocol::metadata::{MetadataError, MetadataOutcome, RequestId};
use serde::{Deserialize, Serialize};

/// How many request ids are remembered for deduplication.
pub const REMEMBERED_REQUESTS: usize = 10_000;

/// How long a request id is remembered, by the proposers' clocks: far past
/// any client's retries, short enough that a quiet cluster's table (and so
/// its snapshot) shrinks.
pub const REMEMBERED_FOR_MS: u64 = 60 * 60 * 1000;

/// Remembered outcomes, oldest first.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct RememberedRequests {
    outcomes: BTreeMap<RequestId, Result<MetadataOutcome, MetadataError>>,
    order: VecDeque<RequestId>,
    /// When each id of `order` was proposed, 0 where unknown (logged before
    /// commands were stamped). Shorter than `order` in a snapshot taken before
    /// there were times: the missing ones are the oldest.
    #[serde(default)]
    remembered_at: VecDeque<u64>,
}

impl RememberedRequests {
    /// The outcome remembered for `request`.
    pub(crate) fn outcome(
        &self,
        request: &RequestId,
    ) -> Option<&Result<MetadataOutcome, MetadataError>> {
        self.outcomes.get(request)
    }

    /// Remembers the outcome of `request`, proposed at `at_ms` (0: unknown),
    /// forgetting the oldest past the count bound.
    pub(crate) fn remember(
        &mut self,
        request: &RequestId,
        outcome: &Result<MetadataOutcome, MetadataError>,
        at_ms: u64,
    ) {
        self.align_times(at_ms);
        self.outcomes.insert(request.clone(), outcome.clone());
        self.order.push_back(request.clone());
        self.remembered_at.push_back(at_ms);
        while self.order.len() > REMEMBERED_REQUESTS {
            self.forget_oldest();
        }
    }

    /// Forgets the ids proposed more than [`REMEMBERED_FOR_MS`] before
    /// `now_ms`. An id of unknown time ages from the first time it is asked
    /// about, so that an older snapshot's ids are kept a whole period too.
    pub(crate) fn forget_older_than(&mut self, now_ms: u64) {
        self.align_times(now_ms);
        for at in &mut self.remembered_at {
            if *at == 0 {
                *at = now_ms;
            }
        }
        let cutoff = now_ms.saturating_sub(REMEMBERED_FOR_MS);
        while self.remembered_at.front().is_some_and(|at| *at < cutoff) {
            self.forget_oldest();
        }
    }

    /// Gives ids without a time (a snapshot from before the times) the time `now_ms`.
    fn align_times(&mut self, now_ms: u64) {
        while self.remembered_at.len() < self.order.len() {
            self.remembered_at.push_front(now_ms);
        }
    }

    fn forget_oldest(&mut self) {
        if let Some(oldest) = self.order.pop_front() {
            self.outcomes.remove(&oldest);
        }
        self.remembered_at.pop_front();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u64) -> RequestId {
        RequestId(format!("r{n}"))
    }

    fn ok() -> Result<MetadataOutcome, MetadataError> {
        Ok(MetadataOutcome {
            version: 1,
            lease: None,
        })
    }

    #[test]
    fn ids_older_than_the_age_bound_are_forgotten_and_newer_ones_kept() {
        let mut table = RememberedRequests::default();
        table.remember(&id(1), &ok(), 1_000);
        table.remember(&id(2), &ok(), 1_000 + REMEMBERED_FOR_MS / 2);
        table.forget_older_than(1_000 + REMEMBERED_FOR_MS);
        assert!(table.outcome(&id(1)).is_some(), "exactly the bound: kept");
        table.forget_older_than(1_001 + REMEMBERED_FOR_MS);
        assert!(table.outcome(&id(1)).is_none(), "past the bound: forgotten");
        assert!(table.outcome(&id(2)).is_some());
        assert_eq!(table.order.len(), table.remembered_at.len());
    }

    #[test]
    fn the_count_bound_still_holds_within_the_age_bound() {
        let mut table = RememberedRequests::default();
        for n in 0..(REMEMBERED_REQUESTS as u64 + 5) {
            table.remember(&id(n), &ok(), 5_000);
        }
        assert_eq!(table.order.len(), REMEMBERED_REQUESTS);
        assert!(table.outcome(&id(0)).is_none());
        assert!(table.outcome(&id(REMEMBERED_REQUESTS as u64 + 4)).is_some());
    }

    #[test]
    fn ids_of_a_snapshot_without_times_age_from_the_first_stamped_command() {
        // A snapshot from before the times: outcomes and order only.
        let old = r#"{"outcomes":{"r1":{"Ok":{"version":1}}},"order":["r1"]}"#;
        let mut table: RememberedRequests = serde_json::from_str(old).expect("old layout");
        table.forget_older_than(10 * REMEMBERED_FOR_MS);
        assert!(table.outcome(&id(1)).is_some(), "kept a whole period");
        table.forget_older_than(11 * REMEMBERED_FOR_MS + 1);
        assert!(table.outcome(&id(1)).is_none(), "then forgotten");
    }
}
