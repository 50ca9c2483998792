//! An acceptor's durable state: what must survive a crash for Paxos to stay safe.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::types::{Accepted, Ballot, Entry, Slot, Snapshot};

/// One change to durable state; the runtime writes it (fsync'd) before sending anything.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Persist {
    /// The acceptor promised this ballot.
    Promised(Ballot),
    /// The acceptor accepted this value for a slot.
    Accepted(Slot, Accepted),
    /// The replica learned that this value is decided for a slot.
    Decided(Slot, Entry),
    /// The log below `snapshot.upto` is replaced by the snapshot (compaction).
    Snapshot(Snapshot),
}

/// Everything a replica restarts from.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DurableState {
    /// The highest ballot promised.
    pub promised: Ballot,
    /// The latest acceptance per slot.
    pub accepted: BTreeMap<Slot, Accepted>,
    /// Values known decided.
    pub decided: BTreeMap<Slot, Entry>,
    /// The latest snapshot; the log holds nothing below it.
    pub snapshot: Option<Snapshot>,
}

impl DurableState {
    /// Applies one change, as the runtime's storage does.
    pub fn apply(&mut self, change: &Persist) {
        match change {
            Persist::Promised(ballot) => self.promised = self.promised.max(*ballot),
            Persist::Accepted(slot, accepted) => {
                self.accepted.insert(*slot, accepted.clone());
            }
            Persist::Decided(slot, entry) => {
                self.decided.insert(*slot, entry.clone());
            }
            Persist::Snapshot(snapshot) => {
                if snapshot.upto > self.compacted_upto() {
                    self.accepted = self.accepted.split_off(&snapshot.upto);
                    self.decided = self.decided.split_off(&snapshot.upto);
                    self.snapshot = Some(snapshot.clone());
                }
            }
        }
    }

    /// The first slot the log still holds: everything below is in the snapshot.
    pub fn compacted_upto(&self) -> Slot {
        self.snapshot.as_ref().map_or(0, |s| s.upto)
    }
}
