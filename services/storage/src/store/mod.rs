//! The node's redb database: versioned records grouped by partition, and the epochs seen.
//!
//! Records live in one table keyed by `(partition, keyspace, key)`, so that one
//! partition's records form a contiguous range that can be exported, imported
//! and dropped as a unit. Every write transaction commits with
//! `Durability::Immediate`: redb fsyncs before `commit` returns.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use kvorum_protocol::causal::{CausalState, HybridClock};
use kvorum_protocol::storage::{
    DIGEST_BUCKETS, ExportCursor, ExportedRecord, Held, MAX_KEY_SIBLINGS, MAX_KEY_STATE_BYTES,
    PartitionExport, StrongFloors, causal_value_bytes,
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

mod ops;
mod strong_floors;

pub use ops::{Hint, KeyLimit, WriteOp, WriteOutcome};

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
            txn.open_table(strong_floors::STRONG_FLOOR)
                .map_err(db_error)?;
            txn.open_table(strong_floors::STRONG_WATERMARK)
                .map_err(db_error)?;
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
        copy_table(&source, &txn, strong_floors::STRONG_FLOOR)?;
        copy_table(&source, &txn, strong_floors::STRONG_WATERMARK)?;
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
        let wanted =
            |keyspace: &str, key: &str| buckets.contains(&(digest_bucket(keyspace, key) as u32));
        self.export_where(partition, after, usize::MAX, max_bytes, false, wanted)
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
    /// Every page carries the partition's strong floors as they were when it
    /// was read: the importer adopts the first page's once it holds every
    /// record, if the later pages' show the partition was not dropped meanwhile.
    pub fn export_page(
        &self,
        partition: PartitionId,
        after: Option<(&KeyspaceName, &Key)>,
        limit: usize,
        max_bytes: usize,
    ) -> Result<PartitionExport, StoreError> {
        self.export_where(partition, after, limit, max_bytes, true, |_, _| true)
    }

    fn export_where(
        &self,
        partition: PartitionId,
        after: Option<(&KeyspaceName, &Key)>,
        limit: usize,
        max_bytes: usize,
        with_floors: bool,
        wanted: impl Fn(&str, &str) -> bool,
    ) -> Result<PartitionExport, StoreError> {
        use std::ops::Bound;
        let txn = self.db.begin_read().map_err(db_error)?;
        let table = txn.open_table(RECORDS).map_err(db_error)?;
        // Read in the page's snapshot. The first page's watermark is what an
        // export vouches for: every record at or below it is here then and
        // stays (or is superseded, or is a tombstone collected) while the
        // later pages are read, unless the partition is dropped, which the
        // later pages' floors show. A watermark sealed later could cover
        // records that reached this node after their page went out.
        let strong_floors = if with_floors {
            Some(strong_floors::floors_in_snapshot(&txn, partition)?)
        } else {
            None
        };
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
            strong_floors,
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
                let watermark = strong_floors::floors_in(txn, *partition)?.watermark;
                match strong_floors::admission(held, record, watermark) {
                    strong_floors::Admission::AsUsual => {}
                    strong_floors::Admission::AlreadyDeleted => {
                        return Ok(WriteOutcome::Committed {
                            applied: false,
                            current: watermark.unwrap_or(record.version),
                        });
                    }
                    strong_floors::Admission::Refused(watermark) => {
                        return Ok(WriteOutcome::BelowWatermark { watermark });
                    }
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
            WriteOp::RaiseStrongFloor { partition, floor } => {
                let floors = strong_floors::raise(
                    txn,
                    *partition,
                    StrongFloors {
                        floor: Some(*floor),
                        watermark: None,
                    },
                )?;
                Ok(WriteOutcome::Floors {
                    floors,
                    sealed: true,
                })
            }
            WriteOp::SealStrong {
                partition,
                watermark,
            } => {
                let held = strong_floors::floors_in(txn, *partition)?;
                // A watermark above the floor could refuse writes prepared
                // before the floor reached it: the collector starts over.
                if held.floor.is_none_or(|floor| floor < *watermark) {
                    return Ok(WriteOutcome::Floors {
                        floors: held,
                        sealed: false,
                    });
                }
                let floors = strong_floors::raise(
                    txn,
                    *partition,
                    StrongFloors {
                        floor: None,
                        watermark: Some(*watermark),
                    },
                )?;
                Ok(WriteOutcome::Floors {
                    floors,
                    sealed: true,
                })
            }
            WriteOp::AdoptStrongFloors { partition, floors } => Ok(WriteOutcome::Floors {
                floors: strong_floors::raise(txn, *partition, *floors)?,
                sealed: true,
            }),
            WriteOp::PurgeStrongTombstone {
                partition,
                keyspace,
                key,
                version,
            } => {
                let watermark = strong_floors::floors_in(txn, *partition)?.watermark;
                let table_key = (partition.0, keyspace.as_str(), key.as_str());
                Ok(WriteOutcome::Removed(strong_floors::remove_exact(
                    txn, table_key, *version, false, watermark,
                )?))
            }
            WriteOp::DropStaleStrongValue {
                partition,
                keyspace,
                key,
                version,
                below,
            } => {
                let table_key = (partition.0, keyspace.as_str(), key.as_str());
                Ok(WriteOutcome::Removed(strong_floors::remove_exact(
                    txn,
                    table_key,
                    *version,
                    true,
                    Some(*below),
                )?))
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
                drop(since);
                strong_floors::forget(txn, *partition)?;
                Ok(WriteOutcome::Dropped(removed))
            }
        }
    }
}

#[cfg(test)]
mod tests;
