//! Nodes, the cluster's settings, the partition map and the cluster view.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use crate::ids::{Epoch, NodeId, PartitionId};

/// The most partitions a cluster may be bootstrapped with.
pub const MAX_PARTITIONS: u32 = 65_536;

/// What a member of the cluster is for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeRole {
    /// Holds partition replicas and serves them.
    #[default]
    Storage,
    /// A warm standby, ready to be promoted into a failed node's place.
    Standby,
    /// Being decommissioned: its partitions move elsewhere, then it is decommissioned.
    Leaving,
}

/// What the cluster believes about a node's health.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeState {
    /// Serving.
    #[default]
    Up,
    /// Suspected by the failure detector.
    Suspect,
    /// Declared failed.
    Down,
    /// Removed by an operator.
    Decommissioned,
}

/// One member of the cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeInfo {
    /// The node's identity.
    pub id: NodeId,
    /// `host:port` where the node serves its internal API.
    pub address: String,
    /// What the node is for.
    #[serde(default)]
    pub role: NodeRole,
    /// Its health, as last known.
    #[serde(default)]
    pub state: NodeState,
    /// How many times the node came back with lost or restored data; each
    /// incarnation issues causal dots from its own range (see [`dot_floor`]).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub incarnation: u64,
    /// This incarnation is catching up from its peers: it takes writes but counts
    /// toward no quorum, level or source until it has caught up (SYSTEM.md, invariant 6).
    /// In a registration it means "my data directory is new or restored".
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub catching_up: bool,
}

fn is_zero(value: &u64) -> bool {
    *value == 0
}

/// Bits of a causal dot counter that one incarnation of a node may use: an
/// incarnation's dots lie in `[incarnation << 40, (incarnation + 1) << 40)`.
pub const INCARNATION_DOT_BITS: u32 = 40;

/// The lowest dot counter incarnation `incarnation` of a node may issue: above
/// every counter its earlier incarnations could have issued, whether or not
/// any copy of their dots survived.
pub fn dot_floor(incarnation: u64) -> u64 {
    incarnation.saturating_mul(1 << INCARNATION_DOT_BITS)
}

impl NodeInfo {
    /// A node as it registers: its id, address and role, with `catching_up`
    /// saying whether it starts on new or restored data.
    pub fn registering(id: NodeId, address: String, role: NodeRole, catching_up: bool) -> Self {
        Self {
            id,
            address,
            role,
            state: NodeState::Up,
            incarnation: 0,
            catching_up,
        }
    }

    /// Whether its replies count toward quorums, levels and sources: it is not
    /// held down or decommissioned, and it is not a new incarnation still catching up.
    pub fn counts(&self) -> bool {
        !self.catching_up && matches!(self.state, NodeState::Up | NodeState::Suspect)
    }
}

/// The cluster's fixed shape, set once at bootstrap through the metadata service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterSettings {
    /// The fixed number of partitions keys hash into.
    pub partitions: u32,
    /// How many replicas each partition has (a keyspace may use fewer).
    pub replication_factor: usize,
    /// How many storage nodes must have registered before the partition map is made.
    pub bootstrap_nodes: usize,
}

/// Why cluster settings are unusable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SettingsError {
    /// Partition count out of range.
    #[error("partitions must be between 1 and {MAX_PARTITIONS}, not {0}")]
    PartitionCount(u32),
    /// Replication factor of zero.
    #[error("replication_factor must be at least 1")]
    ZeroReplicationFactor,
    /// Fewer bootstrap nodes than the replication factor.
    #[error(
        "bootstrap_nodes {bootstrap_nodes} must be at least replication_factor {replication_factor}, or partitions could not have distinct replicas"
    )]
    TooFewNodes {
        /// The replication factor asked for.
        replication_factor: usize,
        /// The bootstrap node count asked for.
        bootstrap_nodes: usize,
    },
}

impl ClusterSettings {
    /// Checks every rule usable settings obey.
    pub fn validate(&self) -> Result<(), SettingsError> {
        if self.partitions == 0 || self.partitions > MAX_PARTITIONS {
            return Err(SettingsError::PartitionCount(self.partitions));
        }
        if self.replication_factor == 0 {
            return Err(SettingsError::ZeroReplicationFactor);
        }
        if self.bootstrap_nodes < self.replication_factor {
            return Err(SettingsError::TooFewNodes {
                replication_factor: self.replication_factor,
                bootstrap_nodes: self.bootstrap_nodes,
            });
        }
        Ok(())
    }
}

/// The `host:port` a service tells others to reach it at: `--advertise-address`
/// when given (checked), else its `--listen` address unless that is a wildcard
/// nobody can connect to.
pub fn advertised_address(listen: SocketAddr, advertise: Option<&str>) -> Result<String, String> {
    match advertise {
        Some(address) if is_host_port(address) => Ok(address.to_owned()),
        Some(address) => Err(format!("--advertise-address {address:?} is not host:port")),
        None if listen.ip().is_unspecified() => Err(format!(
            "--listen {listen} is a wildcard address that other services cannot reach; set --advertise-address"
        )),
        None => Ok(listen.to_string()),
    }
}

/// Whether `address` is `host:port` with a non-empty host and a non-zero port
/// (hosts may be names, as in Kubernetes, or IP literals).
pub fn is_host_port(address: &str) -> bool {
    if address.parse::<SocketAddr>().is_ok() {
        return true;
    }
    let Some((host, port)) = address.rsplit_once(':') else {
        return false;
    };
    let host_ok = !host.is_empty()
        && host.len() <= 253
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
    host_ok && port.parse::<u16>().is_ok_and(|p| p != 0)
}

/// One partition's ordered replica set and the epoch it was assigned in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionAssignment {
    /// The partition.
    pub id: PartitionId,
    /// The generation of this replica set.
    pub epoch: Epoch,
    /// The replicas, in preference order; distinct nodes.
    pub replicas: Vec<NodeId>,
    /// Replacements under way: each joining node receives every write (and
    /// counts towards it) while it is streamed the partition, then takes the
    /// leaving node's place.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pending: Vec<Replacement>,
}

impl PartitionAssignment {
    /// Whether this assignment places `node` here: as a replica, or joining in a move.
    pub fn places(&self, node: NodeId) -> bool {
        self.replicas.contains(&node) || self.pending.iter().any(|r| r.joining == node)
    }
}

/// A node about to take another's place in a partition's replica set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Replacement {
    /// The replica that leaves.
    pub leaving: NodeId,
    /// The node that joins in its place.
    pub joining: NodeId,
}

/// Every partition's assignment, indexed by partition id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionMap {
    /// Assignments, where `partitions[i].id == PartitionId(i)`.
    pub partitions: Vec<PartitionAssignment>,
}

impl PartitionMap {
    /// The number of partitions.
    pub fn partition_count(&self) -> u32 {
        u32::try_from(self.partitions.len()).unwrap_or(u32::MAX)
    }

    /// The assignment of one partition.
    pub fn assignment(&self, partition: PartitionId) -> Option<&PartitionAssignment> {
        self.partitions.get(partition.0 as usize)
    }
}

/// How the recovery controller restores or moves a replica.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RecoveryStrategy {
    /// A new replica streamed the partition from a read quorum of the old set.
    StateTransfer,
    /// A warm standby promoted into a failed node's place, then streamed the partition.
    StandbyPromotion,
    /// A node restored from its checkpoint, then caught up from its peers.
    CheckpointRestore,
    /// A partition moved to even out the load, or off a decommissioned node.
    Rebalance,
}

/// A partition moving from one node to another (the recovery controller's report).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PartitionMove {
    /// The partition.
    pub partition: PartitionId,
    /// The replica leaving the set.
    pub from: Option<NodeId>,
    /// The replica joining it.
    pub to: NodeId,
    /// Why and how.
    pub strategy: RecoveryStrategy,
    /// Bytes streamed to the new replica so far.
    pub bytes_copied: u64,
    /// Records streamed so far.
    pub records_copied: u64,
    /// The recent copy rate, bytes per second.
    pub rate_bytes_per_sec: u64,
    /// Milliseconds since the move began.
    pub elapsed_ms: u64,
}

/// A move that ended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FinishedRecovery {
    /// The partition.
    pub partition: PartitionId,
    /// The replica that left.
    pub from: Option<NodeId>,
    /// The replica that joined (or was to).
    pub to: NodeId,
    /// How.
    pub strategy: RecoveryStrategy,
    /// How long it took, in milliseconds.
    pub duration_ms: u64,
    /// Bytes streamed.
    pub bytes_copied: u64,
    /// Whether the new replica set took effect (false: aborted, the old set stands).
    pub completed: bool,
}

/// A metadata service replica.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MetadReplica {
    /// Its id.
    pub id: NodeId,
    /// Its address.
    pub address: String,
    /// The failure detector's suspicion level, once a detector runs.
    #[serde(default)]
    pub phi: Option<f64>,
    /// The failure detector's verdict, once a detector runs.
    #[serde(default)]
    pub state: Option<NodeState>,
}

/// The metadata service as the cluster view reports it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct MetadView {
    /// The current leader, if known.
    pub leader: Option<NodeId>,
    /// Every replica.
    pub replicas: Vec<MetadReplica>,
    /// Milliseconds since the router last heard from any metadata replica
    /// (`null` if it never has): the data path keeps serving by the map it holds
    /// meanwhile, but no keyspace, node or map change reaches it.
    #[serde(default)]
    pub contact_age_ms: Option<u64>,
}

/// One node in the cluster view.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeView {
    /// Its id.
    pub id: NodeId,
    /// Its address.
    pub address: String,
    /// What it is for.
    pub role: NodeRole,
    /// Its health.
    pub state: NodeState,
    /// The failure detector's suspicion level, once a detector runs.
    pub phi: Option<f64>,
    /// Which incarnation of the node this is (0 until it first lost its data).
    #[serde(default)]
    pub incarnation: u64,
    /// Whether the node is a new incarnation still catching up, counted by no quorum.
    #[serde(default)]
    pub catching_up: bool,
}

/// `GET /v1/cluster`: nodes, states, suspicion, the partition map and the metad leader.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClusterView {
    /// The metadata service.
    pub metad: MetadView,
    /// Every node.
    pub nodes: Vec<NodeView>,
    /// Every partition's assignment.
    pub partitions: Vec<PartitionAssignment>,
    /// Replica moves under way.
    pub moves: Vec<PartitionMove>,
    /// Moves that ended recently, newest last.
    #[serde(default)]
    pub recoveries: Vec<FinishedRecovery>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(
        partitions: u32,
        replication_factor: usize,
        bootstrap_nodes: usize,
    ) -> ClusterSettings {
        ClusterSettings {
            partitions,
            replication_factor,
            bootstrap_nodes,
        }
    }

    #[test]
    fn sound_settings_validate_and_each_broken_rule_is_named() {
        assert_eq!(settings(64, 3, 5).validate(), Ok(()));
        assert_eq!(settings(1, 1, 1).validate(), Ok(()));
        assert_eq!(
            settings(0, 3, 3).validate(),
            Err(SettingsError::PartitionCount(0))
        );
        assert_eq!(
            settings(MAX_PARTITIONS + 1, 3, 3).validate(),
            Err(SettingsError::PartitionCount(MAX_PARTITIONS + 1))
        );
        assert_eq!(
            settings(8, 0, 3).validate(),
            Err(SettingsError::ZeroReplicationFactor)
        );
        assert_eq!(
            settings(8, 3, 2).validate(),
            Err(SettingsError::TooFewNodes {
                replication_factor: 3,
                bootstrap_nodes: 2
            })
        );
    }

    #[test]
    fn addresses_are_host_and_port() {
        for good in [
            "127.0.0.1:7001",
            "[::1]:7001",
            "kvorum-storage-0.kvorum-storage:7001",
            "localhost:1",
        ] {
            assert!(is_host_port(good), "{good}");
        }
        for bad in [
            "",
            "7001",
            ":7001",
            "host:",
            "host:0",
            "host:70000",
            "a b:1",
            "host:port",
        ] {
            assert!(!is_host_port(bad), "{bad}");
        }
    }

    #[test]
    fn unknown_fields_in_settings_are_refused() {
        let text = r#"{"partitions":8,"replication_factor":1,"bootstrap_nodes":1,"extra":1}"#;
        assert!(serde_json::from_str::<ClusterSettings>(text).is_err());
    }
}
