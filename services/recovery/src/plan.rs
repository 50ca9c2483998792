//! Which replicas to replace, and by which nodes: pure, deterministic planning.

use std::collections::{BTreeMap, BTreeSet};

use kvorum_protocol::cluster::{NodeRole, NodeState, RecoveryStrategy, Replacement};
use kvorum_protocol::metadata::MetadataState;
use kvorum_protocol::{NodeId, PartitionId};

/// A move the controller should start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlannedMove {
    /// The partition.
    pub partition: PartitionId,
    /// The replica replaced, and its replacement.
    pub replacement: Replacement,
    /// How.
    pub strategy: RecoveryStrategy,
    /// Whether it resumes a replacement already pending in the map (left by an
    /// earlier pass or controller) rather than starting a new one.
    pub resume: bool,
}

/// Warm standbys to promote into dead nodes' places: each dead node without a
/// designated successor gets an up standby (lowest id first) not yet given to
/// another. The controller promotes them, then designates them.
pub fn standbys_for(
    state: &MetadataState,
    dead: &BTreeSet<NodeId>,
    designated: &BTreeMap<NodeId, NodeId>,
) -> Vec<(NodeId, NodeId)> {
    let mut free = state
        .nodes
        .values()
        .filter(|n| n.role == NodeRole::Standby && n.state == NodeState::Up && !n.catching_up)
        .map(|n| n.id)
        .filter(|id| !designated.values().any(|d| d == id));
    dead.iter()
        .filter(|node| !designated.contains_key(node))
        .filter(|node| {
            // Only a node that still holds replicas needs a successor.
            state
                .partition_map
                .iter()
                .flat_map(|m| &m.partitions)
                .any(|p| p.replicas.contains(node))
        })
        .map_while(|node| free.next().map(|standby| (*node, standby)))
        .collect()
}

pub use kvorum_protocol::consistency::{covers_every_prefix, replication_factors};

/// How many replicas (held, or joining) each up storage node has: the load moves even out.
fn loads(state: &MetadataState, map: &kvorum_protocol::PartitionMap) -> BTreeMap<NodeId, usize> {
    let mut load: BTreeMap<NodeId, usize> = state
        .nodes
        .values()
        .filter(|n| n.role == NodeRole::Storage && n.state == NodeState::Up && !n.catching_up)
        .map(|n| (n.id, 0))
        .collect();
    for assignment in &map.partitions {
        for node in assignment
            .replicas
            .iter()
            .chain(assignment.pending.iter().map(|r| &r.joining))
        {
            if let Some(count) = load.get_mut(node) {
                *count += 1;
            }
        }
    }
    load
}

/// Replacements for replicas on `dead` nodes (down past the replacement delay).
///
/// A dead node with a `designated` successor (a promoted standby) is replaced
/// by it wherever it is up and outside the set (strategy: standby promotion).
/// Partitions already changing (`busy`, or with a pending replacement) are
/// left alone, as are partitions with fewer live replicas than a quorum: the
/// copy must come from a read quorum of the old set, or a write acknowledged by
/// a quorum could be missed. A replacement is an up storage node outside the
/// set, the least loaded one (replicas held plus joins under way), ties broken
/// by id; at most `limit` moves are planned.
pub fn replacements(
    state: &MetadataState,
    dead: &BTreeSet<NodeId>,
    designated: &BTreeMap<NodeId, NodeId>,
    busy: &BTreeSet<PartitionId>,
    limit: usize,
) -> Vec<PlannedMove> {
    let Some(map) = &state.partition_map else {
        return Vec::new();
    };
    let mut load = loads(state, map);
    let up = |node: &NodeId| {
        state
            .nodes
            .get(node)
            .is_some_and(|n| n.state == NodeState::Up && !n.catching_up)
    };
    let mut planned = Vec::new();
    for assignment in &map.partitions {
        if planned.len() >= limit {
            break;
        }
        if busy.contains(&assignment.id) || !assignment.pending.is_empty() {
            continue;
        }
        let Some(&leaving) = assignment.replicas.iter().find(|n| dead.contains(n)) else {
            continue;
        };
        let rfs = replication_factors(state, assignment.replicas.len());
        if !covers_every_prefix(&assignment.replicas, up, &rfs) {
            tracing::warn!(partition = %assignment.id, "too few live replicas to copy every keyspace from safely; waiting");
            continue;
        }
        let successor = designated
            .get(&leaving)
            .filter(|s| up(s) && !assignment.replicas.contains(s))
            .copied();
        let (joining, strategy) = match successor {
            Some(standby) => (standby, RecoveryStrategy::StandbyPromotion),
            None => {
                let Some((&joining, _)) = load
                    .iter()
                    .filter(|(node, _)| !assignment.replicas.contains(node))
                    .min_by_key(|(node, count)| (**count, **node))
                else {
                    continue;
                };
                (joining, RecoveryStrategy::StateTransfer)
            }
        };
        *load.entry(joining).or_default() += 1;
        planned.push(PlannedMove {
            partition: assignment.id,
            replacement: Replacement { leaving, joining },
            strategy,
            resume: false,
        });
    }
    planned
}

/// Moves that even out the load and drain leaving nodes, fewest first.
///
/// Every replica on a leaving node goes to the least loaded up storage node
/// outside its set. Then, while the most loaded storage node holds at least
/// two replicas more than the least loaded one, one partition moves from the
/// former to the latter: each move narrows the spread by two, so the number
/// of moves is the least that reaches "within one of even". Busy partitions,
/// partitions with a pending change and partitions with a replica down are
/// left for later.
pub fn rebalance(
    state: &MetadataState,
    busy: &BTreeSet<PartitionId>,
    limit: usize,
) -> Vec<PlannedMove> {
    let Some(map) = &state.partition_map else {
        return Vec::new();
    };
    let up = |node: &NodeId| {
        state
            .nodes
            .get(node)
            .is_some_and(|n| n.state == NodeState::Up && !n.catching_up)
    };
    let mut load = loads(state, map);
    if load.is_empty() {
        return Vec::new();
    }
    let movable = |assignment: &&kvorum_protocol::cluster::PartitionAssignment| {
        !busy.contains(&assignment.id)
            && assignment.pending.is_empty()
            && assignment.replicas.iter().all(&up)
    };
    let mut planned = Vec::new();
    let mut moved: BTreeSet<PartitionId> = BTreeSet::new();
    let leaving = |node: &NodeId| {
        state
            .nodes
            .get(node)
            .is_some_and(|n| n.role == NodeRole::Leaving)
    };
    for assignment in map.partitions.iter().filter(movable) {
        if planned.len() >= limit {
            return planned;
        }
        let Some(&from) = assignment.replicas.iter().find(|n| leaving(n)) else {
            continue;
        };
        let Some((&to, _)) = load
            .iter()
            .filter(|(node, _)| !assignment.replicas.contains(node))
            .min_by_key(|(node, count)| (**count, **node))
        else {
            continue;
        };
        *load.entry(to).or_default() += 1;
        moved.insert(assignment.id);
        planned.push(PlannedMove {
            partition: assignment.id,
            replacement: Replacement {
                leaving: from,
                joining: to,
            },
            strategy: RecoveryStrategy::Rebalance,
            resume: false,
        });
    }
    while planned.len() < limit {
        let Some((&heavy, &most)) = load
            .iter()
            .max_by_key(|(node, count)| (**count, std::cmp::Reverse(**node)))
        else {
            break;
        };
        let Some((&light, &least)) = load.iter().min_by_key(|(node, count)| (**count, **node))
        else {
            break;
        };
        if most < least + 2 {
            break;
        }
        let Some(assignment) = map.partitions.iter().filter(movable).find(|a| {
            !moved.contains(&a.id) && a.replicas.contains(&heavy) && !a.replicas.contains(&light)
        }) else {
            break;
        };
        *load.entry(heavy).or_default() -= 1;
        *load.entry(light).or_default() += 1;
        moved.insert(assignment.id);
        planned.push(PlannedMove {
            partition: assignment.id,
            replacement: Replacement {
                leaving: heavy,
                joining: light,
            },
            strategy: RecoveryStrategy::Rebalance,
            resume: false,
        });
    }
    planned
}

/// Leaving nodes that hold nothing any more, ready to be decommissioned.
pub fn drained(state: &MetadataState) -> Vec<NodeId> {
    let holds = |node: NodeId| {
        state
            .partition_map
            .iter()
            .flat_map(|m| &m.partitions)
            .any(|p| p.places(node))
    };
    state
        .nodes
        .values()
        .filter(|n| n.role == NodeRole::Leaving && n.state != NodeState::Decommissioned)
        .map(|n| n.id)
        .filter(|id| !holds(*id))
        .collect()
}

#[cfg(test)]
mod tests {
    use kvorum_protocol::NodeInfo;
    use kvorum_protocol::cluster::PartitionAssignment;
    use kvorum_protocol::{Epoch, PartitionMap};

    use super::*;

    fn state(states: &[NodeState], partitions: &[&[u64]]) -> MetadataState {
        MetadataState {
            nodes: states
                .iter()
                .enumerate()
                .map(|(i, s)| {
                    let id = NodeId(i as u64 + 1);
                    (
                        id,
                        NodeInfo {
                            state: *s,
                            ..NodeInfo::registering(
                                id,
                                format!("127.0.0.1:{}", 7001 + i),
                                NodeRole::Storage,
                                false,
                            )
                        },
                    )
                })
                .collect(),
            partition_map: Some(PartitionMap {
                partitions: partitions
                    .iter()
                    .enumerate()
                    .map(|(i, replicas)| PartitionAssignment {
                        id: PartitionId(i as u32),
                        epoch: Epoch(1),
                        replicas: replicas.iter().copied().map(NodeId).collect(),
                        pending: Vec::new(),
                    })
                    .collect(),
            }),
            ..MetadataState::default()
        }
    }

    use NodeState::{Down, Up};

    #[test]
    fn each_partition_of_a_dead_node_goes_to_the_least_loaded_outsider() {
        let state = state(
            &[Up, Up, Down, Up, Up],
            &[&[1, 2, 3], &[3, 4, 5], &[2, 3, 4], &[1, 4, 5]],
        );
        let dead = BTreeSet::from([NodeId(3)]);
        let planned = replacements(&state, &dead, &BTreeMap::new(), &BTreeSet::new(), 10);
        let moves: Vec<(u32, u64, u64)> = planned
            .iter()
            .map(|m| {
                (
                    m.partition.0,
                    m.replacement.leaving.0,
                    m.replacement.joining.0,
                )
            })
            .collect();
        // Loads before: 1→2, 2→2, 4→3, 5→2 (the dead 3 takes nothing). Partition 0
        // (outside: 4, 5) takes 5; partition 1 (outside: 1 and 2, both at 2) takes
        // the lower id, 1; partition 2 (outside: 1 and 5, both now at 3) takes 1.
        assert_eq!(moves, [(0, 3, 5), (1, 3, 1), (2, 3, 1)]);
        assert!(
            planned
                .iter()
                .all(|m| m.strategy == RecoveryStrategy::StateTransfer)
        );
    }

    #[test]
    fn busy_pending_and_quorumless_partitions_are_left_alone_and_the_limit_holds() {
        let mut state = state(
            &[Up, Down, Down, Up, Up],
            &[&[1, 2, 3], &[2, 4, 5], &[2, 4, 5], &[1, 2, 4]],
        );
        if let Some(map) = state.partition_map.as_mut() {
            map.partitions[3].pending = vec![Replacement {
                leaving: NodeId(2),
                joining: NodeId(5),
            }];
        }
        let dead = BTreeSet::from([NodeId(2), NodeId(3)]);
        let busy = BTreeSet::from([PartitionId(1)]);
        let planned = replacements(&state, &dead, &BTreeMap::new(), &busy, 10);
        // 0 has one live replica of three: no quorum to copy from. 1 is busy, 3 pending.
        assert_eq!(
            planned.iter().map(|m| m.partition.0).collect::<Vec<_>>(),
            [2]
        );
        let none = BTreeMap::new();
        assert!(replacements(&state, &dead, &none, &BTreeSet::new(), 1).len() == 1);
        assert!(replacements(&state, &BTreeSet::new(), &none, &BTreeSet::new(), 10).is_empty());
    }

    #[test]
    fn a_standby_takes_every_replica_of_the_node_it_succeeds() {
        let mut state = state(
            &[Up, Up, Down, Up, Up, Up],
            &[&[1, 2, 3], &[3, 4, 5], &[1, 4, 5]],
        );
        if let Some(standby) = state.nodes.get_mut(&NodeId(6)) {
            standby.role = NodeRole::Standby;
        }
        let dead = BTreeSet::from([NodeId(3)]);
        assert_eq!(
            standbys_for(&state, &dead, &BTreeMap::new()),
            [(NodeId(3), NodeId(6))]
        );
        // Once designated (and promoted), it is not offered again...
        let designated = BTreeMap::from([(NodeId(3), NodeId(6))]);
        assert!(standbys_for(&state, &dead, &designated).is_empty());
        // ...and every partition of the dead node goes to it.
        if let Some(promoted) = state.nodes.get_mut(&NodeId(6)) {
            promoted.role = NodeRole::Storage;
        }
        let planned = replacements(&state, &dead, &designated, &BTreeSet::new(), 10);
        assert_eq!(
            planned
                .iter()
                .map(|m| (m.partition.0, m.replacement.joining.0, m.strategy))
                .collect::<Vec<_>>(),
            [
                (0, 6, RecoveryStrategy::StandbyPromotion),
                (1, 6, RecoveryStrategy::StandbyPromotion)
            ]
        );
        // A dead node with no standby left is replaced by state transfer.
        assert!(standbys_for(&state, &BTreeSet::from([NodeId(1)]), &designated).is_empty());
    }

    /// Applies planned moves to the state, as the controller's switch would.
    fn apply(state: &mut MetadataState, planned: &[PlannedMove]) {
        if let Some(map) = state.partition_map.as_mut() {
            for m in planned {
                for replica in &mut map.partitions[m.partition.0 as usize].replicas {
                    if *replica == m.replacement.leaving {
                        *replica = m.replacement.joining;
                    }
                }
            }
        }
    }

    fn held(state: &MetadataState) -> BTreeMap<NodeId, usize> {
        let mut load = BTreeMap::new();
        for p in &state.partition_map.as_ref().expect("map").partitions {
            for n in &p.replicas {
                *load.entry(*n).or_default() += 1;
            }
        }
        load
    }

    #[test]
    fn a_new_node_gets_an_even_share_in_the_fewest_moves() {
        let nodes: Vec<NodeId> = (1..=5).map(NodeId).collect();
        let mut state = state(&[Up, Up, Up, Up, Up, Up], &[]);
        state.partition_map = Some(kvorum_placement::initial_partition_map(16, &nodes, 3));
        let before = held(&state);
        let planned = rebalance(&state, &BTreeSet::new(), 100);
        // 48 replicas over 6 nodes: 8 each. The fewest moves that get there is the
        // sum of every node's excess over 8 (rendezvous placement over 5 nodes is
        // itself a little uneven, so this is at least the 8 node 6 needs).
        let fewest: usize = before.values().map(|count| count.saturating_sub(8)).sum();
        assert!(fewest >= 8);
        assert_eq!(planned.len(), fewest, "{before:?}");
        assert_eq!(
            planned
                .iter()
                .filter(|m| m.replacement.joining == NodeId(6))
                .count(),
            8
        );
        assert!(
            planned
                .iter()
                .all(|m| m.strategy == RecoveryStrategy::Rebalance)
        );
        apply(&mut state, &planned);
        let after = held(&state);
        let (min, max) = (after.values().min(), after.values().max());
        assert!(
            max.zip(min).is_some_and(|(max, min)| max - min <= 1),
            "{before:?} -> {after:?}"
        );
        assert!(
            rebalance(&state, &BTreeSet::new(), 100).is_empty(),
            "balanced: nothing more"
        );
    }

    #[test]
    fn a_leaving_node_is_drained_and_then_reported_empty() {
        let mut state = state(
            &[Up, Up, Up, Up, Up],
            &[&[1, 2, 3], &[2, 3, 4], &[3, 4, 5], &[1, 4, 5]],
        );
        if let Some(node) = state.nodes.get_mut(&NodeId(3)) {
            node.role = NodeRole::Leaving;
        }
        assert!(drained(&state).is_empty());
        let planned = rebalance(&state, &BTreeSet::new(), 100);
        let from_three: Vec<_> = planned
            .iter()
            .filter(|m| m.replacement.leaving == NodeId(3))
            .collect();
        assert_eq!(from_three.len(), 3, "{planned:?}");
        assert!(planned.iter().all(|m| m.replacement.joining != NodeId(3)));
        apply(&mut state, &planned);
        assert_eq!(drained(&state), [NodeId(3)]);
    }

    #[test]
    fn every_keyspace_prefix_needs_a_read_quorum_among_the_sources() {
        let set = [NodeId(1), NodeId(2), NodeId(3), NodeId(4), NodeId(5)];
        let only = |live: &'static [u64]| move |n: &NodeId| live.contains(&n.0);
        let full = BTreeSet::from([5]);
        assert!(covers_every_prefix(&set, only(&[3, 4, 5]), &full));
        assert!(!covers_every_prefix(&set, only(&[4, 5]), &full));
        // A keyspace of RF 3 lives on 1, 2, 3: sources 3, 4, 5 hold one of its
        // three, and a write acknowledged by 1 and 2 would be missed.
        let with_rf3 = BTreeSet::from([3, 5]);
        assert!(!covers_every_prefix(&set, only(&[3, 4, 5]), &with_rf3));
        assert!(covers_every_prefix(&set, only(&[2, 3, 4]), &with_rf3));
        // RF 1: its one replica must be a source.
        assert!(!covers_every_prefix(
            &set,
            only(&[2, 3, 4, 5]),
            &BTreeSet::from([1, 5])
        ));
    }
}
