//! Multi-Paxos wire types: ballots, slots, log entries, snapshots and the messages
//! metadata-service replicas exchange (driven by the `kvorum-consensus` core).

use serde::{Deserialize, Serialize};
use serde_with::base64::Base64;
use serde_with::{PickFirst, Same, serde_as};

/// Bytes as base64 on the wire, and read back from base64 or from the array of
/// numbers that acceptor stores written before kept.
type CompactBytes = PickFirst<(Base64, Same)>;

/// A replica's identity within its consensus group.
pub type NodeId = u64;

/// A position in the replicated log.
pub type Slot = u64;

/// A ballot (proposal number): rounds ordered first, then the proposer's id, so
/// no two proposers ever use the same ballot.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct Ballot {
    /// Grows with every election.
    pub round: u64,
    /// The proposer that owns the ballot.
    pub node: NodeId,
}

/// One member of the consensus group: which replica, which life of its disk, and where.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Member {
    /// The replica's id, stable across restarts and replacements.
    pub id: NodeId,
    /// Drawn at random when the replica's store was created: a replica that
    /// lost its disk comes back with another, so nobody mistakes it for the
    /// replica whose promises it forgot.
    pub incarnation: u64,
    /// Where peers reach it (`host:port`).
    pub address: String,
}

impl Member {
    /// The same replica in the same life.
    pub fn same_life(&self, id: NodeId, incarnation: u64) -> bool {
        self.id == id && self.incarnation == incarnation
    }
}

/// The application's state as of a slot, standing in for the log before it.
#[serde_as]
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Snapshot {
    /// The snapshot covers every slot below this one.
    pub upto: Slot,
    /// The application's encoding of its state after applying those slots.
    #[serde_as(as = "CompactBytes")]
    pub data: Vec<u8>,
    /// The group's members as of `upto` (none in snapshots written before
    /// membership could change: the founding members).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub members: Option<Vec<Member>>,
    /// Lives that membership changes before `upto` removed or replaced:
    /// messages from them are dropped.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub retired: Vec<Member>,
}

/// A value of the log.
#[serde_as]
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Entry {
    /// Fills a slot a new leader found empty, so that later slots can be applied.
    Noop,
    /// An application command, opaque to consensus.
    Command(#[serde_as(as = "CompactBytes")] Vec<u8>),
    /// The group's members from the next slot on (a membership change).
    Members(Vec<Member>),
}

impl Entry {
    /// About how many bytes the entry takes in a message, for byte budgets.
    pub fn wire_bytes(&self) -> usize {
        match self {
            Entry::Noop => 8,
            Entry::Command(bytes) => bytes.len() / 3 * 4 + 32,
            Entry::Members(members) => members.iter().map(|m| m.address.len() + 64).sum(),
        }
    }
}

/// What an acceptor accepted for a slot, and in which ballot.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Accepted {
    /// The ballot of the acceptance.
    pub ballot: Ballot,
    /// The value accepted.
    pub entry: Entry,
}

/// A message between replicas.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Message {
    /// Phase 1a, for every slot from `first_slot` on.
    Prepare {
        /// The candidate's ballot.
        ballot: Ballot,
        /// The candidate's first undecided slot.
        first_slot: Slot,
    },
    /// Phase 1b: a promise to accept nothing below `ballot`, with what was accepted so far.
    Promise {
        /// The ballot promised.
        ballot: Ballot,
        /// Accepted values from the requested slot on.
        accepted: Vec<(Slot, Accepted)>,
        /// Values known decided from the requested slot on.
        decided: Vec<(Slot, Entry)>,
        /// The promiser's snapshot, when the candidate asked for slots it compacted.
        snapshot: Option<Snapshot>,
    },
    /// Phase 2a, batched.
    Accept {
        /// The leader's ballot.
        ballot: Ballot,
        /// Values proposed for slots.
        entries: Vec<(Slot, Entry)>,
        /// The leader's first undecided slot, so laggards know to catch up.
        decided_upto: Slot,
    },
    /// Phase 2b.
    Accepted {
        /// The ballot accepted in.
        ballot: Ballot,
        /// The slots accepted.
        slots: Vec<Slot>,
    },
    /// A refusal: the sender has promised a higher ballot.
    Reject {
        /// The ballot refused.
        ballot: Ballot,
        /// The ballot the sender has promised.
        promised: Ballot,
    },
    /// Values known decided (learning, and catch-up answers).
    Decided {
        /// The decided values.
        entries: Vec<(Slot, Entry)>,
    },
    /// The leader is alive; followers behind `decided_upto` should catch up.
    Heartbeat {
        /// The leader's ballot.
        ballot: Ballot,
        /// The leader's first undecided slot.
        decided_upto: Slot,
    },
    /// A follower heard the leader's heartbeat in `ballot` (check-quorum: a
    /// leader that hears from no majority steps down).
    HeartbeatAck {
        /// The ballot of the heartbeat answered.
        ballot: Ballot,
    },
    /// Pre-vote (Ongaro's thesis, 9.6): would the receiver support an election
    /// in `round`? Asking and answering change no state, so a replica that
    /// cannot reach a majority never raises its ballot by asking.
    PreVote {
        /// The round the sender would stand in.
        round: u64,
    },
    /// The answer to a pre-vote: granted only by a replica that has not heard
    /// a leader within the shortest election timeout.
    PreVoteReply {
        /// The round asked about.
        round: u64,
        /// Whether the sender would support the election.
        granted: bool,
    },
    /// A snapshot, for a replica that needs slots the sender has compacted.
    InstallSnapshot {
        /// The snapshot.
        snapshot: Snapshot,
    },
    /// A request for the decided values from `from` on.
    CatchUp {
        /// The first slot wanted.
        from: Slot,
    },
}

/// A message with its sender and receiver.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    /// Sender.
    pub from: NodeId,
    /// The sender's life ([`Member::incarnation`]): a receiver that knows
    /// another life of the sender drops the message.
    pub from_incarnation: u64,
    /// Receiver.
    pub to: NodeId,
    /// The receiver's life the sender meant: a replica that lost its disk
    /// drops what was meant for its former life.
    pub to_incarnation: u64,
    /// Content.
    pub message: Message,
}

/// Who a metad replica is (`GET /internal/v1/paxos/identity`), and what it
/// keeps on disk about the group it belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplicaIdentity {
    /// The replica's id.
    pub id: NodeId,
    /// This life of its store.
    pub incarnation: u64,
    /// The group it belongs to, once known: messages of another group are refused.
    pub cluster: Option<u64>,
    /// The group's founding members, once known (they govern the log until
    /// the first membership change).
    pub founding: Option<Vec<Member>>,
    /// While no group is known: the id of the group this replica would found
    /// from the lives its peers gave. A group is founded only once every
    /// founder names the same one (never stored).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub candidate: Option<u64>,
}

/// A batch of envelopes between the replicas of one group (`POST /internal/v1/paxos`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerBatch {
    /// The group the sender belongs to.
    pub cluster: u64,
    /// The messages.
    pub envelopes: Vec<Envelope>,
}

/// A piece of a batch of envelopes too long for one peer message
/// (`POST /internal/v1/paxos/chunks`): the receiver appends pieces that start
/// where its copy ends and delivers the batch once it is whole, so a transfer
/// cut short resumes where it stopped.
#[serde_as]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MessageChunk {
    /// The sending replica.
    pub from: NodeId,
    /// XXH3-64 of the whole encoded batch: names the transfer, and checks it.
    pub digest: u64,
    /// Length of the whole encoded batch, in bytes.
    pub total: u64,
    /// Where this piece starts.
    pub offset: u64,
    /// The piece (empty: only asks how much the receiver holds).
    #[serde_as(as = "Base64")]
    pub data: Vec<u8>,
}

/// How much of a chunked transfer the receiver holds: the next offset it wants.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkReceipt {
    /// Bytes held, from the start; equal to the total once delivered.
    pub received: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_travel_as_base64_and_old_arrays_of_numbers_still_read() {
        let entry = Entry::Command(b"hello".to_vec());
        let json = serde_json::to_string(&entry).expect("encodes");
        assert_eq!(json, r#"{"Command":"aGVsbG8="}"#);
        assert_eq!(
            serde_json::from_str::<Entry>(&json).expect("decodes"),
            entry
        );
        let old = r#"{"Command":[104,101,108,108,111]}"#;
        assert_eq!(serde_json::from_str::<Entry>(old).expect("old form"), entry);
        let snapshot = Snapshot {
            upto: 3,
            data: vec![0, 255, 7],
            members: None,
            retired: Vec::new(),
        };
        let json = serde_json::to_string(&snapshot).expect("encodes");
        assert_eq!(json, r#"{"upto":3,"data":"AP8H"}"#);
        let old = r#"{"upto":3,"data":[0,255,7]}"#;
        assert_eq!(
            serde_json::from_str::<Snapshot>(old).expect("old form"),
            snapshot
        );
    }
}
