//! The consensus loop: one thread owns the replica, its store and the state machine.
//!
//! Inputs (peer messages, proposals, status queries) arrive on a channel and
//! ticks come from the channel's timeout. After every input the loop drains the
//! replica's `Ready` in the order the core demands: persist (fsync'd), then
//! hand the messages to the sender task, then apply decided entries and answer
//! the requests waiting for them.

use std::collections::HashMap;
use std::sync::mpsc::RecvTimeoutError;
use std::time::{Duration, Instant};

use kvorum_consensus::{Config, Entry, Envelope, Member, MembershipRefused, Replica, Slot};
use kvorum_metadata::StateMachine;
use kvorum_paxos_store::PaxosStore;
use kvorum_protocol::metadata::{
    LogCommand, MembersView, MetadStatus, MetadataCommand, MetadataError, MetadataOutcome,
    MetadataState, RequestId,
};
use tokio::sync::{mpsc, oneshot, watch};

/// Most inputs handled before the replica's output is drained (and fsync'd) once.
const MAX_INPUTS_PER_BATCH: usize = 256;

/// Why a proposal was not taken.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProposeError {
    /// This replica does not lead; the leader it knows, if any.
    NotLeader(Option<u64>),
}

/// The answer to a command: its outcome once decided and applied.
pub type CommandReply = Result<Result<MetadataOutcome, MetadataError>, ProposeError>;

/// The answer to a membership change: the members once it is decided.
pub type ChangeReply = Result<Result<Vec<Member>, ChangeRefused>, ProposeError>;

/// Why a membership change did not happen.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChangeRefused {
    /// The consensus core refused it (one at a time, one replica, no retired life).
    #[error(transparent)]
    Refused(MembershipRefused),
    /// Another value took its slot (a leader change lost it); the members stand as they were.
    #[error("the change was lost with a change of leader; look at the members and retry")]
    Lost,
}

/// A client waiting for its command to be applied, and the span of its Paxos round.
#[derive(Debug)]
struct Waiter {
    reply: oneshot::Sender<CommandReply>,
    round: tracing::Span,
}

impl Waiter {
    /// Answers the client; the round's span ends here.
    fn send(self, reply: CommandReply) -> Result<(), CommandReply> {
        if reply.is_err() {
            self.round.record("otel.status_code", "ERROR");
        }
        self.reply.send(reply)
    }

    fn is_closed(&self) -> bool {
        self.reply.is_closed()
    }
}

/// Work for the consensus loop.
#[derive(Debug)]
pub enum Input {
    /// Messages from peers.
    Messages(Vec<Envelope>),
    /// A client command to replicate, with the span of the request that submitted it.
    Command(
        kvorum_protocol::metadata::MetadataCommand,
        oneshot::Sender<CommandReply>,
        tracing::Span,
    ),
    /// A linearizable read: the state once a barrier is applied.
    Read(oneshot::Sender<Result<MetadataState, ProposeError>>),
    /// This replica's own view.
    Status(oneshot::Sender<MetadStatus>),
    /// This replica's state as it stands, without a barrier (for watchers).
    LocalState(oneshot::Sender<MetadataState>),
    /// The members as this replica knows them.
    Members(oneshot::Sender<MembersView>),
    /// A membership change to propose (this replica must lead).
    ChangeMembers(Vec<Member>, oneshot::Sender<ChangeReply>),
}

/// Where the loop's results go.
#[derive(Debug)]
pub struct Outputs {
    /// Messages to peers, for the sender task.
    pub messages: mpsc::UnboundedSender<Vec<Envelope>>,
    /// The applied state's version, for watchers.
    pub versions: watch::Sender<u64>,
    /// The members, for the sender (addresses) and the HTTP shell.
    pub members: watch::Sender<Vec<Member>>,
}

/// Runs the loop until every input sender is gone.
pub fn run(
    config: Config,
    store: PaxosStore,
    inputs: crate::queue::Queue,
    outputs: Outputs,
    tick: Duration,
    compact_every: u64,
) {
    let Some(mut node) = Node::new(config, store, outputs, compact_every) else {
        return;
    };
    let mut next_tick = Instant::now() + tick;
    loop {
        match inputs.recv_timeout(next_tick.saturating_duration_since(Instant::now())) {
            Ok(input) => {
                node.handle(input);
                // Take whatever else is waiting, so one fsync serves the whole batch.
                for _ in 0..MAX_INPUTS_PER_BATCH {
                    let Some(input) = inputs.try_recv() else {
                        break;
                    };
                    node.handle(input);
                }
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => break,
        }
        // Ticks are due by the clock, not by a quiet queue: a busy leader must
        // still send heartbeats and retransmissions.
        if Instant::now() >= next_tick {
            node.replica.tick();
            next_tick += tick;
            node.forget_abandoned();
        }
        if !node.drain() {
            // Without durable state the replica must not say anything more.
            break;
        }
    }
    tracing::info!("consensus loop stopped");
}

struct Node {
    id: u64,
    incarnation: u64,
    replica: Replica,
    store: PaxosStore,
    machine: StateMachine,
    applied_upto: u64,
    commands: HashMap<RequestId, Vec<Waiter>>,
    reads: HashMap<u64, oneshot::Sender<Result<MetadataState, ProposeError>>>,
    next_barrier: u64,
    outbound: mpsc::UnboundedSender<Vec<Envelope>>,
    /// The applied state's version, for watchers.
    versions: watch::Sender<u64>,
    /// The members, for the sender (addresses) and the HTTP shell.
    members: watch::Sender<Vec<Member>>,
    /// Membership changes proposed here and not yet decided: slot, members, client.
    changes: Vec<(Slot, Vec<Member>, oneshot::Sender<ChangeReply>)>,
    /// Whether this replica led at the last drain, to count leadership changes.
    was_leader: bool,
    /// Entries applied between two log compactions.
    compact_every: u64,
}

impl Node {
    #[cfg(test)]
    fn replica_config(&self) -> Config {
        Config {
            id: self.id,
            incarnation: self.incarnation,
            members: self.replica.members().to_vec(),
            election_ticks: (2, 3),
            heartbeat_ticks: 1,
            max_message_bytes: 1 << 20,
            pre_vote: true,
            seed: 7,
        }
    }

    /// The loop's state, from what `store` holds; `None` if it cannot be read.
    fn new(
        config: Config,
        store: PaxosStore,
        outputs: Outputs,
        compact_every: u64,
    ) -> Option<Self> {
        let Outputs {
            messages: outbound,
            versions,
            members,
        } = outputs;
        let durable = match store.load() {
            Ok(durable) => durable,
            Err(error) => {
                tracing::error!(%error, "cannot load the paxos store");
                return None;
            }
        };
        Some(Node {
            id: config.id,
            incarnation: config.incarnation,
            replica: Replica::new(config, durable),
            store,
            machine: StateMachine::default(),
            applied_upto: 0,
            commands: HashMap::new(),
            reads: HashMap::new(),
            next_barrier: rand::random(),
            outbound,
            versions,
            members,
            changes: Vec::new(),
            was_leader: false,
            compact_every,
        })
    }

    fn handle(&mut self, input: Input) {
        match input {
            Input::Messages(envelopes) => {
                for envelope in envelopes {
                    self.replica.step(envelope);
                }
            }
            Input::Command(command, reply, caller) => {
                // The proposer's clock goes into the log with the command: the
                // one clock lease expiries and the request-id table's ages use.
                let at_ms = kvorum_protocol::wall_clock_ms();
                let request_id = command.request_id.clone();
                // The Paxos round of this command, traced from proposal to application
                // as a child of the request that caused it.
                let round = tracing::info_span!(
                    parent: &caller,
                    "paxos.round",
                    kvorum.request_id = %request_id.0,
                    paxos.leader = self.id,
                    otel.status_code = tracing::field::Empty,
                );
                match self.propose(&LogCommand::Stamped { command, at_ms }) {
                    Ok(()) => self
                        .commands
                        .entry(request_id)
                        .or_default()
                        .push(Waiter { reply, round }),
                    Err(error) => {
                        let _ = reply.send(Err(error));
                    }
                }
            }
            Input::Read(reply) => {
                let barrier = self.next_barrier;
                self.next_barrier = self.next_barrier.wrapping_add(1);
                match self.propose(&LogCommand::Barrier(barrier)) {
                    Ok(()) => {
                        self.reads.insert(barrier, reply);
                    }
                    Err(error) => {
                        let _ = reply.send(Err(error));
                    }
                }
            }
            Input::LocalState(reply) => {
                let _ = reply.send(self.machine.state().clone());
            }
            Input::Members(reply) => {
                let _ = reply.send(MembersView {
                    members: self.replica.members().to_vec(),
                    leader: self.replica.leader(),
                    pending_change: self.replica.pending_change(),
                });
            }
            Input::ChangeMembers(members, reply) => {
                match self.replica.propose_members(members.clone()) {
                    Ok(slot) => {
                        tracing::info!(slot, ?members, "membership change proposed");
                        self.changes.push((slot, members, reply));
                    }
                    Err(MembershipRefused::NotLeader(not)) => {
                        let _ = reply.send(Err(ProposeError::NotLeader(not.leader)));
                    }
                    Err(refused) => {
                        let _ = reply.send(Ok(Err(ChangeRefused::Refused(refused))));
                    }
                }
            }
            Input::Status(reply) => {
                let state = self.machine.state();
                let digest =
                    xxhash_rust::xxh3::xxh3_64(&serde_json::to_vec(state).unwrap_or_default());
                let _ = reply.send(MetadStatus {
                    id: self.id,
                    leader: self.replica.leader(),
                    is_leader: self.replica.is_leader(),
                    decided_upto: self.replica.decided_upto(),
                    version: state.version,
                    state_digest: digest,
                    snapshot_bytes: self.replica.snapshot_bytes() as u64,
                    hears_leader: self.replica.hears_leader(),
                    ballot_round: self.replica.highest_ballot().round,
                    incarnation: self.incarnation,
                    member: self.replica.is_member(),
                    // The HTTP shell knows the peer failures; it fills them in.
                    last_peer_error: None,
                    // The HTTP shell knows the addresses; it fills them in.
                    peers: Default::default(),
                });
            }
        }
    }

    fn propose(&mut self, command: &LogCommand) -> Result<(), ProposeError> {
        let bytes = serde_json::to_vec(command).expect("log commands always encode");
        self.replica
            .propose(bytes)
            .map(|_| ())
            .map_err(|e| ProposeError::NotLeader(e.leader))
    }

    /// Persists, sends and applies what the replica produced; false if persisting failed.
    fn drain(&mut self) -> bool {
        let ready = self.replica.take_ready();
        if let Err(error) = self.store.persist(&ready.persist) {
            tracing::error!(%error, "cannot persist acceptor state; stopping");
            return false;
        }
        if !ready.messages.is_empty() {
            let _ = self.outbound.send(ready.messages);
        }
        if let Some(snapshot) = ready.snapshot {
            match StateMachine::restore(&snapshot.data) {
                Ok(machine) => {
                    self.machine = machine;
                    self.applied_upto = snapshot.upto;
                    // Commands decided inside the snapshot are answered from the
                    // outcomes it remembers.
                    let answered: Vec<RequestId> = self
                        .commands
                        .keys()
                        .filter(|id| self.machine.outcome(id).is_some())
                        .cloned()
                        .collect();
                    for id in answered {
                        let outcome = self.machine.outcome(&id).cloned();
                        for waiter in self.commands.remove(&id).unwrap_or_default() {
                            if let Some(outcome) = outcome.clone() {
                                let _ = waiter.send(Ok(outcome));
                            }
                        }
                    }
                }
                Err(error) => {
                    tracing::error!(%error, "cannot restore a snapshot; stopping");
                    return false;
                }
            }
        }
        if !ready.decided.is_empty() {
            metrics::counter!("kvorum_paxos_decided_entries_total")
                .increment(ready.decided.len() as u64);
        }
        for (slot, entry) in ready.decided {
            self.apply(slot, entry);
            self.applied_upto = slot + 1;
        }
        // A change whose slot a snapshot covered: it may or may not be in;
        // the members say (a retry of the same change is refused or a no-op).
        let applied_upto = self.applied_upto;
        for (_, _, reply) in self
            .changes
            .extract_if(.., |(slot, _, _)| *slot < applied_upto)
        {
            let _ = reply.send(Ok(Err(ChangeRefused::Lost)));
        }
        self.members.send_if_modified(|members| {
            let current = self.replica.members();
            let changed = members.as_slice() != current;
            if changed {
                *members = current.to_vec();
            }
            changed
        });
        let leading = self.replica.is_leader();
        if leading != self.was_leader {
            self.was_leader = leading;
            metrics::counter!("kvorum_paxos_leader_changes_total").increment(1);
            metrics::gauge!("kvorum_paxos_is_leader").set(if leading { 1.0 } else { 0.0 });
        }
        if !self.replica.is_leader() {
            self.release_waiters();
        }
        self.versions.send_if_modified(|version| {
            let current = self.machine.state().version;
            let changed = *version != current;
            *version = current;
            changed
        });
        if self.applied_upto >= self.replica.compacted_upto() + self.compact_every {
            // Written with the next batch; lagging peers then get the snapshot.
            self.replica
                .compact(self.applied_upto, self.machine.snapshot());
        }
        true
    }

    fn apply(&mut self, slot: Slot, entry: Entry) {
        let bytes = match entry {
            Entry::Command(bytes) => bytes,
            Entry::Noop => return,
            Entry::Members(members) => {
                tracing::info!(slot, ?members, "membership changed");
                metrics::counter!("kvorum_paxos_membership_changes_total").increment(1);
                if let Some(at) = self.changes.iter().position(|(s, _, _)| *s == slot) {
                    let (_, proposed, reply) = self.changes.swap_remove(at);
                    let outcome = if proposed == members {
                        Ok(members)
                    } else {
                        Err(ChangeRefused::Lost)
                    };
                    let _ = reply.send(Ok(outcome));
                }
                return;
            }
        };
        if let Some(at) = self.changes.iter().position(|(s, _, _)| *s == slot) {
            let (_, _, reply) = self.changes.swap_remove(at);
            let _ = reply.send(Ok(Err(ChangeRefused::Lost)));
        }
        match serde_json::from_slice::<LogCommand>(&bytes) {
            Ok(LogCommand::Apply(command)) => self.apply_command(&command, None),
            Ok(LogCommand::Stamped { command, at_ms }) => {
                self.apply_command(&command, Some(at_ms));
            }
            Ok(LogCommand::Barrier(id)) => {
                if let Some(waiter) = self.reads.remove(&id) {
                    let _ = waiter.send(Ok(self.machine.state().clone()));
                }
            }
            Err(error) => tracing::warn!(%error, "skipping an undecodable log entry"),
        }
    }

    fn apply_command(&mut self, command: &MetadataCommand, at_ms: Option<u64>) {
        let outcome = self.machine.apply_at(command, at_ms);
        for waiter in self
            .commands
            .remove(&command.request_id)
            .unwrap_or_default()
        {
            let _ = waiter.send(Ok(outcome.clone()));
        }
    }

    /// After losing leadership, tells waiting clients to go to the new leader (a
    /// retry with the same request id is applied at most once, wherever it lands).
    fn release_waiters(&mut self) {
        let leader = self.replica.leader();
        for (_, _, reply) in self.changes.drain(..) {
            let _ = reply.send(Err(ProposeError::NotLeader(leader)));
        }
        if self.commands.is_empty() && self.reads.is_empty() {
            return;
        }
        for (_, waiters) in self.commands.drain() {
            for waiter in waiters {
                let _ = waiter.send(Err(ProposeError::NotLeader(leader)));
            }
        }
        for (_, waiter) in self.reads.drain() {
            let _ = waiter.send(Err(ProposeError::NotLeader(leader)));
        }
    }

    /// Drops the waiters of requests whose clients gave up.
    fn forget_abandoned(&mut self) {
        self.commands.retain(|_, waiters| {
            waiters.retain(|w| !w.is_closed());
            !waiters.is_empty()
        });
        self.reads.retain(|_, waiter| !waiter.is_closed());
        self.changes.retain(|(_, _, reply)| !reply.is_closed());
    }
}

#[cfg(test)]
mod tests {
    use kvorum_consensus::{Ballot, Message};
    use kvorum_protocol::metadata::MetadataOp;
    use kvorum_protocol::{NodeId, NodeInfo};

    use super::*;

    /// A lone replica that leads, on a store in `dir`.
    fn leader(dir: &std::path::Path) -> (Node, mpsc::UnboundedReceiver<Vec<Envelope>>) {
        std::fs::create_dir_all(dir).expect("dir");
        let me = Member {
            id: 1,
            incarnation: 5,
            address: "127.0.0.1:1".to_owned(),
        };
        let config = Config {
            id: 1,
            incarnation: 5,
            members: vec![me],
            election_ticks: (2, 3),
            heartbeat_ticks: 1,
            max_message_bytes: 1 << 20,
            pre_vote: true,
            seed: 7,
        };
        let store = PaxosStore::open(&dir.join("paxos.redb")).expect("store");
        let (messages, sent) = mpsc::unbounded_channel();
        let outputs = Outputs {
            messages,
            versions: watch::channel(0).0,
            members: watch::channel(Vec::new()).0,
        };
        let mut node = Node::new(config, store, outputs, 1_000).expect("node");
        for _ in 0..10 {
            node.replica.tick();
            assert!(node.drain());
        }
        assert!(node.replica.is_leader(), "a lone replica elects itself");
        (node, sent)
    }

    fn register(request: &str) -> MetadataCommand {
        MetadataCommand {
            request_id: RequestId(request.to_owned()),
            expected_version: None,
            fence: None,
            op: MetadataOp::RegisterNode {
                node: NodeInfo::registering(
                    NodeId(9),
                    "127.0.0.1:7009".to_owned(),
                    Default::default(),
                    false,
                ),
            },
        }
    }

    #[test]
    fn a_command_and_a_read_are_answered_only_once_applied_and_in_order() {
        let dir = tempfile::tempdir().expect("dir");
        let (mut node, _sent) = leader(dir.path());
        let (reply, mut command) = oneshot::channel();
        node.handle(Input::Command(register("r1"), reply, tracing::Span::none()));
        let (reply, mut read) = oneshot::channel();
        node.handle(Input::Read(reply));
        assert!(
            command.try_recv().is_err(),
            "answered before it was decided"
        );
        assert!(read.try_recv().is_err(), "read answered before its barrier");
        assert!(node.drain());
        let outcome = command.try_recv().expect("decided and applied");
        assert!(matches!(outcome, Ok(Ok(_))), "{outcome:?}");
        let state = read.try_recv().expect("barrier applied").expect("a state");
        assert!(
            state.nodes.contains_key(&NodeId(9)),
            "the read, after the command, sees it"
        );
        // A retry with the same request id is answered from the remembered outcome.
        let (reply, mut retry) = oneshot::channel();
        node.handle(Input::Command(register("r1"), reply, tracing::Span::none()));
        assert!(node.drain());
        assert_eq!(
            retry.try_recv().expect("answered"),
            outcome,
            "a retry applies nothing twice"
        );
    }

    #[test]
    fn waiting_clients_are_sent_elsewhere_when_leadership_is_lost() {
        let dir = tempfile::tempdir().expect("dir");
        let (mut node, _sent) = leader(dir.path());
        // A proposal that cannot be decided yet: a higher ballot arrives first.
        let (reply, mut command) = oneshot::channel();
        node.handle(Input::Command(register("r2"), reply, tracing::Span::none()));
        let (reply, mut read) = oneshot::channel();
        node.handle(Input::Read(reply));
        node.handle(Input::Messages(vec![Envelope {
            from: 2,
            from_incarnation: 1,
            to: 1,
            to_incarnation: 5,
            message: Message::Prepare {
                ballot: Ballot { round: 99, node: 2 },
                first_slot: 0,
            },
        }]));
        assert!(node.drain());
        assert!(!node.replica.is_leader());
        assert!(matches!(
            command.try_recv(),
            Ok(Err(ProposeError::NotLeader(_)))
        ));
        assert!(matches!(
            read.try_recv(),
            Ok(Err(ProposeError::NotLeader(_)))
        ));
    }

    #[test]
    fn a_membership_change_is_answered_with_the_members_once_decided() {
        let dir = tempfile::tempdir().expect("dir");
        let (mut node, _sent) = leader(dir.path());
        let mut members = node.replica.members().to_vec();
        members.push(Member {
            id: 2,
            incarnation: 8,
            address: "127.0.0.1:2".to_owned(),
        });
        let (reply, mut answer) = oneshot::channel();
        node.handle(Input::ChangeMembers(members.clone(), reply));
        assert!(node.drain());
        assert_eq!(answer.try_recv().expect("decided"), Ok(Ok(members.clone())));
        let (reply, mut view) = oneshot::channel();
        node.handle(Input::Members(reply));
        assert_eq!(view.try_recv().expect("answered").members, members);
    }

    #[test]
    fn a_snapshot_from_a_peer_replaces_the_state_and_the_log_resumes_after_it() {
        let dir = tempfile::tempdir().expect("dir");
        let (mut leader, _sent) = leader(&dir.path().join("1"));
        leader.compact_every = 10;
        for n in 0..25 {
            let (reply, _answer) = oneshot::channel();
            leader.handle(Input::Command(
                register(&format!("c{n}")),
                reply,
                tracing::Span::none(),
            ));
            assert!(leader.drain());
        }
        assert!(leader.drain());
        let snapshot = leader
            .store
            .load()
            .expect("loads")
            .snapshot
            .expect("compacted");
        assert!(snapshot.upto >= 10);

        // A replica that knows nothing gets the snapshot from the leader.
        std::fs::create_dir_all(dir.path().join("2")).expect("dir");
        let config = Config {
            id: 2,
            incarnation: 8,
            ..leader.replica_config()
        };
        let store = PaxosStore::open(&dir.path().join("2").join("paxos.redb")).expect("store");
        let (versions, mut version) = watch::channel(0);
        let outputs = Outputs {
            messages: mpsc::unbounded_channel().0,
            versions,
            members: watch::channel(Vec::new()).0,
        };
        let mut follower = Node::new(config, store, outputs, 1_000).expect("node");
        follower.handle(Input::Messages(vec![Envelope {
            from: 1,
            from_incarnation: 5,
            to: 2,
            to_incarnation: 8,
            message: Message::InstallSnapshot {
                snapshot: snapshot.clone(),
            },
        }]));
        assert!(follower.drain());
        assert_eq!(follower.applied_upto, snapshot.upto);
        let restored = StateMachine::restore(&snapshot.data).expect("restores");
        assert_eq!(follower.machine.state(), restored.state());
        assert_eq!(*version.borrow_and_update(), restored.state().version);
        // Durably: a restart comes back to the same state.
        let reloaded = follower.store.load().expect("loads");
        assert_eq!(reloaded.snapshot.map(|s| s.upto), Some(snapshot.upto));
    }
}
