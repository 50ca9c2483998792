//! The metadata service's replicated state machine.
//!
//! Every replica applies the same decided commands in the same order to a
//! [`StateMachine`] and so reaches the same state: `apply` is deterministic
//! (time comes inside commands) and free of I/O. A command whose request id was
//! applied before is not applied again; its first outcome is returned, so a
//! client that retries after a timeout cannot apply a command twice.

use kvorum_protocol::cluster::PartitionAssignment;
use kvorum_protocol::cluster::{NodeRole, NodeState, is_host_port};
use kvorum_protocol::metadata::{
    Lease, MetadataCommand, MetadataError, MetadataOp, MetadataOutcome, MetadataState, RequestId,
};
use kvorum_protocol::{KeyspaceConfig, NodeId, PartitionMap};
use serde::{Deserialize, Serialize};

use crate::requests::RememberedRequests;

mod requests;

pub use requests::{REMEMBERED_FOR_MS, REMEMBERED_REQUESTS};

/// The longest request id accepted.
pub const MAX_REQUEST_ID: usize = 128;

/// The state and the outcomes of recent requests, as one snapshot-able value.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateMachine {
    state: MetadataState,
    /// Flattened, so that snapshots keep the layout they had before the table
    /// had a module of its own.
    #[serde(flatten)]
    requests: RememberedRequests,
}

impl StateMachine {
    /// The current state.
    pub fn state(&self) -> &MetadataState {
        &self.state
    }

    /// Applies a decided command that carries no time, once per request id.
    pub fn apply(&mut self, command: &MetadataCommand) -> Result<MetadataOutcome, MetadataError> {
        self.apply_at(command, None)
    }

    /// Applies a decided command proposed at `at_ms` (when known), once per
    /// request id; ids remembered for longer than [`REMEMBERED_FOR_MS`] before
    /// it are forgotten.
    pub fn apply_at(
        &mut self,
        command: &MetadataCommand,
        at_ms: Option<u64>,
    ) -> Result<MetadataOutcome, MetadataError> {
        if let Some(at_ms) = at_ms {
            self.requests.forget_older_than(at_ms);
        }
        if let Some(earlier) = self.requests.outcome(&command.request_id) {
            return earlier.clone();
        }
        let outcome = self.apply_new(command, at_ms);
        // Taking or renewing a lease is idempotent (its time is in the log
        // entry), so its outcome need not be remembered: leases are most
        // of the log, and remembering them filled the table and the snapshot.
        if !matches!(command.op, MetadataOp::AcquireLease { .. }) {
            self.requests
                .remember(&command.request_id, &outcome, at_ms.unwrap_or(0));
        }
        outcome
    }

    /// The remembered outcome of a request id, if it was applied recently.
    pub fn outcome(&self, request: &RequestId) -> Option<&Result<MetadataOutcome, MetadataError>> {
        self.requests.outcome(request)
    }

    /// The encoding of the whole machine, for log compaction.
    pub fn snapshot(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("the state machine always encodes")
    }

    /// A machine restored from [`Self::snapshot`]'s encoding.
    pub fn restore(bytes: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(bytes)
    }

    /// Applies a command not applied before; `at_ms` is the time the log
    /// entry carries, when it carries one.
    fn apply_new(
        &mut self,
        command: &MetadataCommand,
        at_ms: Option<u64>,
    ) -> Result<MetadataOutcome, MetadataError> {
        validate(command)?;
        if let Some(expected) = command.expected_version
            && expected != self.state.version
        {
            return Err(conflict(format!(
                "expected version {expected}, but the state is at version {}",
                self.state.version
            )));
        }
        // A lease holder's command is refused once the lease changed hands
        // since it was granted: the author may still believe it holds it.
        if let Some(fence) = &command.fence {
            let current = self.state.leases.get(&fence.lease).map(|l| l.epoch);
            if current != Some(fence.epoch) {
                return Err(conflict(format!(
                    "the {} lease is at epoch {}, not {}: this command's author no longer holds it",
                    fence.lease,
                    current.map_or_else(|| "none".to_owned(), |e| e.to_string()),
                    fence.epoch
                )));
            }
        }
        let state = &mut self.state;
        let mut lease = None;
        let changed = match &command.op {
            MetadataOp::InitCluster {
                settings,
                context_key,
            } => match &state.cluster {
                Some(existing) if existing == settings => false,
                Some(existing) => {
                    return Err(conflict(format!(
                        "the cluster was initialised with {} partitions, replication factor {} and {} bootstrap nodes; its shape cannot change",
                        existing.partitions, existing.replication_factor, existing.bootstrap_nodes
                    )));
                }
                None => {
                    state.cluster = Some(*settings);
                    state.context_key.clone_from(context_key);
                    bootstrap_partition_map(state);
                    true
                }
            },
            MetadataOp::RegisterNode { node } => {
                let registered = match state.nodes.get(&node.id) {
                    Some(known) if known.state == NodeState::Decommissioned => {
                        return Err(conflict(format!(
                            "node {} was decommissioned and cannot rejoin under that id",
                            node.id
                        )));
                    }
                    // The cluster decides a known node's role (a standby may have been
                    // promoted) and its state (the failure detector's verdict): a node
                    // that restarts only updates its address.
                    // A known node on new or restored data is a new incarnation
                    // (invariant 6): it counts for nothing until it has caught up.
                    // Every such registration is a new incarnation, even one made
                    // while the last was still catching up: a report of the old
                    // process's catch-up, applied late, must not end this one's.
                    Some(known) => kvorum_protocol::NodeInfo {
                        role: known.role,
                        state: known.state,
                        incarnation: if node.catching_up {
                            known.incarnation + 1
                        } else {
                            known.incarnation
                        },
                        catching_up: known.catching_up || node.catching_up,
                        ..node.clone()
                    },
                    // A node the cluster never knew holds nothing anybody wrote:
                    // there is nothing to catch up with.
                    None => kvorum_protocol::NodeInfo {
                        state: NodeState::Up,
                        incarnation: 0,
                        catching_up: false,
                        ..node.clone()
                    },
                };
                let changed = state.nodes.get(&node.id) != Some(&registered);
                state.nodes.insert(node.id, registered);
                bootstrap_partition_map(state) || changed
            }
            MetadataOp::NodeCaughtUp { node, incarnation } => {
                let member = state
                    .nodes
                    .get_mut(node)
                    .ok_or_else(|| not_found(format!("no node {node}")))?;
                if member.incarnation != *incarnation {
                    return Err(conflict(format!(
                        "node {node} is at incarnation {}, not {incarnation}",
                        member.incarnation
                    )));
                }
                let changed = member.catching_up;
                member.catching_up = false;
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
            MetadataOp::SetNodeRole { node, role } => {
                let member = state
                    .nodes
                    .get(node)
                    .ok_or_else(|| not_found(format!("no node {node}")))?;
                if member.state == NodeState::Decommissioned {
                    return Err(conflict(format!("node {node} is decommissioned")));
                }
                let was = member.role;
                if *role == NodeRole::Leaving && was == NodeRole::Storage {
                    // Every partition has the cluster's RF replicas on distinct
                    // nodes: a drain that leaves fewer nodes could never finish.
                    let remaining = state
                        .nodes
                        .values()
                        .filter(|n| {
                            n.id != *node
                                && n.role == NodeRole::Storage
                                && n.state != NodeState::Decommissioned
                        })
                        .count();
                    let needed = state.cluster.map_or(0, |c| c.replication_factor);
                    if remaining < needed {
                        return Err(conflict(format!(
                            "decommissioning node {node} would leave {remaining} storage nodes, fewer than the replication factor {needed}"
                        )));
                    }
                }
                let member = state
                    .nodes
                    .get_mut(node)
                    .ok_or_else(|| not_found(format!("no node {node}")))?;
                let changed = was != *role;
                member.role = *role;
                changed
            }
            MetadataOp::CreateKeyspace { keyspace } => {
                let Some(settings) = &state.cluster else {
                    return Err(conflict("the cluster is not initialised yet"));
                };
                keyspace
                    .validate(settings.replication_factor)
                    .map_err(|e| invalid(e.to_string()))?;
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
                if let Some(unknown) = map
                    .partitions
                    .iter()
                    .flat_map(|p| {
                        p.replicas
                            .iter()
                            .chain(p.pending.iter().map(|r| &r.joining))
                    })
                    .find(|id| !state.nodes.contains_key(id))
                {
                    return Err(invalid(format!(
                        "the map names node {unknown}, which never registered"
                    )));
                }
                let changed = state.partition_map.as_ref() != Some(map);
                state.partition_map = Some(map.clone());
                changed
            }
            MetadataOp::SetAssignment { assignment } => {
                let Some(map) = state.partition_map.as_mut() else {
                    return Err(conflict("the cluster has no partition map yet"));
                };
                let Some(current) = map.partitions.get(assignment.id.0 as usize) else {
                    return Err(not_found(format!("no partition {}", assignment.id)));
                };
                let next = kvorum_protocol::Epoch(current.epoch.0 + 1);
                if assignment.epoch != next {
                    return Err(conflict(format!(
                        "partition {} is at epoch {}; a change needs epoch {next}, not {}",
                        assignment.id, current.epoch, assignment.epoch
                    )));
                }
                if let Some(unknown) = assignment
                    .replicas
                    .iter()
                    .chain(assignment.pending.iter().map(|r| &r.joining))
                    .find(|id| !state.nodes.contains_key(id))
                {
                    return Err(invalid(format!(
                        "the assignment names node {unknown}, which never registered"
                    )));
                }
                map.partitions[assignment.id.0 as usize] = assignment.clone();
                true
            }
            MetadataOp::AcquireLease {
                name,
                holder,
                now_ms,
                duration_ms,
            } => {
                // Expiries compare on one clock: the proposing replica's, which
                // the log entry carries; the requester's own time counts only
                // in entries logged before entries carried one.
                let now_ms = &at_ms.unwrap_or(*now_ms);
                if let Some(held) = state.leases.get(name)
                    && held.holder != *holder
                    && held.expires_at_ms > *now_ms
                {
                    return Err(conflict(format!(
                        "lease {name} is held by {} until {} ms",
                        held.holder, held.expires_at_ms
                    )));
                }
                // Never earlier for the same holder: lease commands are not
                // deduplicated, so an old renewal applied late must not shorten
                // the lease its holder was granted since.
                let expires_at_ms = now_ms.saturating_add(*duration_ms).max(
                    state
                        .leases
                        .get(name)
                        .filter(|held| held.holder == *holder)
                        .map_or(0, |held| held.expires_at_ms),
                );
                // A renewal by the holder changes no version: followers rebuild
                // their views on a version change, and renewals come every second.
                let new_holder = state
                    .leases
                    .get(name)
                    .is_none_or(|held| held.holder != *holder);
                // The fencing token grows whenever the lease changes hands.
                let epoch =
                    state.leases.get(name).map_or(0, |held| held.epoch) + u64::from(new_holder);
                let granted = Lease {
                    holder: holder.clone(),
                    expires_at_ms,
                    epoch,
                };
                state.leases.insert(name.clone(), granted.clone());
                lease = Some(granted);
                new_holder
            }
            MetadataOp::ReleaseLease { name, holder } => match state.leases.get_mut(name) {
                // Lapsed at once, but kept: its epoch must keep growing.
                Some(held) if held.holder == *holder && held.expires_at_ms > 0 => {
                    held.expires_at_ms = 0;
                    true
                }
                Some(held) if held.holder == *holder => false,
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

/// Makes the bootstrap partition map once the cluster is initialised and enough
/// storage nodes have registered, along with the `default` keyspace; says whether it did.
fn bootstrap_partition_map(state: &mut MetadataState) -> bool {
    let Some(settings) = state.cluster else {
        return false;
    };
    if state.partition_map.is_some() {
        return false;
    }
    let storage: Vec<NodeId> = state
        .nodes
        .values()
        .filter(|n| n.role == NodeRole::Storage && n.state != NodeState::Decommissioned)
        .map(|n| n.id)
        .collect();
    if storage.len() < settings.bootstrap_nodes {
        return false;
    }
    let mut map = kvorum_placement::initial_partition_map(
        settings.partitions,
        &storage,
        settings.replication_factor,
    );
    kvorum_placement::balance(&mut map, &storage);
    state.partition_map = Some(map);
    let default = KeyspaceConfig::default_keyspace(settings.replication_factor);
    state
        .keyspaces
        .entry(default.name.to_string())
        .or_insert(default);
    true
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
        MetadataOp::InitCluster {
            settings,
            context_key,
        } => {
            settings.validate().map_err(|e| invalid(e.to_string()))?;
            if context_key
                .as_ref()
                .is_some_and(|k| k.len() != 64 || !k.bytes().all(|b| b.is_ascii_hexdigit()))
            {
                return Err(invalid("context_key must be 64 hex digits"));
            }
        }
        MetadataOp::RegisterNode { node } => {
            if node.id.0 == 0 {
                return Err(invalid("node ids start at 1"));
            }
            if !is_host_port(&node.address) {
                return Err(invalid(format!(
                    "node address {:?} is not host:port",
                    node.address
                )));
            }
        }
        MetadataOp::SetNodeState { .. }
        | MetadataOp::SetNodeRole { .. }
        | MetadataOp::NodeCaughtUp { .. } => {}
        MetadataOp::CreateKeyspace { .. } => {}
        MetadataOp::SetPartitionMap { map } => validate_map(map)?,
        MetadataOp::SetAssignment { assignment } => validate_assignment(assignment)?,
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

fn validate_map(map: &PartitionMap) -> Result<(), MetadataError> {
    for (index, assignment) in map.partitions.iter().enumerate() {
        if assignment.id.0 as usize != index {
            return Err(invalid(format!(
                "partition at position {index} has id {}",
                assignment.id
            )));
        }
        validate_assignment(assignment)?;
    }
    if map.partitions.is_empty() {
        return Err(invalid("a partition map has at least one partition"));
    }
    Ok(())
}

fn validate_assignment(assignment: &PartitionAssignment) -> Result<(), MetadataError> {
    let mut replicas = assignment.replicas.clone();
    replicas.sort();
    replicas.dedup();
    if replicas.is_empty() || replicas.len() != assignment.replicas.len() {
        return Err(invalid(format!(
            "partition {} needs distinct replicas",
            assignment.id
        )));
    }
    for replacement in &assignment.pending {
        if !assignment.replicas.contains(&replacement.leaving)
            || assignment.replicas.contains(&replacement.joining)
        {
            return Err(invalid(format!(
                "partition {}: a replacement must take a replica's place with a node outside the set",
                assignment.id
            )));
        }
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
        let unchanged = old.replicas == new.replicas && old.pending == new.pending;
        let expected = if unchanged {
            old.epoch
        } else {
            kvorum_protocol::Epoch(old.epoch.0 + 1)
        };
        if new.epoch != expected {
            return Err(conflict(format!(
                "partition {} is at epoch {}; a {} needs epoch {}, not {}",
                old.id,
                old.epoch,
                if unchanged {
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
    use kvorum_protocol::{ClusterSettings, Epoch, NodeInfo, PartitionId};

    use super::*;

    fn command(id: &str, op: MetadataOp) -> MetadataCommand {
        MetadataCommand {
            request_id: RequestId(id.to_owned()),
            expected_version: None,
            fence: None,
            op,
        }
    }

    /// Lease `l` asked for by `holder` at `now_ms`, lasting 10 ms.
    fn acquire(id: &str, holder: &str, now_ms: u64) -> MetadataCommand {
        command(
            id,
            MetadataOp::AcquireLease {
                name: "l".into(),
                holder: holder.into(),
                now_ms,
                duration_ms: 10,
            },
        )
    }

    fn node(id: u64) -> NodeInfo {
        NodeInfo::registering(
            NodeId(id),
            format!("127.0.0.1:{}", 7000 + id),
            NodeRole::Storage,
            false,
        )
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
                    pending: Vec::new(),
                })
                .collect(),
        }
    }

    #[test]
    fn a_retried_command_applies_once() {
        let mut machine = StateMachine::default();
        let create = command(
            "r1",
            MetadataOp::RegisterNode {
                node: NodeInfo {
                    catching_up: true,
                    ..node(1)
                },
            },
        );
        machine.apply(&create).expect("register");
        let first = machine.apply(&create);
        let retried = machine.apply(&create);
        assert_eq!(first, retried, "the retry returns the first outcome");
        assert_eq!(machine.state().version, 1);
        assert_eq!(machine.state().nodes[&NodeId(1)].incarnation, 0);
    }

    #[test]
    fn a_command_fenced_by_a_lease_that_changed_hands_is_refused() {
        let mut machine = StateMachine::default();
        let take = acquire;
        let first = machine.apply(&take("a", "a", 0)).expect("taken");
        assert_eq!(first.lease.map(|l| l.epoch), Some(1));
        machine.apply(&take("a2", "a", 5)).expect("renewed");
        assert_eq!(
            machine.state().leases["l"].epoch,
            1,
            "a renewal keeps the epoch"
        );
        let fenced = |id: &str, epoch| MetadataCommand {
            fence: Some(kvorum_protocol::metadata::LeaseFence {
                lease: "l".into(),
                epoch,
            }),
            ..command(id, MetadataOp::RegisterNode { node: node(1) })
        };
        machine
            .apply(&fenced("r1", 1))
            .expect("the holder's command");
        // b takes the lapsed lease: a's commands are refused from then on.
        let second = machine.apply(&take("b", "b", 20)).expect("taken");
        assert_eq!(second.lease.map(|l| l.epoch), Some(2));
        let version = machine.state().version;
        assert!(matches!(
            machine.apply(&fenced("r2", 1)),
            Err(MetadataError::Conflict { .. })
        ));
        assert_eq!(machine.state().version, version, "nothing changed");
        machine.apply(&fenced("r3", 2)).expect("b's command");
        // Released and taken again by another: the epoch still grows.
        machine
            .apply(&command(
                "rel",
                MetadataOp::ReleaseLease {
                    name: "l".into(),
                    holder: "b".into(),
                },
            ))
            .expect("released");
        let third = machine.apply(&take("c", "c", 21)).expect("taken");
        assert_eq!(third.lease.map(|l| l.epoch), Some(3));
    }

    #[test]
    fn lease_renewals_move_no_version_and_a_late_old_one_shortens_nothing() {
        let mut machine = StateMachine::default();
        let lease = acquire;
        machine.apply(&lease("a0", "a", 0)).expect("taken");
        assert_eq!(machine.state().version, 1, "a new holder is a change");
        machine.apply(&lease("a5", "a", 5)).expect("renewed");
        assert_eq!(machine.state().version, 1, "a renewal is not");
        assert_eq!(machine.state().leases["l"].expires_at_ms, 15);
        // The first command, retried and applied again late: it is not
        // deduplicated, and must not take the lease back to 10.
        machine.apply(&lease("a0", "a", 0)).expect("renewed");
        assert_eq!(machine.state().leases["l"].expires_at_ms, 15);
        assert!(machine.apply(&lease("b", "b", 12)).is_err(), "still held");
        machine.apply(&lease("b", "b", 15)).expect("lapsed, taken");
        assert_eq!(machine.state().version, 2);
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
        for id in 1..=5 {
            machine
                .apply(&command(
                    &format!("r{id}"),
                    MetadataOp::RegisterNode { node: node(id) },
                ))
                .expect("register");
        }
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
    fn a_stamped_entry_compares_leases_on_its_stamp_not_the_requesters_clock() {
        let mut machine = StateMachine::default();
        machine
            .apply_at(&acquire("a1", "a", 0), Some(1_000))
            .expect("a takes it");
        // b's own clock says a's lease lapsed long ago; the proposer's says not yet.
        let early = machine.apply_at(&acquire("b1", "b", 1_000_000), Some(1_005));
        assert!(early.is_err(), "{early:?}");
        // a's clock says it is far in the past; its renewal still extends its lease.
        let renewed = machine
            .apply_at(&acquire("a2", "a", 0), Some(1_008))
            .expect("a renews");
        assert_eq!(renewed.lease.expect("lease").expires_at_ms, 1_018);
        let later = machine.apply_at(&acquire("b2", "b", 0), Some(1_019));
        assert!(later.is_ok(), "lapsed by the proposer's clock: {later:?}");
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

    fn init(partitions: u32, replication_factor: usize, bootstrap_nodes: usize) -> MetadataOp {
        MetadataOp::InitCluster {
            settings: ClusterSettings {
                partitions,
                replication_factor,
                bootstrap_nodes,
            },
            context_key: None,
        }
    }

    fn orders(replication_factor: usize) -> KeyspaceConfig {
        KeyspaceConfig {
            name: kvorum_protocol::KeyspaceName::parse("orders").expect("name"),
            ..KeyspaceConfig::default_keyspace(replication_factor)
        }
    }

    #[test]
    fn a_known_node_on_new_data_is_a_new_incarnation_until_it_caught_up() {
        let mut machine = StateMachine::default();
        let fresh = |id| NodeInfo {
            catching_up: true,
            ..node(id)
        };
        // A node the cluster never knew has nothing to catch up with.
        machine
            .apply(&command("a", MetadataOp::RegisterNode { node: fresh(1) }))
            .expect("register");
        let first = machine.state().nodes[&NodeId(1)].clone();
        assert_eq!((first.incarnation, first.catching_up), (0, false));
        assert!(first.counts());
        // Known, and back on new or restored data: incarnation 1, counted by nothing.
        machine
            .apply(&command("b", MetadataOp::RegisterNode { node: fresh(1) }))
            .expect("re-register");
        let again = machine.state().nodes[&NodeId(1)].clone();
        assert_eq!((again.incarnation, again.catching_up), (1, true));
        assert!(!again.counts());
        // Registering again mid catch-up (a crash, or another lost disk) is the
        // next incarnation; a registration that claims its own data while the
        // cluster says otherwise changes neither.
        for (id, node, incarnation) in [("c", fresh(1), 2), ("d", node(1), 2)] {
            machine
                .apply(&command(id, MetadataOp::RegisterNode { node }))
                .expect("register");
            let still = &machine.state().nodes[&NodeId(1)];
            assert_eq!(
                (still.incarnation, still.catching_up),
                (incarnation, true),
                "{id}"
            );
        }
        // The detector's verdicts do not end the catch-up.
        machine
            .apply(&command(
                "e",
                MetadataOp::SetNodeState {
                    node: NodeId(1),
                    state: NodeState::Up,
                },
            ))
            .expect("up");
        assert!(machine.state().nodes[&NodeId(1)].catching_up);
        // A stale incarnation's report is refused and changes nothing.
        let version = machine.state().version;
        assert!(matches!(
            machine.apply(&command(
                "f",
                MetadataOp::NodeCaughtUp {
                    node: NodeId(1),
                    incarnation: 1
                }
            )),
            Err(MetadataError::Conflict { .. })
        ));
        assert_eq!(machine.state().version, version);
        assert!(matches!(
            machine.apply(&command(
                "g",
                MetadataOp::NodeCaughtUp {
                    node: NodeId(7),
                    incarnation: 1
                }
            )),
            Err(MetadataError::NotFound { .. })
        ));
        machine
            .apply(&command(
                "h",
                MetadataOp::NodeCaughtUp {
                    node: NodeId(1),
                    incarnation: 2,
                },
            ))
            .expect("caught up");
        let caught_up = &machine.state().nodes[&NodeId(1)];
        assert_eq!((caught_up.incarnation, caught_up.catching_up), (2, false));
        assert!(caught_up.counts());
        // The next loss of data is the next incarnation.
        machine
            .apply(&command("i", MetadataOp::RegisterNode { node: fresh(1) }))
            .expect("re-register");
        assert_eq!(machine.state().nodes[&NodeId(1)].incarnation, 3);
    }

    #[test]
    fn each_incarnation_issues_dots_above_every_earlier_one() {
        use kvorum_protocol::cluster::{INCARNATION_DOT_BITS, dot_floor};
        assert_eq!(dot_floor(0), 0);
        for incarnation in 0..64 {
            let range_end = (incarnation + 1) << INCARNATION_DOT_BITS;
            assert_eq!(dot_floor(incarnation + 1), range_end);
        }
        // Client tokens carry counters up to 2^53: thousands of incarnations fit.
        assert!(dot_floor(8191) < 1 << 53);
    }

    #[test]
    fn snapshots_restore_state_and_remembered_requests() {
        let mut machine = StateMachine::default();
        machine.apply(&command("i", init(8, 1, 1))).expect("init");
        machine
            .apply(&command("a", MetadataOp::RegisterNode { node: node(1) }))
            .expect("register");
        machine
            .apply(&command(
                "b",
                MetadataOp::CreateKeyspace {
                    keyspace: orders(1),
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
            Ok(2)
        );
        assert_eq!(restored.state().version, 3);
    }

    #[test]
    fn the_map_and_the_default_keyspace_appear_once_enough_storage_nodes_registered() {
        let mut machine = StateMachine::default();
        machine.apply(&command("i", init(16, 3, 4))).expect("init");
        let standby = NodeInfo {
            role: NodeRole::Standby,
            ..node(9)
        };
        machine
            .apply(&command("s", MetadataOp::RegisterNode { node: standby }))
            .expect("standby");
        for id in 1..=3 {
            machine
                .apply(&command(
                    &format!("r{id}"),
                    MetadataOp::RegisterNode { node: node(id) },
                ))
                .expect("register");
            assert!(
                machine.state().partition_map.is_none(),
                "{id} storage nodes (and a standby) are not yet the 4 bootstrap nodes"
            );
            assert!(machine.state().keyspaces.is_empty());
        }
        machine
            .apply(&command("r4", MetadataOp::RegisterNode { node: node(4) }))
            .expect("register");
        let map = machine.state().partition_map.clone().expect("bootstrapped");
        // Rendezvous placement, then evened out.
        let ids = [NodeId(1), NodeId(2), NodeId(3), NodeId(4)];
        let mut expected = kvorum_placement::initial_partition_map(16, &ids, 3);
        kvorum_placement::balance(&mut expected, &ids);
        assert_eq!(map, expected);
        assert_eq!(
            machine.state().keyspaces.get("default"),
            Some(&KeyspaceConfig::default_keyspace(3))
        );
        // A later node joins without reshaping the map: moving partitions is recovery's job.
        machine
            .apply(&command("r5", MetadataOp::RegisterNode { node: node(5) }))
            .expect("register");
        assert_eq!(machine.state().partition_map.as_ref(), Some(&map));
    }

    #[test]
    fn nodes_registered_before_init_bootstrap_the_map_when_it_comes() {
        let mut machine = StateMachine::default();
        for id in 1..=3 {
            machine
                .apply(&command(
                    &format!("r{id}"),
                    MetadataOp::RegisterNode { node: node(id) },
                ))
                .expect("register");
        }
        assert!(machine.state().partition_map.is_none());
        machine.apply(&command("i", init(4, 3, 3))).expect("init");
        assert_eq!(
            machine
                .state()
                .partition_map
                .as_ref()
                .map(|m| m.partitions.len()),
            Some(4)
        );
    }

    #[test]
    fn the_cluster_shape_is_set_once() {
        let mut machine = StateMachine::default();
        machine.apply(&command("a", init(8, 3, 3))).expect("init");
        assert_eq!(
            machine
                .apply(&command("b", init(8, 3, 3)))
                .map(|o| o.version),
            Ok(1)
        );
        assert!(matches!(
            machine.apply(&command("c", init(16, 3, 3))),
            Err(MetadataError::Conflict { .. })
        ));
        assert!(matches!(
            machine.apply(&command("d", init(8, 3, 2))),
            Err(MetadataError::Invalid { .. })
        ));
        assert_eq!(machine.state().cluster.map(|c| c.partitions), Some(8));
    }

    #[test]
    fn a_returning_node_updates_its_address_and_keeps_its_role_and_state() {
        let mut machine = StateMachine::default();
        let standby = NodeInfo {
            role: NodeRole::Standby,
            ..node(1)
        };
        machine
            .apply(&command("a", MetadataOp::RegisterNode { node: standby }))
            .expect("register");
        let promoted = NodeInfo {
            role: NodeRole::Storage,
            state: NodeState::Down,
            ..node(1)
        };
        // The cluster promoted it while it was down (the recovery controller's doing).
        machine.state.nodes.insert(NodeId(1), promoted);
        let moved = NodeInfo {
            address: "storage-1.kvorum:7001".into(),
            role: NodeRole::Standby,
            ..node(1)
        };
        machine
            .apply(&command("b", MetadataOp::RegisterNode { node: moved }))
            .expect("re-register");
        let known = &machine.state().nodes[&NodeId(1)];
        assert_eq!(known.address, "storage-1.kvorum:7001");
        assert_eq!(known.role, NodeRole::Storage);
        assert_eq!(
            known.state,
            NodeState::Down,
            "the detector, not the node, says when it is up"
        );
        machine
            .apply(&command(
                "c",
                MetadataOp::SetNodeState {
                    node: NodeId(1),
                    state: NodeState::Decommissioned,
                },
            ))
            .expect("decommission");
        assert!(matches!(
            machine.apply(&command("d", MetadataOp::RegisterNode { node: node(1) })),
            Err(MetadataError::Conflict { .. })
        ));
    }

    #[test]
    fn keyspaces_are_checked_against_the_cluster() {
        let mut machine = StateMachine::default();
        let create = |id: &str, keyspace| command(id, MetadataOp::CreateKeyspace { keyspace });
        assert!(matches!(
            machine.apply(&create("a", orders(3))),
            Err(MetadataError::Conflict { .. })
        ));
        machine.apply(&command("i", init(8, 3, 3))).expect("init");
        assert!(matches!(
            machine.apply(&create("b", orders(5))),
            Err(MetadataError::Invalid { message }) if message.contains("cluster's 3")
        ));
        assert!(machine.state().keyspaces.is_empty());
    }

    #[test]
    fn maps_may_name_only_registered_nodes() {
        let mut machine = StateMachine::default();
        machine
            .apply(&command("a", MetadataOp::RegisterNode { node: node(1) }))
            .expect("register");
        assert!(matches!(
            machine.apply(&command(
                "b",
                MetadataOp::SetPartitionMap {
                    map: map(&[(1, &[1, 7])])
                }
            )),
            Err(MetadataError::Invalid { message }) if message.contains("node 7")
        ));
    }

    #[test]
    fn identical_keyspaces_are_idempotent_and_different_ones_conflict() {
        let mut machine = StateMachine::default();
        machine.apply(&command("i", init(8, 3, 3))).expect("init");
        let keyspace = orders(3);
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
            Ok(2)
        );
        let other = KeyspaceConfig {
            replication_factor: 1,
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

    #[test]
    fn one_partition_changes_alone_with_its_next_epoch() {
        let mut machine = StateMachine::default();
        for id in 1..=4 {
            machine
                .apply(&command(
                    &format!("r{id}"),
                    MetadataOp::RegisterNode { node: node(id) },
                ))
                .expect("register");
        }
        machine
            .apply(&command(
                "m",
                MetadataOp::SetPartitionMap {
                    map: map(&[(1, &[1, 2, 3]), (1, &[1, 2, 3])]),
                },
            ))
            .expect("map");
        let joining = PartitionAssignment {
            id: PartitionId(1),
            epoch: Epoch(2),
            replicas: vec![NodeId(1), NodeId(2), NodeId(3)],
            pending: vec![kvorum_protocol::cluster::Replacement {
                leaving: NodeId(3),
                joining: NodeId(4),
            }],
        };
        let set = |id: &str, assignment: &PartitionAssignment| {
            command(
                id,
                MetadataOp::SetAssignment {
                    assignment: assignment.clone(),
                },
            )
        };
        machine.apply(&set("a", &joining)).expect("next epoch");
        // The same change again is a stale writer; a skipped epoch too.
        let stale = PartitionAssignment {
            id: PartitionId(1),
            ..joining.clone()
        };
        assert!(matches!(
            machine.apply(&set("b", &stale)),
            Err(MetadataError::Conflict { .. })
        ));
        let bad = PartitionAssignment {
            epoch: Epoch(3),
            pending: vec![kvorum_protocol::cluster::Replacement {
                leaving: NodeId(9),
                joining: NodeId(4),
            }],
            ..joining.clone()
        };
        assert!(matches!(
            machine.apply(&set("c", &bad)),
            Err(MetadataError::Invalid { .. })
        ));
        let map = machine.state().partition_map.clone().expect("map");
        assert_eq!(
            map.partitions[0].epoch,
            Epoch(1),
            "the other partition is untouched"
        );
        assert_eq!(map.partitions[1], joining);
    }

    #[test]
    fn a_standby_is_promoted_but_a_decommissioned_node_is_not() {
        let mut machine = StateMachine::default();
        let standby = NodeInfo {
            role: NodeRole::Standby,
            ..node(6)
        };
        machine
            .apply(&command("a", MetadataOp::RegisterNode { node: standby }))
            .expect("register");
        let promote = |id: &str, node: u64| {
            command(
                id,
                MetadataOp::SetNodeRole {
                    node: NodeId(node),
                    role: NodeRole::Storage,
                },
            )
        };
        machine.apply(&promote("b", 6)).expect("promote");
        assert_eq!(machine.state().nodes[&NodeId(6)].role, NodeRole::Storage);
        assert!(matches!(
            machine.apply(&promote("c", 7)),
            Err(MetadataError::NotFound { .. })
        ));
        machine
            .apply(&command(
                "d",
                MetadataOp::SetNodeState {
                    node: NodeId(6),
                    state: NodeState::Decommissioned,
                },
            ))
            .expect("decommission");
        assert!(matches!(
            machine.apply(&promote("e", 6)),
            Err(MetadataError::Conflict { .. })
        ));
    }
}
