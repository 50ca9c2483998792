//! Kvorum's wire types: everything one service sends another, or a client.
//!
//! - [`ids`]: newtypes for node, partition and epoch identifiers.
//! - [`key`]: validated client keys and keyspace names.
//! - [`version`]: record versions and the records storage nodes hold.
//! - [`consistency`]: consistency levels and quorum arithmetic.
//! - [`keyspace`]: keyspace settings.
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
