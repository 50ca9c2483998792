//! Strong-keyspace coordination: the two-phase quorum write and the read with write-back.
//!
//! Write (SYSTEM.md, consistency contract): *prepare* collects the highest
//! version of the key from a quorum; *commit* sends the value with a strictly
//! higher version to every replica and answers once the level's count has
//! acknowledged. Read: collect from the level's count; where replies disagree,
//! write the newest record back until the level's count holds it, then answer.
//! Because any two quorums intersect, this is the ABD register construction
//! (Attiya, Bar-Noy and Dolev, "Sharing Memory Robustly in Message-Passing
//! Systems", 1995) with per-key versions, and QUORUM or ALL operations on one
//! key are linearizable.
//!
//! Every fan-out goes to all replicas of the partition at once and returns as
//! soon as the level is met; the calls still in flight run to completion in the
//! background, so a write reaches every replica that is up.

use std::future::Future;
use std::sync::{Arc, Mutex};

use kvorum_protocol::consistency::quorum;
use kvorum_protocol::storage::{CommitRequest, ReplicaKey};
use kvorum_protocol::{
    ConsistencyLevel, Epoch, Key, KeyspaceName, NodeId, PartitionId, Record, Version,
};
use rand::rngs::StdRng;
use rand::{RngCore, SeedableRng};
use tokio::sync::mpsc;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::quorum::{Tally, TallyState, resolve_read};
use crate::topology::{Replica, Route};
use crate::transport::{ReplicaError, ReplicaTransport};

/// What a request did, reported to the client in `X-Kvorum-*` headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Receipt {
    /// The key's partition.
    pub partition: PartitionId,
    /// The epoch routed by.
    pub epoch: Epoch,
    /// The level served.
    pub consistency: ConsistencyLevel,
    /// Replicas asked.
    pub asked: Vec<NodeId>,
    /// Replicas that acknowledged before the answer.
    pub acked: Vec<NodeId>,
    /// Whether a read wrote the newest version back to stale replicas.
    pub read_repair: bool,
    /// Whether a hint was stored for a replica that was down.
    pub hinted: bool,
}

/// The phase of a request that failed to reach its level.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Reading replicas.
    Read,
    /// Writing the newest record back to stale replicas during a read.
    WriteBack,
    /// Phase one of a write.
    Prepare,
    /// Phase two of a write.
    Commit,
}

impl Phase {
    fn describe(self) -> &'static str {
        match self {
            Phase::Read => "read",
            Phase::WriteBack => "read's write-back",
            Phase::Prepare => "write's prepare phase",
            Phase::Commit => "write's commit phase",
        }
    }
}

/// Why a coordinated request failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CoordinatorError {
    /// Too few replicas answered to meet the level.
    #[error(
        "quorum not reached in the {}: {answered} of {asked} replicas answered, {required} required{}{}",
        phase.describe(),
        match outcome_unknown {
            Some(true) => "; the write may have taken effect on some replicas (outcome unknown)",
            Some(false) => "; the write took effect nowhere",
            None => "",
        },
        last_error.as_ref().map(|e| format!("; last error: {e}")).unwrap_or_default()
    )]
    QuorumNotReached {
        /// The phase that failed.
        phase: Phase,
        /// Replicas that answered successfully.
        answered: usize,
        /// Replicas asked.
        asked: usize,
        /// Replicas needed.
        required: usize,
        /// For writes: whether the write may have been applied somewhere.
        outcome_unknown: Option<bool>,
        /// The last replica error seen, for the operator.
        last_error: Option<String>,
        /// Whether a replica refused the request as routed by an outdated partition map.
        fenced: bool,
        /// What was asked and acknowledged.
        receipt: Box<Receipt>,
    },
    /// The coordinating replica refused the write as the client's to fix: the
    /// key's state would pass a bound (siblings or bytes); nothing changed.
    #[error("{message}")]
    KeyLimit {
        /// The replica's error code (`sibling_limit`, `payload_too_large`, `bad_request`).
        code: kvorum_protocol::ErrorCode,
        /// The replica's explanation.
        message: String,
        /// What was asked.
        receipt: Box<Receipt>,
    },
    /// The key's version counter has reached its maximum; it cannot be written again.
    #[error("the key's version counter is exhausted; it can no longer be written")]
    VersionsExhausted {
        /// What was asked.
        receipt: Box<Receipt>,
    },
}

impl CoordinatorError {
    /// What was asked and acknowledged before the failure.
    pub fn receipt(&self) -> &Receipt {
        match self {
            CoordinatorError::QuorumNotReached { receipt, .. }
            | CoordinatorError::KeyLimit { receipt, .. }
            | CoordinatorError::VersionsExhausted { receipt } => receipt,
        }
    }
}

/// The result of a read: the newest record the level saw (tombstones included).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadOutcome {
    /// The record, or `None` when no replica had the key.
    pub record: Option<Record>,
    /// What happened.
    pub receipt: Receipt,
}

/// The result of a write: the version it was stored with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WriteOutcome {
    /// The write's version.
    pub version: Version,
    /// What happened.
    pub receipt: Receipt,
}

/// A replica's reply, which may say that it must not be counted.
pub(crate) trait Counted {
    /// Whether the reply counts toward the level: not from a catching-up incarnation.
    fn counts(&self) -> bool {
        true
    }
}

impl Counted for kvorum_protocol::storage::ReadResponse {}
impl Counted for kvorum_protocol::storage::PrepareResponse {}
impl Counted for kvorum_protocol::storage::CausalReadResponse {}
impl Counted for kvorum_protocol::storage::CausalWriteResponse {}

impl Counted for kvorum_protocol::storage::CommitResponse {
    fn counts(&self) -> bool {
        !self.catching_up
    }
}

impl Counted for kvorum_protocol::storage::CausalMergeResponse {
    fn counts(&self) -> bool {
        !self.catching_up
    }
}

/// Replies gathered from one fan-out.
pub(crate) struct Gathered<R> {
    /// Replies that count toward the level.
    pub(crate) ok: Vec<(NodeId, R)>,
    pub(crate) failed: Vec<(NodeId, ReplicaError)>,
    /// Replicas that answered as catching-up incarnations: they hold what was
    /// sent (a write may have landed there) but count for nothing.
    pub(crate) uncounted: Vec<NodeId>,
    /// Replicas asked whose replies could count.
    pub(crate) asked: usize,
    /// Uncounted replies from replicas in `asked` (the router thought they counted).
    uncounted_asked: usize,
    pub(crate) met: bool,
}

impl<R> Gathered<R> {
    fn pending(&self) -> usize {
        self.asked - self.ok.len() - self.failed.len() - self.uncounted_asked
    }

    pub(crate) fn fenced(&self) -> bool {
        self.failed.iter().any(|(_, e)| e.stale_epoch.is_some())
    }

    pub(crate) fn last_error(&self) -> Option<String> {
        self.failed
            .last()
            .map(|(node, e)| format!("node {node}: {e}"))
    }
}

/// Records on the current span how many replicas acknowledged, success or not.
pub(crate) fn record_acked(receipt: Result<&Receipt, &CoordinatorError>) {
    let receipt = receipt.unwrap_or_else(|error| error.receipt());
    tracing::Span::current().record("kvorum.replicas_acked", receipt.acked.len());
}

/// Calls every replica at once and gathers replies until `required` succeed or cannot.
///
/// Calls are tasks on `background`, so those still in flight when the level is
/// met run to completion (a write reaches every replica that is up). When the
/// level cannot be met, the remaining replies are still awaited (each call is
/// bounded by the client's timeout), so the error reports exactly how many
/// replicas answered and whether a write may have landed.
/// Replicas known to be catching up are called too (they must receive
/// writes), but neither they nor any reply that says it comes from a
/// catching-up incarnation count toward `required`.
pub(crate) async fn fan_out<R, F, Fut>(
    background: &TaskTracker,
    replicas: &[Replica],
    required: usize,
    call: F,
) -> Gathered<R>
where
    F: Fn(&Replica) -> Fut,
    Fut: Future<Output = Result<R, ReplicaError>> + Send + 'static,
    R: Counted + Send + 'static,
{
    let (replies, mut inbox) = mpsc::unbounded_channel();
    let counted: Vec<NodeId> = replicas
        .iter()
        .filter(|r| !r.catching_up)
        .map(|r| r.id)
        .collect();
    for replica in replicas {
        let (call, replies, node) = (call(replica), replies.clone(), replica.id);
        background.spawn(
            async move {
                // Once the level is met nobody listens; the call still completes.
                let _ = replies.send((node, call.await));
            }
            .in_current_span(),
        );
    }
    drop(replies);
    let mut tally = Tally::new(required, counted.len());
    let mut gathered = Gathered {
        ok: Vec::new(),
        failed: Vec::new(),
        uncounted: Vec::new(),
        asked: counted.len(),
        uncounted_asked: 0,
        met: false,
    };
    while tally.state() != TallyState::Met {
        let Some((node, reply)) = inbox.recv().await else {
            break;
        };
        let in_tally = counted.contains(&node);
        match reply {
            Ok(reply) if in_tally && reply.counts() => {
                tally.succeed();
                gathered.ok.push((node, reply));
            }
            Ok(_) => {
                tracing::debug!(%node, "a catching-up replica answered; not counted");
                if in_tally {
                    tally.fail();
                    gathered.uncounted_asked += 1;
                }
                gathered.uncounted.push(node);
            }
            Err(error) if in_tally => {
                tracing::debug!(%node, %error, "replica call failed");
                tally.fail();
                gathered.failed.push((node, error));
            }
            Err(error) => {
                tracing::debug!(%node, %error, "call to a catching-up replica failed");
                if error.maybe_delivered {
                    gathered.uncounted.push(node);
                }
            }
        }
    }
    gathered.met = tally.state() == TallyState::Met;
    gathered
}

/// Coordinates strong reads and writes over a replica transport.
#[derive(Debug)]
pub struct Coordinator<T> {
    pub(crate) transport: Arc<T>,
    /// Source of the per-write `writer` tags that break version ties.
    tags: Mutex<StdRng>,
    /// Replica calls, including those that outlive the request that made them.
    pub(crate) background: TaskTracker,
    /// A deliberate bug for testing the chaos checkers: strong commits go to one replica only.
    ack_before_quorum: bool,
    /// A deliberate bug for testing the chaos checkers: strong reads answer from one reply.
    read_first_reply: bool,
    /// A strong write whose prepare began longer ago than this commits nothing
    /// (the process was paused, or the prepare was slow): replicas collect
    /// tombstones on the promise that no commit arrives long after its write
    /// began (`None`: no bound, for tests).
    commit_deadline: Option<std::time::Duration>,
    /// A deliberate fault for testing tombstone collection: value commits are
    /// held this long after the deadline checks (zero: off).
    delay_value_commits: std::time::Duration,
}

impl<T: ReplicaTransport> Coordinator<T> {
    /// A coordinator that reaches replicas through `transport`, drawing writer tags from `seed`.
    pub fn new(transport: T, seed: u64) -> Self {
        Self {
            transport: Arc::new(transport),
            tags: Mutex::new(StdRng::seed_from_u64(seed)),
            background: TaskTracker::new(),
            ack_before_quorum: false,
            read_first_reply: false,
            commit_deadline: None,
            delay_value_commits: std::time::Duration::ZERO,
        }
    }

    /// Commits nothing for a strong write whose prepare began more than
    /// `deadline` ago by the monotonic clock; the write fails, known to have
    /// taken effect nowhere.
    pub fn with_commit_deadline(mut self, deadline: std::time::Duration) -> Self {
        self.commit_deadline = Some(deadline);
        self
    }

    /// Breaks the write protocol on purpose: a strong write's commit goes to its
    /// first replica only and is acknowledged from there. For testing that the
    /// chaos checkers catch lost writes; never in production.
    pub fn with_test_only_ack_before_quorum(mut self, enabled: bool) -> Self {
        self.ack_before_quorum = enabled;
        self
    }

    /// Breaks the read protocol on purpose: a strong read is answered from the
    /// first replica that replies, with no quorum and no write-back. For
    /// testing that the chaos checkers catch stale reads under a partition;
    /// never in production.
    pub fn with_test_only_read_first_reply(mut self, enabled: bool) -> Self {
        self.read_first_reply = enabled;
        self
    }

    /// Breaks the assumption tombstone collection rests on, on purpose: each
    /// commit of a strong value is held `delay` after the commit deadline's
    /// checks, as a network that delivers it late would. For testing that
    /// storage nodes refuse such a commit once its key's tombstone is gone;
    /// never in production.
    pub fn with_test_only_delay_value_commits(mut self, delay: std::time::Duration) -> Self {
        self.delay_value_commits = delay;
        self
    }

    /// Waits for replica calls still in flight (background commits) to finish.
    pub async fn drain(&self) {
        self.background.close();
        self.background.wait().await;
    }

    fn writer_tag(&self) -> u64 {
        self.tags
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .next_u64()
    }

    pub(crate) fn receipt(route: &Route, consistency: ConsistencyLevel) -> Receipt {
        Receipt {
            partition: route.partition,
            epoch: route.epoch,
            consistency,
            asked: route
                .replicas
                .iter()
                .chain(&route.joining)
                .map(|r| r.id)
                .collect(),
            acked: Vec::new(),
            read_repair: false,
            hinted: false,
        }
    }

    pub(crate) fn target(route: &Route, keyspace: &KeyspaceName, key: &Key) -> ReplicaKey {
        ReplicaKey {
            partition: route.partition,
            epoch: route.epoch,
            keyspace: keyspace.clone(),
            key: key.clone(),
        }
    }

    /// Reads a key at `level`, writing the newest version back where replicas disagree.
    #[tracing::instrument(name = "strong_read", skip_all, fields(kvorum.keyspace = %keyspace, kvorum.partition = route.partition.0, kvorum.consistency = %level, kvorum.replicas_acked = tracing::field::Empty))]
    pub async fn read(
        &self,
        route: &Route,
        keyspace: &KeyspaceName,
        key: &Key,
        level: ConsistencyLevel,
    ) -> Result<ReadOutcome, CoordinatorError> {
        let result = self.read_quorum(route, keyspace, key, level).await;
        record_acked(result.as_ref().map(|o| &o.receipt));
        result
    }

    async fn read_quorum(
        &self,
        route: &Route,
        keyspace: &KeyspaceName,
        key: &Key,
        level: ConsistencyLevel,
    ) -> Result<ReadOutcome, CoordinatorError> {
        let mut receipt = Self::receipt(route, level);
        // During a move the joining node is read too and one more reply is
        // required per joining node: q + 1 replies out of the old set plus the
        // joining node include a quorum of the old set and a quorum of the new
        // one, so a read overlaps every acknowledged write whether the move
        // switches or aborts, and whichever map the writer routed by.
        let required = if self.read_first_reply {
            1
        } else {
            level.required(route.replicas.len()) + route.joining.len()
        };
        let target = Self::target(route, keyspace, key);
        let transport = &self.transport;
        let gathered = fan_out(&self.background, &route.read_targets(), required, |r| {
            transport.read(r, target.clone())
        })
        .await;
        receipt.acked = gathered.ok.iter().map(|(n, _)| *n).collect();
        if !gathered.met {
            return Err(CoordinatorError::QuorumNotReached {
                phase: Phase::Read,
                answered: gathered.ok.len(),
                asked: gathered.asked,
                required,
                outcome_unknown: None,
                last_error: gathered.last_error(),
                fenced: gathered.fenced(),
                receipt: Box::new(receipt),
            });
        }
        let replies: Vec<_> = gathered
            .ok
            .into_iter()
            .map(|(n, r)| (n, r.record))
            .collect();
        let resolution = resolve_read(&replies);
        let newest = match resolution.newest {
            // ONE is documented as possibly stale: it answers with what one replica holds.
            Some(newest) if level != ConsistencyLevel::One && !resolution.stale.is_empty() => {
                newest
            }
            record => return Ok(ReadOutcome { record, receipt }),
        };
        // The newest record must be on `required` replicas before anyone is told of
        // it, or a later read could miss it (a new-old inversion).
        let laggards: Vec<Replica> = route
            .read_targets()
            .iter()
            .filter(|r| !resolution.holders.contains(&r.id))
            .cloned()
            .collect();
        let need = required.saturating_sub(resolution.holders.len());
        let request = CommitRequest {
            target,
            record: newest.clone(),
        };
        let repaired = fan_out(&self.background, &laggards, need, |r| {
            transport.commit(r, request.clone())
        })
        .await;
        receipt.read_repair = true;
        metrics::counter!("kvorum_read_repairs_total").increment(1);
        receipt.acked = resolution
            .holders
            .iter()
            .copied()
            .chain(repaired.ok.iter().map(|(n, _)| *n))
            .collect();
        tracing::debug!(partition = %route.partition, repaired = repaired.ok.len(), "read repair");
        if !repaired.met {
            return Err(CoordinatorError::QuorumNotReached {
                phase: Phase::WriteBack,
                answered: receipt.acked.len(),
                asked: route.replicas.len() + route.joining.len(),
                required,
                outcome_unknown: None,
                last_error: repaired.last_error(),
                fenced: repaired.fenced(),
                receipt: Box::new(receipt),
            });
        }
        Ok(ReadOutcome {
            record: Some(newest),
            receipt,
        })
    }

    /// Writes `value` (or a tombstone for `None`) at `level` in two phases.
    #[tracing::instrument(name = "strong_write", skip_all, fields(kvorum.keyspace = %keyspace, kvorum.partition = route.partition.0, kvorum.consistency = %level, kvorum.replicas_acked = tracing::field::Empty))]
    pub async fn write(
        &self,
        route: &Route,
        keyspace: &KeyspaceName,
        key: &Key,
        value: Option<&[u8]>,
        level: ConsistencyLevel,
    ) -> Result<WriteOutcome, CoordinatorError> {
        let result = self
            .write_two_phases(route, keyspace, key, value, level)
            .await;
        record_acked(result.as_ref().map(|o| &o.receipt));
        result
    }

    async fn write_two_phases(
        &self,
        route: &Route,
        keyspace: &KeyspaceName,
        key: &Key,
        value: Option<&[u8]>,
        level: ConsistencyLevel,
    ) -> Result<WriteOutcome, CoordinatorError> {
        let mut receipt = Self::receipt(route, level);
        let replication_factor = route.replicas.len();
        let target = Self::target(route, keyspace, key);
        let transport = &self.transport;
        let began = tokio::time::Instant::now();

        // As for reads: during a move the prepare must see a quorum of the old
        // and of the new set, so one more reply per joining node.
        let prepare_quorum = quorum(replication_factor) + route.joining.len();
        let prepared = fan_out(
            &self.background,
            &route.read_targets(),
            prepare_quorum,
            |r| transport.prepare(r, target.clone()),
        )
        .await;
        if !prepared.met {
            return Err(CoordinatorError::QuorumNotReached {
                phase: Phase::Prepare,
                answered: prepared.ok.len(),
                asked: prepared.asked,
                required: prepare_quorum,
                outcome_unknown: Some(false),
                last_error: prepared.last_error(),
                fenced: prepared.fenced(),
                receipt: Box::new(receipt),
            });
        }
        let highest = prepared.ok.iter().filter_map(|(_, p)| p.version).max();
        let version = Version::next_after(highest, self.writer_tag()).ok_or_else(|| {
            CoordinatorError::VersionsExhausted {
                receipt: Box::new(receipt.clone()),
            }
        })?;
        // Checked last before the commits go out, so that a router paused
        // between its phases (or a prepare that crawled) sends no commit that
        // could arrive after its key's tombstone was collected.
        if let Some(deadline) = self.commit_deadline
            && began.elapsed() > deadline
        {
            return Err(CoordinatorError::QuorumNotReached {
                phase: Phase::Commit,
                answered: 0,
                asked: route.commit_targets().len(),
                required: level.required(replication_factor),
                outcome_unknown: Some(false),
                last_error: Some(format!(
                    "the prepare began {} ms ago, past the {} ms commit deadline; nothing was committed",
                    began.elapsed().as_millis(),
                    deadline.as_millis()
                )),
                fenced: false,
                receipt: Box::new(receipt),
            });
        }

        // A node joining the set must hold the write too, or the switch to the new
        // set could leave it on fewer than a quorum (Cassandra's pending ranges):
        // each joining node adds one to the acknowledgements required.
        let mut required = level.required(replication_factor) + route.joining.len();
        let request = CommitRequest {
            target,
            record: Record {
                version,
                value: value.map(<[u8]>::to_vec),
            },
        };
        let targets = route.commit_targets();
        let targets = if self.ack_before_quorum {
            required = 1;
            &targets[..1]
        } else {
            &targets[..]
        };
        // Checked again as each call starts, for a router paused after the
        // check above: a commit is either sent within the deadline or not at all.
        let send_by = self.commit_deadline.map(|deadline| began + deadline);
        let delay = if value.is_some() {
            self.delay_value_commits
        } else {
            std::time::Duration::ZERO
        };
        let committed = fan_out(&self.background, targets, required, |r| {
            let (transport, replica, request) = (transport.clone(), r.clone(), request.clone());
            async move {
                if send_by.is_some_and(|at| tokio::time::Instant::now() > at) {
                    return Err(ReplicaError {
                        maybe_delivered: false,
                        stale_epoch: None,
                        detail: None,
                        message: "past the commit deadline: not sent".to_owned(),
                    });
                }
                if !delay.is_zero() {
                    tokio::time::sleep(delay).await;
                }
                transport.commit(&replica, request).await
            }
        })
        .await;
        receipt.acked = committed.ok.iter().map(|(n, _)| *n).collect();
        if !committed.met {
            let outcome_unknown = !committed.ok.is_empty()
                || !committed.uncounted.is_empty()
                || committed.pending() > 0
                || committed.failed.iter().any(|(_, e)| e.maybe_delivered);
            return Err(CoordinatorError::QuorumNotReached {
                phase: Phase::Commit,
                answered: committed.ok.len(),
                asked: committed.asked,
                required,
                outcome_unknown: Some(outcome_unknown),
                last_error: committed.last_error(),
                fenced: committed.fenced(),
                receipt: Box::new(receipt),
            });
        }
        Ok(WriteOutcome { version, receipt })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::Mutex;
    use std::time::Duration;

    use kvorum_protocol::storage::{CommitResponse, PrepareResponse, ReadResponse};

    use super::*;

    /// How an in-process replica behaves.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum Behaviour {
        /// Serves requests like a storage node.
        Up,
        /// Refuses connections: the request never arrives.
        Down,
        /// Never answers.
        Stalled,
        /// Serves reads and prepares, but loses the answer to a commit after applying it.
        LosesCommitReplies,
        /// A new incarnation catching up: refuses reads and prepares, applies
        /// commits and merges and says its acknowledgement does not count.
        CatchingUp,
        /// Serves everything, but answers reads and prepares after a second
        /// (a replica stalled by a disk, or a router paused between phases).
        SlowPrepares,
    }

    #[derive(Debug, Default)]
    struct Replicas {
        behaviour: HashMap<NodeId, Behaviour>,
        records: HashMap<(NodeId, String), Record>,
        causal: HashMap<(NodeId, String), kvorum_protocol::CausalState>,
        /// (holder, target) of every hint stored.
        hints: Vec<(NodeId, NodeId)>,
        clock: u64,
    }

    /// In-process replicas with the storage node's keep-if-higher rule.
    #[derive(Debug, Clone, Default)]
    struct FakeReplicas(Arc<Mutex<Replicas>>);

    impl FakeReplicas {
        fn set(&self, node: u64, behaviour: Behaviour) {
            self.0
                .lock()
                .expect("lock")
                .behaviour
                .insert(NodeId(node), behaviour);
        }

        fn put(&self, node: u64, key: &str, record: Record) {
            self.0
                .lock()
                .expect("lock")
                .records
                .insert((NodeId(node), key.to_owned()), record);
        }

        fn get(&self, node: u64, key: &str) -> Option<Record> {
            self.0
                .lock()
                .expect("lock")
                .records
                .get(&(NodeId(node), key.to_owned()))
                .cloned()
        }

        fn causal(&self, node: u64, key: &str) -> kvorum_protocol::CausalState {
            self.0
                .lock()
                .expect("lock")
                .causal
                .get(&(NodeId(node), key.to_owned()))
                .cloned()
                .unwrap_or_default()
        }

        fn hints(&self) -> Vec<(NodeId, NodeId)> {
            self.0.lock().expect("lock").hints.clone()
        }

        fn call<R, F>(
            &self,
            node: NodeId,
            is_commit: bool,
            apply: F,
        ) -> impl Future<Output = Result<R, ReplicaError>> + Send + 'static + use<R, F>
        where
            R: Send + 'static,
            F: FnOnce(&mut Replicas) -> R + Send + 'static,
        {
            let replicas = self.0.clone();
            async move {
                let behaviour = replicas
                    .lock()
                    .expect("lock")
                    .behaviour
                    .get(&node)
                    .copied()
                    .unwrap_or(Behaviour::Up);
                let error = |maybe_delivered| ReplicaError {
                    maybe_delivered,
                    stale_epoch: None,
                    detail: None,
                    message: format!("node {node} is {behaviour:?}"),
                };
                match behaviour {
                    Behaviour::Down => Err(error(false)),
                    Behaviour::Stalled => std::future::pending().await,
                    Behaviour::LosesCommitReplies if is_commit => {
                        apply(&mut replicas.lock().expect("lock"));
                        Err(error(true))
                    }
                    Behaviour::CatchingUp if !is_commit => Err(error(false)),
                    Behaviour::SlowPrepares if !is_commit => {
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        Ok(apply(&mut replicas.lock().expect("lock")))
                    }
                    Behaviour::Up
                    | Behaviour::LosesCommitReplies
                    | Behaviour::CatchingUp
                    | Behaviour::SlowPrepares => Ok(apply(&mut replicas.lock().expect("lock"))),
                }
            }
        }
    }

    impl ReplicaTransport for FakeReplicas {
        fn read(
            &self,
            replica: &Replica,
            target: ReplicaKey,
        ) -> impl Future<Output = Result<ReadResponse, ReplicaError>> + Send + 'static + use<>
        {
            let node = replica.id;
            self.call(node, false, move |r| ReadResponse {
                record: r.records.get(&(node, target.key.to_string())).cloned(),
            })
        }

        fn prepare(
            &self,
            replica: &Replica,
            target: ReplicaKey,
        ) -> impl Future<Output = Result<PrepareResponse, ReplicaError>> + Send + 'static + use<>
        {
            let node = replica.id;
            self.call(node, false, move |r| PrepareResponse {
                version: r
                    .records
                    .get(&(node, target.key.to_string()))
                    .map(|rec| rec.version),
            })
        }

        fn commit(
            &self,
            replica: &Replica,
            request: CommitRequest,
        ) -> impl Future<Output = Result<CommitResponse, ReplicaError>> + Send + 'static + use<>
        {
            let node = replica.id;
            self.call(node, true, move |r| {
                let slot = (node, request.target.key.to_string());
                let catching_up = r.behaviour.get(&node) == Some(&Behaviour::CatchingUp);
                match r.records.get(&slot) {
                    Some(held) if held.version >= request.record.version => CommitResponse {
                        applied: false,
                        current: held.version,
                        catching_up,
                    },
                    _ => {
                        let current = request.record.version;
                        r.records.insert(slot, request.record);
                        CommitResponse {
                            applied: true,
                            current,
                            catching_up,
                        }
                    }
                }
            })
        }

        fn causal_read(
            &self,
            replica: &Replica,
            target: ReplicaKey,
        ) -> impl Future<
            Output = Result<kvorum_protocol::storage::CausalReadResponse, ReplicaError>,
        >
        + Send
        + 'static
        + use<> {
            let node = replica.id;
            self.call(node, false, move |r| {
                kvorum_protocol::storage::CausalReadResponse {
                    state: r
                        .causal
                        .get(&(node, target.key.to_string()))
                        .cloned()
                        .unwrap_or_default(),
                    deleted_for_ms: None,
                }
            })
        }

        fn causal_write(
            &self,
            replica: &Replica,
            request: kvorum_protocol::storage::CausalWriteRequest,
        ) -> impl Future<
            Output = Result<kvorum_protocol::storage::CausalWriteResponse, ReplicaError>,
        >
        + Send
        + 'static
        + use<> {
            let node = replica.id;
            self.call(node, true, move |r| {
                let slot = (node, request.target.key.to_string());
                r.clock += 1;
                let held = r.causal.get(&slot).cloned().unwrap_or_default();
                let (state, _) =
                    held.write(node.0, request.context.as_ref(), request.value, r.clock);
                r.causal.insert(slot, state.clone());
                r.hints
                    .extend(request.hint_for.iter().map(|target| (node, *target)));
                kvorum_protocol::storage::CausalWriteResponse { state }
            })
        }

        fn causal_merge(
            &self,
            replica: &Replica,
            request: kvorum_protocol::storage::CausalMergeRequest,
        ) -> impl Future<
            Output = Result<kvorum_protocol::storage::CausalMergeResponse, ReplicaError>,
        >
        + Send
        + 'static
        + use<> {
            let node = replica.id;
            self.call(node, true, move |r| {
                let slot = (node, request.target.key.to_string());
                let held = r.causal.get(&slot).cloned().unwrap_or_default();
                let joined = held.join(&request.state);
                let changed = joined != held;
                r.causal.insert(slot, joined);
                kvorum_protocol::storage::CausalMergeResponse {
                    changed,
                    catching_up: r.behaviour.get(&node) == Some(&Behaviour::CatchingUp),
                }
            })
        }

        fn store_hints(
            &self,
            replica: &Replica,
            request: kvorum_protocol::storage::HintRequest,
        ) -> impl Future<Output = Result<kvorum_protocol::storage::HintResponse, ReplicaError>>
        + Send
        + 'static
        + use<> {
            let node = replica.id;
            self.call(node, false, move |r| {
                r.hints
                    .extend(request.targets.iter().map(|target| (node, *target)));
                kvorum_protocol::storage::HintResponse {
                    stored: request.targets.len(),
                }
            })
        }
    }

    fn route() -> Route {
        let replicas = (1..=3)
            .map(|i| Replica {
                id: NodeId(i),
                address: Arc::from(format!("node-{i}")),
                down: false,
                catching_up: false,
            })
            .collect();
        Route {
            partition: PartitionId(0),
            epoch: Epoch(1),
            replicas,
            joining: Vec::new(),
        }
    }

    fn record(counter: u64, value: &str) -> Record {
        Record {
            version: Version { counter, writer: 0 },
            value: Some(value.as_bytes().to_vec()),
        }
    }

    /// Three in-process replicas and a coordinator over them.
    struct Harness {
        replicas: FakeReplicas,
        coordinator: Arc<Coordinator<FakeReplicas>>,
    }

    impl Harness {
        fn new() -> Self {
            let replicas = FakeReplicas::default();
            Self {
                coordinator: Arc::new(Coordinator::new(replicas.clone(), 7)),
                replicas,
            }
        }

        /// Writes `value` (`None` deletes) to key `k`, failing the test if the coordinator hangs.
        async fn write(
            &self,
            value: Option<&str>,
            level: ConsistencyLevel,
        ) -> Result<WriteOutcome, CoordinatorError> {
            let value = value.map(str::as_bytes);
            let key = Key::parse("k").expect("key");
            within(self.coordinator.write(
                &route(),
                &KeyspaceName::default_keyspace(),
                &key,
                value,
                level,
            ))
            .await
        }

        /// Reads key `k`, failing the test if the coordinator hangs.
        async fn read(&self, level: ConsistencyLevel) -> Result<ReadOutcome, CoordinatorError> {
            let key = Key::parse("k").expect("key");
            within(
                self.coordinator
                    .read(&route(), &KeyspaceName::default_keyspace(), &key, level),
            )
            .await
        }

        /// The value a successful read returns.
        async fn value(&self, level: ConsistencyLevel) -> Option<Vec<u8>> {
            self.read(level)
                .await
                .expect("read")
                .record
                .and_then(|r| r.value)
        }
    }

    /// Bounds a test's wait, so a coordinator that hangs fails the test instead of stalling it.
    async fn within<F: Future>(future: F) -> F::Output {
        tokio::time::timeout(Duration::from_secs(10), future)
            .await
            .expect("the coordinator answered")
    }

    /// The fields of a quorum failure: phase, replicas answered, replicas required, outcome unknown.
    fn quorum_failure<T: std::fmt::Debug>(
        result: Result<T, CoordinatorError>,
    ) -> (Phase, usize, usize, Option<bool>) {
        match result {
            Err(CoordinatorError::QuorumNotReached {
                phase,
                answered,
                required,
                outcome_unknown,
                ..
            }) => (phase, answered, required, outcome_unknown),
            other => panic!("expected a quorum failure, got {other:?}"),
        }
    }

    use ConsistencyLevel::{All, One, Quorum};

    #[tokio::test]
    async fn a_quorum_write_is_read_back_at_every_level() {
        let harness = Harness::new();
        let written = harness.write(Some("v"), Quorum).await.expect("write");
        assert_eq!(written.version.counter, 1);
        assert!(written.receipt.acked.len() >= 2);
        // QUORUM and ALL must see it; ONE may be stale by contract but every fake replica applies at once.
        for level in [One, Quorum, All] {
            assert_eq!(harness.value(level).await, Some(b"v".to_vec()), "{level}");
        }
    }

    #[tokio::test]
    async fn each_write_takes_a_version_above_every_prepared_one() {
        let harness = Harness::new();
        harness.replicas.put(2, "k", record(41, "old"));
        let written = harness.write(Some("new"), All).await.expect("write");
        // Whether or not node 2 was in the prepare quorum, the version must beat every
        // version the prepare phase saw; a stale winner would be silently ignored.
        let on_two = harness.replicas.get(2, "k").expect("held");
        assert_eq!(
            on_two.value,
            Some(b"new".to_vec()),
            "node 2 kept {on_two:?}, write was {:?}",
            written.version
        );
    }

    #[tokio::test]
    async fn quorum_survives_one_replica_down_and_all_does_not() {
        let harness = Harness::new();
        harness.replicas.set(1, Behaviour::Down);
        harness
            .write(Some("v"), Quorum)
            .await
            .expect("quorum write");
        assert_eq!(harness.value(Quorum).await, Some(b"v".to_vec()));
        // Two replicas hold the write: the client must not be told it failed cleanly.
        assert_eq!(
            quorum_failure(harness.write(Some("w"), All).await),
            (Phase::Commit, 2, 3, Some(true))
        );
        assert_eq!(
            quorum_failure(harness.read(All).await),
            (Phase::Read, 2, 3, None)
        );
    }

    #[tokio::test]
    async fn a_failed_prepare_writes_nothing_and_says_so() {
        let harness = Harness::new();
        harness.replicas.set(2, Behaviour::Down);
        harness.replicas.set(3, Behaviour::Down);
        let result = harness.write(Some("v"), Quorum).await;
        let message = result
            .as_ref()
            .err()
            .map(ToString::to_string)
            .unwrap_or_default();
        assert_eq!(quorum_failure(result), (Phase::Prepare, 1, 2, Some(false)));
        assert!(
            message.contains("1 of 3 replicas answered, 2 required"),
            "{message}"
        );
        assert_eq!(harness.replicas.get(1, "k"), None);
    }

    #[tokio::test]
    async fn a_write_whose_prepare_outlived_the_commit_deadline_commits_nothing() {
        let replicas = FakeReplicas::default();
        for node in 1..=3 {
            replicas.set(node, Behaviour::SlowPrepares);
        }
        let coordinator =
            Coordinator::new(replicas.clone(), 7).with_commit_deadline(Duration::from_millis(500));
        let key = Key::parse("k").expect("key");
        let keyspace = KeyspaceName::default_keyspace();
        let result = coordinator
            .write(&route(), &keyspace, &key, Some(b"late"), Quorum)
            .await;
        let message = result
            .as_ref()
            .err()
            .map(ToString::to_string)
            .unwrap_or_default();
        assert_eq!(quorum_failure(result), (Phase::Commit, 0, 2, Some(false)));
        assert!(message.contains("commit deadline"), "{message}");
        for node in 1..=3 {
            assert_eq!(replicas.get(node, "k"), None, "node {node} got a commit");
        }
        // Within the deadline the same write goes through.
        let coordinator =
            Coordinator::new(replicas.clone(), 7).with_commit_deadline(Duration::from_secs(5));
        coordinator
            .write(&route(), &keyspace, &key, Some(b"on time"), Quorum)
            .await
            .expect("a write within its deadline");
    }

    #[tokio::test]
    async fn a_commit_whose_replies_are_lost_is_reported_unknown() {
        let harness = Harness::new();
        harness.replicas.set(2, Behaviour::LosesCommitReplies);
        harness.replicas.set(3, Behaviour::LosesCommitReplies);
        let result = harness.write(Some("w"), Quorum).await;
        let message = result
            .as_ref()
            .err()
            .map(ToString::to_string)
            .unwrap_or_default();
        assert_eq!(quorum_failure(result), (Phase::Commit, 1, 2, Some(true)));
        assert!(message.contains("outcome unknown"), "{message}");
        // Indeed the write did take effect: a later read finds it.
        harness.replicas.set(2, Behaviour::Up);
        harness.replicas.set(3, Behaviour::Up);
        assert_eq!(harness.value(Quorum).await, Some(b"w".to_vec()));
    }

    #[tokio::test]
    async fn answers_come_as_soon_as_the_level_is_met() {
        let harness = Harness::new();
        harness.replicas.set(3, Behaviour::Stalled);
        harness
            .write(Some("v"), Quorum)
            .await
            .expect("a stalled replica does not hold up a quorum write");
        let read = harness.read(Quorum).await.expect("read");
        assert_eq!(read.receipt.acked, vec![NodeId(1), NodeId(2)]);
        assert_eq!(read.receipt.asked, vec![NodeId(1), NodeId(2), NodeId(3)]);
    }

    #[tokio::test]
    async fn a_read_that_sees_disagreement_writes_the_newest_back_before_answering() {
        let harness = Harness::new();
        harness.replicas.put(1, "k", record(2, "new"));
        harness.replicas.put(2, "k", record(1, "old"));
        harness.replicas.set(3, Behaviour::Down);
        let read = harness.read(Quorum).await.expect("read");
        assert_eq!(read.record, Some(record(2, "new")));
        assert!(read.receipt.read_repair);
        assert_eq!(
            harness.replicas.get(2, "k"),
            Some(record(2, "new")),
            "the stale replica was repaired"
        );
    }

    #[tokio::test]
    async fn a_read_that_cannot_spread_the_newest_version_fails() {
        let harness = Harness::new();
        harness.replicas.put(1, "k", record(2, "new"));
        harness.replicas.put(2, "k", record(1, "old"));
        harness.replicas.set(2, Behaviour::LosesCommitReplies);
        harness.replicas.set(3, Behaviour::Down);
        // As far as the router knows, the newest version is on one replica only.
        let result = harness.read(Quorum).await;
        assert!(matches!(&result, Err(e) if e.receipt().read_repair));
        assert_eq!(quorum_failure(result), (Phase::WriteBack, 1, 2, None));
    }

    #[tokio::test]
    async fn one_reads_answer_from_a_single_replica_without_repair() {
        let harness = Harness::new();
        harness.replicas.put(1, "k", record(1, "old"));
        harness.replicas.set(2, Behaviour::Stalled);
        harness.replicas.set(3, Behaviour::Stalled);
        let read = harness.read(One).await.expect("read");
        assert_eq!(read.record, Some(record(1, "old")));
        assert!(!read.receipt.read_repair);
    }

    #[tokio::test]
    async fn deletes_leave_tombstones_that_reads_report_as_absent_records() {
        let harness = Harness::new();
        harness.write(Some("v"), Quorum).await.expect("put");
        harness.write(None, Quorum).await.expect("delete");
        let read = harness.read(Quorum).await.expect("read");
        assert!(read.record.expect("a tombstone").is_tombstone());
    }

    #[tokio::test]
    async fn a_key_whose_counter_is_exhausted_refuses_writes() {
        let harness = Harness::new();
        for node in 1..=3 {
            harness
                .replicas
                .put(node, "k", record(Version::MAX_COUNTER, "last"));
        }
        let result = harness.write(Some("more"), Quorum).await;
        assert!(
            matches!(result, Err(CoordinatorError::VersionsExhausted { .. })),
            "{result:?}"
        );
        assert_eq!(harness.value(Quorum).await, Some(b"last".to_vec()));
    }

    #[tokio::test]
    async fn concurrent_writers_get_distinct_ordered_versions() {
        let harness = Arc::new(Harness::new());
        let writes = (0..16).map(|i| {
            let harness = harness.clone();
            tokio::spawn(async move {
                let value = format!("writer-{i}");
                harness
                    .write(Some(&value), Quorum)
                    .await
                    .expect("write")
                    .version
            })
        });
        let mut versions = Vec::new();
        for write in writes {
            versions.push(within(write).await.expect("join"));
        }
        let highest = versions.iter().max().copied();
        versions.sort();
        versions.dedup();
        assert_eq!(versions.len(), 16, "two writes shared a version");
        let read = harness.read(Quorum).await.expect("read");
        assert_eq!(
            read.record.map(|r| r.version),
            highest,
            "the read returns the highest version"
        );
    }

    /// The route with replica 3 known (or, with `known: false`, not yet known) to be catching up.
    fn route_with_catching_up(known: bool) -> Route {
        let mut route = route();
        route.replicas[2].catching_up = known;
        route
    }

    #[tokio::test]
    async fn a_catching_up_replica_gets_the_write_but_counts_for_nothing() {
        for known in [true, false] {
            let harness = Harness::new();
            harness.replicas.set(3, Behaviour::CatchingUp);
            let route = route_with_catching_up(known);
            let key = Key::parse("k").expect("key");
            let keyspace = KeyspaceName::default_keyspace();
            let written = within(harness.coordinator.write(
                &route,
                &keyspace,
                &key,
                Some(b"v"),
                ConsistencyLevel::Quorum,
            ))
            .await
            .expect("1 and 2 are a quorum");
            let mut acked = written.receipt.acked.clone();
            acked.sort();
            assert_eq!(acked, [NodeId(1), NodeId(2)], "known: {known}");
            // ALL cannot be met while one replica is catching up.
            let all = within(harness.coordinator.write(
                &route,
                &keyspace,
                &key,
                Some(b"w"),
                ConsistencyLevel::All,
            ))
            .await;
            assert!(all.is_err(), "known: {known}: {all:?}");
            // With replica 1 away, 2 alone is no quorum: the catching-up 3 cannot make one.
            harness.replicas.set(1, Behaviour::Down);
            let read = within(harness.coordinator.read(
                &route,
                &keyspace,
                &key,
                ConsistencyLevel::Quorum,
            ))
            .await;
            assert!(read.is_err(), "known: {known}: {read:?}");
            let write = within(harness.coordinator.write(
                &route,
                &keyspace,
                &key,
                Some(b"x"),
                ConsistencyLevel::Quorum,
            ))
            .await;
            let (phase, answered, required, outcome_unknown) = quorum_failure(write);
            assert_eq!(
                (phase, answered, required, outcome_unknown),
                (Phase::Prepare, 1, 2, Some(false)),
                "known: {known}"
            );
            // The catching-up replica still received every write that got through.
            assert!(harness.replicas.get(3, "k").is_some(), "known: {known}");
        }
    }

    #[tokio::test]
    async fn a_joining_node_takes_every_write_and_counts_one_more_ack() {
        let harness = Harness::new();
        let moving = Route {
            joining: vec![Replica {
                down: false,
                catching_up: false,
                id: NodeId(4),
                address: Arc::from("node-4"),
            }],
            ..route()
        };
        let key = Key::parse("k").expect("key");
        let keyspace = KeyspaceName::default_keyspace();
        let write = |value: &'static str| {
            within(harness.coordinator.write(
                &moving,
                &keyspace,
                &key,
                Some(value.as_bytes()),
                Quorum,
            ))
        };
        // Replica 3 is the one being replaced and is down: 1, 2 and the joining 4 ack.
        harness.replicas.set(3, Behaviour::Down);
        let written = write("v").await.expect("three acks among 1, 2 and 4");
        assert_eq!(
            written.receipt.asked,
            [NodeId(1), NodeId(2), NodeId(3), NodeId(4)]
        );
        assert_eq!(
            harness.replicas.get(4, "k").and_then(|r| r.value),
            Some(b"v".to_vec())
        );
        // Without the joining node a quorum of the old set is not enough: the
        // switch to {1, 2, 4} could otherwise leave the write on one of them.
        harness.replicas.set(4, Behaviour::Down);
        match write("w").await {
            Err(CoordinatorError::QuorumNotReached { required, .. }) => assert_eq!(required, 3),
            other => panic!("expected a failed write, got {other:?}"),
        }
        // A read needs one more reply during the move, and the joining node that
        // lacks the value is repaired even when the old replicas agree.
        harness.replicas.set(3, Behaviour::Up);
        harness.replicas.set(4, Behaviour::Up);
        harness.replicas.put(1, "agreed", record(3, "x"));
        harness.replicas.put(2, "agreed", record(3, "x"));
        harness.replicas.put(3, "agreed", record(3, "x"));
        let read = within(harness.coordinator.read(
            &moving,
            &KeyspaceName::default_keyspace(),
            &Key::parse("agreed").expect("key"),
            Quorum,
        ))
        .await
        .expect("read");
        assert_eq!(read.record, Some(record(3, "x")));
        // A read that repairs also repairs the joining node.
        harness.replicas.set(3, Behaviour::Up);
        harness.replicas.set(4, Behaviour::Up);
        harness.replicas.put(1, "r", record(5, "newest"));
        harness.replicas.put(2, "r", record(5, "newest"));
        let read = within(harness.coordinator.read(
            &moving,
            &KeyspaceName::default_keyspace(),
            &Key::parse("r").expect("key"),
            All,
        ))
        .await
        .expect("read");
        assert!(read.receipt.read_repair);
        assert_eq!(harness.replicas.get(4, "r"), Some(record(5, "newest")));
    }

    mod eventual {
        use super::*;
        use crate::eventual::CausalWrite;
        use kvorum_protocol::VersionVector;

        fn key() -> Key {
            Key::parse("k").expect("key")
        }

        fn ks() -> KeyspaceName {
            KeyspaceName::parse("carts").expect("name")
        }

        fn hinted(context: Option<VersionVector>) -> CausalWrite {
            CausalWrite {
                context,
                hinted_handoff: true,
            }
        }

        async fn write(
            harness: &Harness,
            route: &Route,
            value: &str,
            context: Option<VersionVector>,
            level: ConsistencyLevel,
        ) -> Result<crate::eventual::CausalWriteOutcome, CoordinatorError> {
            within(harness.coordinator.causal_write(
                route,
                &ks(),
                &key(),
                Some(value.as_bytes()),
                hinted(context),
                level,
            ))
            .await
        }

        #[tokio::test]
        async fn a_write_reaches_every_replica_and_blind_writes_become_siblings() {
            let harness = Harness::new();
            let first = write(&harness, &route(), "a", None, Quorum)
                .await
                .expect("write");
            assert_eq!(first.receipt.acked.len(), 2);
            assert!(!first.receipt.hinted);
            let second = write(&harness, &route(), "b", Some(VersionVector::new()), All)
                .await
                .expect("write");
            assert_eq!(second.state.siblings().len(), 2);
            let read = within(
                harness
                    .coordinator
                    .causal_read(&route(), &ks(), &key(), All),
            )
            .await
            .expect("read");
            assert_eq!(read.state, second.state);
            // A write carrying the read's context supersedes both siblings.
            let resolved = write(
                &harness,
                &route(),
                "c",
                Some(read.state.context().clone()),
                All,
            )
            .await
            .expect("write");
            assert_eq!(resolved.state.siblings().len(), 1);
            for node in 1..=3 {
                assert_eq!(
                    harness.replicas.causal(node, "k"),
                    resolved.state,
                    "node {node}"
                );
            }
        }

        #[tokio::test]
        async fn replicas_known_down_or_failing_get_hints_instead() {
            let harness = Harness::new();
            let mut route = route();
            route.replicas[2].down = true;
            harness.replicas.set(2, Behaviour::Down);
            // Node 1 coordinates; node 2 refuses the merge; node 3 is known down and not called.
            let written = write(&harness, &route, "v", None, One)
                .await
                .expect("write");
            assert!(written.receipt.hinted);
            let deadline = std::time::Instant::now() + Duration::from_secs(5);
            loop {
                let mut hints = harness.replicas.hints();
                hints.sort();
                if hints == vec![(NodeId(1), NodeId(2)), (NodeId(1), NodeId(3))] {
                    break;
                }
                assert!(std::time::Instant::now() < deadline, "hints: {hints:?}");
                tokio::task::yield_now().await;
            }
            assert!(harness.replicas.causal(3, "k").is_empty());
            // ALL cannot be met with a replica down: the write took effect somewhere, outcome unknown.
            let failed = write(&harness, &route, "w", None, All).await;
            assert_eq!(quorum_failure(failed), (Phase::Commit, 1, 3, Some(true)));
        }

        #[tokio::test]
        async fn the_first_reachable_replica_coordinates() {
            let harness = Harness::new();
            harness.replicas.set(1, Behaviour::Down);
            let written = write(&harness, &route(), "v", None, Quorum)
                .await
                .expect("write");
            assert_eq!(written.state.siblings()[0].dot.actor, 2);
            assert!(written.receipt.hinted, "node 1 missed it and is hinted");
        }

        #[tokio::test]
        async fn a_read_repairs_the_replicas_that_answered_stale() {
            let harness = Harness::new();
            harness.replicas.set(3, Behaviour::Down);
            let written = write(&harness, &route(), "v", None, Quorum)
                .await
                .expect("write");
            harness.replicas.set(3, Behaviour::Up);
            let read = within(
                harness
                    .coordinator
                    .causal_read(&route(), &ks(), &key(), All),
            )
            .await
            .expect("read");
            assert!(read.receipt.read_repair);
            assert_eq!(read.state, written.state);
            let deadline = std::time::Instant::now() + Duration::from_secs(5);
            while harness.replicas.causal(3, "k") != written.state {
                assert!(
                    std::time::Instant::now() < deadline,
                    "node 3 was not repaired"
                );
                tokio::task::yield_now().await;
            }
            let again = within(
                harness
                    .coordinator
                    .causal_read(&route(), &ks(), &key(), All),
            )
            .await
            .expect("read");
            assert!(!again.receipt.read_repair);
        }
    }
}
