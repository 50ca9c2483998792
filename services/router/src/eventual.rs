//! Eventual-keyspace coordination: writes coordinated by one replica and
//! replicated by merge, hinted handoff, and reads that join replies and repair.
//!
//! **Write.** The router asks the first reachable replica of the key to
//! coordinate: that replica gives the write its own next dot, applies it
//! durably and returns the key's new causal state. The router merges that
//! state into every other replica and answers once the level's count (the
//! coordinator included) holds it; the rest complete in the background. A
//! replica the failure detector holds down is not called: the coordinator
//! stores a durable hint for it in the same transaction as the write. A
//! replica whose merge fails gets a hint too (before the answer if it failed
//! by then, in the background otherwise); the coordinator hands the key's
//! state over once the replica is back.
//!
//! **Read.** Every replica that is not down is asked; once the level's count
//! has answered, the replies are joined (dominated siblings disappear,
//! concurrent ones remain for the keyspace's strategy) and any replica whose
//! reply differs from the join is sent the join in the background (read repair).

use kvorum_protocol::storage::{CausalMergeRequest, CausalWriteRequest, HintRequest};
use kvorum_protocol::{CausalState, ConsistencyLevel, Key, KeyspaceName, NodeId, VersionVector};
use tokio::sync::mpsc;
use tracing::Instrument;

use crate::coordinator::{
    Coordinator, CoordinatorError, Counted, Phase, Receipt, fan_out, record_acked,
};
use crate::topology::{Replica, Route};
use crate::transport::ReplicaTransport;

/// The joined state a read saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CausalReadOutcome {
    /// The join of the replies: every sibling nobody superseded, and the context.
    pub state: CausalState,
    /// What happened.
    pub receipt: Receipt,
}

/// The state a write left on its coordinating replica.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CausalWriteOutcome {
    /// The key's state including the write.
    pub state: CausalState,
    /// What happened.
    pub receipt: Receipt,
}

/// What an eventual write carries besides its value.
#[derive(Debug, Clone, Default)]
pub struct CausalWrite {
    /// The siblings the write supersedes, or `None` for whatever the coordinating replica holds.
    pub context: Option<VersionVector>,
    /// Whether replicas that miss the write get durable hints.
    pub hinted_handoff: bool,
}

impl<T: ReplicaTransport> Coordinator<T> {
    /// Reads a key of an eventual keyspace at `level`, repairing replicas that answered stale.
    #[tracing::instrument(name = "eventual_read", skip_all, fields(kvorum.keyspace = %keyspace, kvorum.partition = route.partition.0, kvorum.consistency = %level, kvorum.replicas_acked = tracing::field::Empty))]
    pub async fn causal_read(
        &self,
        route: &Route,
        keyspace: &KeyspaceName,
        key: &Key,
        level: ConsistencyLevel,
    ) -> Result<CausalReadOutcome, CoordinatorError> {
        let result = self.causal_read_level(route, keyspace, key, level).await;
        record_acked(result.as_ref().map(|o| &o.receipt));
        result
    }

    async fn causal_read_level(
        &self,
        route: &Route,
        keyspace: &KeyspaceName,
        key: &Key,
        level: ConsistencyLevel,
    ) -> Result<CausalReadOutcome, CoordinatorError> {
        let mut receipt = Self::receipt(route, level);
        let asked: Vec<Replica> = route
            .read_targets()
            .iter()
            .filter(|r| !r.down)
            .cloned()
            .collect();
        receipt.asked = asked.iter().map(|r| r.id).collect();
        let required = level.required(route.replicas.len());
        let target = Self::target(route, keyspace, key);
        let transport = &self.transport;
        let gathered = fan_out(&self.background, &asked, required, |r| {
            transport.causal_read(r, target.clone())
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
        let joined = gathered
            .ok
            .iter()
            .fold(CausalState::empty(), |acc, (_, reply)| {
                acc.join(&reply.state)
            });
        let stale: Vec<&Replica> = asked
            .iter()
            .filter(|r| {
                gathered
                    .ok
                    .iter()
                    .any(|(node, reply)| *node == r.id && reply.state != joined)
            })
            .collect();
        if !stale.is_empty() {
            receipt.read_repair = true;
            metrics::counter!("kvorum_eventual_read_repairs_total").increment(1);
            let request = CausalMergeRequest {
                target,
                state: joined.clone(),
            };
            for replica in stale {
                let (node, call) = (replica.id, transport.causal_merge(replica, request.clone()));
                let span = tracing::info_span!("read_repair", kvorum.target = %node);
                self.background.spawn(
                    async move {
                        if let Err(error) = call.await {
                            tracing::debug!(%node, %error, "read repair failed; anti-entropy will retry");
                        }
                    }
                    .instrument(span),
                );
            }
        }
        Ok(CausalReadOutcome {
            state: joined,
            receipt,
        })
    }

    /// Writes `value` (a tombstone for `None`) to a key of an eventual keyspace at `level`.
    #[tracing::instrument(name = "eventual_write", skip_all, fields(kvorum.keyspace = %keyspace, kvorum.partition = route.partition.0, kvorum.consistency = %level, kvorum.replicas_acked = tracing::field::Empty))]
    pub async fn causal_write(
        &self,
        route: &Route,
        keyspace: &KeyspaceName,
        key: &Key,
        value: Option<&[u8]>,
        write: CausalWrite,
        level: ConsistencyLevel,
    ) -> Result<CausalWriteOutcome, CoordinatorError> {
        let result = self
            .causal_write_level(route, keyspace, key, value, write, level)
            .await;
        record_acked(result.as_ref().map(|o| &o.receipt));
        result
    }

    async fn causal_write_level(
        &self,
        route: &Route,
        keyspace: &KeyspaceName,
        key: &Key,
        value: Option<&[u8]>,
        write: CausalWrite,
        level: ConsistencyLevel,
    ) -> Result<CausalWriteOutcome, CoordinatorError> {
        let mut receipt = Self::receipt(route, level);
        let targets = route.commit_targets();
        let (down, up): (Vec<&Replica>, Vec<&Replica>) = targets.iter().partition(|r| r.down);
        let hint_for: Vec<NodeId> = if write.hinted_handoff {
            down.iter().map(|r| r.id).collect()
        } else {
            Vec::new()
        };
        let required = level.required(route.replicas.len());
        let target = Self::target(route, keyspace, key);
        let transport = &self.transport;
        let counted = up.iter().filter(|r| !r.catching_up).count();
        let failure = |receipt: Receipt, answered, outcome_unknown, last_error, fenced| {
            CoordinatorError::QuorumNotReached {
                phase: Phase::Commit,
                answered,
                asked: counted,
                required,
                outcome_unknown: Some(outcome_unknown),
                last_error,
                fenced,
                receipt: Box::new(receipt),
            }
        };

        // One replica coordinates; the first that is reachable. A catching-up
        // incarnation never does: it cannot know which dots it issued before.
        let mut missed: Vec<NodeId> = Vec::new();
        let mut coordinated = None;
        let mut maybe_applied = false;
        let mut last_error = None;
        for replica in up.iter().filter(|r| !r.catching_up) {
            let request = CausalWriteRequest {
                target: target.clone(),
                value: value.map(<[u8]>::to_vec),
                context: write.context.clone(),
                hint_for: hint_for.clone(),
            };
            match transport.causal_write(replica, request).await {
                Ok(reply) => {
                    coordinated = Some(((*replica).clone(), reply.state));
                    break;
                }
                Err(error) => {
                    let last = Some(format!("node {}: {error}", replica.id));
                    // The key's state is the client's to resolve: no other replica would take it.
                    if let Some(detail) = error.detail.as_ref().filter(|d| {
                        matches!(
                            d.code,
                            kvorum_protocol::ErrorCode::SiblingLimit
                                | kvorum_protocol::ErrorCode::PayloadTooLarge
                                | kvorum_protocol::ErrorCode::BadRequest
                        )
                    }) {
                        return Err(CoordinatorError::KeyLimit {
                            code: detail.code,
                            message: detail.message.clone(),
                            receipt: Box::new(receipt),
                        });
                    }
                    if error.stale_epoch.is_some() {
                        // Refused before applying: a newer map may route it elsewhere
                        // (a duplicate of a timed-out attempt is one more equal sibling).
                        return Err(failure(receipt, 0, maybe_applied, last, true));
                    }
                    // Always writable while one replica is: the next one coordinates.
                    // A write that timed out may still land on this one as a sibling
                    // with the same value, which reads fold into one.
                    tracing::debug!(node = %replica.id, %error, "replica cannot coordinate; trying the next");
                    maybe_applied |= error.maybe_delivered;
                    last_error = last;
                    missed.push(replica.id);
                }
            }
        }
        let Some((coordinator, state)) = coordinated else {
            return Err(failure(receipt, 0, maybe_applied, last_error, false));
        };
        receipt.hinted = !hint_for.is_empty();

        // Replicate the new state to the others; the level counts the coordinator.
        let others: Vec<Replica> = up
            .iter()
            .filter(|r| r.id != coordinator.id && !missed.contains(&r.id))
            .map(|r| (*r).clone())
            .collect();
        let request = CausalMergeRequest {
            target: target.clone(),
            state: state.clone(),
        };
        let (replies, mut inbox) = mpsc::unbounded_channel();
        for replica in &others {
            let (call, replies, node) = (
                transport.causal_merge(replica, request.clone()),
                replies.clone(),
                replica.id,
            );
            self.background.spawn(
                async move {
                    let _ = replies.send((node, call.await));
                }
                .in_current_span(),
            );
        }
        drop(replies);
        let mut acked = vec![coordinator.id];
        // Only replicas that count can meet the level; catching-up ones still get the merge.
        let mut pending = others.iter().filter(|r| !r.catching_up).count();
        let uncounted: Vec<NodeId> = others
            .iter()
            .filter(|r| r.catching_up)
            .map(|r| r.id)
            .collect();
        let mut uncounted_pending = uncounted.len();
        while acked.len() < required && acked.len() + pending >= required {
            let Some((node, reply)) = inbox.recv().await else {
                break;
            };
            if uncounted.contains(&node) {
                uncounted_pending -= 1;
                if reply.is_err() {
                    missed.push(node);
                }
                continue;
            }
            pending -= 1;
            match reply {
                Ok(reply) if reply.counts() => acked.push(node),
                Ok(_) => {}
                Err(error) => {
                    last_error = Some(format!("node {node}: {error}"));
                    missed.push(node);
                }
            }
        }
        let hint = |targets: Vec<NodeId>| HintRequest {
            partition: route.partition,
            keyspace: keyspace.clone(),
            key: key.clone(),
            targets,
        };
        if write.hinted_handoff && !missed.is_empty() {
            match transport
                .store_hints(&coordinator, hint(std::mem::take(&mut missed)))
                .await
            {
                Ok(_) => receipt.hinted = true,
                Err(error) => {
                    tracing::warn!(%error, "could not store hints; anti-entropy will repair")
                }
            }
        }
        if write.hinted_handoff && pending + uncounted_pending > 0 {
            // Replies still in flight: a replica that fails now is hinted too.
            let (call_hints, late_hint) = (self.transport.clone(), hint(Vec::new()));
            self.background.spawn(
                async move {
                    let mut late = Vec::new();
                    while let Some((node, reply)) = inbox.recv().await {
                        if reply.is_err() {
                            late.push(node);
                        }
                    }
                    if !late.is_empty() {
                        let request = HintRequest {
                            targets: late,
                            ..late_hint
                        };
                        if let Err(error) = call_hints.store_hints(&coordinator, request).await {
                            tracing::warn!(%error, "could not store hints; anti-entropy will repair");
                        }
                    }
                }
                .in_current_span(),
            );
        }
        receipt.acked = acked;
        if receipt.acked.len() < required {
            let answered = receipt.acked.len();
            return Err(failure(receipt, answered, true, last_error, false));
        }
        Ok(CausalWriteOutcome { state, receipt })
    }
}
