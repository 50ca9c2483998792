//! Hinted handoff: handing replicas the writes they missed while they were down.
//!
//! A hint names a target node and a key; it is stored durably (fsync'd, in
//! the same transaction as the write when the router knew the target was
//! down). The replay task hands the key's *current* state to the target: the
//! join is monotone, so the current state includes the missed write and
//! anything newer, and replaying a hint twice is harmless. A hint is cleared
//! once its target acknowledged, unless a newer hint for the same key replaced
//! it meanwhile; a hint whose target no longer replicates the partition, or
//! whose key is gone, is dropped (state transfer or tombstone collection
//! covered it).

use std::sync::Arc;
use std::time::Duration;

use kvorum_http_client::{HttpClient, Idempotency};
use kvorum_metad_client::Follower;
use kvorum_protocol::NodeId;
use kvorum_protocol::cluster::NodeState;
use kvorum_protocol::metadata::MetadataState;
use kvorum_protocol::storage::{
    Batch, CausalMergeRequest, CausalMergeResponse, ItemOutcome, MAX_PAGE_BYTES, ReplicaKey,
    causal_value_bytes,
};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::store::{Hint, Store, WriteOp};
use crate::writer::Writer;

/// Hints handed off per target and round.
const BATCH: usize = 256;

/// Replays hints every `interval` until shutdown.
pub async fn replay_hints(
    store: Arc<Store>,
    writer: Writer,
    follower: Follower,
    peers: HttpClient,
    interval: Duration,
    shutdown: CancellationToken,
) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = ticker.tick() => {}
        }
        match store.hint_count() {
            Ok(pending) => metrics::gauge!("kvorum_hints_pending").set(pending as f64),
            Err(error) => tracing::warn!(%error, "cannot count hints"),
        }
        let Some(state) = follower.current() else {
            continue;
        };
        let targets = match store.hint_targets() {
            Ok(targets) => targets,
            Err(error) => {
                tracing::warn!(%error, "cannot read hints");
                continue;
            }
        };
        // Each target is read on its own, so one that is down or refusing
        // never holds up the hints of the others.
        for target in targets {
            let hints = match store.hints_for(target, BATCH) {
                Ok(hints) => hints,
                Err(error) => {
                    tracing::warn!(%error, %target, "cannot read hints");
                    continue;
                }
            };
            let span =
                tracing::info_span!("hint_replay", kvorum.target = %target, hints = hints.len());
            if let Err(error) = hand_off(&store, &writer, &state, &peers, target, hints)
                .instrument(span)
                .await
            {
                tracing::debug!(%target, %error, "hint replay deferred");
            }
        }
    }
}

/// Hands one target its hinted keys; clears what it acknowledged or no longer needs.
async fn hand_off(
    store: &Store,
    writer: &Writer,
    state: &MetadataState,
    peers: &HttpClient,
    target: NodeId,
    hints: Vec<Hint>,
) -> Result<(), String> {
    let Some(node) = state.nodes.get(&target) else {
        return Err("target unknown to the metadata service".to_owned());
    };
    let map = state.partition_map.as_ref().ok_or("no partition map")?;
    let mut obsolete = Vec::new();
    let mut batch = Vec::new();
    let mut sent = Vec::new();
    let mut bytes = 0;
    for hint in hints {
        // The rest wait for the next round: one batch stays within the budget.
        if bytes >= MAX_PAGE_BYTES {
            break;
        }
        let assignment = map.assignment(hint.partition).filter(|a| a.places(target));
        let held = store
            .read_causal(hint.partition, &hint.keyspace, &hint.key)
            .map_err(|e| e.to_string())?;
        match (assignment, held, node.state) {
            (None, _, _) | (_, None, _) | (_, _, NodeState::Decommissioned) => {
                obsolete.push(WriteOp::ClearHint(hint));
            }
            (Some(assignment), Some(held), _) => {
                bytes += causal_value_bytes(&held) + hint.key.as_str().len() + 64;
                batch.push(CausalMergeRequest {
                    target: ReplicaKey {
                        partition: hint.partition,
                        epoch: assignment.epoch,
                        keyspace: hint.keyspace.clone(),
                        key: hint.key.clone(),
                    },
                    state: held,
                });
                sent.push(hint);
            }
        }
    }
    if !obsolete.is_empty() {
        writer.submit(obsolete).await.map_err(|e| e.to_string())?;
    }
    if batch.is_empty() || node.state == NodeState::Down {
        return Ok(());
    }
    let answer: Batch<ItemOutcome<CausalMergeResponse>> = peers
        .post_json(
            &node.address,
            "/internal/v1/causal/merge/batch",
            &Batch { items: batch },
            Idempotency::Idempotent,
        )
        .await
        .map_err(|e| e.to_string())?;
    let delivered: Vec<WriteOp> = sent
        .into_iter()
        .zip(answer.items)
        .filter(|(_, outcome)| matches!(outcome, ItemOutcome::Ok(_)))
        .map(|(hint, _)| WriteOp::ClearHint(hint))
        .collect();
    let count = delivered.len();
    writer.submit(delivered).await.map_err(|e| e.to_string())?;
    metrics::counter!("kvorum_hints_replayed_total").increment(count as u64);
    tracing::info!(%target, handed_off = count, "hints handed off");
    Ok(())
}
