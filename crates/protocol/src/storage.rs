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
//! | `POST /internal/v1/causal/read` | [`ReplicaKey`] | [`CausalReadResponse`] |
//! | `POST /internal/v1/causal/write` | [`CausalWriteRequest`] | [`CausalWriteResponse`] |
//! | `POST /internal/v1/causal/merge` | [`CausalMergeRequest`] | [`CausalMergeResponse`] |
//! | `POST /internal/v1/causal/{read,merge}/batch` | [`Batch`] of the above | [`Batch`] of [`ItemOutcome`] |
//! | `POST /internal/v1/hints` | [`HintRequest`] | [`HintResponse`] |
//! | `GET /internal/v1/partitions/{id}/digest` | | [`PartitionDigest`] |
//! | `POST /internal/v1/partitions/{id}/buckets` | [`BucketQuery`] | [`PartitionExport`] |
//! | `POST /internal/v1/partitions/{id}/purge` | [`PurgeRequest`] | [`PurgeResponse`] |

use serde::{Deserialize, Serialize};

use kvorum_causality::{CausalState, VersionVector};
use serde_with::{base64::Base64, serde_as};

use crate::error::ErrorDetail;
use crate::ids::{Epoch, NodeId, PartitionId};
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
    /// The replica is a new incarnation catching up: it holds the record, but
    /// its acknowledgement counts toward no level.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub catching_up: bool,
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

/// What a node holds for one key: a strong keyspace's record or an eventual keyspace's causal state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Held {
    /// A strong keyspace's versioned record; imports keep the higher version.
    Strong(Record),
    /// An eventual keyspace's siblings and context; imports join it with what is held.
    Causal(CausalState),
}

impl Held {
    /// The bytes of value it carries (every sibling's, for a causal state), for rate limits.
    pub fn value_bytes(&self) -> usize {
        match self {
            Held::Strong(record) => record.value.as_ref().map_or(0, Vec::len),
            Held::Causal(state) => causal_value_bytes(state),
        }
    }
}

/// The bytes of value a causal state carries (every sibling's), for byte budgets.
pub fn causal_value_bytes(state: &CausalState) -> usize {
    state
        .siblings()
        .iter()
        .map(|s| s.value.as_ref().map_or(0, Vec::len) + 24)
        .sum()
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
    pub record: Held,
}

impl ExportedRecord {
    /// About how many bytes the record takes on the wire (values count once,
    /// before base64), for byte budgets such as [`MAX_PAGE_BYTES`].
    pub fn approx_bytes(&self) -> usize {
        self.key.as_str().len() + self.keyspace.as_str().len() + self.record.value_bytes() + 64
    }
}

/// The byte budget of one internal bulk message (an export page, an
/// anti-entropy exchange, a batch of hints or of replica calls), counted as
/// value bytes before base64: with base64 and JSON it stays far below a
/// storage node's request limit (64 MiB by default), so partitions of 1 MiB
/// values move, repair and replay like any others. A page always carries at
/// least one record, so a record larger than the budget still moves.
pub const MAX_PAGE_BYTES: usize = 8 << 20;

/// The most concurrent versions (siblings) one eventual key may hold: a write
/// that would add one more is refused (409 `sibling_limit`); a write whose
/// context resolves some is always taken. Riak's hard limit is the same.
pub const MAX_KEY_SIBLINGS: usize = 100;

/// The most bytes of values one eventual key's state may hold: a write that
/// would grow it past this is refused (413); one that shrinks it is taken.
pub const MAX_KEY_STATE_BYTES: usize = 16 << 20;

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
    /// Stop once the page holds about this many bytes (see
    /// [`ExportedRecord::approx_bytes`]); at least one record; no bound when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_bytes: Option<usize>,
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
    /// The exporter's strong collection floors, read in each page's snapshot
    /// of a partition export: the importer adopts the first page's once it
    /// holds every record of the last, if every later page's still keep them
    /// ([`StrongFloors::keeps`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strong_floors: Option<StrongFloors>,
}

/// Where one replica of a partition stands in collecting strong tombstones.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StrongFloors {
    /// Prepares of every strong key of the partition answer at least this
    /// version, so every write prepared since it was raised is above it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub floor: Option<Version>,
    /// The collection watermark: strong tombstones at or below it may be
    /// gone, and nothing at or below it lands on a key this replica lacks
    /// (a tombstone changes nothing there; a value is refused).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub watermark: Option<Version>,
}

/// What an importer reading a paged partition export may take of its
/// floors: those of the first page, as long as every later page's keep them.
#[derive(Debug, Clone, Copy, Default)]
pub struct ExportFloors {
    first: Option<Option<StrongFloors>>,
}

impl ExportFloors {
    /// Takes the next page's floors; `Err` when the exporter dropped the
    /// partition (or lost its disk) since the first page, whose later pages
    /// then no longer hold every record at or below the first watermark.
    pub fn observe(&mut self, page: Option<StrongFloors>) -> Result<(), &'static str> {
        match self.first {
            None => {
                self.first = Some(page);
                Ok(())
            }
            Some(Some(first)) if !page.unwrap_or_default().keeps(&first) => {
                Err("the exporter dropped the partition while it was read")
            }
            Some(_) => Ok(()),
        }
    }

    /// The first page's floors, which the importer adopts after the last page.
    pub fn at_start(&self) -> Option<StrongFloors> {
        self.first.flatten()
    }
}

impl StrongFloors {
    /// Whether these floors, read after `first`, still vouch for what
    /// `first` did: a watermark only goes back when the exporter dropped the
    /// partition (or lost its disk) between the two reads.
    pub fn keeps(&self, first: &StrongFloors) -> bool {
        self.watermark >= first.watermark
    }

    /// Each bound the higher of the two.
    pub fn max(self, other: StrongFloors) -> StrongFloors {
        StrongFloors {
            floor: self.floor.max(other.floor),
            watermark: self.watermark.max(other.watermark),
        }
    }
}

/// Raise a partition's strong floor (step one of a collection).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RaiseFloorRequest {
    /// The new floor; a lower one is kept as it is.
    pub floor: Version,
}

/// Summarise a partition's strong records at or below a version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StrongDigestRequest {
    /// Only records with versions at or below this count.
    pub upto: Version,
    /// Tombstones at or below this are left out: every replica has sealed
    /// it, so such a tombstone may be purged on one replica and not yet on another.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ignore_tombstones_upto: Option<Version>,
}

/// One keyspace's strong records at or below a version on one replica, summarised.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyspaceDigest {
    /// The XOR of every such record's hash over its key and stored bytes.
    pub digest: u64,
    /// How many records count.
    pub records: u64,
    /// How many of them are tombstones.
    pub tombstones: u64,
}

/// One replica's strong records at or below a version, summarised per keyspace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StrongDigestResponse {
    /// Per keyspace holding any such record.
    pub keyspaces: std::collections::BTreeMap<String, KeyspaceDigest>,
    /// The replica's floors for the partition.
    pub floors: StrongFloors,
}

/// Seal a collection: raise a partition's watermark (step four).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SealRequest {
    /// The new watermark; refused (409) above the replica's floor.
    pub watermark: Version,
}

/// What a strong purge did on one replica.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StrongPurgeResponse {
    /// Tombstones removed.
    pub purged: u64,
    /// The replica's floors for the partition.
    pub floors: StrongFloors,
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

/// An eventual keyspace's state of one key on one replica (empty when it has none).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CausalReadResponse {
    /// The key's siblings and context.
    pub state: CausalState,
    /// For a deleted key (every sibling a tombstone): how long this replica has
    /// held exactly this state, in milliseconds; tombstone collection waits for
    /// every replica to have held it for the grace period.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deleted_for_ms: Option<u64>,
}

/// A write to an eventual keyspace, coordinated by the replica that receives it.
///
/// The replica gives the write a dot of its own, applies it durably and
/// answers with the key's new state, which the router then merges into the
/// other replicas.
#[serde_as]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CausalWriteRequest {
    /// Where the write goes.
    pub target: ReplicaKey,
    /// The value (base64), or `None` for a delete.
    #[serde_as(as = "Option<Base64>")]
    pub value: Option<Vec<u8>>,
    /// The siblings it supersedes: a client's context, or `None` for whatever the replica holds.
    #[serde(default)]
    pub context: Option<VersionVector>,
    /// Replicas known to be down: the replica stores a durable hint for each, in the same transaction.
    #[serde(default)]
    pub hint_for: Vec<NodeId>,
}

/// The key's state after a coordinated write; durable (fsync'd) before it is sent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CausalWriteResponse {
    /// The key's siblings and context, including the write.
    pub state: CausalState,
}

/// Join a key's state from elsewhere (replication, read repair, hint replay) into a replica's.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CausalMergeRequest {
    /// Where the state goes.
    pub target: ReplicaKey,
    /// The state to join.
    pub state: CausalState,
}

/// What a merge did; durable before it is sent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CausalMergeResponse {
    /// Whether the replica learned anything from it.
    pub changed: bool,
    /// The replica is a new incarnation catching up: its acknowledgement counts toward no level.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub catching_up: bool,
}

/// Keep durable hints: the key's state is to be handed to `targets` once they are back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HintRequest {
    /// The key's partition.
    pub partition: PartitionId,
    /// The keyspace.
    pub keyspace: KeyspaceName,
    /// The key.
    pub key: Key,
    /// The replicas that missed the write.
    pub targets: Vec<NodeId>,
}

/// How many hints were stored (fsync'd before the answer).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HintResponse {
    /// Hints stored.
    pub stored: usize,
}

/// Buckets per partition in an anti-entropy digest.
pub const DIGEST_BUCKETS: usize = 64;

/// A partition's anti-entropy digest: one hash per bucket of keys.
///
/// A key's bucket and hash are functions of its keyspace, key and stored
/// bytes only, so two replicas holding the same records have equal digests,
/// and a differing bucket names the keys worth exchanging.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionDigest {
    /// The partition.
    pub partition: PartitionId,
    /// [`DIGEST_BUCKETS`] hashes, each the XOR of its keys' hashes.
    pub buckets: Vec<u64>,
}

/// The records of some digest buckets, for anti-entropy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BucketQuery {
    /// Bucket numbers, each below [`DIGEST_BUCKETS`].
    pub buckets: Vec<u32>,
    /// Continue after this record (a page's `next`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<ExportCursor>,
    /// Stop once the page holds about this many bytes; at least one record; no bound when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_bytes: Option<usize>,
}

/// One tombstone to collect: removed only where the replica's state still equals `state`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PurgeItem {
    /// The keyspace.
    pub keyspace: KeyspaceName,
    /// The key.
    pub key: Key,
    /// The lone tombstone every replica was seen to hold.
    pub state: CausalState,
}

/// Collect tombstones every replica of the partition holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PurgeRequest {
    /// The tombstones.
    pub items: Vec<PurgeItem>,
}

/// How many tombstones a replica removed (the rest had changed, or were not yet in its newest checkpoint).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PurgeResponse {
    /// Tombstones removed.
    pub purged: usize,
}

#[cfg(test)]
mod tests {

    #[test]
    fn an_export_vouches_for_its_first_pages_floors_only_while_its_pages_keep_them() {
        let v = |counter| Version { counter, writer: 0 };
        let sealed = |w| StrongFloors {
            floor: Some(v(w)),
            watermark: Some(v(w)),
        };
        let mut floors = ExportFloors::default();
        assert_eq!(floors.at_start(), None);
        floors.observe(Some(sealed(5))).expect("first page");
        floors
            .observe(Some(sealed(9)))
            .expect("a watermark sealed meanwhile keeps the promise");
        assert_eq!(
            floors.at_start(),
            Some(sealed(5)),
            "the first page's are adopted"
        );
        assert!(
            floors.observe(Some(StrongFloors::default())).is_err(),
            "dropped"
        );
        assert!(
            floors.observe(None).is_err(),
            "a page without floors vouches for nothing"
        );
        // An export that began without a watermark promises nothing to keep.
        let mut none = ExportFloors::default();
        none.observe(Some(StrongFloors::default())).expect("first");
        none.observe(None).expect("nothing to keep");
    }
    use super::*;

    #[test]
    fn exported_records_of_both_kinds_round_trip() {
        let (state, _) = CausalState::empty().write(3, None, Some(b"v".to_vec()), 9);
        let strong = Record {
            version: Version {
                counter: 1,
                writer: 2,
            },
            value: None,
        };
        for record in [Held::Causal(state), Held::Strong(strong)] {
            let exported = ExportedRecord {
                keyspace: KeyspaceName::default_keyspace(),
                key: Key::parse("k").expect("key"),
                record,
            };
            let json = serde_json::to_string(&exported).expect("serialize");
            let back: ExportedRecord = serde_json::from_str(&json).expect(&json);
            assert_eq!(back, exported);
        }
    }
}
