//! Epoch fencing: refuse requests routed by an older partition map than one already seen.

use std::collections::HashMap;
use std::sync::Mutex;

use kvorum_protocol::{Epoch, PartitionId};

/// The highest epoch each partition's requests have carried.
#[derive(Debug, Default)]
pub struct EpochFence {
    highest: Mutex<HashMap<PartitionId, Epoch>>,
}

impl EpochFence {
    /// A fence that starts from the epochs recorded on disk.
    pub fn new(known: impl IntoIterator<Item = (PartitionId, Epoch)>) -> Self {
        Self {
            highest: Mutex::new(known.into_iter().collect()),
        }
    }

    /// Admits a request routed by `epoch`, or returns the newer epoch that fences it off.
    pub fn admit(&self, partition: PartitionId, epoch: Epoch) -> Result<(), Epoch> {
        let mut highest = self
            .highest
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let known = highest.entry(partition).or_insert(epoch);
        if epoch < *known {
            return Err(*known);
        }
        *known = epoch;
        Ok(())
    }

    /// Raises a partition's fence to `epoch` (never lowers it), as the partition map moves on.
    pub fn raise(&self, partition: PartitionId, epoch: Epoch) {
        let mut highest = self
            .highest
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let known = highest.entry(partition).or_insert(epoch);
        *known = (*known).max(epoch);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn older_epochs_are_fenced_off_and_newer_ones_raise_the_fence() {
        let fence = EpochFence::new([(PartitionId(1), Epoch(3))]);
        assert_eq!(fence.admit(PartitionId(1), Epoch(2)), Err(Epoch(3)));
        assert_eq!(fence.admit(PartitionId(1), Epoch(3)), Ok(()));
        assert_eq!(fence.admit(PartitionId(1), Epoch(5)), Ok(()));
        assert_eq!(fence.admit(PartitionId(1), Epoch(4)), Err(Epoch(5)));
        // Partitions are fenced independently.
        assert_eq!(fence.admit(PartitionId(2), Epoch(1)), Ok(()));
        // The map raises a fence; it never lowers one.
        fence.raise(PartitionId(2), Epoch(4));
        fence.raise(PartitionId(2), Epoch(3));
        assert_eq!(fence.admit(PartitionId(2), Epoch(3)), Err(Epoch(4)));
    }
}
