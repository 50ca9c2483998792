//! The storage node's internal API, under `/internal/v1/`.
//!
//! | route | body | answer |
//! |---|---|---|
//! | `POST /internal/v1/read` | [`ReplicaKey`] | [`ReadResponse`] |
//! | `POST /internal/v1/prepare` | [`ReplicaKey`] | [`PrepareResponse`] |
//! | `POST /internal/v1/commit` | [`CommitRequest`] | [`CommitResponse`] |
//! | `POST /internal/v1/{read,prepare,commit}/batch` | [`Batch`] of the above | [`Batch`] of [`ItemOutcome`] |
//! | `GET /internal/v1/partitions/{id}[?after_keyspace=&after_key=&limit=]` | | [`PartitionExport`] (a page, with `next`) |
//! | `POST /internal/v1/partitions/{id}/fence` | [`FenceRequest`] | [`FenceResponse`] |
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

/// Where a page of a partition export ends: the last record's keyspace and key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExportCursor {
    /// The keyspace of the last record sent.
    pub keyspace: KeyspaceName,
    /// Its key.
    pub key: Key,
}

/// The query of a paged export: `?after_keyspace=..&after_key=..&limit=..`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExportQuery {
    /// Start after this keyspace (with `after_key`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after_keyspace: Option<KeyspaceName>,
    /// Start after this key (with `after_keyspace`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after_key: Option<Key>,
    /// At most this many records (all when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<usize>,
}

/// `POST /internal/v1/partitions/{id}/fence`: raise the partition's epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FenceRequest {
    /// The epoch below which requests are refused from now on.
    pub epoch: Epoch,
}

/// What a fence did: the epoch the node now records for the partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct FenceResponse {
    /// The partition's epoch after the fence (higher if the node had seen a newer one).
    pub epoch: Epoch,
}

/// Every record a node holds for one partition (or one page of them).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PartitionExport {
    /// The partition.
    pub partition: PartitionId,
    /// Its records, ordered by keyspace then key.
    pub records: Vec<ExportedRecord>,
    /// Where the next page starts, when the page was cut short by its limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<ExportCursor>,
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

/// One checkpoint a storage node holds (`GET /internal/v1/checkpoints`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckpointInfo {
    /// Its name, such as `checkpoint-1795728000629.redb`.
    pub name: String,
    /// When it was taken, in Unix milliseconds.
    pub created_ms: u64,
    /// Its size on disk.
    pub bytes: u64,
}
