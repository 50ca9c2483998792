//! Epoch fencing: refuse requests routed by an older partition map than one
//! already seen, and requests for a partition the map this node follows does
//! not place here.

use std::collections::HashMap;
use std::sync::Mutex;

use kvorum_protocol::{Epoch, PartitionId};

/// The highest epoch each partition's requests have carried, and which
/// partitions the followed map places on this node.
#[derive(Debug, Default)]
pub struct EpochFence {
    highest: Mutex<HashMap<PartitionId, Epoch>>,
    /// Per partition: the epoch of the newest map seen, and whether it names
    /// this node as a replica or a joining one.
    placed: Mutex<HashMap<PartitionId, (Epoch, bool)>>,
}

impl EpochFence {
    /// A fence that starts from the epochs recorded on disk.
    pub fn new(known: impl IntoIterator<Item = (PartitionId, Epoch)>) -> Self {
        Self {
            highest: Mutex::new(known.into_iter().collect()),
            placed: Mutex::new(HashMap::new()),
        }
    }

    /// Admits a request routed by `epoch`, or returns the newer epoch that fences it off.
    ///
    /// A request routed by the very map this node follows, for a partition
    /// that map does not place here, is refused too (with that epoch): a node
    /// never serves a partition it neither holds nor is joining. A request
    /// routed by a newer map than the node has seen is admitted: the node
    /// cannot tell yet, and the router knows better.
    pub fn admit(&self, partition: PartitionId, epoch: Epoch) -> Result<(), Epoch> {
        if let Some((known, false)) = self
            .placed
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .get(&partition)
            .copied()
            && epoch <= known
        {
            return Err(known.max(epoch));
        }
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

    /// Records whether the map at `epoch` places `partition` on this node.
    pub fn place(&self, partition: PartitionId, epoch: Epoch, here: bool) {
        let mut placed = self
            .placed
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let entry = placed.entry(partition).or_insert((epoch, here));
        if epoch >= entry.0 {
            *entry = (epoch, here);
        }
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

    #[test]
    fn a_partition_the_map_places_elsewhere_is_refused_unless_a_newer_map_routed_it() {
        let fence = EpochFence::default();
        fence.place(PartitionId(1), Epoch(4), false);
        fence.place(PartitionId(2), Epoch(4), true);
        assert_eq!(fence.admit(PartitionId(1), Epoch(4)), Err(Epoch(4)));
        assert_eq!(fence.admit(PartitionId(2), Epoch(4)), Ok(()));
        // A router on a newer map (a move into this node it has not seen yet).
        assert_eq!(fence.admit(PartitionId(1), Epoch(5)), Ok(()));
        // An older map's placement never overwrites a newer one's.
        fence.place(PartitionId(2), Epoch(3), false);
        assert_eq!(fence.admit(PartitionId(2), Epoch(4)), Ok(()));
        fence.place(PartitionId(1), Epoch(5), true);
        assert_eq!(fence.admit(PartitionId(1), Epoch(5)), Ok(()));
    }
}
