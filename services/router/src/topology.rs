//! The router's view of the cluster: nodes, the partition map, and the route of a key.

use std::collections::HashMap;
use std::sync::Arc;

use kvorum_placement::partition_for;
use kvorum_protocol::cluster::{MetadView, NodeView};
use kvorum_protocol::metadata::MetadataState;
use kvorum_protocol::{
    ClusterView, Epoch, Key, KeyspaceConfig, NodeId, NodeInfo, PartitionId, PartitionMap,
};

/// One replica a request goes to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Replica {
    /// Its node id.
    pub id: NodeId,
    /// `host:port` of its internal API.
    pub address: Arc<str>,
    /// Whether the failure detector holds it down: eventual writes hint it instead of calling it.
    pub down: bool,
    /// Whether it is a new incarnation catching up: it is sent writes, but no
    /// reads or prepares, and its acknowledgements count toward no level.
    pub catching_up: bool,
}

/// Where a key lives: its partition, the epoch routed by, and the ordered replica set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// The key's partition.
    pub partition: PartitionId,
    /// The partition's epoch in the map used.
    pub epoch: Epoch,
    /// The replicas the key's keyspace uses: the first RF of the partition's set.
    pub replicas: Vec<Replica>,
    /// Nodes joining in place of some of those replicas: they take every write.
    pub joining: Vec<Replica>,
}

impl Route {
    /// Where requests go: the replicas and the nodes joining (borrowed, with no
    /// copy, in the usual case of no move under way).
    pub fn commit_targets(&self) -> std::borrow::Cow<'_, [Replica]> {
        if self.joining.is_empty() {
            std::borrow::Cow::Borrowed(&self.replicas)
        } else {
            std::borrow::Cow::Owned(self.replicas.iter().chain(&self.joining).cloned().collect())
        }
    }

    /// Where reads and prepares go: the commit targets whose replies count
    /// (a catching-up incarnation may lack acknowledged writes).
    pub fn read_targets(&self) -> std::borrow::Cow<'_, [Replica]> {
        let targets = self.commit_targets();
        if targets.iter().any(|r| r.catching_up) {
            std::borrow::Cow::Owned(targets.iter().filter(|r| !r.catching_up).cloned().collect())
        } else {
            targets
        }
    }
}

/// The nodes and the partition map of one metadata version.
#[derive(Debug, Clone)]
pub struct Topology {
    nodes: Vec<NodeInfo>,
    map: PartitionMap,
    addresses: HashMap<NodeId, (Arc<str>, bool, bool)>,
}

impl Topology {
    /// The topology the metadata state describes, or `None` before the partition map exists.
    pub fn from_state(state: &MetadataState) -> Option<Self> {
        let map = state.partition_map.clone()?;
        let addresses = state
            .nodes
            .values()
            .map(|n| {
                let down = n.state == kvorum_protocol::cluster::NodeState::Down;
                (n.id, (Arc::from(n.address.as_str()), down, n.catching_up))
            })
            .collect();
        Some(Self {
            nodes: state.nodes.values().cloned().collect(),
            map,
            addresses,
        })
    }

    /// The route of `key` in `keyspace`: a keyspace with RF r uses the first r replicas of the partition.
    pub fn route(&self, keyspace: &KeyspaceConfig, key: &Key) -> Route {
        let partition = partition_for(&keyspace.name, key, self.map.partition_count());
        let assignment = self
            .map
            .assignment(partition)
            .expect("partition_for stays below the partition count");
        let used =
            &assignment.replicas[..keyspace.replication_factor.min(assignment.replicas.len())];
        let replica = |id: &NodeId| {
            self.addresses
                .get(id)
                .map(|(address, down, catching_up)| Replica {
                    id: *id,
                    address: address.clone(),
                    down: *down,
                    catching_up: *catching_up,
                })
        };
        Route {
            partition,
            epoch: assignment.epoch,
            replicas: used.iter().filter_map(replica).collect(),
            joining: assignment
                .pending
                .iter()
                .filter(|r| used.contains(&r.leaving))
                .filter_map(|r| replica(&r.joining))
                .collect(),
        }
    }

    /// A node of the cluster, as the metadata records it.
    pub fn node(&self, id: NodeId) -> Option<&NodeInfo> {
        self.nodes.iter().find(|n| n.id == id)
    }

    /// Whether `id` is a node of the cluster (decommissioned ones included).
    pub fn has_node(&self, id: NodeId) -> bool {
        self.addresses.contains_key(&id)
    }

    /// The partition map in use.
    pub fn partition_map(&self) -> &PartitionMap {
        &self.map
    }

    /// The cluster as `GET /v1/cluster` reports it, with the metadata service as last seen.
    pub fn view(&self, metad: MetadView) -> ClusterView {
        ClusterView {
            metad,
            nodes: self
                .nodes
                .iter()
                .map(|n| NodeView {
                    id: n.id,
                    address: n.address.clone(),
                    role: n.role,
                    state: n.state,
                    phi: None,
                    incarnation: n.incarnation,
                    catching_up: n.catching_up,
                })
                .collect(),
            partitions: self.map.partitions.clone(),
            moves: Vec::new(),
            recoveries: Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use kvorum_protocol::KeyspaceName;

    use super::*;

    fn state() -> MetadataState {
        let ids: Vec<NodeId> = (1..=5).map(NodeId).collect();
        MetadataState {
            nodes: ids
                .iter()
                .map(|&id| {
                    (
                        id,
                        NodeInfo::registering(
                            id,
                            format!("127.0.0.1:{}", 7000 + id.0),
                            Default::default(),
                            false,
                        ),
                    )
                })
                .collect(),
            partition_map: Some(kvorum_placement::initial_partition_map(16, &ids, 3)),
            ..MetadataState::default()
        }
    }

    #[test]
    fn a_route_names_the_assigned_replicas_with_their_addresses() {
        let topology = Topology::from_state(&state()).expect("has a map");
        let key = Key::parse("hello").expect("key");
        let route = topology.route(&KeyspaceConfig::default_keyspace(3), &key);
        let assignment = topology
            .partition_map()
            .assignment(route.partition)
            .expect("assigned");
        assert_eq!(route.epoch, assignment.epoch);
        let ids: Vec<_> = route.replicas.iter().map(|r| r.id).collect();
        assert_eq!(ids, assignment.replicas);
        for replica in &route.replicas {
            assert_eq!(
                &*replica.address,
                format!("127.0.0.1:{}", 7000 + replica.id.0)
            );
        }
    }

    #[test]
    fn a_keyspace_with_a_smaller_rf_uses_the_first_replicas_of_the_set() {
        let topology = Topology::from_state(&state()).expect("has a map");
        let key = Key::parse("hello").expect("key");
        let small = KeyspaceConfig {
            name: KeyspaceName::default_keyspace(),
            ..KeyspaceConfig::default_keyspace(1)
        };
        let full = topology.route(&KeyspaceConfig::default_keyspace(3), &key);
        let one = topology.route(&small, &key);
        assert_eq!(one.replicas, full.replicas[..1]);
    }

    #[test]
    fn there_is_no_topology_before_the_map_exists() {
        let state = MetadataState {
            partition_map: None,
            ..state()
        };
        assert!(Topology::from_state(&state).is_none());
    }
}
