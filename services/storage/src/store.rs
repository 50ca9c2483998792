//! The node's redb database: versioned records grouped by partition, and the epochs seen.
//!
//! Records live in one table keyed by `(partition, keyspace, key)`, so that one
//! partition's records form a contiguous range that can be exported, imported
//! and dropped as a unit. Every write transaction commits with
//! `Durability::Immediate`: redb fsyncs before `commit` returns.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use kvorum_protocol::causal::{CausalState, HybridClock, VersionVector};
use kvorum_protocol::storage::{
    DIGEST_BUCKETS, ExportCursor, ExportedRecord, Held, MAX_KEY_SIBLINGS, MAX_KEY_STATE_BYTES,
    PartitionExport, causal_value_bytes,
};
use kvorum_protocol::{
    Epoch, Key, KeyspaceName, NodeId, PartitionId, Record, Version, wall_clock_ms,
};
use redb::{
    Builder, Database, Durability, ReadableDatabase, ReadableTable, ReadableTableMetadata,
    StorageBackend, TableDefinition, WriteTransaction,
};
use xxhash_rust::xxh3::xxh3_64_with_seed;

use crate::record_codec::{self, CorruptRecord};

/// `(partition, keyspace, key)` → encoded [`Record`].
const RECORDS: TableDefinition<(u32, &str, &str), &[u8]> = TableDefinition::new("records");
/// partition → the highest epoch a request has carried for it.
const EPOCHS: TableDefinition<u32, u64> = TableDefinition::new("partition_epochs");
/// Facts about the node itself, such as its id.
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
/// `(target node, partition, keyspace, key)` → the hint's sequence number: the
/// key's state is owed to a replica that missed a write to it.
const HINTS: TableDefinition<(u64, u32, &str, &str), u64> = TableDefinition::new("hints");
/// `(partition, keyspace, key)` → when (this node's wall clock, ms) the key's
/// causal state became the deleted state it holds; tombstones are collected
/// only once every replica has held theirs for the grace period.
const DELETED_SINCE: TableDefinition<(u32, &str, &str), u64> =
    TableDefinition::new("deleted_since");
/// The `META` entry holding the highest dot counter this node ever issued.
const DOT_COUNTER: &str = "dot_counter";
/// The `META` entry that is 1 while the data directory is new or restored and
/// has not caught up from the node's peers yet (a new incarnation).
const CATCHING_UP: &str = "catching_up";
/// The `META` entry holding the incarnation the metadata service admitted this data as.
const INCARNATION: &str = "incarnation";

/// The database file's name inside the data directory.
pub const DATABASE_FILE: &str = "kvorum.redb";

/// Why the store failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// redb reported an error (I/O, corruption, ...).
    #[error("database error: {0}")]
    Database(#[from] redb::Error),
    /// A record's bytes do not decode.
    #[error(transparent)]
    Corrupt(#[from] CorruptRecord),
    /// The data directory belongs to another node.
    #[error("data directory {dir} belongs to node {found}, not node {expected}")]
    WrongNode {
        /// The data directory.
        dir: PathBuf,
        /// The id the node was started with.
        expected: NodeId,
        /// The id recorded in the directory.
        found: NodeId,
    },
    /// A stored key or keyspace fails validation (written by a newer or buggy build).
    #[error("stored key does not validate: {0}")]
    BadStoredKey(String),
}

fn db_error(error: impl Into<redb::Error>) -> StoreError {
    StoreError::Database(error.into())
}

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

/// The node's database.
#[derive(Debug)]
pub struct Store {
    db: Database,
    node: NodeId,
    /// Stamps coordinated writes; observes every state merged in.
    clock: Mutex<HybridClock>,
}

/// The anti-entropy bucket of a key: stable across nodes and builds.
pub fn digest_bucket(keyspace: &str, key: &str) -> usize {
    (key_hash(keyspace, key) % DIGEST_BUCKETS as u64) as usize
}

fn key_hash(keyspace: &str, key: &str) -> u64 {
    let mut input = Vec::with_capacity(keyspace.len() + 1 + key.len());
    input.extend_from_slice(keyspace.as_bytes());
    input.push(0);
    input.extend_from_slice(key.as_bytes());
    xxh3_64_with_seed(&input, 0x6b76_6f72)
}

impl Store {
    /// Opens (or creates) the database in `dir`, checking it belongs to `node`.
    pub fn open(dir: &Path, node: NodeId) -> Result<Self, StoreError> {
        std::fs::create_dir_all(dir).map_err(|e| db_error(redb::StorageError::Io(e)))?;
        let db = Database::create(dir.join(DATABASE_FILE)).map_err(db_error)?;
        Self::bind(db, node, dir)
    }

    /// Opens (or creates) the database on any redb backend, such as one that simulates power loss.
    pub fn open_with_backend(
        backend: impl StorageBackend,
        node: NodeId,
    ) -> Result<Self, StoreError> {
        let db = Builder::new()
            .create_with_backend(backend)
            .map_err(db_error)?;
        Self::bind(db, node, Path::new("(custom backend)"))
    }

    /// Creates the tables and binds the database to `node`.
    fn bind(db: Database, node: NodeId, dir: &Path) -> Result<Self, StoreError> {
        let txn = db.begin_write().map_err(db_error)?;
        {
            txn.open_table(RECORDS).map_err(db_error)?;
            txn.open_table(EPOCHS).map_err(db_error)?;
            txn.open_table(HINTS).map_err(db_error)?;
            txn.open_table(DELETED_SINCE).map_err(db_error)?;
            let mut meta = txn.open_table(META).map_err(db_error)?;
            let found = meta
                .get("node_id")
                .map_err(db_error)?
                .map(|g| NodeId(g.value()));
            match found {
                Some(found) if found != node => {
                    return Err(StoreError::WrongNode {
                        dir: dir.to_owned(),
                        expected: node,
                        found,
                    });
                }
                Some(_) => {}
                None => {
                    meta.insert("node_id", node.0).map_err(db_error)?;
                }
            }
        }
        txn.commit().map_err(db_error)?;
        Ok(Self {
            db,
            node,
            clock: Mutex::new(HybridClock::new()),
        })
    }

    /// The partitions of which this node holds any record, among the first `count`.
    pub fn partitions_held(&self, count: u32) -> Result<Vec<PartitionId>, StoreError> {
        let txn = self.db.begin_read().map_err(db_error)?;
        let records = txn.open_table(RECORDS).map_err(db_error)?;
        let mut held = Vec::new();
        for partition in (0..count).map(PartitionId) {
            if records
                .range(partition_range(partition))
                .map_err(db_error)?
                .next()
                .is_some()
            {
                held.push(partition);
            }
        }
        Ok(held)
    }

    /// Whether the data directory is a new incarnation that has not caught up yet.
    pub fn catching_up(&self) -> Result<bool, StoreError> {
        let txn = self.db.begin_read().map_err(db_error)?;
        let meta = txn.open_table(META).map_err(db_error)?;
        Ok(meta
            .get(CATCHING_UP)
            .map_err(db_error)?
            .is_some_and(|g| g.value() == 1))
    }

    /// The incarnation the metadata service last admitted this data as (0 before any).
    pub fn incarnation(&self) -> Result<u64, StoreError> {
        let txn = self.db.begin_read().map_err(db_error)?;
        let meta = txn.open_table(META).map_err(db_error)?;
        Ok(meta
            .get(INCARNATION)
            .map_err(db_error)?
            .map_or(0, |g| g.value()))
    }

    /// The highest dot counter this node has issued (or the floor it was raised to).
    pub fn dot_counter(&self) -> Result<u64, StoreError> {
        let txn = self.db.begin_read().map_err(db_error)?;
        let meta = txn.open_table(META).map_err(db_error)?;
        Ok(meta
            .get(DOT_COUNTER)
            .map_err(db_error)?
            .map_or(0, |g| g.value()))
    }

    /// Writes a consistent copy of the whole database (one read transaction) to
    /// a new redb file at `path`, fsync'd; returns how many records it holds.
    pub fn copy_to(&self, path: &Path) -> Result<u64, StoreError> {
        let source = self.db.begin_read().map_err(db_error)?;
        let copy = Database::create(path).map_err(db_error)?;
        let mut txn = copy.begin_write().map_err(db_error)?;
        txn.set_durability(Durability::Immediate)
            .map_err(db_error)?;
        // Every table: a restored node needs its tombstone ages (collection waits
        // on them) and its hints (writes it owes others) as much as its records.
        let records = copy_table(&source, &txn, RECORDS)?;
        copy_table(&source, &txn, EPOCHS)?;
        copy_table(&source, &txn, META)?;
        copy_table(&source, &txn, HINTS)?;
        copy_table(&source, &txn, DELETED_SINCE)?;
        txn.commit().map_err(db_error)?;
        Ok(records)
    }

    /// Every record of the redb file at `path` (a checkpoint), as commits to import with keep-if-higher.
    pub fn read_checkpoint(path: &Path) -> Result<Vec<WriteOp>, StoreError> {
        let db = Database::open(path).map_err(db_error)?;
        let txn = db.begin_read().map_err(db_error)?;
        let mut ops = Vec::new();
        for entry in txn
            .open_table(RECORDS)
            .map_err(db_error)?
            .iter()
            .map_err(db_error)?
        {
            let (key, value) = entry.map_err(db_error)?;
            let (partition, keyspace, key) = key.value();
            ops.push(WriteOp::import(
                PartitionId(partition),
                exported(keyspace, key, value.value())?,
            ));
        }
        Ok(ops)
    }

    /// The causal states a checkpoint file holds for some keys of one partition.
    pub fn checkpoint_states(
        path: &Path,
        partition: PartitionId,
        keys: &[(KeyspaceName, Key)],
    ) -> Result<Vec<Option<CausalState>>, StoreError> {
        let db = redb::ReadOnlyDatabase::open(path).map_err(db_error)?;
        let txn = db.begin_read().map_err(db_error)?;
        let table = txn.open_table(RECORDS).map_err(db_error)?;
        keys.iter()
            .map(|(keyspace, key)| {
                let guard = table
                    .get((partition.0, keyspace.as_str(), key.as_str()))
                    .map_err(db_error)?;
                // A strong record or a corrupt one is simply not the tombstone asked about.
                Ok(guard.and_then(|g| record_codec::decode_causal(g.value()).ok()))
            })
            .collect()
    }

    /// The causal state held for a key of an eventual keyspace.
    pub fn read_causal(
        &self,
        partition: PartitionId,
        keyspace: &KeyspaceName,
        key: &Key,
    ) -> Result<Option<CausalState>, StoreError> {
        self.get_decoded(partition, keyspace, key, record_codec::decode_causal)
    }

    /// What a key's stored bytes decode to, from one read transaction.
    fn get_decoded<T>(
        &self,
        partition: PartitionId,
        keyspace: &KeyspaceName,
        key: &Key,
        decode: impl Fn(&[u8]) -> Result<T, CorruptRecord>,
    ) -> Result<Option<T>, StoreError> {
        let txn = self.db.begin_read().map_err(db_error)?;
        let table = txn.open_table(RECORDS).map_err(db_error)?;
        let guard = table
            .get((partition.0, keyspace.as_str(), key.as_str()))
            .map_err(db_error)?;
        Ok(guard.map(|g| decode(g.value())).transpose()?)
    }

    /// A partition's anti-entropy digest: per bucket, the XOR of its keys' hashes over their stored bytes.
    pub fn digest(&self, partition: PartitionId) -> Result<Vec<u64>, StoreError> {
        let txn = self.db.begin_read().map_err(db_error)?;
        let table = txn.open_table(RECORDS).map_err(db_error)?;
        let mut buckets = vec![0u64; DIGEST_BUCKETS];
        for entry in table.range(partition_range(partition)).map_err(db_error)? {
            let (key, value) = entry.map_err(db_error)?;
            let (_, keyspace, key) = key.value();
            let hash = key_hash(keyspace, key);
            buckets[(hash % DIGEST_BUCKETS as u64) as usize] ^=
                xxh3_64_with_seed(value.value(), hash);
        }
        Ok(buckets)
    }

    /// One page of the records of some buckets of a partition, in key order,
    /// after `after`, of at most about `max_bytes` (at least one record).
    pub fn export_buckets(
        &self,
        partition: PartitionId,
        buckets: &[u32],
        after: Option<(&KeyspaceName, &Key)>,
        max_bytes: usize,
    ) -> Result<PartitionExport, StoreError> {
        self.export_where(partition, after, usize::MAX, max_bytes, |keyspace, key| {
            buckets.contains(&(digest_bucket(keyspace, key) as u32))
        })
    }

    /// The deleted keys of a partition (every sibling a tombstone), with their
    /// states and how long this node has held each state, in milliseconds.
    pub fn deleted_keys(
        &self,
        partition: PartitionId,
    ) -> Result<Vec<(KeyspaceName, Key, CausalState, u64)>, StoreError> {
        let txn = self.db.begin_read().map_err(db_error)?;
        let table = txn.open_table(RECORDS).map_err(db_error)?;
        let since = txn.open_table(DELETED_SINCE).map_err(db_error)?;
        let now = wall_clock_ms();
        let mut found = Vec::new();
        for entry in table.range(partition_range(partition)).map_err(db_error)? {
            let (key, value) = entry.map_err(db_error)?;
            let ExportedRecord {
                keyspace,
                key,
                record,
            } = {
                let (_, keyspace, key) = key.value();
                exported(keyspace, key, value.value())?
            };
            if let Held::Causal(state) = record
                && state.is_deleted()
            {
                let held_for = since
                    .get((partition.0, keyspace.as_str(), key.as_str()))
                    .map_err(db_error)?
                    .map_or(0, |g| now.saturating_sub(g.value()));
                found.push((keyspace, key, state, held_for));
            }
        }
        Ok(found)
    }

    /// How long this node has held a key's deleted state, in milliseconds (`None` when it is not deleted).
    pub fn deleted_for_ms(
        &self,
        partition: PartitionId,
        keyspace: &KeyspaceName,
        key: &Key,
    ) -> Result<Option<u64>, StoreError> {
        let txn = self.db.begin_read().map_err(db_error)?;
        let since = txn.open_table(DELETED_SINCE).map_err(db_error)?;
        Ok(since
            .get((partition.0, keyspace.as_str(), key.as_str()))
            .map_err(db_error)?
            .map(|g| wall_clock_ms().saturating_sub(g.value())))
    }

    /// The nodes that hints are waiting for.
    pub fn hint_targets(&self) -> Result<Vec<NodeId>, StoreError> {
        let txn = self.db.begin_read().map_err(db_error)?;
        let table = txn.open_table(HINTS).map_err(db_error)?;
        let mut targets = Vec::new();
        let mut from = 0u64;
        // Jump from target to target instead of reading every hint.
        while let Some(entry) = table
            .range((from, 0u32, "", "")..)
            .map_err(db_error)?
            .next()
        {
            let (key, _) = entry.map_err(db_error)?;
            let target = key.value().0;
            targets.push(NodeId(target));
            match target.checked_add(1) {
                Some(next) => from = next,
                None => break,
            }
        }
        Ok(targets)
    }

    /// Up to `limit` hints for one target.
    pub fn hints_for(&self, target: NodeId, limit: usize) -> Result<Vec<Hint>, StoreError> {
        let txn = self.db.begin_read().map_err(db_error)?;
        let table = txn.open_table(HINTS).map_err(db_error)?;
        let mut hints = Vec::new();
        let range = table
            .range((target.0, 0u32, "", "")..)
            .map_err(db_error)?
            .take_while(|entry| {
                entry
                    .as_ref()
                    .map_or(true, |(k, _)| k.value().0 == target.0)
            });
        for entry in range.take(limit) {
            let (key, seq) = entry.map_err(db_error)?;
            let (target, partition, keyspace, key) = key.value();
            hints.push(Hint {
                target: NodeId(target),
                partition: PartitionId(partition),
                keyspace: KeyspaceName::parse(keyspace)
                    .map_err(|e| StoreError::BadStoredKey(e.to_string()))?,
                key: Key::parse(key).map_err(|e| StoreError::BadStoredKey(e.to_string()))?,
                seq: seq.value(),
            });
        }
        Ok(hints)
    }

    /// How many hints are waiting to be handed off.
    pub fn hint_count(&self) -> Result<u64, StoreError> {
        let txn = self.db.begin_read().map_err(db_error)?;
        txn.open_table(HINTS)
            .map_err(db_error)?
            .len()
            .map_err(db_error)
    }

    /// The record held for a key, tombstones included.
    pub fn read(
        &self,
        partition: PartitionId,
        keyspace: &KeyspaceName,
        key: &Key,
    ) -> Result<Option<Record>, StoreError> {
        self.get_decoded(partition, keyspace, key, record_codec::decode)
    }

    /// The version held for a key, without copying its value.
    pub fn version(
        &self,
        partition: PartitionId,
        keyspace: &KeyspaceName,
        key: &Key,
    ) -> Result<Option<Version>, StoreError> {
        self.get_decoded(partition, keyspace, key, record_codec::decode_version)
    }

    /// Applies `ops` in order in one transaction, fsync'd before this returns.
    pub fn apply(&self, ops: &[WriteOp]) -> Result<Vec<WriteOutcome>, StoreError> {
        let mut txn = self.db.begin_write().map_err(db_error)?;
        txn.set_durability(Durability::Immediate)
            .map_err(db_error)?;
        let outcomes = ops
            .iter()
            .map(|op| self.apply_one(&txn, op))
            .collect::<Result<Vec<_>, _>>()?;
        txn.commit().map_err(db_error)?;
        Ok(outcomes)
    }

    /// Every record of one partition, ordered by keyspace then key.
    pub fn export_partition(&self, partition: PartitionId) -> Result<PartitionExport, StoreError> {
        self.export_page(partition, None, usize::MAX, usize::MAX)
    }

    /// One page of a partition's records in key order, after `after`: at most
    /// `limit` records and about `max_bytes` (at least one record).
    pub fn export_page(
        &self,
        partition: PartitionId,
        after: Option<(&KeyspaceName, &Key)>,
        limit: usize,
        max_bytes: usize,
    ) -> Result<PartitionExport, StoreError> {
        self.export_where(partition, after, limit, max_bytes, |_, _| true)
    }

    fn export_where(
        &self,
        partition: PartitionId,
        after: Option<(&KeyspaceName, &Key)>,
        limit: usize,
        max_bytes: usize,
        wanted: impl Fn(&str, &str) -> bool,
    ) -> Result<PartitionExport, StoreError> {
        use std::ops::Bound;
        let txn = self.db.begin_read().map_err(db_error)?;
        let table = txn.open_table(RECORDS).map_err(db_error)?;
        let whole = partition_range(partition);
        let start = match after {
            Some((keyspace, key)) => {
                Bound::Excluded((partition.0, keyspace.as_str(), key.as_str()))
            }
            None => Bound::Included(whole.start),
        };
        let mut records: Vec<ExportedRecord> = Vec::new();
        let mut bytes = 0;
        let mut next = None;
        for entry in table
            .range::<(u32, &str, &str)>((start, Bound::Excluded(whole.end)))
            .map_err(db_error)?
        {
            if records.len() == limit || (!records.is_empty() && bytes >= max_bytes) {
                next = records.last().map(|r| ExportCursor {
                    keyspace: r.keyspace.clone(),
                    key: r.key.clone(),
                });
                break;
            }
            let (key, value) = entry.map_err(db_error)?;
            let (_, keyspace, key) = key.value();
            if !wanted(keyspace, key) {
                continue;
            }
            let record = exported(keyspace, key, value.value())?;
            bytes += record.approx_bytes();
            records.push(record);
        }
        Ok(PartitionExport {
            partition,
            records,
            next,
        })
    }

    /// The highest epoch recorded for each partition.
    pub fn partition_epochs(&self) -> Result<Vec<(PartitionId, Epoch)>, StoreError> {
        let txn = self.db.begin_read().map_err(db_error)?;
        let table = txn.open_table(EPOCHS).map_err(db_error)?;
        let mut epochs = Vec::new();
        for entry in table.iter().map_err(db_error)? {
            let (partition, epoch) = entry.map_err(db_error)?;
            epochs.push((PartitionId(partition.value()), Epoch(epoch.value())));
        }
        Ok(epochs)
    }
}

/// Copies every row of `table` from a read transaction into a write transaction; returns the rows copied.
fn copy_table<K: redb::Key + 'static, V: redb::Value + 'static>(
    source: &redb::ReadTransaction,
    target: &WriteTransaction,
    table: TableDefinition<K, V>,
) -> Result<u64, StoreError> {
    let mut into = target.open_table(table).map_err(db_error)?;
    let mut rows = 0;
    for entry in source
        .open_table(table)
        .map_err(db_error)?
        .iter()
        .map_err(db_error)?
    {
        let (key, value) = entry.map_err(db_error)?;
        into.insert(key.value(), value.value()).map_err(db_error)?;
        rows += 1;
    }
    Ok(rows)
}

/// The key range holding exactly one partition's records.
fn partition_range(partition: PartitionId) -> std::ops::Range<(u32, &'static str, &'static str)> {
    // Keyspace names are 1..=64 characters of [A-Za-z0-9_-], all below U+007F,
    // so every record of the partition sorts between these two bounds.
    (partition.0, "", "")..(partition.0, "\u{7f}", "")
}

/// A stored row as an exported record.
fn exported(keyspace: &str, key: &str, bytes: &[u8]) -> Result<ExportedRecord, StoreError> {
    Ok(ExportedRecord {
        keyspace: KeyspaceName::parse(keyspace)
            .map_err(|e| StoreError::BadStoredKey(e.to_string()))?,
        key: Key::parse(key).map_err(|e| StoreError::BadStoredKey(e.to_string()))?,
        record: record_codec::decode_held(bytes)?,
    })
}

/// Checks a routed op's epoch against the partition's, inside the transaction;
/// records a newer one. Returns the recorded epoch when the op is fenced off.
fn fenced(
    txn: &WriteTransaction,
    partition: PartitionId,
    epoch: Option<Epoch>,
) -> Result<Option<Epoch>, StoreError> {
    let mut epochs = txn.open_table(EPOCHS).map_err(db_error)?;
    let known = epochs
        .get(partition.0)
        .map_err(db_error)?
        .map(|g| Epoch(g.value()));
    if let (Some(epoch), Some(known)) = (epoch, known)
        && epoch < known
    {
        return Ok(Some(known));
    }
    if let Some(epoch) = epoch.filter(|e| known.is_none_or(|k| k < *e)) {
        epochs.insert(partition.0, epoch.0).map_err(db_error)?;
    }
    Ok(None)
}

fn held_causal(
    txn: &WriteTransaction,
    table_key: (u32, &str, &str),
) -> Result<Option<CausalState>, StoreError> {
    let records = txn.open_table(RECORDS).map_err(db_error)?;
    let held = records.get(table_key).map_err(db_error)?;
    Ok(held
        .map(|g| record_codec::decode_causal(g.value()))
        .transpose()?)
}

fn put_causal(
    txn: &WriteTransaction,
    table_key: (u32, &str, &str),
    state: &CausalState,
) -> Result<(), StoreError> {
    let mut records = txn.open_table(RECORDS).map_err(db_error)?;
    records
        .insert(table_key, record_codec::encode_causal(state).as_slice())
        .map_err(db_error)?;
    Ok(())
}

/// Records when a key's state became deleted, or forgets it once it is not.
fn track_deleted(
    txn: &WriteTransaction,
    table_key: (u32, &str, &str),
    state: &CausalState,
) -> Result<(), StoreError> {
    let mut since = txn.open_table(DELETED_SINCE).map_err(db_error)?;
    if state.is_deleted() {
        since.insert(table_key, wall_clock_ms()).map_err(db_error)?;
    } else {
        since.remove(table_key).map_err(db_error)?;
    }
    Ok(())
}

fn put_hints(
    txn: &WriteTransaction,
    targets: &[NodeId],
    table_key: (u32, &str, &str),
    seq: u64,
) -> Result<usize, StoreError> {
    let mut hints = txn.open_table(HINTS).map_err(db_error)?;
    let (partition, keyspace, key) = table_key;
    for target in targets {
        hints
            .insert((target.0, partition, keyspace, key), seq)
            .map_err(db_error)?;
    }
    Ok(targets.len())
}

impl Store {
    fn tick(&self, observed: u64) -> u64 {
        let mut clock = self.clock.lock().unwrap_or_else(|p| p.into_inner());
        clock.observe(observed);
        clock.tick(wall_clock_ms())
    }

    fn observe(&self, timestamp: u64) {
        self.clock
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .observe(timestamp);
    }

    fn apply_one(&self, txn: &WriteTransaction, op: &WriteOp) -> Result<WriteOutcome, StoreError> {
        match op {
            WriteOp::Merge {
                partition,
                epoch,
                keyspace,
                key,
                state,
            } => {
                if let Some(current) = fenced(txn, *partition, *epoch)? {
                    return Ok(WriteOutcome::Fenced { current });
                }
                let table_key = (partition.0, keyspace.as_str(), key.as_str());
                self.observe(state.max_timestamp());
                let held = held_causal(txn, table_key)?;
                let joined = held
                    .as_ref()
                    .map_or_else(|| state.clone(), |h| h.join(state));
                let changed = held.as_ref() != Some(&joined) && !joined.is_empty();
                if changed {
                    put_causal(txn, table_key, &joined)?;
                    track_deleted(txn, table_key, &joined)?;
                }
                Ok(WriteOutcome::Merged {
                    changed,
                    state: joined,
                })
            }
            WriteOp::CausalWrite {
                partition,
                epoch,
                keyspace,
                key,
                context,
                value,
                hint_for,
            } => {
                if let Some(current) = fenced(txn, *partition, Some(*epoch))? {
                    return Ok(WriteOutcome::Fenced { current });
                }
                let table_key = (partition.0, keyspace.as_str(), key.as_str());
                let held = held_causal(txn, table_key)?.unwrap_or_default();
                let timestamp = self.tick(held.max_timestamp());
                let mut meta = txn.open_table(META).map_err(db_error)?;
                let floor = meta
                    .get(DOT_COUNTER)
                    .map_err(db_error)?
                    .map_or(0, |g| g.value());
                // Every dot of this node is at or below its counter, so a context
                // naming more was not read from any replica: taking it would push
                // this node's dots up for good.
                if let Some(named) = context.as_ref().map(|c| c.get(self.node.0))
                    && named > floor
                {
                    return Ok(WriteOutcome::KeyLimit(KeyLimit::ContextAhead(named, floor)));
                }
                let (state, dot) = held.write_above(
                    self.node.0,
                    floor,
                    context.as_ref(),
                    value.clone(),
                    timestamp,
                );
                // Bounded, but never against a write that shrinks the key: a
                // client can always resolve the siblings it read.
                let (count, bytes) = (state.siblings().len(), causal_value_bytes(&state));
                if count > MAX_KEY_SIBLINGS && count > held.siblings().len() {
                    return Ok(WriteOutcome::KeyLimit(KeyLimit::Siblings(count)));
                }
                if bytes > MAX_KEY_STATE_BYTES && bytes > causal_value_bytes(&held) {
                    return Ok(WriteOutcome::KeyLimit(KeyLimit::Bytes(bytes)));
                }
                meta.insert(DOT_COUNTER, dot.counter).map_err(db_error)?;
                drop(meta);
                put_causal(txn, table_key, &state)?;
                track_deleted(txn, table_key, &state)?;
                put_hints(txn, hint_for, table_key, timestamp)?;
                Ok(WriteOutcome::Merged {
                    changed: true,
                    state,
                })
            }
            WriteOp::StoreHints {
                partition,
                keyspace,
                key,
                targets,
            } => {
                let seq = self.tick(0);
                let table_key = (partition.0, keyspace.as_str(), key.as_str());
                Ok(WriteOutcome::Hinted(put_hints(
                    txn, targets, table_key, seq,
                )?))
            }
            WriteOp::ClearHint(hint) => {
                let mut hints = txn.open_table(HINTS).map_err(db_error)?;
                let hint_key = (
                    hint.target.0,
                    hint.partition.0,
                    hint.keyspace.as_str(),
                    hint.key.as_str(),
                );
                let current = hints.get(hint_key).map_err(db_error)?.map(|g| g.value());
                let removed = current == Some(hint.seq);
                if removed {
                    hints.remove(hint_key).map_err(db_error)?;
                }
                Ok(WriteOutcome::Removed(removed))
            }
            WriteOp::Purge {
                partition,
                keyspace,
                key,
                state,
            } => {
                let table_key = (partition.0, keyspace.as_str(), key.as_str());
                let removed =
                    state.is_deleted() && held_causal(txn, table_key)?.as_ref() == Some(state);
                if removed {
                    let mut records = txn.open_table(RECORDS).map_err(db_error)?;
                    records.remove(table_key).map_err(db_error)?;
                    let mut since = txn.open_table(DELETED_SINCE).map_err(db_error)?;
                    since.remove(table_key).map_err(db_error)?;
                }
                Ok(WriteOutcome::Removed(removed))
            }
            WriteOp::Commit {
                partition,
                epoch,
                keyspace,
                key,
                record,
            } => {
                let mut records = txn.open_table(RECORDS).map_err(db_error)?;
                let table_key = (partition.0, keyspace.as_str(), key.as_str());
                let held = records
                    .get(table_key)
                    .map_err(db_error)?
                    .map(|g| record_codec::decode_version(g.value()))
                    .transpose()?;
                // The fence is checked here, inside the transaction, so that no commit
                // routed by an old epoch slips in after a newer epoch was recorded.
                if let Some(current) = fenced(txn, *partition, *epoch)? {
                    return Ok(WriteOutcome::Fenced { current });
                }
                let outcome = match held {
                    Some(current) if current >= record.version => WriteOutcome::Committed {
                        applied: false,
                        current,
                    },
                    _ => {
                        records
                            .insert(table_key, record_codec::encode(record).as_slice())
                            .map_err(db_error)?;
                        WriteOutcome::Committed {
                            applied: true,
                            current: record.version,
                        }
                    }
                };
                Ok(outcome)
            }
            WriteOp::Incarnation {
                catching_up,
                incarnation,
            } => {
                let mut meta = txn.open_table(META).map_err(db_error)?;
                if let Some(incarnation) = incarnation {
                    let counter = meta
                        .get(DOT_COUNTER)
                        .map_err(db_error)?
                        .map_or(0, |g| g.value());
                    let floor = kvorum_protocol::cluster::dot_floor(*incarnation);
                    meta.insert(DOT_COUNTER, counter.max(floor))
                        .map_err(db_error)?;
                    meta.insert(INCARNATION, *incarnation).map_err(db_error)?;
                }
                meta.insert(CATCHING_UP, u64::from(*catching_up))
                    .map_err(db_error)?;
                Ok(WriteOutcome::Recorded)
            }
            WriteOp::RaiseEpoch { partition, epoch } => {
                let mut epochs = txn.open_table(EPOCHS).map_err(db_error)?;
                let known = epochs
                    .get(partition.0)
                    .map_err(db_error)?
                    .map(|g| Epoch(g.value()));
                let raised = known.map_or(*epoch, |k| k.max(*epoch));
                epochs.insert(partition.0, raised.0).map_err(db_error)?;
                Ok(WriteOutcome::Epoch(raised))
            }
            WriteOp::DropUnassigned { partition, epoch } => {
                let mut epochs = txn.open_table(EPOCHS).map_err(db_error)?;
                let known = epochs
                    .get(partition.0)
                    .map_err(db_error)?
                    .map(|g| Epoch(g.value()));
                if known.is_some_and(|k| k > *epoch) {
                    return Ok(WriteOutcome::Dropped(0));
                }
                epochs.insert(partition.0, epoch.0).map_err(db_error)?;
                drop(epochs);
                let mut hints = txn.open_table(HINTS).map_err(db_error)?;
                hints
                    .extract_if(|(_, hinted, _, _), _| hinted == partition.0)
                    .map_err(db_error)?
                    .for_each(drop);
                drop(hints);
                self.apply_one(txn, &WriteOp::DropPartition(*partition))
            }
            WriteOp::DropPartition(partition) => {
                let mut records = txn.open_table(RECORDS).map_err(db_error)?;
                let removed = records
                    .extract_from_if(partition_range(*partition), |_, _| true)
                    .map_err(db_error)?
                    .count();
                let mut since = txn.open_table(DELETED_SINCE).map_err(db_error)?;
                since
                    .extract_from_if(partition_range(*partition), |_, _| true)
                    .map_err(db_error)?
                    .for_each(drop);
                Ok(WriteOutcome::Dropped(removed))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ks() -> KeyspaceName {
        KeyspaceName::default_keyspace()
    }

    fn key(text: &str) -> Key {
        Key::parse(text).expect("valid key")
    }

    fn record(counter: u64, value: &str) -> Record {
        Record {
            version: Version { counter, writer: 1 },
            value: Some(value.as_bytes().to_vec()),
        }
    }

    fn commit(partition: u32, k: &str, record: Record) -> WriteOp {
        WriteOp::Commit {
            partition: PartitionId(partition),
            epoch: Some(Epoch(1)),
            keyspace: ks(),
            key: key(k),
            record,
        }
    }

    #[test]
    fn a_replica_keeps_only_higher_versions() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path(), NodeId(1)).expect("open");
        let outcomes = store
            .apply(&[
                commit(0, "k", record(2, "two")),
                commit(0, "k", record(1, "one")),
                commit(0, "k", record(2, "again")),
            ])
            .expect("apply");
        let current = Version {
            counter: 2,
            writer: 1,
        };
        assert_eq!(
            outcomes,
            vec![
                WriteOutcome::Committed {
                    applied: true,
                    current
                },
                WriteOutcome::Committed {
                    applied: false,
                    current
                },
                WriteOutcome::Committed {
                    applied: false,
                    current
                },
            ]
        );
        assert_eq!(
            store.read(PartitionId(0), &ks(), &key("k")).expect("read"),
            Some(record(2, "two"))
        );
        assert_eq!(
            store
                .version(PartitionId(0), &ks(), &key("k"))
                .expect("version"),
            Some(current)
        );
        assert_eq!(
            store
                .read(PartitionId(0), &ks(), &key("other"))
                .expect("read"),
            None
        );
    }

    #[test]
    fn data_and_epochs_survive_reopening() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let store = Store::open(dir.path(), NodeId(4)).expect("open");
            let mut op = commit(3, "durable", record(1, "yes"));
            if let WriteOp::Commit { epoch, .. } = &mut op {
                *epoch = Some(Epoch(7));
            }
            store.apply(&[op]).expect("apply");
        }
        let store = Store::open(dir.path(), NodeId(4)).expect("reopen");
        assert_eq!(
            store
                .read(PartitionId(3), &ks(), &key("durable"))
                .expect("read"),
            Some(record(1, "yes"))
        );
        assert_eq!(
            store.partition_epochs().expect("epochs"),
            vec![(PartitionId(3), Epoch(7))]
        );
    }

    #[test]
    fn an_unassigned_partition_is_dropped_with_its_hints_unless_a_newer_epoch_came_back() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path(), NodeId(1)).expect("open");
        store
            .apply(&[
                commit(1, "a", record(1, "a1")),
                commit(2, "b", record(1, "b2")),
                WriteOp::StoreHints {
                    partition: PartitionId(1),
                    keyspace: ks(),
                    key: key("a"),
                    targets: vec![NodeId(3)],
                },
                WriteOp::StoreHints {
                    partition: PartitionId(2),
                    keyspace: ks(),
                    key: key("b"),
                    targets: vec![NodeId(3)],
                },
            ])
            .expect("apply");
        assert_eq!(
            store.partitions_held(4).expect("held"),
            [PartitionId(1), PartitionId(2)]
        );
        let outcomes = store
            .apply(&[WriteOp::DropUnassigned {
                partition: PartitionId(1),
                epoch: Epoch(2),
            }])
            .expect("drop");
        assert_eq!(outcomes, vec![WriteOutcome::Dropped(1)]);
        assert_eq!(store.partitions_held(4).expect("held"), [PartitionId(2)]);
        assert_eq!(
            store.hint_count().expect("hints"),
            1,
            "partition 2's hint stays"
        );
        assert_eq!(
            store.partition_epochs().expect("epochs"),
            vec![(PartitionId(1), Epoch(2)), (PartitionId(2), Epoch(1))],
            "the drop fences older requests"
        );
        // A move brought partition 2 back at epoch 5 and fenced it: an older
        // decision to drop it changes nothing.
        store
            .apply(&[WriteOp::RaiseEpoch {
                partition: PartitionId(2),
                epoch: Epoch(5),
            }])
            .expect("fence");
        let outcomes = store
            .apply(&[WriteOp::DropUnassigned {
                partition: PartitionId(2),
                epoch: Epoch(4),
            }])
            .expect("drop");
        assert_eq!(outcomes, vec![WriteOutcome::Dropped(0)]);
        assert_eq!(store.partitions_held(4).expect("held"), [PartitionId(2)]);
    }

    #[test]
    fn a_data_directory_refuses_another_node() {
        let dir = tempfile::tempdir().expect("tempdir");
        drop(Store::open(dir.path(), NodeId(1)).expect("open"));
        let error = Store::open(dir.path(), NodeId(2)).expect_err("wrong node");
        assert!(matches!(error, StoreError::WrongNode { .. }), "{error}");
    }

    #[test]
    fn partitions_export_and_drop_as_units() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path(), NodeId(1)).expect("open");
        store
            .apply(&[
                commit(1, "a", record(1, "a1")),
                commit(1, "b/c", record(1, "b1")),
                commit(2, "a", record(1, "a2")),
                commit(0, "z", record(1, "z0")),
            ])
            .expect("apply");
        let export = store.export_partition(PartitionId(1)).expect("export");
        let keys: Vec<_> = export
            .records
            .iter()
            .map(|r| r.key.as_str().to_owned())
            .collect();
        assert_eq!(keys, ["a", "b/c"]);

        // Importing into another node reproduces the partition exactly.
        let other_dir = tempfile::tempdir().expect("tempdir");
        let other = Store::open(other_dir.path(), NodeId(2)).expect("open");
        let ops: Vec<_> = export
            .records
            .iter()
            .map(|r| WriteOp::import(PartitionId(1), r.clone()))
            .collect();
        other.apply(&ops).expect("import");
        assert_eq!(
            other.export_partition(PartitionId(1)).expect("export"),
            export
        );

        let outcomes = store
            .apply(&[WriteOp::DropPartition(PartitionId(1))])
            .expect("drop");
        assert_eq!(outcomes, vec![WriteOutcome::Dropped(2)]);
        assert!(
            store
                .export_partition(PartitionId(1))
                .expect("export")
                .records
                .is_empty()
        );
        assert_eq!(
            store
                .export_partition(PartitionId(2))
                .expect("export")
                .records
                .len(),
            1
        );
        assert_eq!(
            store
                .export_partition(PartitionId(0))
                .expect("export")
                .records
                .len(),
            1
        );
    }

    #[test]
    fn the_last_possible_partition_is_a_partition_like_any_other() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path(), NodeId(1)).expect("open");
        store
            .apply(&[
                commit(u32::MAX, "k", record(1, "v")),
                commit(u32::MAX - 1, "k", record(1, "v")),
            ])
            .expect("apply");
        assert_eq!(
            store
                .export_partition(PartitionId(u32::MAX))
                .expect("export")
                .records
                .len(),
            1
        );
        let outcomes = store
            .apply(&[WriteOp::DropPartition(PartitionId(u32::MAX))])
            .expect("drop");
        assert_eq!(outcomes, vec![WriteOutcome::Dropped(1)]);
        assert_eq!(
            store
                .export_partition(PartitionId(u32::MAX - 1))
                .expect("export")
                .records
                .len(),
            1
        );
    }

    #[test]
    fn commits_from_an_older_epoch_are_fenced_inside_the_transaction() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path(), NodeId(1)).expect("open");
        let at = |epoch: Option<u64>, counter: u64| WriteOp::Commit {
            partition: PartitionId(0),
            epoch: epoch.map(Epoch),
            keyspace: ks(),
            key: key("k"),
            record: record(counter, "v"),
        };
        let outcomes = store
            .apply(&[at(Some(3), 1), at(Some(2), 5), at(None, 6)])
            .expect("apply");
        assert_eq!(outcomes[1], WriteOutcome::Fenced { current: Epoch(3) });
        // An unrouted transfer (import) is not fenced.
        assert!(matches!(
            outcomes[2],
            WriteOutcome::Committed { applied: true, .. }
        ));
        assert_eq!(
            store.partition_epochs().expect("epochs"),
            vec![(PartitionId(0), Epoch(3))]
        );
    }

    fn eventual() -> KeyspaceName {
        KeyspaceName::parse("carts").expect("name")
    }

    fn causal_write(k: &str, value: Option<&str>, context: Option<VersionVector>) -> WriteOp {
        WriteOp::CausalWrite {
            partition: PartitionId(2),
            epoch: Epoch(1),
            keyspace: eventual(),
            key: key(k),
            context,
            value: value.map(|v| v.as_bytes().to_vec()),
            hint_for: vec![NodeId(9)],
        }
    }

    fn merged_state(outcome: &WriteOutcome) -> CausalState {
        match outcome {
            WriteOutcome::Merged { state, .. } => state.clone(),
            other => panic!("expected a merge outcome, got {other:?}"),
        }
    }

    #[test]
    fn a_key_takes_no_more_siblings_than_the_bound_but_a_resolving_write_always() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path(), NodeId(1)).expect("open");
        // Blind writes that supersede nothing: each adds a sibling.
        let blind = |value: &str| causal_write("k", Some(value), Some(VersionVector::default()));
        let mut last = CausalState::default();
        for i in 0..MAX_KEY_SIBLINGS {
            last = merged_state(&store.apply(&[blind(&format!("v{i}"))]).expect("write")[0]);
        }
        assert_eq!(last.siblings().len(), MAX_KEY_SIBLINGS);
        let refused = store.apply(&[blind("one too many")]).expect("apply");
        assert_eq!(
            refused,
            vec![WriteOutcome::KeyLimit(KeyLimit::Siblings(
                MAX_KEY_SIBLINGS + 1
            ))]
        );
        let held = store
            .read_causal(PartitionId(2), &eventual(), &key("k"))
            .expect("read")
            .expect("held");
        assert_eq!(held, last, "a refused write changes nothing");
        // A write with the context of what was read resolves every sibling.
        let resolved = merged_state(
            &store
                .apply(&[causal_write(
                    "k",
                    Some("merged"),
                    Some(held.context().clone()),
                )])
                .expect("write")[0],
        );
        assert_eq!(resolved.siblings().len(), 1);
    }

    #[test]
    fn a_context_naming_dots_this_node_never_issued_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path(), NodeId(1)).expect("open");
        let written = merged_state(
            &store
                .apply(&[causal_write("k", Some("a"), None)])
                .expect("write")[0],
        );
        let mut forged = written.context().clone();
        forged.add(kvorum_protocol::causal::Dot {
            actor: 1,
            counter: 1 << 50,
        });
        let refused = store
            .apply(&[causal_write("k", Some("b"), Some(forged))])
            .expect("apply");
        assert_eq!(
            refused,
            vec![WriteOutcome::KeyLimit(KeyLimit::ContextAhead(1 << 50, 1))]
        );
        assert_eq!(store.dot_counter().expect("read"), 1, "nothing was issued");
        // The context it really gave out is taken.
        let taken = store
            .apply(&[causal_write(
                "k",
                Some("b"),
                Some(written.context().clone()),
            )])
            .expect("apply");
        assert_eq!(merged_state(&taken[0]).siblings()[0].dot.counter, 2);
    }

    #[test]
    fn a_new_incarnation_issues_dots_from_its_own_range_and_remembers_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path(), NodeId(1)).expect("open");
        let first = merged_state(
            &store
                .apply(&[causal_write("k", Some("a"), None)])
                .expect("write")[0],
        );
        assert_eq!(first.siblings()[0].dot.counter, 1);
        assert_eq!(store.incarnation().expect("read"), 0);
        // Incarnation 2: a dot the lost incarnations could have issued is never issued again.
        store
            .apply(&[WriteOp::Incarnation {
                catching_up: true,
                incarnation: Some(2),
            }])
            .expect("record");
        assert!(store.catching_up().expect("read"));
        assert_eq!(store.incarnation().expect("read"), 2);
        assert_eq!(store.dot_counter().expect("read"), 2 << 40);
        let next = merged_state(
            &store
                .apply(&[causal_write("j", Some("b"), None)])
                .expect("write")[0],
        );
        assert_eq!(next.siblings()[0].dot.counter, (2 << 40) + 1);
        // Clearing the flag keeps the incarnation and never lowers the counter.
        store
            .apply(&[WriteOp::Incarnation {
                catching_up: false,
                incarnation: Some(2),
            }])
            .expect("record");
        assert!(!store.catching_up().expect("read"));
        assert_eq!(store.dot_counter().expect("read"), (2 << 40) + 1);
    }

    #[test]
    fn coordinated_writes_take_the_nodes_dots_and_merges_join() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path(), NodeId(3)).expect("open");
        let first = merged_state(
            &store
                .apply(&[causal_write("k", Some("a"), None)])
                .expect("write")[0],
        );
        assert_eq!(first.siblings()[0].dot.actor, 3);
        // A blind write with an empty context keeps the first as a sibling.
        let both = merged_state(
            &store
                .apply(&[causal_write("k", Some("b"), Some(VersionVector::new()))])
                .expect("write")[0],
        );
        assert_eq!(both.siblings().len(), 2);
        assert_eq!(
            store
                .read_causal(PartitionId(2), &eventual(), &key("k"))
                .expect("read"),
            Some(both.clone())
        );
        // A state from another replica joins in; merging it again changes nothing.
        let (theirs, _) = CausalState::empty().write(5, None, Some(b"c".to_vec()), 1);
        let merge = WriteOp::Merge {
            partition: PartitionId(2),
            epoch: Some(Epoch(1)),
            keyspace: eventual(),
            key: key("k"),
            state: theirs.clone(),
        };
        let outcomes = store.apply(&[merge.clone(), merge]).expect("merge");
        assert!(outcomes[0].changed() && !outcomes[1].changed());
        assert_eq!(merged_state(&outcomes[1]), both.join(&theirs));
        // A write with the joined context resolves all three.
        let resolved = merged_state(
            &store
                .apply(&[causal_write(
                    "k",
                    Some("d"),
                    Some(both.join(&theirs).context().clone()),
                )])
                .expect("write")[0],
        );
        assert_eq!(resolved.siblings().len(), 1);
        // Coordinated timestamps stay above what the node has seen.
        assert!(resolved.max_timestamp() > both.max_timestamp());
    }

    #[test]
    fn hints_are_durable_and_cleared_only_while_unchanged() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let store = Store::open(dir.path(), NodeId(1)).expect("open");
            store
                .apply(&[causal_write("k", Some("a"), None)])
                .expect("write");
        }
        let store = Store::open(dir.path(), NodeId(1)).expect("reopen");
        assert_eq!(store.hint_targets().expect("targets"), vec![NodeId(9)]);
        let hints = store.hints_for(NodeId(9), 10).expect("hints");
        assert_eq!(hints.len(), 1);
        assert_eq!((hints[0].target, hints[0].key.as_str()), (NodeId(9), "k"));
        // A newer hint for the same key replaces it: clearing the old one is a no-op.
        store
            .apply(&[WriteOp::StoreHints {
                partition: PartitionId(2),
                keyspace: eventual(),
                key: key("k"),
                targets: vec![NodeId(9)],
            }])
            .expect("hint");
        let outcomes = store
            .apply(&[WriteOp::ClearHint(hints[0].clone())])
            .expect("clear");
        assert_eq!(outcomes, vec![WriteOutcome::Removed(false)]);
        let newer = store.hints_for(NodeId(9), 10).expect("hints");
        store
            .apply(&[WriteOp::ClearHint(newer[0].clone())])
            .expect("clear");
        assert_eq!(store.hint_count().expect("count"), 0);
    }

    #[test]
    fn digests_match_exactly_when_records_match_and_buckets_name_the_difference() {
        let (a_dir, b_dir) = (
            tempfile::tempdir().expect("tempdir"),
            tempfile::tempdir().expect("tempdir"),
        );
        let a = Store::open(a_dir.path(), NodeId(1)).expect("open");
        let b = Store::open(b_dir.path(), NodeId(2)).expect("open");
        for i in 0..50 {
            let op = commit(2, &format!("k{i}"), record(1, "v"));
            a.apply(std::slice::from_ref(&op)).expect("a");
            b.apply(&[op]).expect("b");
        }
        assert_eq!(
            a.digest(PartitionId(2)).expect("digest"),
            b.digest(PartitionId(2)).expect("digest")
        );
        b.apply(&[commit(2, "k7", record(2, "newer"))]).expect("b");
        let (da, db) = (
            a.digest(PartitionId(2)).expect("digest"),
            b.digest(PartitionId(2)).expect("digest"),
        );
        let differing: Vec<u32> = (0..da.len())
            .filter(|&i| da[i] != db[i])
            .map(|i| i as u32)
            .collect();
        assert_eq!(differing, vec![digest_bucket(ks().as_str(), "k7") as u32]);
        let exchanged = b
            .export_buckets(PartitionId(2), &differing, None, usize::MAX)
            .expect("bucket")
            .records;
        assert!(exchanged.iter().any(|r| r.key.as_str() == "k7"));
        let ops: Vec<_> = exchanged
            .into_iter()
            .map(|r| WriteOp::import(PartitionId(2), r))
            .collect();
        a.apply(&ops).expect("repair");
        assert_eq!(
            a.digest(PartitionId(2)).expect("digest"),
            b.digest(PartitionId(2)).expect("digest")
        );
    }

    #[test]
    fn a_purge_removes_only_the_exact_lone_tombstone() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path(), NodeId(1)).expect("open");
        let live = merged_state(
            &store
                .apply(&[causal_write("k", Some("a"), None)])
                .expect("write")[0],
        );
        let purge = |state: &CausalState| WriteOp::Purge {
            partition: PartitionId(2),
            keyspace: eventual(),
            key: key("k"),
            state: state.clone(),
        };
        assert_eq!(
            store.apply(&[purge(&live)]).expect("purge"),
            vec![WriteOutcome::Removed(false)]
        );
        let tomb = merged_state(
            &store
                .apply(&[causal_write("k", None, None)])
                .expect("delete")[0],
        );
        assert!(tomb.is_deleted());
        assert_eq!(store.deleted_keys(PartitionId(2)).expect("scan").len(), 1);
        assert_eq!(
            store.apply(&[purge(&tomb)]).expect("purge"),
            vec![WriteOutcome::Removed(true)]
        );
        assert_eq!(
            store
                .read_causal(PartitionId(2), &eventual(), &key("k"))
                .expect("read"),
            None
        );
    }
}
