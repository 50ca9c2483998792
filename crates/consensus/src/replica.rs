//! One Multi-Paxos replica: acceptor, proposer and learner in one state machine.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::durable::{DurableState, Persist};
use crate::types::{Accepted, Ballot, Entry, Envelope, Message, NodeId, Slot, Snapshot};

/// Most decided entries one catch-up answer carries.
const CATCH_UP_BATCH: usize = 256;

/// A replica's fixed settings.
#[derive(Debug, Clone)]
pub struct Config {
    /// This replica.
    pub id: NodeId,
    /// Every replica of the group, this one included.
    pub members: Vec<NodeId>,
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
        };
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
            let snapshot = Snapshot { upto, data };
            self.durable.apply(&Persist::Snapshot(snapshot.clone()));
            self.ready.persist.push(Persist::Snapshot(snapshot));
        }
        true
    }

    /// The first slot the log still holds.
    pub fn compacted_upto(&self) -> Slot {
        self.durable.compacted_upto()
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
            ballot, in_flight, ..
        } = &self.role
        {
            self.ticks_since_heartbeat += 1;
            if self.ticks_since_heartbeat >= self.config.heartbeat_ticks {
                self.ticks_since_heartbeat = 0;
                let ballot = *ballot;
                // Retransmit what is still undecided: the network may have lost it.
                let entries: Vec<(Slot, Entry)> = in_flight
                    .iter()
                    .map(|(s, (e, _))| (*s, e.clone()))
                    .collect();
                let decided_upto = self.decided_upto;
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
                if self.config.pre_vote {
                    self.start_pre_vote();
                } else {
                    self.start_election();
                }
            }
        }
        self.drain_loopback();
    }

    /// Handles one message from a peer.
    pub fn step(&mut self, envelope: Envelope) {
        self.handle(envelope);
        self.drain_loopback();
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

    /// Takes what the runtime must persist, send and apply; proposals made since
    /// the last call go out together as one batch.
    pub fn take_ready(&mut self) -> Ready {
        self.flush_proposals();
        self.drain_loopback();
        std::mem::take(&mut self.ready)
    }

    fn majority(&self) -> usize {
        self.config.members.len() / 2 + 1
    }

    fn reset_election_timer(&mut self) {
        self.ticks_since_leader = 0;
        self.election_timeout = self
            .rng
            .random_range(self.config.election_ticks.0..=self.config.election_ticks.1);
    }

    fn send(&mut self, to: NodeId, message: Message) {
        let envelope = Envelope {
            from: self.config.id,
            to,
            message,
        };
        if to == self.config.id {
            self.loopback.push_back(envelope);
        } else {
            self.ready.messages.push(envelope);
        }
    }

    fn broadcast(&mut self, message: Message) {
        for member in self.config.members.clone() {
            self.send(member, message.clone());
        }
    }

    fn broadcast_others(&mut self, message: Message) {
        for member in self.config.members.clone() {
            if member != self.config.id {
                self.send(member, message.clone());
            }
        }
    }

    fn drain_loopback(&mut self) {
        while let Some(envelope) = self.loopback.pop_front() {
            self.handle(envelope);
        }
    }

    fn flush_proposals(&mut self) {
        let decided_upto = self.decided_upto;
        let budget = self.config.max_message_bytes;
        if let Role::Leader { ballot, unsent, .. } = &mut self.role
            && !unsent.is_empty()
        {
            let ballot = *ballot;
            for entries in by_bytes(std::mem::take(unsent), budget) {
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
            .config
            .members
            .iter()
            .filter(|m| {
                **m == self.config.id
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
        let Some((asked, grants)) = self.pre_vote.as_mut() else {
            return;
        };
        if !granted || *asked != round {
            return;
        }
        grants.insert(from);
        if grants.len() >= self.majority() {
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
        let Role::Candidate {
            ballot: own,
            promises,
        } = &mut self.role
        else {
            return;
        };
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
        let next_slot = last.map_or(self.decided_upto, |l| (l + 1).max(self.decided_upto));
        let mut in_flight = BTreeMap::new();
        let mut unsent = Vec::new();
        for slot in self.decided_upto..next_slot {
            if self.durable.decided.contains_key(&slot) {
                continue;
            }
            let entry = highest.remove(&slot).map_or(Entry::Noop, |a| a.entry);
            in_flight.insert(slot, (entry.clone(), BTreeSet::new()));
            unsent.push((slot, entry));
        }
        self.role = Role::Leader {
            ballot,
            next_slot,
            in_flight,
            unsent,
        };
        self.leader = Some(self.config.id);
        self.ticks_since_heartbeat = 0;
        // Its promisers were just heard; the others get a full window too.
        for member in self.config.members.clone() {
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
        let majority = self.majority();
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
        let mut chosen = Vec::new();
        for slot in slots {
            if let Some((entry, voters)) = in_flight.get_mut(&slot) {
                voters.insert(from);
                if voters.len() >= majority {
                    chosen.push((slot, entry.clone()));
                    in_flight.remove(&slot);
                }
            }
        }
        if chosen.is_empty() {
            return;
        }
        for (slot, entry) in &chosen {
            self.learn(*slot, entry.clone());
        }
        self.broadcast_others(Message::Decided { entries: chosen });
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
        self.advance_decided();
    }

    fn advance_decided(&mut self) {
        while self.durable.decided.contains_key(&self.decided_upto) {
            self.decided_upto += 1;
        }
        while self.applied_upto < self.decided_upto {
            let entry = self.durable.decided[&self.applied_upto].clone();
            self.ready.decided.push((self.applied_upto, entry));
            self.applied_upto += 1;
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
