//! The metadata service's replicated state machine.
//!
//! Every replica applies the same decided commands in the same order to a
//! [`StateMachine`] and so reaches the same state: `apply` is deterministic
//! (time comes inside commands) and free of I/O. A command whose request id was
//! applied before is not applied again; its first outcome is returned, so a
//! client that retries after a timeout cannot apply a command twice.

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;

use kvorum_protocol::metadata::{
    Lease, MetadataCommand, MetadataError, MetadataOp, MetadataOutcome, MetadataState, RequestId,
};
use kvorum_protocol::{KeyspaceConfig, PartitionMap};
use serde::{Deserialize, Serialize};

/// How many request ids are remembered for deduplication.
pub const REMEMBERED_REQUESTS: usize = 10_000;

/// The longest request id accepted.
pub const MAX_REQUEST_ID: usize = 128;

/// The state and the outcomes of recent requests, as one snapshot-able value.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateMachine {
    state: MetadataState,
    outcomes: BTreeMap<RequestId, Result<MetadataOutcome, MetadataError>>,
    order: VecDeque<RequestId>,
}

impl StateMachine {
    /// The current state.
    pub fn state(&self) -> &MetadataState {
        &self.state
    }

    /// Applies a decided command, once per request id.
    pub fn apply(&mut self, command: &MetadataCommand) -> Result<MetadataOutcome, MetadataError> {
        if let Some(earlier) = self.outcomes.get(&command.request_id) {
            return earlier.clone();
        }
        let outcome = self.apply_new(command);
        self.outcomes
            .insert(command.request_id.clone(), outcome.clone());
        self.order.push_back(command.request_id.clone());
        while self.order.len() > REMEMBERED_REQUESTS {
            if let Some(oldest) = self.order.pop_front() {
                self.outcomes.remove(&oldest);
            }
        }
        outcome
    }

    /// The remembered outcome of a request id, if it was applied recently.
    pub fn outcome(&self, request: &RequestId) -> Option<&Result<MetadataOutcome, MetadataError>> {
        self.outcomes.get(request)
    }

    /// The encoding of the whole machine, for log compaction.
    pub fn snapshot(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("the state machine always encodes")
    }

    /// A machine restored from [`Self::snapshot`]'s encoding.
    pub fn restore(bytes: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(bytes)
    }

    fn apply_new(&mut self, command: &MetadataCommand) -> Result<MetadataOutcome, MetadataError> {
        validate(command)?;
        if let Some(expected) = command.expected_version
            && expected != self.state.version
        {
            return Err(conflict(format!(
                "expected version {expected}, but the state is at version {}",
                self.state.version
            )));
        }
        let state = &mut self.state;
        let mut lease = None;
        let changed = match &command.op {
            MetadataOp::RegisterNode { node } => {
                let changed = state.nodes.get(&node.id) != Some(node);
                state.nodes.insert(node.id, node.clone());
                changed
            }
            MetadataOp::SetNodeState {
                node,
                state: health,
            } => {
                let member = state
                    .nodes
                    .get_mut(node)
                    .ok_or_else(|| not_found(format!("no node {node}")))?;
                let changed = member.state != *health;
                member.state = *health;
                changed
            }
            MetadataOp::CreateKeyspace { keyspace } => {
                match state.keyspaces.get(keyspace.name.as_str()) {
                    Some(existing) if existing == keyspace => false,
                    Some(_) => {
                        return Err(conflict(format!(
                            "keyspace {} already exists with other settings",
                            keyspace.name
                        )));
                    }
                    None => {
                        state
                            .keyspaces
                            .insert(keyspace.name.to_string(), keyspace.clone());
                        true
                    }
                }
            }
            MetadataOp::SetPartitionMap { map } => {
                if let Some(current) = &state.partition_map {
                    check_epochs(current, map)?;
                }
                let changed = state.partition_map.as_ref() != Some(map);
                state.partition_map = Some(map.clone());
                changed
            }
            MetadataOp::AcquireLease {
                name,
                holder,
                now_ms,
                duration_ms,
            } => {
                if let Some(held) = state.leases.get(name)
                    && held.holder != *holder
                    && held.expires_at_ms > *now_ms
                {
                    return Err(conflict(format!(
                        "lease {name} is held by {} until {} ms",
                        held.holder, held.expires_at_ms
                    )));
                }
                let granted = Lease {
                    holder: holder.clone(),
                    expires_at_ms: now_ms.saturating_add(*duration_ms),
                };
                state.leases.insert(name.clone(), granted.clone());
                lease = Some(granted);
                true
            }
            MetadataOp::ReleaseLease { name, holder } => match state.leases.get(name) {
                Some(held) if held.holder == *holder => {
                    state.leases.remove(name);
                    true
                }
                Some(held) => {
                    return Err(conflict(format!(
                        "lease {name} is held by {}, not {holder}",
                        held.holder
                    )));
                }
                None => false,
            },
        };
        if changed {
            state.version += 1;
        }
        Ok(MetadataOutcome {
            version: state.version,
            lease,
        })
    }
}

fn invalid(message: impl Into<String>) -> MetadataError {
    MetadataError::Invalid {
        message: message.into(),
    }
}

fn not_found(message: impl Into<String>) -> MetadataError {
    MetadataError::NotFound {
        message: message.into(),
    }
}

fn conflict(message: impl Into<String>) -> MetadataError {
    MetadataError::Conflict {
        message: message.into(),
    }
}

/// Refuses malformed commands before they can change anything (also used to keep them out of the log).
pub fn validate(command: &MetadataCommand) -> Result<(), MetadataError> {
    let id = &command.request_id.0;
    if id.is_empty() || id.len() > MAX_REQUEST_ID {
        return Err(invalid(format!(
            "request_id must be 1..={MAX_REQUEST_ID} characters"
        )));
    }
    match &command.op {
        MetadataOp::RegisterNode { node } => {
            if node.id.0 == 0 {
                return Err(invalid("node ids start at 1"));
            }
            if node.address.parse::<SocketAddr>().is_err() {
                return Err(invalid(format!(
                    "node address {:?} is not ip:port",
                    node.address
                )));
            }
        }
        MetadataOp::SetNodeState { .. } => {}
        MetadataOp::CreateKeyspace { keyspace } => validate_keyspace(keyspace)?,
        MetadataOp::SetPartitionMap { map } => validate_map(map)?,
        MetadataOp::AcquireLease {
            name,
            holder,
            duration_ms,
            ..
        } => {
            if name.is_empty() || holder.is_empty() {
                return Err(invalid("a lease needs a name and a holder"));
            }
            if *duration_ms == 0 {
                return Err(invalid("a lease must last at least 1 ms"));
            }
        }
        MetadataOp::ReleaseLease { name, holder } => {
            if name.is_empty() || holder.is_empty() {
                return Err(invalid("a lease needs a name and a holder"));
            }
        }
    }
    Ok(())
}

fn validate_keyspace(keyspace: &KeyspaceConfig) -> Result<(), MetadataError> {
    if keyspace.replication_factor == 0 {
        return Err(invalid("replication_factor must be at least 1"));
    }
    Ok(())
}

fn validate_map(map: &PartitionMap) -> Result<(), MetadataError> {
    for (index, assignment) in map.partitions.iter().enumerate() {
        if assignment.id.0 as usize != index {
            return Err(invalid(format!(
                "partition at position {index} has id {}",
                assignment.id
            )));
        }
        let mut replicas = assignment.replicas.clone();
        replicas.sort();
        replicas.dedup();
        if replicas.is_empty() || replicas.len() != assignment.replicas.len() {
            return Err(invalid(format!(
                "partition {} needs distinct replicas",
                assignment.id
            )));
        }
    }
    if map.partitions.is_empty() {
        return Err(invalid("a partition map has at least one partition"));
    }
    Ok(())
}

/// A new map may change a partition's replicas only with exactly the next epoch,
/// and must keep the epoch of a partition it leaves alone: anything else comes
/// from a writer that routed by an outdated map.
fn check_epochs(current: &PartitionMap, proposed: &PartitionMap) -> Result<(), MetadataError> {
    if current.partitions.len() != proposed.partitions.len() {
        return Err(invalid(format!(
            "the partition count is fixed at {}, not {}",
            current.partitions.len(),
            proposed.partitions.len()
        )));
    }
    for (old, new) in current.partitions.iter().zip(&proposed.partitions) {
        let expected = if old.replicas == new.replicas {
            old.epoch
        } else {
            kvorum_protocol::Epoch(old.epoch.0 + 1)
        };
        if new.epoch != expected {
            return Err(conflict(format!(
                "partition {} is at epoch {}; a {} needs epoch {}, not {}",
                old.id,
                old.epoch,
                if old.replicas == new.replicas {
                    "map that keeps its replicas"
                } else {
                    "replica change"
                },
                expected,
                new.epoch
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use kvorum_protocol::cluster::{NodeRole, NodeState, PartitionAssignment};
    use kvorum_protocol::{Epoch, NodeId, NodeInfo, PartitionId};

    use super::*;

    fn command(id: &str, op: MetadataOp) -> MetadataCommand {
        MetadataCommand {
            request_id: RequestId(id.to_owned()),
            expected_version: None,
            op,
        }
    }

    fn node(id: u64) -> NodeInfo {
        NodeInfo {
            id: NodeId(id),
            address: format!("127.0.0.1:{}", 7000 + id),
            role: NodeRole::Storage,
            state: NodeState::Up,
        }
    }

    fn map(epochs_and_replicas: &[(u64, &[u64])]) -> PartitionMap {
        PartitionMap {
            partitions: epochs_and_replicas
                .iter()
                .enumerate()
                .map(|(i, (epoch, replicas))| PartitionAssignment {
                    id: PartitionId(i as u32),
                    epoch: Epoch(*epoch),
                    replicas: replicas.iter().copied().map(NodeId).collect(),
                })
                .collect(),
        }
    }

    #[test]
    fn a_retried_command_applies_once() {
        let mut machine = StateMachine::default();
        let lease = |now| {
            command(
                "r1",
                MetadataOp::AcquireLease {
                    name: "l".into(),
                    holder: "a".into(),
                    now_ms: now,
                    duration_ms: 10,
                },
            )
        };
        let first = machine.apply(&lease(0));
        let retried = machine.apply(&lease(5));
        assert_eq!(first, retried, "the retry returns the first outcome");
        assert_eq!(machine.state().version, 1);
        assert_eq!(machine.state().leases["l"].expires_at_ms, 10);
    }

    #[test]
    fn a_stale_version_is_refused_and_changes_nothing() {
        let mut machine = StateMachine::default();
        machine
            .apply(&command("a", MetadataOp::RegisterNode { node: node(1) }))
            .expect("register");
        let mut stale = command("b", MetadataOp::RegisterNode { node: node(2) });
        stale.expected_version = Some(0);
        assert!(matches!(
            machine.apply(&stale),
            Err(MetadataError::Conflict { .. })
        ));
        assert_eq!(machine.state().nodes.len(), 1);
        stale.request_id = RequestId("c".into());
        stale.expected_version = Some(1);
        assert_eq!(machine.apply(&stale).map(|o| o.version), Ok(2));
    }

    #[test]
    fn partition_maps_change_only_with_the_next_epoch() {
        let mut machine = StateMachine::default();
        let set = |id: &str, m| command(id, MetadataOp::SetPartitionMap { map: m });
        machine
            .apply(&set("1", map(&[(1, &[1, 2, 3]), (1, &[2, 3, 4])])))
            .expect("bootstrap");
        // Moving partition 0 at the same epoch: a stale writer.
        assert!(matches!(
            machine.apply(&set("2", map(&[(1, &[1, 2, 5]), (1, &[2, 3, 4])]))),
            Err(MetadataError::Conflict { .. })
        ));
        // Skipping an epoch, or bumping an unchanged partition: refused too.
        assert!(
            machine
                .apply(&set("3", map(&[(3, &[1, 2, 5]), (1, &[2, 3, 4])])))
                .is_err()
        );
        assert!(
            machine
                .apply(&set("4", map(&[(2, &[1, 2, 5]), (2, &[2, 3, 4])])))
                .is_err()
        );
        // The next epoch for the moved partition only: accepted.
        assert!(
            machine
                .apply(&set("5", map(&[(2, &[1, 2, 5]), (1, &[2, 3, 4])])))
                .is_ok()
        );
        assert_eq!(
            machine
                .state()
                .partition_map
                .as_ref()
                .map(|m| m.partitions[0].epoch),
            Some(Epoch(2))
        );
        // The partition count is fixed.
        assert!(matches!(
            machine.apply(&set("6", map(&[(2, &[1, 2, 5])]))),
            Err(MetadataError::Invalid { .. })
        ));
    }

    #[test]
    fn leases_go_to_one_holder_until_they_lapse() {
        let mut machine = StateMachine::default();
        let acquire = |id: &str, holder: &str, now| {
            command(
                id,
                MetadataOp::AcquireLease {
                    name: "recovery".into(),
                    holder: holder.into(),
                    now_ms: now,
                    duration_ms: 100,
                },
            )
        };
        assert!(machine.apply(&acquire("1", "a", 0)).is_ok());
        assert!(matches!(
            machine.apply(&acquire("2", "b", 50)),
            Err(MetadataError::Conflict { .. })
        ));
        assert!(
            machine.apply(&acquire("3", "a", 90)).is_ok(),
            "the holder renews"
        );
        assert!(
            machine.apply(&acquire("4", "b", 150)).is_err(),
            "renewed until 190"
        );
        let granted = machine.apply(&acquire("5", "b", 190)).expect("lapsed");
        assert_eq!(granted.lease.map(|l| l.holder), Some("b".to_owned()));
    }

    #[test]
    fn malformed_commands_are_refused_and_change_nothing() {
        let mut machine = StateMachine::default();
        let bad = [
            command("", MetadataOp::RegisterNode { node: node(1) }),
            command(&"x".repeat(129), MetadataOp::RegisterNode { node: node(1) }),
            command(
                "a",
                MetadataOp::RegisterNode {
                    node: NodeInfo {
                        address: "nowhere".into(),
                        ..node(1)
                    },
                },
            ),
            command("b", MetadataOp::RegisterNode { node: node(0) }),
            command(
                "c",
                MetadataOp::AcquireLease {
                    name: "".into(),
                    holder: "a".into(),
                    now_ms: 0,
                    duration_ms: 1,
                },
            ),
            command(
                "d",
                MetadataOp::AcquireLease {
                    name: "l".into(),
                    holder: "a".into(),
                    now_ms: 0,
                    duration_ms: 0,
                },
            ),
            command(
                "e",
                MetadataOp::SetPartitionMap {
                    map: map(&[(1, &[1, 1])]),
                },
            ),
            command(
                "f",
                MetadataOp::SetPartitionMap {
                    map: PartitionMap {
                        partitions: Vec::new(),
                    },
                },
            ),
        ];
        for command in bad {
            assert!(
                matches!(machine.apply(&command), Err(MetadataError::Invalid { .. })),
                "{command:?}"
            );
        }
        assert_eq!(machine.state(), &MetadataState::default());
        let missing = command(
            "g",
            MetadataOp::SetNodeState {
                node: NodeId(9),
                state: NodeState::Down,
            },
        );
        assert!(matches!(
            machine.apply(&missing),
            Err(MetadataError::NotFound { .. })
        ));
    }

    #[test]
    fn snapshots_restore_state_and_remembered_requests() {
        let mut machine = StateMachine::default();
        machine
            .apply(&command("a", MetadataOp::RegisterNode { node: node(1) }))
            .expect("register");
        machine
            .apply(&command(
                "b",
                MetadataOp::CreateKeyspace {
                    keyspace: KeyspaceConfig::default_keyspace(),
                },
            ))
            .expect("keyspace");
        let mut restored = StateMachine::restore(&machine.snapshot()).expect("restore");
        assert_eq!(restored, machine);
        // The restored machine still recognises a retry.
        assert_eq!(
            restored
                .apply(&command("a", MetadataOp::RegisterNode { node: node(1) }))
                .map(|o| o.version),
            Ok(1)
        );
        assert_eq!(restored.state().version, 2);
    }

    #[test]
    fn identical_keyspaces_are_idempotent_and_different_ones_conflict() {
        let mut machine = StateMachine::default();
        let keyspace = KeyspaceConfig::default_keyspace();
        machine
            .apply(&command(
                "a",
                MetadataOp::CreateKeyspace {
                    keyspace: keyspace.clone(),
                },
            ))
            .expect("create");
        assert_eq!(
            machine
                .apply(&command(
                    "b",
                    MetadataOp::CreateKeyspace {
                        keyspace: keyspace.clone()
                    }
                ))
                .map(|o| o.version),
            Ok(1)
        );
        let other = KeyspaceConfig {
            replication_factor: 5,
            ..keyspace
        };
        assert!(matches!(
            machine.apply(&command(
                "c",
                MetadataOp::CreateKeyspace { keyspace: other }
            )),
            Err(MetadataError::Conflict { .. })
        ));
    }
}
