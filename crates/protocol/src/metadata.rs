//! The metadata service's replicated state machine: its commands, their outcomes and its state.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::cluster::{ClusterSettings, NodeInfo, NodeState, PartitionMap};
use crate::ids::NodeId;
use crate::keyspace::KeyspaceConfig;

/// A client-chosen id that makes a retried command apply once (1..=128 characters).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct RequestId(pub String);

/// One command, as clients submit it and the log records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetadataCommand {
    /// Makes retries idempotent.
    pub request_id: RequestId,
    /// Apply only if the state is at exactly this version (optimistic concurrency).
    #[serde(default)]
    pub expected_version: Option<u64>,
    /// Apply only if the named lease is still held in this epoch: a lease
    /// holder's commands carry it, so one that lost its lease is refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fence: Option<LeaseFence>,
    /// What to do.
    pub op: MetadataOp,
}

/// A fencing token: the lease a command's author holds, and in which epoch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LeaseFence {
    /// The lease, such as `recovery-controller`.
    pub lease: String,
    /// Its epoch when it was granted to the author.
    pub epoch: u64,
}

/// The operations of the metadata state machine.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum MetadataOp {
    /// Fixes the cluster's shape, once (idempotent for identical settings).
    InitCluster {
        /// The settings.
        settings: ClusterSettings,
        /// A fresh random secret for signing causal contexts (64 hex digits);
        /// kept only by the command that initialises the cluster.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        context_key: Option<String>,
    },
    /// Adds a node (up), or updates the address of a known one, which keeps the
    /// role and the state the cluster gave it. A known node that registers with
    /// `catching_up` (new or restored data) becomes a new incarnation that counts
    /// for nothing until [`MetadataOp::NodeCaughtUp`].
    RegisterNode {
        /// The node.
        node: NodeInfo,
    },
    /// Ends a new incarnation's catch-up: the node holds every partition it
    /// replicates as a read quorum of its peers held it, and counts again.
    NodeCaughtUp {
        /// The node.
        node: NodeId,
        /// The incarnation that caught up (a stale one is refused).
        incarnation: u64,
    },
    /// Records a node's health as the failure detector sees it.
    SetNodeState {
        /// The node.
        node: NodeId,
        /// Its state.
        state: NodeState,
    },
    /// Changes a node's role: the recovery controller promotes a standby.
    SetNodeRole {
        /// The node.
        node: NodeId,
        /// Its new role.
        role: crate::cluster::NodeRole,
    },
    /// Creates a keyspace (idempotent for an identical one).
    CreateKeyspace {
        /// Its settings.
        keyspace: KeyspaceConfig,
    },
    /// Installs a partition map: at bootstrap any; later only one whose changed
    /// partitions carry exactly the next epoch and whose unchanged ones keep theirs.
    SetPartitionMap {
        /// The map.
        map: PartitionMap,
    },
    /// Replaces one partition's assignment; it must carry exactly the next epoch,
    /// so that moves of different partitions do not conflict with each other.
    SetAssignment {
        /// The partition's new assignment.
        assignment: crate::cluster::PartitionAssignment,
    },
    /// Takes or renews a named lease.
    AcquireLease {
        /// The lease, such as `recovery-controller`.
        name: String,
        /// Who wants it.
        holder: String,
        /// The requester's clock, in milliseconds. Expiries compare on the
        /// clock of the metad replica that proposed the request, which its log
        /// entry carries (`LogCommand::Stamped`); this value counts only for
        /// entries logged before entries carried a time.
        now_ms: u64,
        /// How long the lease lasts.
        duration_ms: u64,
    },
    /// Gives a lease back.
    ReleaseLease {
        /// The lease.
        name: String,
        /// Who holds it.
        holder: String,
    },
}

/// A held lease.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    /// Who holds it.
    pub holder: String,
    /// When it lapses, on the holder's proposer's clock.
    pub expires_at_ms: u64,
    /// Grows by one each time the lease changes hands: the fencing token its
    /// holder's commands carry ([`LeaseFence`]).
    #[serde(default)]
    pub epoch: u64,
}

/// What an applied command did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MetadataOutcome {
    /// The state's version after the command.
    pub version: u64,
    /// For lease commands: the lease as it now stands.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease: Option<Lease>,
}

/// Why a command was refused; a refused command changes nothing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum MetadataError {
    /// The command is malformed (400).
    #[error("invalid command: {message}")]
    Invalid {
        /// What is wrong.
        message: String,
    },
    /// It names something that does not exist (404).
    #[error("{message}")]
    NotFound {
        /// What is missing.
        message: String,
    },
    /// A stale writer, a version mismatch, or a lease someone else holds (409).
    #[error("{message}")]
    Conflict {
        /// What conflicts.
        message: String,
    },
}

/// The whole replicated state.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MetadataState {
    /// Grows by one with every command that changes something.
    pub version: u64,
    /// The cluster's shape, once initialised.
    #[serde(default)]
    pub cluster: Option<ClusterSettings>,
    /// Members, by id.
    pub nodes: BTreeMap<NodeId, NodeInfo>,
    /// The partition map, made once enough storage nodes registered.
    pub partition_map: Option<PartitionMap>,
    /// Keyspaces, by name.
    pub keyspaces: BTreeMap<String, KeyspaceConfig>,
    /// Leases, by name.
    pub leases: BTreeMap<String, Lease>,
    /// The secret routers sign causal context tokens with (64 hex digits), set
    /// once at bootstrap; absent in clusters bootstrapped before it existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context_key: Option<String>,
}

/// What the metadata service's replicated log holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogCommand {
    /// A client command, applied by every replica (as logged before commands
    /// carried the time they were proposed at).
    Apply(MetadataCommand),
    /// A client command and the proposing replica's wall clock when it
    /// proposed it, in milliseconds: the one clock the request-id table ages by.
    Stamped {
        /// The command.
        command: MetadataCommand,
        /// When it was proposed.
        at_ms: u64,
    },
    /// A read barrier: once it is applied, the replica has every command decided
    /// before the read began, so its state can be read linearizably.
    Barrier(u64),
}

/// One metadata replica's own view (`GET /v1/status`), not linearizable.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MetadStatus {
    /// This replica.
    pub id: u64,
    /// The leader it believes in.
    pub leader: Option<u64>,
    /// Whether it leads.
    pub is_leader: bool,
    /// Its first undecided log slot.
    pub decided_upto: u64,
    /// Its state's version.
    pub version: u64,
    /// A hash of its whole state, to compare replicas.
    pub state_digest: u64,
    /// The size of its latest snapshot (the compacted log), in bytes.
    #[serde(default)]
    pub snapshot_bytes: u64,
    /// Whether it leads, or heard its leader within an election timeout.
    #[serde(default)]
    pub hears_leader: bool,
    /// The last failure to deliver messages to a peer (catch-up included), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_peer_error: Option<String>,
    /// Every replica of the group (this one included): id and address.
    #[serde(default)]
    pub peers: BTreeMap<u64, String>,
    /// The highest ballot round this replica has seen: every election raises
    /// it, so an unchanged round across replicas means no election happened.
    #[serde(default)]
    pub ballot_round: u64,
    /// This life of the replica's store: a replica that lost its disk comes
    /// back in a new one.
    #[serde(default)]
    pub incarnation: u64,
    /// Whether the membership names this replica in this life; a replica
    /// that lost its disk is not a member until `metad replace` makes it one.
    #[serde(default)]
    pub member: bool,
}

/// The metadata group's members (`GET /v1/members`), as one replica knows them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MembersView {
    /// Every member: id, life of its store, address.
    pub members: Vec<crate::paxos::Member>,
    /// The leader this replica knows.
    pub leader: Option<u64>,
    /// The slot of a membership change proposed and not yet decided.
    pub pending_change: Option<u64>,
}

/// `POST /v1/members`: add the replica serving at `address` (started with an
/// empty store and `--id id`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddMember {
    /// The new replica's id.
    pub id: u64,
    /// Where it serves (`host:port`).
    pub address: String,
}

/// `POST /v1/members/{id}/replace`: the replica at `address` (by default the
/// member's own) lost its store and is to take the member's place in its new life.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplaceMember {
    /// Where the replacement serves, if it moved.
    #[serde(default)]
    pub address: Option<String>,
}
