//! The vocabulary of Paxos, defined with every other wire type in the protocol crate.

pub use kvorum_protocol::paxos::{
    Accepted, Ballot, Entry, Envelope, Member, Message, NodeId, Slot, Snapshot,
};
