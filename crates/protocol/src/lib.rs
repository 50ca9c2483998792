//! Kvorum's wire types: everything one service sends another, or a client.
//!
//! - [`ids`]: newtypes for node, partition and epoch identifiers.
//! - [`key`]: validated client keys and keyspace names.
//! - [`version`]: record versions and the records storage nodes hold.
//! - [`consistency`]: consistency levels and quorum arithmetic.
//! - [`keyspace`]: keyspace settings.
//! - [`conflict`]: the siblings a read of a `siblings` keyspace answers with 300.
//! - [`causal`]: causal states, version vectors and conflict strategies (re-exported from `kvorum-causality`).
//! - [`cluster`]: nodes, cluster settings, the partition map and the cluster view.
//! - [`detector`]: the failure detector's report.
//! - [`metadata`]: the metadata service's commands and state.
//! - [`paxos`]: the metadata service's Multi-Paxos messages.
//! - [`recovery`]: the recovery controller's report.
//! - [`storage`]: the storage node's internal API.
//! - [`error`]: the JSON error body every service answers with.
//! - [`health`]: the `/healthz` and `/readyz` answer.
//! - [`headers`]: the names of Kvorum's HTTP headers.

pub mod cluster;
pub mod conflict;
pub mod consistency;
pub mod detector;
pub mod error;
pub mod headers;
pub mod health;
pub mod ids;
pub mod key;
pub mod keyspace;
pub mod metadata;
pub mod paxos;
pub mod recovery;
pub mod storage;
pub mod version;

pub use cluster::{
    ClusterSettings, ClusterView, NodeInfo, PartitionAssignment, PartitionMap, SettingsError,
};
pub use consistency::{ConsistencyLevel, UnknownConsistency};
pub use error::{ErrorBody, ErrorCode, ErrorDetail};
pub use ids::{Epoch, NodeId, PartitionId};
pub use key::{Key, KeyError, KeyspaceName, MAX_KEY_BYTES};
pub use keyspace::{ConflictStrategy, InvalidKeyspace, KeyspaceConfig, KeyspaceMode, KeyspaceSpec};
pub use version::{Record, Version, VersionTokenError};

/// Causal states, version vectors and conflict strategies of eventual keyspaces.
pub use kvorum_causality as causal;
pub use kvorum_causality::{CausalState, Sibling, VersionVector};

/// Milliseconds since the Unix epoch by this machine's wall clock (0 before
/// 1970): the one reading of wall time that records are stamped with.
pub fn wall_clock_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}
