//! Membership, the partition map and the cluster view.
//!
//! Until the metadata service exists, membership comes from a file holding a
//! [`Membership`]; the [`PartitionMap`] derived from it is the same type the
//! metadata service will serve.

use std::collections::HashSet;
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
}

/// The cluster's bootstrap description: partition count, replication factor and nodes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Membership {
    /// The fixed number of partitions keys hash into.
    pub partitions: u32,
    /// How many replicas each partition has.
    pub replication_factor: usize,
    /// The storage nodes.
    pub nodes: Vec<NodeInfo>,
}

/// Why a membership description is unusable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MembershipError {
    /// Partition count out of range.
    #[error("partitions must be between 1 and {MAX_PARTITIONS}, not {0}")]
    PartitionCount(u32),
    /// Replication factor of zero.
    #[error("replication_factor must be at least 1")]
    ZeroReplicationFactor,
    /// Fewer storage nodes than the replication factor.
    #[error(
        "replication_factor {replication_factor} needs at least that many storage nodes, but there are {nodes}"
    )]
    TooFewNodes {
        /// The replication factor asked for.
        replication_factor: usize,
        /// The storage nodes listed.
        nodes: usize,
    },
    /// Two nodes share an id.
    #[error("node id {0} appears more than once")]
    DuplicateNodeId(NodeId),
    /// Two nodes share an address.
    #[error("address {0} appears more than once")]
    DuplicateAddress(String),
    /// An address that is not `ip:port`.
    #[error("node {id} has address {address:?}, which is not ip:port")]
    BadAddress {
        /// The node.
        id: NodeId,
        /// Its address.
        address: String,
    },
}

impl Membership {
    /// Checks every rule a usable membership obeys.
    pub fn validate(&self) -> Result<(), MembershipError> {
        if self.partitions == 0 || self.partitions > MAX_PARTITIONS {
            return Err(MembershipError::PartitionCount(self.partitions));
        }
        if self.replication_factor == 0 {
            return Err(MembershipError::ZeroReplicationFactor);
        }
        let storage_nodes = self.storage_nodes().count();
        if storage_nodes < self.replication_factor {
            return Err(MembershipError::TooFewNodes {
                replication_factor: self.replication_factor,
                nodes: storage_nodes,
            });
        }
        let mut ids = HashSet::new();
        let mut addresses = HashSet::new();
        for node in &self.nodes {
            if !ids.insert(node.id) {
                return Err(MembershipError::DuplicateNodeId(node.id));
            }
            if node.address.parse::<SocketAddr>().is_err() {
                return Err(MembershipError::BadAddress {
                    id: node.id,
                    address: node.address.clone(),
                });
            }
            if !addresses.insert(node.address.as_str()) {
                return Err(MembershipError::DuplicateAddress(node.address.clone()));
            }
        }
        Ok(())
    }

    /// The nodes that hold replicas (not standbys, not decommissioned).
    pub fn storage_nodes(&self) -> impl Iterator<Item = &NodeInfo> {
        self.nodes
            .iter()
            .filter(|n| n.role == NodeRole::Storage && n.state != NodeState::Decommissioned)
    }

    /// The node with this id.
    pub fn node(&self, id: NodeId) -> Option<&NodeInfo> {
        self.nodes.iter().find(|n| n.id == id)
    }
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

/// A partition moving from one node to another (filled in by the recovery controller).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionMove {
    /// The partition.
    pub partition: PartitionId,
    /// The replica leaving the set.
    pub from: Option<NodeId>,
    /// The replica joining it.
    pub to: NodeId,
}

/// A metadata service replica.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MetadReplica {
    /// Its id.
    pub id: NodeId,
    /// Its address.
    pub address: String,
}

/// The metadata service as the cluster view reports it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MetadView {
    /// The current leader, if known.
    pub leader: Option<NodeId>,
    /// Every replica.
    pub replicas: Vec<MetadReplica>,
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
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: u64, port: u16) -> NodeInfo {
        NodeInfo {
            id: NodeId(id),
            address: format!("127.0.0.1:{port}"),
            role: NodeRole::Storage,
            state: NodeState::Up,
        }
    }

    fn membership(nodes: Vec<NodeInfo>) -> Membership {
        Membership {
            partitions: 64,
            replication_factor: 3,
            nodes,
        }
    }

    #[test]
    fn a_sound_membership_validates() {
        let m = membership(vec![node(1, 1), node(2, 2), node(3, 3)]);
        assert_eq!(m.validate(), Ok(()));
    }

    #[test]
    fn each_broken_rule_is_named() {
        let mut m = membership(vec![node(1, 1), node(2, 2)]);
        assert_eq!(
            m.validate(),
            Err(MembershipError::TooFewNodes {
                replication_factor: 3,
                nodes: 2
            })
        );
        m.nodes.push(node(1, 3));
        assert_eq!(
            m.validate(),
            Err(MembershipError::DuplicateNodeId(NodeId(1)))
        );
        m.nodes[2] = node(3, 2);
        assert!(matches!(
            m.validate(),
            Err(MembershipError::DuplicateAddress(_))
        ));
        m.nodes[2].address = "localhost".into();
        assert!(matches!(
            m.validate(),
            Err(MembershipError::BadAddress { .. })
        ));
        m.nodes[2] = node(3, 3);
        m.partitions = 0;
        assert_eq!(m.validate(), Err(MembershipError::PartitionCount(0)));
        m.partitions = 8;
        m.replication_factor = 0;
        assert_eq!(m.validate(), Err(MembershipError::ZeroReplicationFactor));
    }

    #[test]
    fn unknown_fields_in_a_membership_file_are_refused() {
        let text = r#"{"partitions":8,"replication_factor":1,"nodes":[],"extra":1}"#;
        assert!(serde_json::from_str::<Membership>(text).is_err());
    }
}
