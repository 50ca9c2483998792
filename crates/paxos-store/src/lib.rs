//! The consensus core's durable state in a redb file.
//!
//! [`PaxosStore::persist`] writes one [`Ready::persist`](kvorum_consensus::Ready)
//! batch in one transaction committed with `Durability::Immediate`, so it is on
//! disk (fsync'd) when the call returns, and only then may the runtime send the
//! batch's messages. [`PaxosStore::load`] gives back exactly the
//! [`DurableState`] that applying the same changes in memory would give.

use std::path::Path;

use kvorum_consensus::{DurableState, Persist};
use kvorum_protocol::paxos::{Accepted, Ballot, Entry, ReplicaIdentity, Snapshot};
use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// Single values: the promised ballot and the latest snapshot.
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("paxos_meta");
/// slot → the latest acceptance (JSON).
const ACCEPTED: TableDefinition<u64, &[u8]> = TableDefinition::new("paxos_accepted");
/// slot → the decided entry (JSON).
const DECIDED: TableDefinition<u64, &[u8]> = TableDefinition::new("paxos_decided");

const PROMISED_KEY: &str = "promised";
const SNAPSHOT_KEY: &str = "snapshot";
const IDENTITY_KEY: &str = "identity";

/// Why the store failed.
#[derive(Debug, thiserror::Error)]
pub enum PaxosStoreError {
    /// redb reported an error (I/O, corruption, ...).
    #[error("paxos store: {0}")]
    Database(#[from] redb::Error),
    /// A stored value does not decode: the file was written by another program or is damaged.
    #[error("paxos store holds an undecodable {what}: {source}")]
    Corrupt {
        /// What was being read.
        what: &'static str,
        /// The decoding error.
        source: serde_json::Error,
    },
}

fn storage_error(error: impl Into<redb::Error>) -> PaxosStoreError {
    PaxosStoreError::Database(error.into())
}

fn encode(value: &impl Serialize) -> Vec<u8> {
    serde_json::to_vec(value).expect("paxos types always encode")
}

fn decode<T: DeserializeOwned>(bytes: &[u8], what: &'static str) -> Result<T, PaxosStoreError> {
    serde_json::from_slice(bytes).map_err(|source| PaxosStoreError::Corrupt { what, source })
}

/// The decoded value under `key` in the meta table, if any.
fn read_meta<T: DeserializeOwned>(
    meta: &impl ReadableTable<&'static str, &'static [u8]>,
    key: &str,
    what: &'static str,
) -> Result<Option<T>, PaxosStoreError> {
    match meta.get(key).map_err(storage_error)? {
        Some(bytes) => decode(bytes.value(), what).map(Some),
        None => Ok(None),
    }
}

/// A replica's acceptor state on disk.
#[derive(Debug)]
pub struct PaxosStore {
    db: Database,
}

impl PaxosStore {
    /// Opens (or creates) the store at `path`.
    pub fn open(path: &Path) -> Result<Self, PaxosStoreError> {
        Self::init(Database::create(path).map_err(storage_error)?)
    }

    fn init(database: Database) -> Result<Self, PaxosStoreError> {
        let txn = database.begin_write().map_err(storage_error)?;
        txn.open_table(META).map_err(storage_error)?;
        txn.open_table(ACCEPTED).map_err(storage_error)?;
        txn.open_table(DECIDED).map_err(storage_error)?;
        txn.commit().map_err(storage_error)?;
        Ok(Self { db: database })
    }

    /// Everything the replica restarts from.
    pub fn load(&self) -> Result<DurableState, PaxosStoreError> {
        let txn = self.db.begin_read().map_err(storage_error)?;
        let meta = txn.open_table(META).map_err(storage_error)?;
        let promised =
            read_meta::<Ballot>(&meta, PROMISED_KEY, "promised ballot")?.unwrap_or_default();
        let snapshot = read_meta::<Snapshot>(&meta, SNAPSHOT_KEY, "snapshot")?;
        let mut state = DurableState {
            promised,
            snapshot,
            ..DurableState::default()
        };
        for row in txn
            .open_table(ACCEPTED)
            .map_err(storage_error)?
            .iter()
            .map_err(storage_error)?
        {
            let (slot, bytes) = row.map_err(storage_error)?;
            state.accepted.insert(
                slot.value(),
                decode::<Accepted>(bytes.value(), "acceptance")?,
            );
        }
        for row in txn
            .open_table(DECIDED)
            .map_err(storage_error)?
            .iter()
            .map_err(storage_error)?
        {
            let (slot, bytes) = row.map_err(storage_error)?;
            state.decided.insert(
                slot.value(),
                decode::<Entry>(bytes.value(), "decided entry")?,
            );
        }
        Ok(state)
    }

    /// Who this store belongs to, once [`Self::set_identity`] wrote it.
    pub fn identity(&self) -> Result<Option<ReplicaIdentity>, PaxosStoreError> {
        let txn = self.db.begin_read().map_err(storage_error)?;
        let meta = txn.open_table(META).map_err(storage_error)?;
        read_meta(&meta, IDENTITY_KEY, "identity")
    }

    /// Writes who this store belongs to, fsync'd before this returns.
    pub fn set_identity(&self, identity: &ReplicaIdentity) -> Result<(), PaxosStoreError> {
        let mut txn = self.db.begin_write().map_err(storage_error)?;
        txn.set_durability(Durability::Immediate)
            .map_err(storage_error)?;
        txn.open_table(META)
            .map_err(storage_error)?
            .insert(IDENTITY_KEY, encode(identity).as_slice())
            .map_err(storage_error)?;
        txn.commit().map_err(storage_error)?;
        Ok(())
    }

    /// Writes `changes` in one transaction, fsync'd before this returns.
    pub fn persist(&self, changes: &[Persist]) -> Result<(), PaxosStoreError> {
        if changes.is_empty() {
            return Ok(());
        }
        let mut txn = self.db.begin_write().map_err(storage_error)?;
        txn.set_durability(Durability::Immediate)
            .map_err(storage_error)?;
        {
            let mut meta = txn.open_table(META).map_err(storage_error)?;
            let mut accepted = txn.open_table(ACCEPTED).map_err(storage_error)?;
            let mut decided = txn.open_table(DECIDED).map_err(storage_error)?;
            for change in changes {
                match change {
                    Persist::Promised(ballot) => {
                        let held = read_meta::<Ballot>(&meta, PROMISED_KEY, "promised ballot")?
                            .unwrap_or_default();
                        // Promises only grow, as in memory.
                        if *ballot > held {
                            meta.insert(PROMISED_KEY, encode(ballot).as_slice())
                                .map_err(storage_error)?;
                        }
                    }
                    Persist::Accepted(slot, value) => {
                        accepted
                            .insert(*slot, encode(value).as_slice())
                            .map_err(storage_error)?;
                    }
                    Persist::Decided(slot, entry) => {
                        decided
                            .insert(*slot, encode(entry).as_slice())
                            .map_err(storage_error)?;
                    }
                    Persist::Snapshot(snapshot) => {
                        let held = read_meta::<Snapshot>(&meta, SNAPSHOT_KEY, "snapshot")?
                            .map_or(0, |s| s.upto);
                        if snapshot.upto > held {
                            meta.insert(SNAPSHOT_KEY, encode(snapshot).as_slice())
                                .map_err(storage_error)?;
                            accepted
                                .retain_in(..snapshot.upto, |_, _| false)
                                .map_err(storage_error)?;
                            decided
                                .retain_in(..snapshot.upto, |_, _| false)
                                .map_err(storage_error)?;
                        }
                    }
                }
            }
        }
        txn.commit().map_err(storage_error)?;
        Ok(())
    }
}
