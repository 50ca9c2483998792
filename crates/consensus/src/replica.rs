//! One Multi-Paxos replica: acceptor, proposer and learner in one state machine.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::durable::{DurableState, Persist};
use crate::types::{Accepted, Ballot, Entry, Envelope, Member, Message, NodeId, Slot, Snapshot};

/// Most decided entries one catch-up answer carries.
const CATCH_UP_BATCH: usize = 256;

/// A replica's fixed settings.
#[derive(Debug, Clone)]
pub struct Config {
    /// This replica.
    pub id: NodeId,
    /// This life of the replica's store (see [`Member::incarnation`]): it is a
    /// member only where the membership names it with this incarnation.
    pub incarnation: u64,
    /// The founding members, governing the log until a membership change is
    /// decided (or a snapshot says otherwise).
    pub members: Vec<Member>,
    /// Ticks without hearing a leader before standing for election: a random
    /// value in this range, so that candidates rarely collide.
    pub election_ticks: (u32, u32),
    /// Ticks between a leader's heartbeats (and retransmissions).
    pub heartbeat_ticks: u32,
    /// Seed of the replica's random choices (election timeouts).
    pub seed: u64,
    /// About how many bytes of entries one Accept or catch-up answer carries
    /// (at least one entry): the transport's message limit, less headroom.
    pub max_message_bytes: usize,
    /// Whether a replica whose election timer fires asks a majority first
    /// (pre-vote) before raising its ballot; off only to show what it prevents.
    pub pre_vote: bool,
}

/// Splits `entries` into runs of at most about `budget` bytes, each non-empty.
fn by_bytes(entries: Vec<(Slot, Entry)>, budget: usize) -> Vec<Vec<(Slot, Entry)>> {
    let mut runs: Vec<Vec<(Slot, Entry)>> = Vec::new();
    let mut bytes = 0;
    for (slot, entry) in entries {
        let size = entry.wire_bytes();
        match runs.last_mut() {
            Some(run) if bytes + size <= budget => run.push((slot, entry)),
            _ => {
                runs.push(vec![(slot, entry)]);
                bytes = 0;
            }
        }
        bytes += size;
    }
    runs
}

/// A proposal made to a replica that is not the leader.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NotLeader {
    /// The leader this replica last heard from, if any.
    pub leader: Option<NodeId>,
}

/// Why a membership change was not proposed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MembershipRefused {
    /// Only the leader proposes.
    #[error("this replica does not lead")]
    NotLeader(NotLeader),
    /// A change is already in the log and not yet decided: one at a time.
    #[error("the membership change at slot {0} is not decided yet; one change at a time")]
    Pending(Slot),
    /// A group needs at least one member.
    #[error("a membership needs at least one member")]
    Empty,
    /// A change adds, removes or replaces exactly one replica.
    #[error("a membership change adds, removes or replaces exactly one replica")]
    NotOneChange,
    /// A life that an earlier change removed never comes back: its peers drop
    /// its messages (a removed replica rejoins with an empty store, in a new life).
    #[error("replica {0} was removed in this life; it rejoins only with an empty store")]
    Retired(NodeId),
}

/// What the runtime must do after driving the replica: persist, then send, then apply.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ready {
    /// Changes to durable state, to write and fsync first.
    pub persist: Vec<Persist>,
    /// Messages to send once the changes are durable.
    pub messages: Vec<Envelope>,
    /// A snapshot to install in the state machine (replacing its state) before
    /// applying `decided`: at restart, or when this replica fell behind a peer's
    /// compacted log.
    pub snapshot: Option<Snapshot>,
    /// Newly decided entries, in slot order without gaps, to apply to the state machine.
    pub decided: Vec<(Slot, Entry)>,
}

#[derive(Debug)]
enum Role {
    Follower,
    Candidate {
        ballot: Ballot,
        promises: BTreeMap<NodeId, Vec<(Slot, Accepted)>>,
    },
    Leader {
        ballot: Ballot,
        next_slot: Slot,
        /// Undecided slots this leader proposed, with who accepted them.
        in_flight: BTreeMap<Slot, (Entry, BTreeSet<NodeId>)>,
        /// Proposals not yet sent, batched into one Accept.
        unsent: Vec<(Slot, Entry)>,
        /// A membership change at this slot is not yet decided: nothing after
        /// it is sent, since the slots after it belong to the new membership,
        /// whose majority this leader has not run phase 1 with.
        barrier: Option<Slot>,
    },
}

/// A Multi-Paxos replica.
#[derive(Debug)]
pub struct Replica {
    config: Config,
    rng: StdRng,
    durable: DurableState,
    role: Role,
    leader: Option<NodeId>,
    /// The highest ballot seen anywhere, so a new election outbids it.
    highest_seen: Ballot,
    ticks_since_leader: u32,
    election_timeout: u32,
    ticks_since_heartbeat: u32,
    /// The first slot not known decided.
    decided_upto: Slot,
    /// The first decided slot not yet handed to the application.
    applied_upto: Slot,
    ready: Ready,
    loopback: VecDeque<Envelope>,
    /// Ticks since this replica started, the clock of `last_heard`.
    ticks: u64,
    /// When each peer was last heard from (any message), for check-quorum.
    last_heard: BTreeMap<NodeId, u64>,
    /// A pre-vote under way: the round asked about and who granted it.
    pre_vote: Option<(u64, BTreeSet<NodeId>)>,
    /// The members as of `decided_upto`: the membership every quorum of this
    /// replica's elections and proposals is counted in.
    members: Vec<Member>,
    /// The life each peer last spoke from, to answer peers the membership
    /// does not name.
    heard_incarnation: BTreeMap<NodeId, u64>,
    /// Lives that decided changes removed or replaced: never heard again.
    retired: Vec<Member>,
    /// The peer (and its life) whose message is being handled: answers go
    /// there, and its vote counts only if the membership names that life.
    answering: Option<(NodeId, u64)>,
}

/// The first slot a leader may not send yet: a membership change waits until
/// every slot before it is decided (so it is a change of the membership that
/// truly governs its slot), and what follows the change waits for its
/// decision (and is dropped with the leadership it was proposed under).
fn sendable_upto(barrier: Option<Slot>, decided_upto: Slot) -> Slot {
    match barrier {
        None => Slot::MAX,
        Some(change) if decided_upto >= change => change + 1,
        Some(change) => change,
    }
}

/// Whether `after` differs from `before` by one replica: one added, one
/// removed, or one replaced by a new life. Any two majorities of two such
/// memberships share a replica, or (a replacement) the old life is gone.
fn one_change(before: &[Member], after: &[Member]) -> bool {
    let added: Vec<&Member> = after.iter().filter(|m| !before.contains(m)).collect();
    let removed: Vec<&Member> = before.iter().filter(|m| !after.contains(m)).collect();
    let ids_unique = after
        .iter()
        .enumerate()
        .all(|(i, m)| after[..i].iter().all(|o| o.id != m.id));
    ids_unique
        && match (added.as_slice(), removed.as_slice()) {
            ([_], []) | ([], [_]) => true,
            ([new], [old]) => new.id == old.id && new.incarnation != old.incarnation,
            _ => false,
        }
}

/// Adds to `retired` the lives of `before` that `after` does not name. A life
/// once retired is never named again (see [`Replica::propose_members`]), so
/// what an out-of-date replica knows retired is retired for good.
fn retire(retired: &mut Vec<Member>, before: &[Member], after: &[Member]) {
    for gone in before {
        if !after.contains(gone) && !retired.contains(gone) {
            retired.push(gone.clone());
        }
    }
}

impl Replica {
    /// A replica starting (or restarting) from `durable`, as a follower.
    pub fn new(config: Config, durable: DurableState) -> Self {
        let mut rng = StdRng::seed_from_u64(config.seed);
        let election_timeout = rng.random_range(config.election_ticks.0..=config.election_ticks.1);
        let highest_seen = durable
            .accepted
            .values()
            .map(|a| a.ballot)
            .max()
            .unwrap_or_default()
            .max(durable.promised);
        let mut replica = Self {
            config,
            rng,
            durable,
            role: Role::Follower,
            leader: None,
            highest_seen,
            ticks_since_leader: 0,
            election_timeout,
            ticks_since_heartbeat: 0,
            decided_upto: 0,
            applied_upto: 0,
            ready: Ready::default(),
            loopback: VecDeque::new(),
            ticks: 0,
            last_heard: BTreeMap::new(),
            pre_vote: None,
            members: Vec::new(),
            heard_incarnation: BTreeMap::new(),
            retired: Vec::new(),
            answering: None,
        };
        (replica.members, replica.retired) = replica.members_at(replica.durable.compacted_upto());
        if let Some(snapshot) = replica.durable.snapshot.clone() {
            replica.decided_upto = snapshot.upto;
            replica.applied_upto = snapshot.upto;
            replica.ready.snapshot = Some(snapshot);
        }
        replica.advance_decided();
        replica
    }

    /// The size of the snapshot standing in for the compacted log, in bytes (0 before any).
    pub fn snapshot_bytes(&self) -> usize {
        self.durable.snapshot.as_ref().map_or(0, |s| s.data.len())
    }

    /// Replaces the log below `upto` with `data`, the application's state after
    /// applying every slot below `upto`; refused (false) if the application has
    /// not been handed those slots yet.
    pub fn compact(&mut self, upto: Slot, data: Vec<u8>) -> bool {
        if upto > self.applied_upto {
            return false;
        }
        if upto > self.durable.compacted_upto() {
            let (members, retired) = self.members_at(upto);
            let snapshot = Snapshot {
                upto,
                data,
                members: Some(members),
                retired,
            };
            self.durable.apply(&Persist::Snapshot(snapshot.clone()));
            self.ready.persist.push(Persist::Snapshot(snapshot));
        }
        true
    }

    /// The first slot the log still holds.
    pub fn compacted_upto(&self) -> Slot {
        self.durable.compacted_upto()
    }

    /// The members as of the first undecided slot.
    pub fn members(&self) -> &[Member] {
        &self.members
    }

    /// The slot of this leader's membership change not yet decided, if any.
    pub fn pending_change(&self) -> Option<Slot> {
        match &self.role {
            Role::Leader { barrier, .. } => *barrier,
            Role::Follower | Role::Candidate { .. } => None,
        }
    }

    /// Whether this replica, in this life, is one of the members: only then
    /// does it stand for election.
    pub fn is_member(&self) -> bool {
        self.members
            .iter()
            .any(|m| m.same_life(self.config.id, self.config.incarnation))
    }

    /// The members as of `slot`, and the lives retired before it, from the
    /// snapshot (or the founding members) and the changes decided after it;
    /// `slot` must be decided here.
    fn members_at(&self, slot: Slot) -> (Vec<Member>, Vec<Member>) {
        let snapshot = self.durable.snapshot.as_ref();
        let mut members = snapshot
            .and_then(|s| s.members.clone())
            .unwrap_or_else(|| self.config.members.clone());
        let mut retired = snapshot.map(|s| s.retired.clone()).unwrap_or_default();
        for entry in self
            .durable
            .decided
            .range(self.durable.compacted_upto()..slot)
            .map(|(_, e)| e)
        {
            if let Entry::Members(changed) = entry {
                retire(&mut retired, &members, changed);
                members = changed.clone();
            }
        }
        (members, retired)
    }

    /// Whether a vote from `from`, in the message being handled, counts:
    /// only the lives the membership names vote.
    fn counts(&self, from: NodeId) -> bool {
        self.answering.is_some_and(|(sender, life)| {
            sender == from && self.members.iter().any(|m| m.same_life(from, life))
        })
    }

    fn change_members(&mut self, members: Vec<Member>) {
        let previous = std::mem::take(&mut self.members);
        retire(&mut self.retired, &previous, &members);
        self.members = members;
    }

    /// Whether this replica currently leads.
    pub fn is_leader(&self) -> bool {
        matches!(self.role, Role::Leader { .. })
    }

    /// The leader this replica believes in.
    pub fn leader(&self) -> Option<NodeId> {
        self.leader
    }

    /// The highest ballot this replica has seen (its own included): each
    /// election raises it, and pre-vote keeps a replica that cannot reach a
    /// majority from raising it.
    pub fn highest_ballot(&self) -> Ballot {
        self.highest_seen
    }

    /// Whether this replica leads, or heard its leader within an election timeout.
    pub fn hears_leader(&self) -> bool {
        self.is_leader()
            || (self.leader.is_some() && self.ticks_since_leader < self.election_timeout)
    }

    /// The first slot not known decided here.
    pub fn decided_upto(&self) -> Slot {
        self.decided_upto
    }

    /// Advances time by one tick: elections, heartbeats and retransmissions.
    pub fn tick(&mut self) {
        self.ticks += 1;
        self.check_quorum();
        if let Role::Leader {
            ballot,
            in_flight,
            barrier,
            ..
        } = &self.role
        {
            self.ticks_since_heartbeat += 1;
            if self.ticks_since_heartbeat >= self.config.heartbeat_ticks {
                self.ticks_since_heartbeat = 0;
                let ballot = *ballot;
                // Retransmit what is still undecided: the network may have lost it.
                let decided_upto = self.decided_upto;
                let limit = sendable_upto(*barrier, decided_upto);
                let entries: Vec<(Slot, Entry)> = in_flight
                    .range(..limit)
                    .map(|(s, (e, _))| (*s, e.clone()))
                    .collect();
                self.broadcast_others(Message::Heartbeat {
                    ballot,
                    decided_upto,
                });
                for entries in by_bytes(entries, self.config.max_message_bytes) {
                    self.broadcast_others(Message::Accept {
                        ballot,
                        entries,
                        decided_upto,
                    });
                }
            }
        } else {
            self.ticks_since_leader += 1;
            if self.ticks_since_leader >= self.election_timeout {
                if !self.is_member() {
                    // A replica outside the membership never stands, but its
                    // leader goes stale all the same, so that it supports an
                    // election among the members it still answers.
                    self.leader = None;
                    self.reset_election_timer();
                } else if self.config.pre_vote {
                    self.start_pre_vote();
                } else {
                    self.start_election();
                }
            }
        }
        self.drain_loopback();
    }

    /// Handles one message from a peer; one meant for another life of this
    /// replica, or sent by a life of its sender that the membership has
    /// replaced, is dropped unread.
    pub fn step(&mut self, envelope: Envelope) {
        if !self.admits(&envelope) {
            return;
        }
        self.heard_incarnation
            .insert(envelope.from, envelope.from_incarnation);
        self.answering = Some((envelope.from, envelope.from_incarnation));
        self.handle(envelope);
        self.answering = None;
        self.drain_loopback();
    }

    /// Whether `envelope` is for this life of this replica and comes from a
    /// life of its sender that no change known here retired. A life the
    /// membership here does not name is heard (it may have been added by a
    /// change this replica has not learned yet), but only the lives the
    /// membership names are counted as votes.
    pub fn admits(&self, envelope: &Envelope) -> bool {
        envelope.to == self.config.id
            && envelope.to_incarnation == self.config.incarnation
            && !self
                .retired
                .iter()
                .any(|m| m.same_life(envelope.from, envelope.from_incarnation))
    }

    /// Proposes a command; only the leader accepts proposals.
    pub fn propose(&mut self, command: Vec<u8>) -> Result<Slot, NotLeader> {
        let Role::Leader {
            next_slot,
            in_flight,
            unsent,
            ..
        } = &mut self.role
        else {
            return Err(NotLeader {
                leader: self.leader,
            });
        };
        let slot = *next_slot;
        *next_slot += 1;
        let entry = Entry::Command(command);
        in_flight.insert(slot, (entry.clone(), BTreeSet::new()));
        unsent.push((slot, entry));
        Ok(slot)
    }

    /// Proposes that `members` govern the log after the slot this takes; only
    /// the leader proposes, one replica's change at a time, and only when no
    /// other change is undecided. The change goes out once every slot before
    /// it is decided; proposals made meanwhile wait behind it.
    pub fn propose_members(&mut self, members: Vec<Member>) -> Result<Slot, MembershipRefused> {
        if members.is_empty() {
            return Err(MembershipRefused::Empty);
        }
        if let Some(pending) = self.pending_change() {
            return Err(MembershipRefused::Pending(pending));
        }
        if let Some(back) = members.iter().find(|m| self.retired.contains(m)) {
            return Err(MembershipRefused::Retired(back.id));
        }
        if !one_change(&self.members, &members) {
            return Err(MembershipRefused::NotOneChange);
        }
        let leader = self.leader;
        let Role::Leader {
            next_slot,
            in_flight,
            unsent,
            barrier,
            ..
        } = &mut self.role
        else {
            return Err(MembershipRefused::NotLeader(NotLeader { leader }));
        };
        let slot = *next_slot;
        *next_slot += 1;
        let entry = Entry::Members(members);
        in_flight.insert(slot, (entry.clone(), BTreeSet::new()));
        unsent.push((slot, entry));
        *barrier = Some(slot);
        Ok(slot)
    }

    /// Takes what the runtime must persist, send and apply; proposals made since
    /// the last call go out together as one batch.
    pub fn take_ready(&mut self) -> Ready {
        self.flush_proposals();
        self.drain_loopback();
        std::mem::take(&mut self.ready)
    }

    fn majority(&self) -> usize {
        self.members.len() / 2 + 1
    }

    fn reset_election_timer(&mut self) {
        self.ticks_since_leader = 0;
        self.election_timeout = self
            .rng
            .random_range(self.config.election_ticks.0..=self.config.election_ticks.1);
    }

    fn send(&mut self, to: NodeId, message: Message) {
        // An answer goes to the life that asked (this replica's membership may
        // be older than the asker's); anything else to the life the membership
        // names, or else (a replica not yet, or no longer, a member here) the
        // life it last spoke from.
        let to_incarnation = if to == self.config.id {
            self.config.incarnation
        } else if let Some((asker, life)) = self.answering
            && asker == to
        {
            life
        } else if let Some(member) = self.members.iter().find(|m| m.id == to) {
            member.incarnation
        } else if let Some(life) = self.heard_incarnation.get(&to) {
            *life
        } else {
            return;
        };
        let envelope = Envelope {
            from: self.config.id,
            from_incarnation: self.config.incarnation,
            to,
            to_incarnation,
            message,
        };
        if to == self.config.id {
            self.loopback.push_back(envelope);
        } else {
            self.ready.messages.push(envelope);
        }
    }

    fn member_ids(&self) -> Vec<NodeId> {
        self.members.iter().map(|m| m.id).collect()
    }

    fn broadcast(&mut self, message: Message) {
        for member in self.member_ids() {
            self.send(member, message.clone());
        }
    }

    fn broadcast_others(&mut self, message: Message) {
        for member in self.member_ids() {
            if member != self.config.id {
                self.send(member, message.clone());
            }
        }
    }

    fn drain_loopback(&mut self) {
        while let Some(envelope) = self.loopback.pop_front() {
            self.answering = Some((self.config.id, self.config.incarnation));
            self.handle(envelope);
            self.answering = None;
        }
    }

    fn flush_proposals(&mut self) {
        let decided_upto = self.decided_upto;
        let budget = self.config.max_message_bytes;
        if let Role::Leader {
            ballot,
            unsent,
            barrier,
            ..
        } = &mut self.role
            && !unsent.is_empty()
        {
            let ballot = *ballot;
            let limit = sendable_upto(*barrier, decided_upto);
            let (send, held): (Vec<_>, Vec<_>) = std::mem::take(unsent)
                .into_iter()
                .partition(|(s, _)| *s < limit);
            *unsent = held;
            for entries in by_bytes(send, budget) {
                self.broadcast(Message::Accept {
                    ballot,
                    entries,
                    decided_upto,
                });
            }
        }
    }

    /// Check-quorum: a leader that has heard from no majority (itself
    /// included) within twice the longest election timeout steps down, so that
    /// clients are sent elsewhere instead of waiting on a leader cut off from
    /// its followers. Stepping down is always safe: it only stops proposing.
    fn check_quorum(&mut self) {
        if !self.is_leader() {
            return;
        }
        // Twice the longest election timeout: ticks come in bursts after the
        // runtime stalls (a slow fsync), and acknowledgements that arrived
        // meanwhile are read only after them; a leader should not step down
        // for that.
        let window = 2 * u64::from(self.config.election_ticks.1);
        let heard = self
            .members
            .iter()
            .map(|m| m.id)
            .filter(|m| {
                *m == self.config.id
                    || self
                        .last_heard
                        .get(m)
                        .is_some_and(|at| self.ticks.saturating_sub(*at) <= window)
            })
            .count();
        if heard < self.majority() {
            self.role = Role::Follower;
            self.leader = None;
            self.reset_election_timer();
        }
    }

    fn own_ballot(&self) -> Option<Ballot> {
        match &self.role {
            Role::Follower => None,
            Role::Candidate { ballot, .. } | Role::Leader { ballot, .. } => Some(*ballot),
        }
    }

    fn observe(&mut self, ballot: Ballot) {
        self.highest_seen = self.highest_seen.max(ballot);
        // A higher ballot exists: this replica's own candidacy or leadership is over.
        if self.own_ballot().is_some_and(|own| own < ballot) {
            self.role = Role::Follower;
            // Whoever owns the higher ballot may lead now; until it says so, nobody is known to.
            self.leader = None;
            self.reset_election_timer();
        }
    }

    fn promise(&mut self, ballot: Ballot) {
        if ballot > self.durable.promised {
            self.durable.promised = ballot;
            self.ready.persist.push(Persist::Promised(ballot));
        }
    }

    /// Asks every replica whether it would support an election, before
    /// raising any ballot: only with a majority's support does the election
    /// start. A replica cut off from the majority asks in vain and, when it
    /// returns, finds the leader still leading (its ballot never rose).
    fn start_pre_vote(&mut self) {
        let round = self.highest_seen.round + 1;
        self.pre_vote = Some((round, BTreeSet::new()));
        // Whoever led is not heard any more: peers asking meanwhile may be granted.
        self.leader = None;
        self.reset_election_timer();
        self.broadcast(Message::PreVote { round });
    }

    /// Grants a pre-vote unless this replica leads or heard its leader within
    /// the shortest election timeout (then the group has a working leader). It
    /// changes nothing here: no promise, no timer, no ballot seen.
    fn on_pre_vote(&mut self, from: NodeId, round: u64) {
        let granted = from == self.config.id
            || (!self.is_leader()
                && (self.leader.is_none()
                    || self.ticks_since_leader >= self.config.election_ticks.0));
        self.send(from, Message::PreVoteReply { round, granted });
    }

    fn on_pre_vote_reply(&mut self, from: NodeId, round: u64, granted: bool) {
        let (counts, majority) = (self.counts(from), self.majority());
        let Some((asked, grants)) = self.pre_vote.as_mut() else {
            return;
        };
        if !granted || *asked != round || !counts {
            return;
        }
        grants.insert(from);
        if grants.len() >= majority {
            self.pre_vote = None;
            self.start_election();
        }
    }

    fn start_election(&mut self) {
        let ballot = Ballot {
            round: self.highest_seen.round + 1,
            node: self.config.id,
        };
        self.highest_seen = ballot;
        self.role = Role::Candidate {
            ballot,
            promises: BTreeMap::new(),
        };
        self.leader = None;
        self.reset_election_timer();
        let first_slot = self.decided_upto;
        self.broadcast(Message::Prepare { ballot, first_slot });
    }

    fn handle(&mut self, envelope: Envelope) {
        let Envelope { from, message, .. } = envelope;
        self.last_heard.insert(from, self.ticks);
        match message {
            Message::HeartbeatAck { ballot } => self.observe(ballot),
            Message::PreVote { round } => self.on_pre_vote(from, round),
            Message::PreVoteReply { round, granted } => {
                self.on_pre_vote_reply(from, round, granted)
            }
            Message::Prepare { ballot, first_slot } => self.on_prepare(from, ballot, first_slot),
            Message::Promise {
                ballot,
                accepted,
                decided,
                snapshot,
            } => {
                if let Some(snapshot) = snapshot {
                    self.install_snapshot(snapshot);
                }
                self.on_promise(from, ballot, accepted, decided)
            }
            Message::InstallSnapshot { snapshot } => self.install_snapshot(snapshot),
            Message::Accept {
                ballot,
                entries,
                decided_upto,
            } => self.on_accept(from, ballot, entries, decided_upto),
            Message::Accepted { ballot, slots } => self.on_accepted(from, ballot, slots),
            Message::Reject { ballot, promised } => {
                if self.own_ballot() == Some(ballot) {
                    self.observe(promised);
                }
                self.highest_seen = self.highest_seen.max(promised);
            }
            Message::Decided { entries } => {
                for (slot, entry) in entries {
                    self.learn(slot, entry);
                }
            }
            Message::Heartbeat {
                ballot,
                decided_upto,
            } => self.on_heartbeat(from, ballot, decided_upto),
            Message::CatchUp { from: first } => {
                if first < self.durable.compacted_upto()
                    && let Some(snapshot) = self.durable.snapshot.clone()
                {
                    self.send(from, Message::InstallSnapshot { snapshot });
                }
                let first = first.max(self.durable.compacted_upto());
                let entries: Vec<(Slot, Entry)> = self
                    .durable
                    .decided
                    .range(first..)
                    .take(CATCH_UP_BATCH)
                    .map(|(s, e)| (*s, e.clone()))
                    .collect();
                // One answer within the byte budget; the rest come with the next catch-up.
                if let Some(entries) = by_bytes(entries, self.config.max_message_bytes)
                    .into_iter()
                    .next()
                {
                    self.send(from, Message::Decided { entries });
                }
            }
        }
    }

    /// Phase 1b (Paxos Made Simple, 2.2): promise `ballot` if it is not below any promise made.
    fn on_prepare(&mut self, from: NodeId, ballot: Ballot, first_slot: Slot) {
        self.observe(ballot);
        if ballot < self.durable.promised {
            let promised = self.durable.promised;
            self.send(from, Message::Reject { ballot, promised });
            return;
        }
        self.promise(ballot);
        if from != self.config.id {
            // Give the candidate time to win before standing ourselves.
            self.reset_election_timer();
            self.pre_vote = None;
        }
        // A candidate asking for slots this replica compacted gets the snapshot: it
        // must not mistake those decided slots for empty ones and fill them with no-ops.
        let snapshot = self
            .durable
            .snapshot
            .clone()
            .filter(|s| first_slot < s.upto);
        let first_slot = first_slot.max(self.durable.compacted_upto());
        let accepted = self
            .durable
            .accepted
            .range(first_slot..)
            .map(|(s, a)| (*s, a.clone()))
            .collect();
        let decided = self
            .durable
            .decided
            .range(first_slot..)
            .map(|(s, e)| (*s, e.clone()))
            .collect();
        self.send(
            from,
            Message::Promise {
                ballot,
                accepted,
                decided,
                snapshot,
            },
        );
    }

    fn on_promise(
        &mut self,
        from: NodeId,
        ballot: Ballot,
        accepted: Vec<(Slot, Accepted)>,
        decided: Vec<(Slot, Entry)>,
    ) {
        for (slot, entry) in decided {
            self.learn(slot, entry);
        }
        let majority = self.majority();
        let counts = self.counts(from);
        let Role::Candidate {
            ballot: own,
            promises,
        } = &mut self.role
        else {
            return;
        };
        if !counts {
            return;
        }
        if *own != ballot {
            return;
        }
        promises.insert(from, accepted);
        if promises.len() >= majority {
            let promises = std::mem::take(promises);
            self.become_leader(ballot, promises);
        }
    }

    /// Re-proposes, for every slot from the first undecided one, the value accepted
    /// at the highest ballot among the promises, and a no-op where there is none
    /// (Paxos Made Simple, section 3).
    fn become_leader(&mut self, ballot: Ballot, promises: BTreeMap<NodeId, Vec<(Slot, Accepted)>>) {
        let mut highest: BTreeMap<Slot, Accepted> = BTreeMap::new();
        for (slot, accepted) in promises.into_values().flatten() {
            if highest
                .get(&slot)
                .is_none_or(|held| held.ballot < accepted.ballot)
            {
                highest.insert(slot, accepted);
            }
        }
        let last = highest
            .keys()
            .chain(self.durable.decided.keys())
            .max()
            .copied();
        let mut next_slot = last.map_or(self.decided_upto, |l| (l + 1).max(self.decided_upto));
        let mut in_flight = BTreeMap::new();
        let mut unsent = Vec::new();
        let mut barrier = None;
        for slot in self.decided_upto..next_slot {
            let entry = match self.durable.decided.get(&slot) {
                Some(decided) => {
                    if matches!(decided, Entry::Members(_)) {
                        barrier = Some(slot);
                        break;
                    }
                    continue;
                }
                None => highest.remove(&slot).map_or(Entry::Noop, |a| a.entry),
            };
            let change = matches!(entry, Entry::Members(_));
            in_flight.insert(slot, (entry.clone(), BTreeSet::new()));
            unsent.push((slot, entry));
            if change {
                barrier = Some(slot);
                break;
            }
        }
        // The slots after a membership change belong to the new members: what
        // was accepted there is found again by the phase 1 that follows the
        // change's decision, counted in the new membership.
        if let Some(change) = barrier {
            next_slot = change + 1;
        }
        self.role = Role::Leader {
            ballot,
            next_slot,
            in_flight,
            unsent,
            barrier,
        };
        self.leader = Some(self.config.id);
        self.ticks_since_heartbeat = 0;
        // Its promisers were just heard; the others get a full window too.
        for member in self.member_ids() {
            self.last_heard.insert(member, self.ticks);
        }
        let decided_upto = self.decided_upto;
        self.broadcast_others(Message::Heartbeat {
            ballot,
            decided_upto,
        });
        self.flush_proposals();
    }

    /// Phase 2b: accept if no higher ballot was promised.
    fn on_accept(
        &mut self,
        from: NodeId,
        ballot: Ballot,
        entries: Vec<(Slot, Entry)>,
        leader_decided_upto: Slot,
    ) {
        self.observe(ballot);
        if ballot < self.durable.promised {
            let promised = self.durable.promised;
            self.send(from, Message::Reject { ballot, promised });
            return;
        }
        self.promise(ballot);
        self.follow(from);
        let mut slots = Vec::with_capacity(entries.len());
        let compacted_upto = self.durable.compacted_upto();
        let mut behind = false;
        for (slot, entry) in entries {
            if slot < compacted_upto {
                // Decided long ago and compacted here: the leader is behind.
                behind = true;
                continue;
            }
            let accepted = Accepted { ballot, entry };
            if self.durable.accepted.get(&slot) != Some(&accepted) {
                self.ready
                    .persist
                    .push(Persist::Accepted(slot, accepted.clone()));
                self.durable.accepted.insert(slot, accepted);
            }
            slots.push(slot);
        }
        self.send(from, Message::Accepted { ballot, slots });
        if behind && let Some(snapshot) = self.durable.snapshot.clone() {
            self.send(from, Message::InstallSnapshot { snapshot });
        }
        self.catch_up_if_behind(from, leader_decided_upto);
    }

    fn on_accepted(&mut self, from: NodeId, ballot: Ballot, slots: Vec<Slot>) {
        if !self.counts(from) {
            return;
        }
        let Role::Leader {
            ballot: own,
            in_flight,
            ..
        } = &mut self.role
        else {
            return;
        };
        if *own != ballot {
            return;
        }
        for slot in slots {
            if let Some((_, voters)) = in_flight.get_mut(&slot) {
                voters.insert(from);
            }
        }
        // Told to the members that voted, a replica a decided change removes
        // included: it learns it is out, rather than waiting for a leader.
        let voters = self.member_ids();
        let chosen = self.decide_in_order(ballot);
        if chosen.is_empty() {
            return;
        }
        for member in voters {
            if member != self.config.id {
                self.send(
                    member,
                    Message::Decided {
                        entries: chosen.clone(),
                    },
                );
            }
        }
    }

    /// Declares decided, in slot order from the first undecided slot, the
    /// slots a majority accepted in `ballot`. Only in order: the membership
    /// that governs a slot is known only once every slot before it is
    /// decided, and a leader that has not learnt of a change below a slot
    /// would count that slot's votes in the wrong membership (a replacement's
    /// old and new majorities need not meet).
    fn decide_in_order(&mut self, ballot: Ballot) -> Vec<(Slot, Entry)> {
        let mut chosen = Vec::new();
        loop {
            let slot = self.decided_upto;
            let majority = self.majority();
            let Role::Leader {
                ballot: own,
                in_flight,
                ..
            } = &mut self.role
            else {
                break;
            };
            // A decided change starts a new election: the rest waits for it.
            if *own != ballot {
                break;
            }
            if in_flight
                .get(&slot)
                .is_none_or(|(_, voters)| voters.len() < majority)
            {
                break;
            }
            let Some((entry, _)) = in_flight.remove(&slot) else {
                break;
            };
            chosen.push((slot, entry.clone()));
            self.learn(slot, entry);
        }
        chosen
    }

    fn on_heartbeat(&mut self, from: NodeId, ballot: Ballot, leader_decided_upto: Slot) {
        self.observe(ballot);
        if ballot < self.durable.promised {
            let promised = self.durable.promised;
            self.send(from, Message::Reject { ballot, promised });
            return;
        }
        self.promise(ballot);
        self.follow(from);
        if from != self.config.id {
            self.send(from, Message::HeartbeatAck { ballot });
        }
        self.catch_up_if_behind(from, leader_decided_upto);
    }

    fn follow(&mut self, leader: NodeId) {
        if leader != self.config.id {
            self.leader = Some(leader);
            self.reset_election_timer();
            self.pre_vote = None;
        }
    }

    fn catch_up_if_behind(&mut self, leader: NodeId, leader_decided_upto: Slot) {
        if leader != self.config.id && leader_decided_upto > self.decided_upto {
            let from = self.decided_upto;
            self.send(leader, Message::CatchUp { from });
        }
    }

    fn learn(&mut self, slot: Slot, entry: Entry) {
        if slot < self.durable.compacted_upto() || self.durable.decided.contains_key(&slot) {
            return;
        }
        self.ready
            .persist
            .push(Persist::Decided(slot, entry.clone()));
        self.durable.decided.insert(slot, entry);
        if let Role::Leader { in_flight, .. } = &mut self.role {
            in_flight.remove(&slot);
        }
        self.advance_decided();
    }

    /// Adopts a peer's snapshot that reaches past what this replica has decided.
    fn install_snapshot(&mut self, snapshot: Snapshot) {
        if snapshot.upto <= self.durable.compacted_upto() {
            return;
        }
        self.durable.apply(&Persist::Snapshot(snapshot.clone()));
        self.ready.persist.push(Persist::Snapshot(snapshot.clone()));
        if let Role::Leader { in_flight, .. } = &mut self.role {
            *in_flight = in_flight.split_off(&snapshot.upto);
        }
        if let Role::Leader { next_slot, .. } = &mut self.role {
            *next_slot = (*next_slot).max(snapshot.upto);
        }
        self.decided_upto = self.decided_upto.max(snapshot.upto);
        if self.applied_upto < snapshot.upto {
            self.applied_upto = snapshot.upto;
            // Entries handed out but superseded by the snapshot are dropped: the
            // application installs the snapshot, then applies what follows it.
            self.ready.decided.clear();
            self.ready.snapshot = Some(snapshot);
        }
        // The membership as of what is decided here now: the snapshot's, and
        // the changes this replica had decided past it (a snapshot may end
        // before what this replica already decided).
        let (members, retired) = self.members_at(self.decided_upto);
        let changed = members != self.members;
        self.members = members;
        self.retired = retired;
        if changed {
            self.members_changed();
        }
        self.advance_decided();
    }

    /// A decided membership change: quorums are counted in the new members
    /// from now on, so a leader or candidate starts over with a fresh phase 1
    /// among them, and a replica that is no longer a member stands down.
    fn members_changed(&mut self) {
        self.pre_vote = None;
        if matches!(self.role, Role::Follower) {
            return;
        }
        if self.is_member() {
            self.start_election();
        } else {
            self.role = Role::Follower;
            self.leader = None;
            self.reset_election_timer();
        }
    }

    fn advance_decided(&mut self) {
        let mut changed = false;
        while let Some(entry) = self.durable.decided.get(&self.decided_upto) {
            if let Entry::Members(members) = entry {
                let members = members.clone();
                self.change_members(members);
                changed = true;
            }
            self.decided_upto += 1;
        }
        while self.applied_upto < self.decided_upto {
            let entry = self.durable.decided[&self.applied_upto].clone();
            self.ready.decided.push((self.applied_upto, entry));
            self.applied_upto += 1;
        }
        if changed {
            self.members_changed();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_split_into_runs_within_the_byte_budget_each_non_empty() {
        let entry = |n: usize| Entry::Command(vec![0; n]);
        let entries: Vec<(Slot, Entry)> = [30, 30, 30, 300, 30]
            .into_iter()
            .enumerate()
            .map(|(slot, n)| (slot as Slot, entry(n)))
            .collect();
        let runs = by_bytes(entries, 150);
        let slots: Vec<Vec<Slot>> = runs
            .iter()
            .map(|run| run.iter().map(|(slot, _)| *slot).collect())
            .collect();
        // 72 bytes apiece: two fit in 150; the 432-byte one goes alone.
        assert_eq!(slots, vec![vec![0, 1], vec![2], vec![3], vec![4]]);
        assert!(by_bytes(Vec::new(), 150).is_empty());
    }
}
