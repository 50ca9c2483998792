//! The router's view of the cluster: nodes, the partition map, and the route of a key.

use std::collections::HashMap;
use std::sync::Arc;

use kvorum_placement::{initial_partition_map, partition_for};
use kvorum_protocol::cluster::{MetadView, NodeView};
use kvorum_protocol::{
    ClusterView, Epoch, Key, KeyspaceName, Membership, NodeId, PartitionId, PartitionMap,
};

/// One replica a request goes to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Replica {
    /// Its node id.
    pub id: NodeId,
    /// `host:port` of its internal API.
    pub address: Arc<str>,
}

/// Where a key lives: its partition, the epoch routed by, and the ordered replica set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// The key's partition.
    pub partition: PartitionId,
    /// The partition's epoch in the map used.
    pub epoch: Epoch,
    /// The partition's replicas.
    pub replicas: Vec<Replica>,
}

/// The membership and the partition map derived from it.
#[derive(Debug, Clone)]
pub struct Topology {
    membership: Membership,
    map: PartitionMap,
    addresses: HashMap<NodeId, Arc<str>>,
}

impl Topology {
    /// Builds the topology of a validated membership, with the bootstrap partition map.
    pub fn from_membership(membership: Membership) -> Self {
        let storage: Vec<NodeId> = membership.storage_nodes().map(|n| n.id).collect();
        let map = initial_partition_map(
            membership.partitions,
            &storage,
            membership.replication_factor,
        );
        let addresses = membership
            .nodes
            .iter()
            .map(|n| (n.id, Arc::from(n.address.as_str())))
            .collect();
        Self {
            membership,
            map,
            addresses,
        }
    }

    /// The route of `key` in `keyspace`.
    pub fn route(&self, keyspace: &KeyspaceName, key: &Key) -> Route {
        let partition = partition_for(keyspace, key, self.map.partition_count());
        let assignment = self
            .map
            .assignment(partition)
            .expect("partition_for stays below the partition count");
        let replicas = assignment
            .replicas
            .iter()
            .filter_map(|id| {
                self.addresses.get(id).map(|address| Replica {
                    id: *id,
                    address: address.clone(),
                })
            })
            .collect();
        Route {
            partition,
            epoch: assignment.epoch,
            replicas,
        }
    }

    /// The partition map in use.
    pub fn partition_map(&self) -> &PartitionMap {
        &self.map
    }

    /// The cluster as `GET /v1/cluster` reports it.
    pub fn view(&self) -> ClusterView {
        ClusterView {
            metad: MetadView::default(),
            nodes: self
                .membership
                .nodes
                .iter()
                .map(|n| NodeView {
                    id: n.id,
                    address: n.address.clone(),
                    role: n.role,
                    state: n.state,
                    phi: None,
                })
                .collect(),
            partitions: self.map.partitions.clone(),
            moves: Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use kvorum_protocol::NodeInfo;

    use super::*;

    #[test]
    fn a_route_names_the_assigned_replicas_with_their_addresses() {
        let nodes = (1..=5)
            .map(|i| NodeInfo {
                id: NodeId(i),
                address: format!("127.0.0.1:{}", 7000 + i),
                role: Default::default(),
                state: Default::default(),
            })
            .collect();
        let topology = Topology::from_membership(Membership {
            partitions: 16,
            replication_factor: 3,
            nodes,
        });
        let key = Key::parse("hello").expect("key");
        let route = topology.route(&KeyspaceName::default_keyspace(), &key);
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
}
