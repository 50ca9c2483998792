//! The node's redb database: versioned records grouped by partition, and the epochs seen.
//!
//! Records live in one table keyed by `(partition, keyspace, key)`, so that one
//! partition's records form a contiguous range that can be exported, imported
//! and dropped as a unit. Every write transaction commits with
//! `Durability::Immediate`: redb fsyncs before `commit` returns.

use std::path::{Path, PathBuf};

use kvorum_protocol::storage::{ExportCursor, ExportedRecord, PartitionExport};
use kvorum_protocol::{Epoch, Key, KeyspaceName, NodeId, PartitionId, Record, Version};
use redb::{
    Builder, Database, Durability, ReadableDatabase, ReadableTable, StorageBackend,
    TableDefinition, WriteTransaction,
};

use crate::record_codec::{self, CorruptRecord};

/// `(partition, keyspace, key)` → encoded [`Record`].
const RECORDS: TableDefinition<(u32, &str, &str), &[u8]> = TableDefinition::new("records");
/// partition → the highest epoch a request has carried for it.
const EPOCHS: TableDefinition<u32, u64> = TableDefinition::new("partition_epochs");
/// Facts about the node itself, such as its id.
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

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
    /// How many records a partition drop removed.
    Dropped(usize),
    /// The epoch recorded for the partition after a raise.
    Epoch(Epoch),
    /// The commit was routed by an epoch older than the one recorded; nothing changed.
    Fenced {
        /// The epoch recorded for the partition.
        current: Epoch,
    },
}

/// The node's database.
#[derive(Debug)]
pub struct Store {
    db: Database,
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
        Ok(Self { db })
    }

    /// Writes a consistent copy of the whole database (one read transaction) to
    /// a new redb file at `path`, fsync'd; returns how many records it holds.
    pub fn copy_to(&self, path: &Path) -> Result<u64, StoreError> {
        let source = self.db.begin_read().map_err(db_error)?;
        let copy = Database::create(path).map_err(db_error)?;
        let mut txn = copy.begin_write().map_err(db_error)?;
        txn.set_durability(Durability::Immediate)
            .map_err(db_error)?;
        let records = copy_table(&source, &txn, RECORDS)?;
        copy_table(&source, &txn, EPOCHS)?;
        copy_table(&source, &txn, META)?;
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
            ops.push(WriteOp::Commit {
                partition: PartitionId(partition),
                epoch: None,
                keyspace: KeyspaceName::parse(keyspace)
                    .map_err(|e| StoreError::BadStoredKey(e.to_string()))?,
                key: Key::parse(key).map_err(|e| StoreError::BadStoredKey(e.to_string()))?,
                record: record_codec::decode(value.value())?,
            });
        }
        Ok(ops)
    }

    /// The record held for a key, tombstones included.
    pub fn read(
        &self,
        partition: PartitionId,
        keyspace: &KeyspaceName,
        key: &Key,
    ) -> Result<Option<Record>, StoreError> {
        let txn = self.db.begin_read().map_err(db_error)?;
        let table = txn.open_table(RECORDS).map_err(db_error)?;
        let guard = table
            .get((partition.0, keyspace.as_str(), key.as_str()))
            .map_err(db_error)?;
        Ok(guard.map(|g| record_codec::decode(g.value())).transpose()?)
    }

    /// The version held for a key, without copying its value.
    pub fn version(
        &self,
        partition: PartitionId,
        keyspace: &KeyspaceName,
        key: &Key,
    ) -> Result<Option<Version>, StoreError> {
        let txn = self.db.begin_read().map_err(db_error)?;
        let table = txn.open_table(RECORDS).map_err(db_error)?;
        let guard = table
            .get((partition.0, keyspace.as_str(), key.as_str()))
            .map_err(db_error)?;
        Ok(guard
            .map(|g| record_codec::decode_version(g.value()))
            .transpose()?)
    }

    /// Applies `ops` in order in one transaction, fsync'd before this returns.
    pub fn apply(&self, ops: &[WriteOp]) -> Result<Vec<WriteOutcome>, StoreError> {
        let mut txn = self.db.begin_write().map_err(db_error)?;
        txn.set_durability(Durability::Immediate)
            .map_err(db_error)?;
        let outcomes = ops
            .iter()
            .map(|op| apply_one(&txn, op))
            .collect::<Result<Vec<_>, _>>()?;
        txn.commit().map_err(db_error)?;
        Ok(outcomes)
    }

    /// Every record of one partition, ordered by keyspace then key.
    pub fn export_partition(&self, partition: PartitionId) -> Result<PartitionExport, StoreError> {
        self.export_page(partition, None, usize::MAX)
    }

    /// Up to `limit` records of one partition after `after` (keyspace, key), in
    /// order, from one read transaction; `next` says where the following page starts.
    pub fn export_page(
        &self,
        partition: PartitionId,
        after: Option<(&KeyspaceName, &Key)>,
        limit: usize,
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
        let mut records = Vec::new();
        let mut next = None;
        for entry in table
            .range::<(u32, &str, &str)>((start, Bound::Excluded(whole.end)))
            .map_err(db_error)?
        {
            if records.len() == limit {
                next = records.last().map(|r: &ExportedRecord| ExportCursor {
                    keyspace: r.keyspace.clone(),
                    key: r.key.clone(),
                });
                break;
            }
            let (key, value) = entry.map_err(db_error)?;
            let (_, keyspace, key) = key.value();
            records.push(ExportedRecord {
                keyspace: KeyspaceName::parse(keyspace)
                    .map_err(|e| StoreError::BadStoredKey(e.to_string()))?,
                key: Key::parse(key).map_err(|e| StoreError::BadStoredKey(e.to_string()))?,
                record: record_codec::decode(value.value())?,
            });
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

fn apply_one(txn: &WriteTransaction, op: &WriteOp) -> Result<WriteOutcome, StoreError> {
    match op {
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
            let mut epochs = txn.open_table(EPOCHS).map_err(db_error)?;
            let known = epochs
                .get(partition.0)
                .map_err(db_error)?
                .map(|g| Epoch(g.value()));
            if let (Some(epoch), Some(known)) = (epoch, known)
                && *epoch < known
            {
                return Ok(WriteOutcome::Fenced { current: known });
            }
            if let Some(epoch) = epoch.filter(|e| known.is_none_or(|k| k < *e)) {
                epochs.insert(partition.0, epoch.0).map_err(db_error)?;
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
        WriteOp::DropPartition(partition) => {
            let mut records = txn.open_table(RECORDS).map_err(db_error)?;
            let removed = records
                .extract_from_if(partition_range(*partition), |_, _| true)
                .map_err(db_error)?
                .count();
            Ok(WriteOutcome::Dropped(removed))
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
            .map(|r| commit(1, r.key.as_str(), r.record.clone()))
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
}
