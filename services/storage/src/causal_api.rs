//! Handlers for eventual keyspaces, hints and anti-entropy, under `/internal/v1/`.
//!
//! Reads and merges of causal states, the write a replica coordinates (it
//! gives the write its own dot), durable hints for replicas that missed a
//! write, the per-partition digests and bucket exports that anti-entropy
//! compares, and the purge of tombstones every replica holds.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use kvorum_protocol::storage::{
    Batch, BucketQuery, CausalMergeRequest, CausalMergeResponse, CausalReadResponse,
    CausalWriteRequest, CausalWriteResponse, DIGEST_BUCKETS, HintRequest, HintResponse,
    ItemOutcome, PartitionDigest, PartitionExport, PurgeRequest, PurgeResponse, ReplicaKey,
};
use kvorum_protocol::{Epoch, PartitionId};
use kvorum_server::{JsonBody, PathParam};

use crate::api::{ApiError, AppState, outcome, submit_batch};
use crate::store::{Store, WriteOp, WriteOutcome};

impl AppState {
    fn causal_read_one(&self, target: &ReplicaKey) -> Result<CausalReadResponse, ApiError> {
        self.admit_read(target)?;
        let state = self
            .store
            .read_causal(target.partition, &target.keyspace, &target.key)?
            .unwrap_or_default();
        let deleted_for_ms = if state.is_deleted() {
            self.store
                .deleted_for_ms(target.partition, &target.keyspace, &target.key)?
        } else {
            None
        };
        Ok(CausalReadResponse {
            state,
            deleted_for_ms,
        })
    }
}

/// The state a merge or coordinated write left, or why it was refused.
fn merged(
    partition: PartitionId,
    request: Epoch,
    outcome: Option<WriteOutcome>,
) -> Result<(bool, kvorum_protocol::CausalState), ApiError> {
    match outcome {
        Some(WriteOutcome::Merged { changed, state }) => Ok((changed, state)),
        Some(WriteOutcome::KeyLimit(limit)) => Err(ApiError::KeyLimit(limit)),
        Some(WriteOutcome::Fenced { current }) => Err(ApiError::StaleEpoch {
            partition,
            request,
            current,
        }),
        _ => Err(ApiError::Internal(
            "the writer answered a causal op with another outcome",
        )),
    }
}

fn merge_op(request: CausalMergeRequest) -> WriteOp {
    let CausalMergeRequest { target, state } = request;
    WriteOp::Merge {
        partition: target.partition,
        epoch: Some(target.epoch),
        keyspace: target.keyspace,
        key: target.key,
        state,
    }
}

pub(crate) async fn causal_read(
    State(state): State<Arc<AppState>>,
    JsonBody(target): JsonBody<ReplicaKey>,
) -> Result<Json<CausalReadResponse>, ApiError> {
    state.causal_read_one(&target).map(Json)
}

pub(crate) async fn causal_read_batch(
    State(state): State<Arc<AppState>>,
    JsonBody(batch): JsonBody<Batch<ReplicaKey>>,
) -> Json<Batch<ItemOutcome<CausalReadResponse>>> {
    Json(Batch {
        items: batch
            .items
            .iter()
            .map(|t| outcome(state.causal_read_one(t)))
            .collect(),
    })
}

/// Coordinates a write: this node's next dot for the key, applied and fsync'd,
/// with hints for the replicas the router knows to be down in the same transaction.
pub(crate) async fn causal_write(
    State(state): State<Arc<AppState>>,
    JsonBody(request): JsonBody<CausalWriteRequest>,
) -> Result<Json<CausalWriteResponse>, ApiError> {
    // A catching-up incarnation issues no dots: the counters of the dots it lost are unknown.
    state.admit_read(&request.target)?;
    let CausalWriteRequest {
        target,
        value,
        context,
        hint_for,
    } = request;
    let (partition, epoch) = (target.partition, target.epoch);
    let outcomes = state
        .writer
        .submit(vec![WriteOp::CausalWrite {
            partition,
            epoch,
            keyspace: target.keyspace,
            key: target.key,
            context,
            value,
            hint_for,
        }])
        .await?;
    let (_, new_state) = merged(partition, epoch, outcomes.into_iter().next())?;
    Ok(Json(CausalWriteResponse { state: new_state }))
}

pub(crate) async fn causal_merge(
    State(state): State<Arc<AppState>>,
    JsonBody(request): JsonBody<CausalMergeRequest>,
) -> Result<Json<CausalMergeResponse>, ApiError> {
    state.admit_write(&request.target)?;
    let (partition, epoch) = (request.target.partition, request.target.epoch);
    let outcomes = state.writer.submit(vec![merge_op(request)]).await?;
    let (changed, _) = merged(partition, epoch, outcomes.into_iter().next())?;
    if changed {
        metrics::counter!("kvorum_causal_merges_changed_total").increment(1);
    }
    Ok(Json(CausalMergeResponse {
        changed,
        catching_up: !state.incarnation.counts(),
    }))
}

pub(crate) async fn causal_merge_batch(
    State(state): State<Arc<AppState>>,
    JsonBody(batch): JsonBody<Batch<CausalMergeRequest>>,
) -> Result<Json<Batch<ItemOutcome<CausalMergeResponse>>>, ApiError> {
    submit_batch(
        &state,
        batch.items,
        |request| {
            state.admit_write(&request.target)?;
            Ok((request.target.partition, request.target.epoch))
        },
        merge_op,
        |(partition, epoch), outcome| {
            merged(partition, epoch, outcome).map(|(changed, _)| CausalMergeResponse {
                changed,
                catching_up: !state.incarnation.counts(),
            })
        },
    )
    .await
    .map(Json)
}

/// Stores durable hints: this node will hand the key's state to each target once it is back.
pub(crate) async fn store_hints(
    State(state): State<Arc<AppState>>,
    JsonBody(request): JsonBody<HintRequest>,
) -> Result<Json<HintResponse>, ApiError> {
    let HintRequest {
        partition,
        keyspace,
        key,
        targets,
    } = request;
    let outcomes = state
        .writer
        .submit(vec![WriteOp::StoreHints {
            partition,
            keyspace,
            key,
            targets,
        }])
        .await?;
    match outcomes.first() {
        Some(WriteOutcome::Hinted(stored)) => {
            metrics::counter!("kvorum_hints_stored_total").increment(*stored as u64);
            Ok(Json(HintResponse { stored: *stored }))
        }
        _ => Err(ApiError::Internal(
            "the writer answered hints with another outcome",
        )),
    }
}

pub(crate) async fn partition_digest(
    State(state): State<Arc<AppState>>,
    PathParam(partition): PathParam<u32>,
) -> Result<Json<PartitionDigest>, ApiError> {
    // Anti-entropy sources nothing from a catching-up incarnation.
    state.serving()?;
    let partition = PartitionId(partition);
    let store = state.store.clone();
    let buckets = tokio::task::spawn_blocking(move || store.digest(partition))
        .await
        .map_err(|_| ApiError::Internal("the digest task panicked"))??;
    Ok(Json(PartitionDigest { partition, buckets }))
}

pub(crate) async fn export_buckets(
    State(state): State<Arc<AppState>>,
    PathParam(partition): PathParam<u32>,
    JsonBody(query): JsonBody<BucketQuery>,
) -> Result<Json<PartitionExport>, ApiError> {
    state.serving()?;
    if let Some(bad) = query
        .buckets
        .iter()
        .find(|&&b| b as usize >= DIGEST_BUCKETS)
    {
        return Err(ApiError::BadBucket(*bad));
    }
    let partition = PartitionId(partition);
    let store = state.store.clone();
    let page = tokio::task::spawn_blocking(move || {
        store.export_buckets(
            partition,
            &query.buckets,
            query.after.as_ref().map(|c| (&c.keyspace, &c.key)),
            query.max_bytes.unwrap_or(usize::MAX),
        )
    })
    .await
    .map_err(|_| ApiError::Internal("the export task panicked"))??;
    Ok(Json(page))
}

/// Removes tombstones the caller saw on every replica, where this node's state
/// is still exactly that tombstone and its oldest checkpoint holds it too (so
/// no restore can bring back what the tombstone deleted).
pub(crate) async fn purge_tombstones(
    State(state): State<Arc<AppState>>,
    PathParam(partition): PathParam<u32>,
    JsonBody(request): JsonBody<PurgeRequest>,
) -> Result<Json<PurgeResponse>, ApiError> {
    state.serving()?;
    let partition = PartitionId(partition);
    let items: Vec<_> = request
        .items
        .into_iter()
        .filter(|item| item.state.is_deleted())
        .collect();
    let oldest = state.checkpoints.list()?.into_iter().next();
    let allowed = match oldest {
        None => items,
        Some(checkpoint) => {
            let path = state.checkpoints.path(&checkpoint.name)?;
            tokio::task::spawn_blocking(move || {
                let keys: Vec<_> = items
                    .iter()
                    .map(|i| (i.keyspace.clone(), i.key.clone()))
                    .collect();
                let held = Store::checkpoint_states(&path, partition, &keys)?;
                Ok::<_, ApiError>(
                    items
                        .into_iter()
                        .zip(held)
                        .filter(|(item, held)| held.as_ref() == Some(&item.state))
                        .map(|(item, _)| item)
                        .collect::<Vec<_>>(),
                )
            })
            .await
            .map_err(|_| ApiError::Internal("the checkpoint reader panicked"))??
        }
    };
    let ops = allowed
        .into_iter()
        .map(|item| WriteOp::Purge {
            partition,
            keyspace: item.keyspace,
            key: item.key,
            state: item.state,
        })
        .collect();
    let outcomes = state.writer.submit(ops).await?;
    let purged = outcomes
        .iter()
        .filter(|o| matches!(o, WriteOutcome::Removed(true)))
        .count();
    metrics::counter!("kvorum_tombstones_purged_total").increment(purged as u64);
    Ok(Json(PurgeResponse { purged }))
}
