//! The internal routes that collect a partition's strong tombstones, driven
//! by its first replica (`strong_collection.rs`): raise the floor, compare
//! what every replica holds at or below it, seal the watermark, purge.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use kvorum_protocol::PartitionId;
use kvorum_protocol::storage::{
    RaiseFloorRequest, SealRequest, StrongDigestRequest, StrongDigestResponse, StrongFloors,
    StrongPurgeResponse,
};
use kvorum_server::{JsonBody, PathParam};

use crate::api::{ApiError, AppState};
use crate::store::{WriteOp, WriteOutcome};

/// Applies one floors op and returns the floors it left (and whether it did what it asked).
async fn floors_op(state: &AppState, op: WriteOp) -> Result<(StrongFloors, bool), ApiError> {
    match state.writer.submit(vec![op]).await?.pop() {
        Some(WriteOutcome::Floors { floors, sealed }) => Ok((floors, sealed)),
        _ => Err(ApiError::Internal(
            "the writer answered a floors op with another outcome",
        )),
    }
}

/// Step one: prepares of the partition answer at least this floor from now on.
pub(crate) async fn raise_floor(
    State(state): State<Arc<AppState>>,
    PathParam(partition): PathParam<u32>,
    JsonBody(request): JsonBody<RaiseFloorRequest>,
) -> Result<Json<StrongFloors>, ApiError> {
    state.serving()?;
    if !request.floor.is_valid() {
        return Err(ApiError::InvalidVersion(request.floor.counter));
    }
    let partition = PartitionId(partition);
    let op = WriteOp::RaiseStrongFloor {
        partition,
        floor: request.floor,
    };
    Ok(Json(floors_op(&state, op).await?.0))
}

/// Step three: the partition's strong records at or below a version, summarised.
pub(crate) async fn digest(
    State(state): State<Arc<AppState>>,
    PathParam(partition): PathParam<u32>,
    JsonBody(request): JsonBody<StrongDigestRequest>,
) -> Result<Json<StrongDigestResponse>, ApiError> {
    state.serving()?;
    let partition = PartitionId(partition);
    let store = state.store.clone();
    let (keyspaces, floors) = tokio::task::spawn_blocking(move || {
        Ok::<_, ApiError>((
            store.strong_digest(partition, request.upto, request.ignore_tombstones_upto)?,
            store.strong_floors(partition)?,
        ))
    })
    .await
    .map_err(|_| ApiError::Internal("the digest task panicked"))??;
    Ok(Json(StrongDigestResponse { keyspaces, floors }))
}

/// Step four (a): the watermark rises, only up to the floor.
pub(crate) async fn seal(
    State(state): State<Arc<AppState>>,
    PathParam(partition): PathParam<u32>,
    JsonBody(request): JsonBody<SealRequest>,
) -> Result<Json<StrongFloors>, ApiError> {
    state.serving()?;
    let partition = PartitionId(partition);
    let op = WriteOp::SealStrong {
        partition,
        watermark: request.watermark,
    };
    let (floors, sealed) = floors_op(&state, op).await?;
    if !sealed {
        return Err(ApiError::SealAboveFloor {
            partition,
            floor: floors
                .floor
                .map_or_else(|| "none".to_owned(), |f| f.to_string()),
            watermark: request.watermark,
        });
    }
    Ok(Json(floors))
}

/// Step four (b): removes this replica's strong tombstones at or below its
/// watermark. A restored disk cannot bring back what they deleted: its
/// catch-up drops every value at or below a source's watermark that the
/// source no longer holds (`catchup.rs`).
pub(crate) async fn purge(
    State(state): State<Arc<AppState>>,
    PathParam(partition): PathParam<u32>,
) -> Result<Json<StrongPurgeResponse>, ApiError> {
    state.serving()?;
    let partition = PartitionId(partition);
    let store = state.store.clone();
    let (floors, tombstones) = tokio::task::spawn_blocking(move || {
        let floors = store.strong_floors(partition)?;
        let tombstones = match floors.watermark {
            Some(watermark) => store.strong_tombstones(partition, watermark)?,
            None => Vec::new(),
        };
        Ok::<_, ApiError>((floors, tombstones))
    })
    .await
    .map_err(|_| ApiError::Internal("the purge task panicked"))??;
    let ops: Vec<WriteOp> = tombstones
        .into_iter()
        .map(|(keyspace, key, version)| WriteOp::PurgeStrongTombstone {
            partition,
            keyspace,
            key,
            version,
        })
        .collect();
    let mut purged = 0;
    for chunk in ops.chunks(1024) {
        let outcomes = state.writer.submit(chunk.to_vec()).await?;
        purged += outcomes
            .iter()
            .filter(|o| matches!(o, WriteOutcome::Removed(true)))
            .count() as u64;
    }
    metrics::counter!("kvorum_strong_tombstones_collected_total").increment(purged);
    Ok(Json(StrongPurgeResponse { purged, floors }))
}
