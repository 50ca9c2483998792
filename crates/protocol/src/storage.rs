//! The storage node's internal API, under `/internal/v1/`.
//!
//! | route | body | answer |
//! |---|---|---|
//! | `POST /internal/v1/read` | [`ReplicaKey`] | [`ReadResponse`] |
//! | `POST /internal/v1/prepare` | [`ReplicaKey`] | [`PrepareResponse`] |
//! | `POST /internal/v1/commit` | [`CommitRequest`] | [`CommitResponse`] |
//! | `POST /internal/v1/{read,prepare,commit}/batch` | [`Batch`] of the above | [`Batch`] of [`ItemOutcome`] |
//! | `GET /internal/v1/partitions/{id}` | | [`PartitionExport`] |
//! | `PUT /internal/v1/partitions/{id}` | [`PartitionExport`] | [`ImportResponse`] |
//! | `DELETE /internal/v1/partitions/{id}` | | [`DropResponse`] |

use serde::{Deserialize, Serialize};

use crate::error::ErrorDetail;
use crate::ids::{Epoch, PartitionId};
use crate::key::{Key, KeyspaceName};
use crate::version::{Record, Version};

/// Names one key's replica on a node, with the epoch the router routed by.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplicaKey {
    /// The partition the key hashes into.
    pub partition: PartitionId,
    /// The epoch of the router's partition map for that partition.
    pub epoch: Epoch,
    /// The keyspace.
    pub keyspace: KeyspaceName,
    /// The key.
    pub key: Key,
}

/// The record a replica holds for a key, if any (tombstones included).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadResponse {
    /// The record, or `None` when the replica has never seen the key.
    pub record: Option<Record>,
}

/// Phase one of a strong write: the highest version the replica holds for a key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PrepareResponse {
    /// The version held, or `None` when the replica has never seen the key.
    pub version: Option<Version>,
}

/// Phase two of a strong write (and a read's write-back): store `record` if its version is higher.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CommitRequest {
    /// Where the record goes.
    pub target: ReplicaKey,
    /// The record to keep if it is newer than the replica's.
    pub record: Record,
}

/// What a commit did; durable (fsync'd) before it is sent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommitResponse {
    /// Whether the record replaced what the replica held.
    pub applied: bool,
    /// The version the replica now holds: the committed one, or a higher one it already had.
    pub current: Version,
}

/// A batch of requests of one kind, answered in order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Batch<T> {
    /// The items, answered in the same order.
    pub items: Vec<T>,
}

/// The outcome of one item of a batch: `{"ok":...}` or `{"error":...}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ItemOutcome<T> {
    /// The item succeeded.
    Ok(T),
    /// The item failed; the others are unaffected.
    Error(ErrorDetail),
}

/// One record of an exported partition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExportedRecord {
    /// The keyspace.
    pub keyspace: KeyspaceName,
    /// The key.
    pub key: Key,
    /// What the node holds.
    pub record: Record,
}

/// Every record a node holds for one partition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PartitionExport {
    /// The partition.
    pub partition: PartitionId,
    /// Its records, ordered by keyspace then key.
    pub records: Vec<ExportedRecord>,
}

/// What an import did: records are kept only where newer than what the node holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImportResponse {
    /// Records that replaced or added to the node's state.
    pub applied: usize,
    /// Records skipped because the node already held a version at least as high.
    pub skipped: usize,
}

/// What dropping a partition removed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DropResponse {
    /// Records removed.
    pub removed: usize,
}
