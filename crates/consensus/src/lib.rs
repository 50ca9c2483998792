//! Multi-Paxos as a pure state machine, with no I/O, no clock and no global randomness.
//!
//! - [`types`]: ballots, slots, log entries and messages (wire types from `kvorum-protocol`).
//! - [`durable`]: what an acceptor must keep on disk, and the operations that change it.
//! - [`replica`]: one replica (acceptor, proposer and learner in one), driven by
//!   [`Replica::tick`], [`Replica::step`] and [`Replica::propose`]; its output is
//!   drained with [`Replica::take_ready`].
//!
//! The runtime's duty, in this order, for every [`Ready`]: persist
//! [`Ready::persist`] (fsync'd), then send [`Ready::messages`], then apply
//! [`Ready::decided`] to the state machine. Persisting before sending is what
//! makes a promise or an acceptance binding across a crash (Lamport, "Paxos Made
//! Simple", 2001, section 2.2 and the note on stable storage in section 2.3).
//!
//! The protocol follows "Paxos Made Simple" section 3 and van Renesse and
//! Altinbuken, "Paxos Made Moderately Complex" (2015): a stable leader runs
//! phase 1 once for every slot from its first undecided one onwards, then phase
//! 2 per slot, pipelined and batched; a new leader re-proposes the values phase
//! 1 reported (the one accepted at the highest ballot) and fills gaps with
//! no-ops. The runtime compacts the log behind a snapshot of its state machine
//! with [`Replica::compact`]; replicas that need compacted slots are sent the
//! snapshot instead ([`Ready::snapshot`]).
//!
//! Membership changes go through the log ([`Replica::propose_members`]): a
//! change decided at slot `s` governs every slot after `s`, no leader proposes
//! past an undecided change, and a change once decided is followed by a fresh
//! phase 1 in the new membership (ARCHITECTURE.md, "metad membership").

pub mod durable;
pub mod replica;
pub mod types;

pub use durable::{DurableState, Persist};
pub use replica::{Config, MembershipRefused, NotLeader, Ready, Replica};
pub use types::{Accepted, Ballot, Entry, Envelope, Member, Message, NodeId, Slot, Snapshot};
