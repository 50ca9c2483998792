//! Collecting strong tombstones: each partition's floor and watermark, the
//! rule that keeps records at or below the watermark from landing on keys a
//! replica lacks, and the digest and purge the collector drives.
//!
//! The argument is in ARCHITECTURE.md ("Collecting strong tombstones"): every
//! write prepared after a floor is raised is above it; once every replica
//! holds the same records at or below the floor, the watermark is raised to
//! it, and only then are tombstones at or below it removed. Nothing at or
//! below the watermark can land on a key the replica lacks afterwards, so a
//! collected tombstone's older values can never come back.

use std::collections::{BTreeMap, BTreeSet};

use kvorum_protocol::storage::{Held, KeyspaceDigest, StrongFloors};
use kvorum_protocol::{Key, KeyspaceName, PartitionId, Record, Version};
use redb::{ReadableDatabase, ReadableTable, TableDefinition, WriteTransaction};
use xxhash_rust::xxh3::xxh3_64_with_seed;

use super::{RECORDS, Store, StoreError, db_error, exported, key_hash, partition_range};
use crate::record_codec;

/// partition → its strong floor `(counter, writer)`.
pub(super) const STRONG_FLOOR: TableDefinition<u32, (u64, u64)> =
    TableDefinition::new("strong_floor");
/// partition → its strong collection watermark `(counter, writer)`.
pub(super) const STRONG_WATERMARK: TableDefinition<u32, (u64, u64)> =
    TableDefinition::new("strong_watermark");

fn version((counter, writer): (u64, u64)) -> Version {
    Version { counter, writer }
}

fn row(version: Version) -> (u64, u64) {
    (version.counter, version.writer)
}

/// One partition's row of a floors table.
fn row_of(
    table: &impl ReadableTable<u32, (u64, u64)>,
    partition: PartitionId,
) -> Result<Option<Version>, StoreError> {
    Ok(table
        .get(partition.0)
        .map_err(db_error)?
        .map(|g| version(g.value())))
}

/// The partition's floors, from the two tables of a read or write transaction.
fn floors_from(
    floor: &impl ReadableTable<u32, (u64, u64)>,
    watermark: &impl ReadableTable<u32, (u64, u64)>,
    partition: PartitionId,
) -> Result<StrongFloors, StoreError> {
    Ok(StrongFloors {
        floor: row_of(floor, partition)?,
        watermark: row_of(watermark, partition)?,
    })
}

/// The partition's floors, inside a read transaction.
pub(super) fn floors_in_snapshot(
    txn: &redb::ReadTransaction,
    partition: PartitionId,
) -> Result<StrongFloors, StoreError> {
    let floor = txn.open_table(STRONG_FLOOR).map_err(db_error)?;
    let watermark = txn.open_table(STRONG_WATERMARK).map_err(db_error)?;
    floors_from(&floor, &watermark, partition)
}

/// The partition's floors, inside a write transaction.
pub(super) fn floors_in(
    txn: &WriteTransaction,
    partition: PartitionId,
) -> Result<StrongFloors, StoreError> {
    let floor = txn.open_table(STRONG_FLOOR).map_err(db_error)?;
    let watermark = txn.open_table(STRONG_WATERMARK).map_err(db_error)?;
    floors_from(&floor, &watermark, partition)
}

/// Raises the partition's floors to at least `to`; returns them.
pub(super) fn raise(
    txn: &WriteTransaction,
    partition: PartitionId,
    to: StrongFloors,
) -> Result<StrongFloors, StoreError> {
    let held = floors_in(txn, partition)?;
    let raised = held.max(to);
    if let Some(floor) = raised.floor.filter(|_| raised.floor != held.floor) {
        let mut table = txn.open_table(STRONG_FLOOR).map_err(db_error)?;
        table.insert(partition.0, row(floor)).map_err(db_error)?;
    }
    if let Some(watermark) = raised
        .watermark
        .filter(|_| raised.watermark != held.watermark)
    {
        let mut table = txn.open_table(STRONG_WATERMARK).map_err(db_error)?;
        table
            .insert(partition.0, row(watermark))
            .map_err(db_error)?;
    }
    Ok(raised)
}

/// Forgets the partition's floors, with its records: a replica that takes
/// the partition again adopts the floors of the replica it copies from.
pub(super) fn forget(txn: &WriteTransaction, partition: PartitionId) -> Result<(), StoreError> {
    for table in [STRONG_FLOOR, STRONG_WATERMARK] {
        txn.open_table(table)
            .map_err(db_error)?
            .remove(partition.0)
            .map_err(db_error)?;
    }
    Ok(())
}

/// What a commit of `record` may do to a key holding `held` (a version, or
/// nothing) under `watermark`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Admission {
    /// Keep-if-higher as always.
    AsUsual,
    /// The key holds nothing and the record is a tombstone at or below the
    /// watermark: the key is already deleted at least as recently.
    AlreadyDeleted,
    /// Refused: the value may be older than a collected tombstone.
    Refused(Version),
}

/// The watermark rule.
pub(super) fn admission(
    held: Option<Version>,
    record: &Record,
    watermark: Option<Version>,
) -> Admission {
    match watermark {
        // Only a key the replica lacks is at stake: over a record it holds,
        // keep-if-higher orders the record as always (every record at or below
        // the watermark was on every replica when it was sealed, so what it
        // holds is no older than any tombstone collected since).
        Some(watermark) if record.version <= watermark && held.is_none() => {
            if record.value.is_none() {
                Admission::AlreadyDeleted
            } else {
                Admission::Refused(watermark)
            }
        }
        _ => Admission::AsUsual,
    }
}

/// Removes the key's strong record if it is still exactly the one named (a
/// tombstone, or a value when `value` is true) at or below `bound`.
pub(super) fn remove_exact(
    txn: &WriteTransaction,
    table_key: (u32, &str, &str),
    expected: Version,
    value: bool,
    bound: Option<Version>,
) -> Result<bool, StoreError> {
    if bound.is_none_or(|b| expected > b) {
        return Ok(false);
    }
    let mut records = txn.open_table(RECORDS).map_err(db_error)?;
    let exact = match records.get(table_key).map_err(db_error)? {
        Some(guard) => matches!(
            record_codec::decode_held(guard.value())?,
            Held::Strong(Record { version, value: held }) if version == expected && held.is_some() == value
        ),
        None => false,
    };
    if exact {
        records.remove(table_key).map_err(db_error)?;
    }
    Ok(exact)
}

impl Store {
    /// The partition's strong floors.
    pub fn strong_floors(&self, partition: PartitionId) -> Result<StrongFloors, StoreError> {
        let txn = self.db.begin_read().map_err(db_error)?;
        floors_in_snapshot(&txn, partition)
    }

    /// What a prepare answers for a strong key: the version held, raised to
    /// the partition's floor, so that the write takes a version above both.
    pub fn prepare_version(
        &self,
        partition: PartitionId,
        keyspace: &KeyspaceName,
        key: &Key,
    ) -> Result<Option<Version>, StoreError> {
        let txn = self.db.begin_read().map_err(db_error)?;
        let records = txn.open_table(RECORDS).map_err(db_error)?;
        let held = records
            .get((partition.0, keyspace.as_str(), key.as_str()))
            .map_err(db_error)?
            .map(|g| record_codec::decode_version(g.value()))
            .transpose()?;
        let floor = row_of(&txn.open_table(STRONG_FLOOR).map_err(db_error)?, partition)?;
        Ok(held.max(floor))
    }

    /// The partition's strong records at or below `upto`, summarised per
    /// keyspace, leaving out tombstones at or below `ignore_tombstones_upto`
    /// (a watermark every replica has sealed: such a tombstone may be gone on
    /// one replica and not yet on another, and it makes no difference).
    pub fn strong_digest(
        &self,
        partition: PartitionId,
        upto: Version,
        ignore_tombstones_upto: Option<Version>,
    ) -> Result<BTreeMap<String, KeyspaceDigest>, StoreError> {
        let txn = self.db.begin_read().map_err(db_error)?;
        let table = txn.open_table(RECORDS).map_err(db_error)?;
        let mut digests: BTreeMap<String, KeyspaceDigest> = BTreeMap::new();
        for entry in table.range(partition_range(partition)).map_err(db_error)? {
            let (key, value) = entry.map_err(db_error)?;
            let (_, keyspace, key) = key.value();
            let bytes = value.value();
            let Ok((version, tombstone)) = record_codec::decode_header(bytes) else {
                continue; // a causal state: not collected here
            };
            if version > upto || (tombstone && ignore_tombstones_upto.is_some_and(|i| version <= i))
            {
                continue;
            }
            let digest = digests.entry(keyspace.to_owned()).or_default();
            digest.digest ^= xxh3_64_with_seed(bytes, key_hash(keyspace, key));
            digest.records += 1;
            digest.tombstones += u64::from(tombstone);
        }
        Ok(digests)
    }

    /// The partition's strong values at or below `upto` whose keys are not in `present`.
    pub fn strong_values_missing_from(
        &self,
        partition: PartitionId,
        upto: Version,
        present: &BTreeSet<(KeyspaceName, Key)>,
    ) -> Result<Vec<(KeyspaceName, Key, Version)>, StoreError> {
        let txn = self.db.begin_read().map_err(db_error)?;
        let table = txn.open_table(RECORDS).map_err(db_error)?;
        let mut missing = Vec::new();
        for entry in table.range(partition_range(partition)).map_err(db_error)? {
            let (key, value) = entry.map_err(db_error)?;
            let (_, keyspace, key) = key.value();
            if let Ok((version, false)) = record_codec::decode_header(value.value())
                && version <= upto
            {
                let record = exported(keyspace, key, value.value())?;
                if !present.contains(&(record.keyspace.clone(), record.key.clone())) {
                    missing.push((record.keyspace, record.key, version));
                }
            }
        }
        Ok(missing)
    }

    /// The partition's strong tombstones at or below `upto`, with their versions.
    pub fn strong_tombstones(
        &self,
        partition: PartitionId,
        upto: Version,
    ) -> Result<Vec<(KeyspaceName, Key, Version)>, StoreError> {
        let txn = self.db.begin_read().map_err(db_error)?;
        let table = txn.open_table(RECORDS).map_err(db_error)?;
        let mut found = Vec::new();
        for entry in table.range(partition_range(partition)).map_err(db_error)? {
            let (key, value) = entry.map_err(db_error)?;
            let (_, keyspace, key) = key.value();
            if let Ok((version, true)) = record_codec::decode_header(value.value())
                && version <= upto
            {
                let record = exported(keyspace, key, value.value())?;
                found.push((record.keyspace, record.key, version));
            }
        }
        Ok(found)
    }

    /// How many strong tombstones the node holds, over every partition.
    pub fn strong_tombstone_count(&self) -> Result<u64, StoreError> {
        let txn = self.db.begin_read().map_err(db_error)?;
        let table = txn.open_table(RECORDS).map_err(db_error)?;
        let mut count = 0;
        for entry in table.iter().map_err(db_error)? {
            let (_, value) = entry.map_err(db_error)?;
            if let Ok((_, tombstone)) = record_codec::decode_header(value.value()) {
                count += u64::from(tombstone);
            }
        }
        Ok(count)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(counter: u64) -> Version {
        Version { counter, writer: 1 }
    }

    fn value(counter: u64) -> Record {
        Record {
            version: v(counter),
            value: Some(b"x".to_vec()),
        }
    }

    fn tombstone(counter: u64) -> Record {
        Record {
            version: v(counter),
            value: None,
        }
    }

    #[test]
    fn nothing_at_or_below_the_watermark_lands_on_a_key_the_replica_lacks() {
        let w = Some(v(10));
        // Above the watermark, or with no watermark: keep-if-higher as always.
        assert_eq!(admission(None, &value(11), w), Admission::AsUsual);
        assert_eq!(admission(None, &value(3), None), Admission::AsUsual);
        assert_eq!(admission(Some(v(12)), &value(11), w), Admission::AsUsual);
        // At or below it on an absent key: a value may be older than a
        // collected tombstone; a tombstone changes nothing.
        assert_eq!(admission(None, &value(10), w), Admission::Refused(v(10)));
        assert_eq!(admission(None, &value(3), w), Admission::Refused(v(10)));
        assert_eq!(admission(None, &tombstone(7), w), Admission::AlreadyDeleted);
        // A key the replica holds orders the record by keep-if-higher, as always.
        assert_eq!(admission(Some(v(7)), &value(7), w), Admission::AsUsual);
        assert_eq!(admission(Some(v(9)), &value(4), w), Admission::AsUsual);
        assert_eq!(admission(Some(v(4)), &value(9), w), Admission::AsUsual);
        assert_eq!(admission(Some(v(4)), &tombstone(9), w), Admission::AsUsual);
    }
}
