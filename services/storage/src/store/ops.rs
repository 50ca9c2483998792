//! What the group-commit writer applies to the store, and what each op did.

use kvorum_protocol::causal::{CausalState, VersionVector};
use kvorum_protocol::storage::{ExportedRecord, Held, StrongFloors};
use kvorum_protocol::{Epoch, Key, KeyspaceName, NodeId, PartitionId, Record, Version};

/// One write the group-commit writer applies.
#[derive(Debug, Clone)]
pub enum WriteOp {
    /// Keep `record` for the key if its version is higher than the one held.
    Commit {
        /// The partition.
        partition: PartitionId,
        /// The epoch the request was routed by: refused if older than the highest
        /// seen, remembered if newer. `None` for transfers that are not routed (imports).
        epoch: Option<Epoch>,
        /// The keyspace.
        keyspace: KeyspaceName,
        /// The key.
        key: Key,
        /// The record.
        record: Record,
    },
    /// Remove every record of a partition.
    DropPartition(PartitionId),
    /// Drop a partition the map no longer assigns to this node (as of `epoch`):
    /// raise its fence to `epoch`, then drop its records, tombstone ages and the
    /// hints held for it, unless a newer epoch was recorded meanwhile (a move
    /// brought the partition back and may be importing into it).
    DropUnassigned {
        /// The partition.
        partition: PartitionId,
        /// Its epoch in the map that no longer names this node.
        epoch: Epoch,
    },
    /// Join an eventual keyspace's causal state into the one held.
    Merge {
        /// The partition.
        partition: PartitionId,
        /// The epoch routed by, fenced as for commits; `None` for imports and hint replays.
        epoch: Option<Epoch>,
        /// The keyspace.
        keyspace: KeyspaceName,
        /// The key.
        key: Key,
        /// The state to join.
        state: CausalState,
    },
    /// Coordinate a write to an eventual keyspace: a new sibling with this node's next dot.
    CausalWrite {
        /// The partition.
        partition: PartitionId,
        /// The epoch routed by.
        epoch: Epoch,
        /// The keyspace.
        keyspace: KeyspaceName,
        /// The key.
        key: Key,
        /// The siblings superseded, or `None` for every sibling held.
        context: Option<VersionVector>,
        /// The value, or `None` for a delete.
        value: Option<Vec<u8>>,
        /// Replicas to keep a hint for, in the same transaction.
        hint_for: Vec<NodeId>,
    },
    /// Keep hints that `targets` are owed the key's state.
    StoreHints {
        /// The partition.
        partition: PartitionId,
        /// The keyspace.
        keyspace: KeyspaceName,
        /// The key.
        key: Key,
        /// The replicas that missed a write.
        targets: Vec<NodeId>,
    },
    /// Forget a hint that was handed off, unless a newer one replaced it meanwhile.
    ClearHint(Hint),
    /// Remove a tombstone, only if the key's state still equals `state`.
    Purge {
        /// The partition.
        partition: PartitionId,
        /// The keyspace.
        keyspace: KeyspaceName,
        /// The key.
        key: Key,
        /// The lone tombstone every replica holds.
        state: CausalState,
    },
    /// Record which incarnation this node's data belongs to and whether it is
    /// still catching up; an incarnation's number also raises the dot counter
    /// to the start of its range (never lowers it).
    Incarnation {
        /// Whether the data directory is new or restored and not yet caught up.
        catching_up: bool,
        /// The incarnation the metadata service admitted, once known.
        incarnation: Option<u64>,
    },
    /// Record that requests routed below `epoch` are refused for the partition.
    RaiseEpoch {
        /// The partition.
        partition: PartitionId,
        /// The new lowest epoch admitted.
        epoch: Epoch,
    },
    /// Raise the partition's strong floor (never lower it): prepares answer at least it.
    RaiseStrongFloor {
        /// The partition.
        partition: PartitionId,
        /// The floor.
        floor: Version,
    },
    /// Raise the partition's strong watermark, only up to its floor.
    SealStrong {
        /// The partition.
        partition: PartitionId,
        /// The watermark.
        watermark: Version,
    },
    /// Take floors an export carried: each bound the higher of the held and the carried.
    AdoptStrongFloors {
        /// The partition.
        partition: PartitionId,
        /// The exporter's floors.
        floors: StrongFloors,
    },
    /// Remove a strong tombstone, only if the key still holds exactly it and
    /// it is at or below the partition's watermark.
    PurgeStrongTombstone {
        /// The partition.
        partition: PartitionId,
        /// The keyspace.
        keyspace: KeyspaceName,
        /// The key.
        key: Key,
        /// The tombstone's version.
        version: Version,
    },
    /// Remove a strong value a catch-up source does not hold although the
    /// value is at or below the source's watermark: the key was deleted and
    /// collected since (this copy came back with a restored disk). Only if the
    /// key still holds exactly that value.
    DropStaleStrongValue {
        /// The partition.
        partition: PartitionId,
        /// The keyspace.
        keyspace: KeyspaceName,
        /// The key.
        key: Key,
        /// The value's version.
        version: Version,
        /// The source's watermark.
        below: Version,
    },
}

/// What one [`WriteOp`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteOutcome {
    /// The commit's effect: whether it replaced the held record, and the version now held.
    Committed {
        /// Whether the record was stored.
        applied: bool,
        /// The version the node holds after the op.
        current: Version,
    },
    /// A merge or coordinated write: whether the held state changed, and the state now held.
    Merged {
        /// Whether the state learned anything.
        changed: bool,
        /// The key's state after the op.
        state: CausalState,
    },
    /// How many hints were stored.
    Hinted(usize),
    /// Whether a hint or tombstone was removed.
    Removed(bool),
    /// How many records a partition drop removed.
    Dropped(usize),
    /// Node-wide metadata was recorded.
    Recorded,
    /// The epoch recorded for the partition after a raise.
    Epoch(Epoch),
    /// The write would grow a key past a limit (siblings or bytes); nothing changed.
    KeyLimit(KeyLimit),
    /// The commit was routed by an epoch older than the one recorded; nothing changed.
    Fenced {
        /// The epoch recorded for the partition.
        current: Epoch,
    },
    /// The record is at or below the partition's collection watermark and the
    /// key holds nothing at least as new: it may be older than a tombstone
    /// already collected, so it is refused; nothing changed.
    BelowWatermark {
        /// The partition's watermark.
        watermark: Version,
    },
    /// The partition's strong floors after the op; `sealed` is false when a
    /// seal was refused for a watermark above the floor.
    Floors {
        /// The floors now held.
        floors: StrongFloors,
        /// Whether the op did what it asked.
        sealed: bool,
    },
}

impl WriteOutcome {
    /// Whether the op changed what the node holds for a key (a commit applied or a merge that learned something).
    pub fn changed(&self) -> bool {
        matches!(
            self,
            WriteOutcome::Committed { applied: true, .. }
                | WriteOutcome::Merged { changed: true, .. }
        )
    }
}

impl WriteOp {
    /// The op that imports an exported record: keep-if-higher for strong records, join for causal states.
    pub fn import(partition: PartitionId, record: ExportedRecord) -> WriteOp {
        let ExportedRecord {
            keyspace,
            key,
            record,
        } = record;
        match record {
            Held::Strong(record) => WriteOp::Commit {
                partition,
                epoch: None,
                keyspace,
                key,
                record,
            },
            Held::Causal(state) => WriteOp::Merge {
                partition,
                epoch: None,
                keyspace,
                key,
                state,
            },
        }
    }
}

/// Which bound of a key's state a write would pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyLimit {
    /// More than [`kvorum_protocol::storage::MAX_KEY_SIBLINGS`] concurrent versions.
    Siblings(usize),
    /// More than [`kvorum_protocol::storage::MAX_KEY_STATE_BYTES`] bytes of values.
    Bytes(usize),
    /// The write's context names a dot of this node above any it issued
    /// (counter named, highest issued): no read ever returned such a context.
    ContextAhead(u64, u64),
}

/// A hint: `target` is owed the state of one key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hint {
    /// The replica that missed a write.
    pub target: NodeId,
    /// The key's partition.
    pub partition: PartitionId,
    /// The keyspace.
    pub keyspace: KeyspaceName,
    /// The key.
    pub key: Key,
    /// Distinguishes this hint from a later one for the same key and target.
    pub seq: u64,
}
