//! Placement: which partition a key belongs to and which nodes hold each partition.
//!
//! Pure functions, no I/O. The hash is XXH3-64 with seed 0, whose output is
//! specified byte-for-byte and identical on every platform and build (unlike
//! `std`'s `DefaultHasher`), so a key maps to the same partition forever.
//! Replica sets come from rendezvous (highest-random-weight) hashing, which
//! keeps a partition's replicas on distinct nodes and, when a node joins or
//! leaves, moves only the partitions whose top-RF nodes changed.

use kvorum_protocol::{
    Epoch, Key, KeyspaceName, NodeId, PartitionAssignment, PartitionId, PartitionMap,
};
use xxhash_rust::xxh3::xxh3_64;

/// The stable 64-bit hash of a key in a keyspace.
///
/// The keyspace name and key are joined by a NUL byte, which neither may contain,
/// so distinct (keyspace, key) pairs never hash the same input.
pub fn key_hash(keyspace: &KeyspaceName, key: &Key) -> u64 {
    let mut input = Vec::with_capacity(keyspace.as_str().len() + 1 + key.as_str().len());
    input.extend_from_slice(keyspace.as_str().as_bytes());
    input.push(0);
    input.extend_from_slice(key.as_str().as_bytes());
    xxh3_64(&input)
}

/// The partition a key belongs to, out of `partitions` (which is fixed at bootstrap).
pub fn partition_for(keyspace: &KeyspaceName, key: &Key, partitions: u32) -> PartitionId {
    assert!(partitions > 0, "a cluster has at least one partition");
    let index = key_hash(keyspace, key) % u64::from(partitions);
    PartitionId(u32::try_from(index).expect("index below a u32 partition count"))
}

/// The rendezvous weight of `node` for `partition`.
fn weight(partition: PartitionId, node: NodeId) -> u64 {
    let mut input = [0u8; 12];
    input[..4].copy_from_slice(&partition.0.to_le_bytes());
    input[4..].copy_from_slice(&node.0.to_le_bytes());
    xxh3_64(&input)
}

/// The `replication_factor` nodes with the highest weight for `partition`, best first.
pub fn replicas_for(
    partition: PartitionId,
    nodes: &[NodeId],
    replication_factor: usize,
) -> Vec<NodeId> {
    let mut ranked: Vec<(u64, NodeId)> = nodes.iter().map(|&n| (weight(partition, n), n)).collect();
    ranked.sort_unstable_by(|a, b| b.cmp(a));
    ranked.dedup_by_key(|(_, n)| *n);
    ranked
        .into_iter()
        .take(replication_factor)
        .map(|(_, n)| n)
        .collect()
}

/// The bootstrap partition map: every partition at epoch 1 with its rendezvous replica set.
pub fn initial_partition_map(
    partitions: u32,
    nodes: &[NodeId],
    replication_factor: usize,
) -> PartitionMap {
    PartitionMap {
        partitions: (0..partitions)
            .map(|p| PartitionAssignment {
                id: PartitionId(p),
                epoch: Epoch(1),
                replicas: replicas_for(PartitionId(p), nodes, replication_factor),
                pending: Vec::new(),
            })
            .collect(),
    }
}

/// Evens out `map` over `nodes`: while one node holds at least two replicas
/// more than another, one partition moves from the most loaded to the least
/// loaded node (taking its place in the replica order). Each move narrows the
/// spread by two, so the fewest moves reach "every node within one of even".
/// Deterministic: ties go to the lowest id for the least loaded and the
/// highest id for the most loaded, and to the lowest partition.
pub fn balance(map: &mut PartitionMap, nodes: &[NodeId]) {
    let mut load: std::collections::BTreeMap<NodeId, usize> =
        nodes.iter().map(|n| (*n, 0)).collect();
    for partition in &map.partitions {
        for node in &partition.replicas {
            if let Some(count) = load.get_mut(node) {
                *count += 1;
            }
        }
    }
    loop {
        let heavy = load
            .iter()
            .max_by_key(|(node, count)| (**count, **node))
            .map(|(n, c)| (*n, *c));
        let light = load
            .iter()
            .min_by_key(|(node, count)| (**count, **node))
            .map(|(n, c)| (*n, *c));
        let (Some((heavy, most)), Some((light, least))) = (heavy, light) else {
            return;
        };
        if most < least + 2 {
            return;
        }
        let Some(partition) = map
            .partitions
            .iter_mut()
            .find(|p| p.replicas.contains(&heavy) && !p.replicas.contains(&light))
        else {
            return;
        };
        for replica in &mut partition.replicas {
            if *replica == heavy {
                *replica = light;
            }
        }
        *load.entry(heavy).or_default() -= 1;
        *load.entry(light).or_default() += 1;
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{HashMap, HashSet};

    use super::*;

    fn ks(name: &str) -> KeyspaceName {
        KeyspaceName::parse(name).expect("valid keyspace")
    }

    fn key(text: &str) -> Key {
        Key::parse(text).expect("valid key")
    }

    fn ids(n: u64) -> Vec<NodeId> {
        (1..=n).map(NodeId).collect()
    }

    /// Fixed vectors: if any of these change, every deployed cluster would look for
    /// its keys in the wrong partitions. They must never change.
    #[test]
    fn the_key_hash_is_frozen() {
        // Computed independently with the reference implementation (Python `xxhash`,
        // `xxh3_64_intdigest(b"default\0hello")`), not with this code.
        let vectors = [
            ("default", "hello", 0xd2ff_3cef_c59b_4063_u64, 35),
            ("default", "a/b/c", 0x68a4_c0b8_6489_d210, 16),
            ("users", "hello", 0x3066_1dc8_46b1_2868, 40),
            ("default", "ключ", 0x0651_0f89_d127_6561, 33),
        ];
        for (keyspace, k, hash, partition) in vectors {
            assert_eq!(
                key_hash(&ks(keyspace), &key(k)),
                hash,
                "hash of {keyspace}/{k}"
            );
            assert_eq!(
                partition_for(&ks(keyspace), &key(k), 64),
                PartitionId(partition),
                "partition of {keyspace}/{k}"
            );
        }
    }

    #[test]
    fn the_keyspace_is_part_of_the_hash() {
        assert_ne!(
            key_hash(&ks("a"), &key("bc")),
            key_hash(&ks("ab"), &key("c"))
        );
    }

    #[test]
    fn keys_spread_over_all_partitions() {
        let mut counts = vec![0u32; 64];
        for i in 0..64_000 {
            counts[partition_for(&ks("default"), &key(&format!("key-{i}")), 64).0 as usize] += 1;
        }
        let (min, max) = (counts.iter().min().copied(), counts.iter().max().copied());
        assert!(
            min > Some(800) && max < Some(1200),
            "uneven spread {min:?}..{max:?}"
        );
    }

    #[test]
    fn replicas_are_distinct_and_as_many_as_the_replication_factor() {
        for n in 1..=9 {
            for rf in 1..=n {
                let map = initial_partition_map(64, &ids(n as u64), rf);
                for assignment in &map.partitions {
                    let distinct: HashSet<_> = assignment.replicas.iter().collect();
                    assert_eq!(distinct.len(), rf, "{n} nodes, RF {rf}, {assignment:?}");
                    assert_eq!(assignment.epoch, Epoch(1));
                }
            }
        }
    }

    #[test]
    fn load_is_roughly_even_over_five_nodes() {
        let map = initial_partition_map(64, &ids(5), 3);
        let mut load: HashMap<NodeId, usize> = HashMap::new();
        for a in &map.partitions {
            for n in &a.replicas {
                *load.entry(*n).or_default() += 1;
            }
        }
        // 64 * 3 / 5 = 38.4 replicas per node on average.
        for (node, count) in &load {
            assert!(
                (26..=51).contains(count),
                "node {node} holds {count} replicas"
            );
        }
    }

    #[test]
    fn adding_a_node_moves_only_partitions_that_gain_it() {
        let before = initial_partition_map(64, &ids(5), 3);
        let after = initial_partition_map(64, &ids(6), 3);
        for (b, a) in before.partitions.iter().zip(&after.partitions) {
            let gained: Vec<_> = a
                .replicas
                .iter()
                .filter(|n| !b.replicas.contains(n))
                .collect();
            assert!(
                gained.is_empty() || gained == [&NodeId(6)],
                "{b:?} -> {a:?}"
            );
        }
    }

    #[test]
    fn balancing_brings_every_node_within_one_of_even() {
        for (partitions, nodes, rf) in [(64, 5, 3), (16, 5, 3), (16, 4, 3), (7, 3, 2), (100, 7, 3)]
        {
            let mut map = initial_partition_map(partitions, &ids(nodes), rf);
            balance(&mut map, &ids(nodes));
            let mut load = HashMap::new();
            for p in &map.partitions {
                let distinct: HashSet<_> = p.replicas.iter().collect();
                assert_eq!(distinct.len(), rf, "distinct replicas");
                for n in &p.replicas {
                    *load.entry(*n).or_insert(0usize) += 1;
                }
            }
            let (min, max) = (load.values().min(), load.values().max());
            assert!(
                max.zip(min).is_some_and(|(max, min)| max - min <= 1),
                "{partitions} partitions over {nodes} nodes: {load:?}"
            );
        }
    }

    #[test]
    fn the_map_is_independent_of_node_order() {
        let mut shuffled = ids(5);
        shuffled.reverse();
        assert_eq!(
            initial_partition_map(16, &ids(5), 3),
            initial_partition_map(16, &shuffled, 3)
        );
    }
}
