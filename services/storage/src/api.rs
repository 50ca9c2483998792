//! The storage node's HTTP API: `router(state)` and its handlers, under `/internal/v1/`.

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::extract::{DefaultBodyLimit, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use kvorum_protocol::storage::{
    Batch, CheckpointInfo, CommitRequest, CommitResponse, DropResponse, ExportQuery, FenceRequest,
    FenceResponse, Held, ImportResponse, ItemOutcome, PartitionExport, PrepareResponse,
    ReadResponse, ReplicaKey,
};
use kvorum_protocol::{Epoch, ErrorCode, ErrorDetail, PartitionId, Version};
use kvorum_server::{JsonBody, PathParam, QueryParams, error_response, with_standard_layers};

use crate::causal_api as causal;
use crate::fence::EpochFence;
use crate::store::{Store, StoreError, WriteOp, WriteOutcome};
use crate::strong_collection_api as strong;
use crate::writer::{WriteError, Writer};

/// What every handler shares.
#[derive(Debug)]
pub struct AppState {
    /// The database, for reads.
    pub store: Arc<Store>,
    /// The group-commit writer, for writes.
    pub writer: Writer,
    /// Refuses requests routed by an outdated partition map.
    pub fence: Arc<EpochFence>,
    /// What `GET /readyz` checks.
    pub readiness: kvorum_server::Readiness,
    /// Whether this incarnation's data may be counted yet.
    pub incarnation: crate::incarnation::Incarnation,
    /// The node's checkpoints.
    pub checkpoints: crate::checkpoint::Checkpoints,
}

/// Why a storage request failed; maps to the JSON error body.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The request was routed by an epoch older than one this node has seen.
    #[error(
        "partition {partition} was routed by epoch {request}, but this node has seen epoch {current}; refresh the partition map"
    )]
    StaleEpoch {
        /// The partition.
        partition: PartitionId,
        /// The epoch the request carried.
        request: Epoch,
        /// The newest epoch this node knows.
        current: Epoch,
    },
    /// The node is a new incarnation that may not answer this yet.
    #[error(
        "this node is a new incarnation (new or restored data) {}; it counts toward no quorum until it has caught up from its peers",
        if *.0 { "catching up" } else { "not yet admitted by the metadata service" }
    )]
    CatchingUp(bool),
    /// The write would grow the key's state past a bound.
    #[error("{}", match .0 {
        crate::store::KeyLimit::Siblings(count) => format!(
            "the key would hold {count} concurrent versions, more than {}; read it and write back with its context to resolve them",
            kvorum_protocol::storage::MAX_KEY_SIBLINGS
        ),
        crate::store::KeyLimit::Bytes(bytes) => format!(
            "the key's versions would hold {bytes} bytes, more than {}; read it and write back with its context to resolve them",
            kvorum_protocol::storage::MAX_KEY_STATE_BYTES
        ),
        crate::store::KeyLimit::ContextAhead(named, own) => format!(
            "the context names counter {named} of this node, which has issued only up to {own}: it is not a context any read returned"
        ),
    })]
    KeyLimit(crate::store::KeyLimit),
    /// The path and the body name different partitions.
    #[error("the path names partition {path} but the body holds partition {body}")]
    PartitionMismatch {
        /// From the path.
        path: PartitionId,
        /// From the body.
        body: PartitionId,
    },
    /// A checkpoint operation failed.
    #[error(transparent)]
    Checkpoint(#[from] crate::checkpoint::CheckpointError),
    /// A paged export names only half of its starting point.
    #[error("after_keyspace and after_key go together")]
    HalfCursor,
    /// An anti-entropy bucket number out of range.
    #[error("bucket {0} is out of range: a digest has {n} buckets", n = kvorum_protocol::storage::DIGEST_BUCKETS)]
    BadBucket(u32),
    /// A strong record the collection watermark keeps out.
    #[error(
        "the record's version is at or below partition {partition}'s collection watermark {watermark} and the key holds nothing as new: it may be older than a tombstone already collected"
    )]
    BelowWatermark {
        /// The partition.
        partition: PartitionId,
        /// Its watermark.
        watermark: Version,
    },
    /// A seal above the replica's floor.
    #[error(
        "partition {partition}'s floor is {floor}, below the watermark {watermark} asked for: raise the floor and wait the grace first"
    )]
    SealAboveFloor {
        /// The partition.
        partition: PartitionId,
        /// The floor held ("none" when never raised).
        floor: String,
        /// The watermark asked for.
        watermark: Version,
    },
    /// A record version above [`Version::MAX_COUNTER`].
    #[error("version counter {0} is above the maximum {max}", max = Version::MAX_COUNTER)]
    InvalidVersion(u64),
    /// A broken invariant of this node: a bug, never the caller's fault.
    #[error("internal error: {0}")]
    Internal(&'static str),
    /// The database failed.
    #[error("storage failure: {0}")]
    Store(#[from] StoreError),
    /// The write did not complete.
    #[error(transparent)]
    Write(#[from] WriteError),
}

impl ApiError {
    pub(crate) fn detail(&self) -> ErrorDetail {
        let code = match self {
            ApiError::StaleEpoch { .. } => ErrorCode::StaleEpoch,
            ApiError::CatchingUp(_) => ErrorCode::CatchingUp,
            ApiError::BelowWatermark { .. } => ErrorCode::BelowWatermark,
            ApiError::SealAboveFloor { .. } => ErrorCode::Conflict,
            ApiError::KeyLimit(crate::store::KeyLimit::Siblings(_)) => ErrorCode::SiblingLimit,
            ApiError::KeyLimit(crate::store::KeyLimit::Bytes(_)) => ErrorCode::PayloadTooLarge,
            ApiError::KeyLimit(crate::store::KeyLimit::ContextAhead(..)) => ErrorCode::BadRequest,
            ApiError::PartitionMismatch { .. }
            | ApiError::InvalidVersion(_)
            | ApiError::BadBucket(_)
            | ApiError::HalfCursor => ErrorCode::BadRequest,
            ApiError::Internal(_) => ErrorCode::Internal,
            ApiError::Checkpoint(crate::checkpoint::CheckpointError::NotFound(_)) => {
                ErrorCode::NotFound
            }
            ApiError::Checkpoint(_) => ErrorCode::Internal,
            ApiError::Store(_) | ApiError::Write(WriteError::Store(_)) => ErrorCode::Internal,
            ApiError::Write(WriteError::Stopped) => ErrorCode::Unavailable,
        };
        let mut detail = ErrorDetail::new(code, self.to_string());
        if let ApiError::StaleEpoch { current, .. } = self {
            detail.current_epoch = Some(*current);
        }
        detail
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        error_response(self.detail())
    }
}

/// The storage node's routes, wrapped in the standard layers.
pub fn router(state: Arc<AppState>, request_timeout: Duration, max_request_bytes: usize) -> Router {
    let routes = Router::new()
        .route("/healthz", get(kvorum_server::healthz))
        .route("/readyz", state.readiness.route())
        .route("/internal/v1/read", post(read))
        .route("/internal/v1/read/batch", post(read_batch))
        .route("/internal/v1/prepare", post(prepare))
        .route("/internal/v1/prepare/batch", post(prepare_batch))
        .route("/internal/v1/commit", post(commit))
        .route("/internal/v1/commit/batch", post(commit_batch))
        .route("/internal/v1/causal/read", post(causal::causal_read))
        .route(
            "/internal/v1/causal/read/batch",
            post(causal::causal_read_batch),
        )
        .route("/internal/v1/causal/write", post(causal::causal_write))
        .route("/internal/v1/causal/merge", post(causal::causal_merge))
        .route(
            "/internal/v1/causal/merge/batch",
            post(causal::causal_merge_batch),
        )
        .route("/internal/v1/hints", post(causal::store_hints))
        .route(
            "/internal/v1/partitions/{partition}/digest",
            get(causal::partition_digest),
        )
        .route(
            "/internal/v1/partitions/{partition}/buckets",
            post(causal::export_buckets),
        )
        .route(
            "/internal/v1/partitions/{partition}/purge",
            post(causal::purge_tombstones),
        )
        .route(
            "/internal/v1/partitions/{partition}/strong/floor",
            post(strong::raise_floor),
        )
        .route(
            "/internal/v1/partitions/{partition}/strong/digest",
            post(strong::digest),
        )
        .route(
            "/internal/v1/partitions/{partition}/strong/seal",
            post(strong::seal),
        )
        .route(
            "/internal/v1/partitions/{partition}/strong/purge",
            post(strong::purge),
        )
        .route(
            "/internal/v1/partitions/{partition}",
            get(export_partition)
                .put(import_partition)
                .delete(drop_partition),
        )
        .route(
            "/internal/v1/partitions/{partition}/fence",
            post(fence_partition),
        )
        .route(
            "/internal/v1/checkpoints",
            get(list_checkpoints).post(take_checkpoint),
        )
        .route(
            "/internal/v1/checkpoints/{name}/restore",
            post(restore_checkpoint),
        )
        .layer(DefaultBodyLimit::max(max_request_bytes))
        .with_state(state);
    with_standard_layers(routes, request_timeout)
}

impl AppState {
    /// Admits a read, prepare, coordinated write or export: only once this
    /// incarnation's data may be counted.
    pub(crate) fn admit_read(&self, target: &ReplicaKey) -> Result<(), ApiError> {
        self.serving()?;
        self.admit(target)
    }

    /// Whether this incarnation answers reads and exports.
    pub(crate) fn serving(&self) -> Result<(), ApiError> {
        if self.incarnation.counts() {
            Ok(())
        } else {
            Err(ApiError::CatchingUp(self.incarnation.takes_writes()))
        }
    }

    /// Admits a commit, merge or import: once the incarnation is admitted
    /// (its fences raised), also while it catches up.
    pub(crate) fn admit_write(&self, target: &ReplicaKey) -> Result<(), ApiError> {
        self.takes_writes()?;
        self.admit(target)
    }

    /// Whether this incarnation takes writes.
    pub(crate) fn takes_writes(&self) -> Result<(), ApiError> {
        if self.incarnation.takes_writes() {
            Ok(())
        } else {
            Err(ApiError::CatchingUp(false))
        }
    }

    fn admit(&self, target: &ReplicaKey) -> Result<(), ApiError> {
        self.fence
            .admit(target.partition, target.epoch)
            .map_err(|current| ApiError::StaleEpoch {
                partition: target.partition,
                request: target.epoch,
                current,
            })
    }

    fn admit_commit(&self, request: &CommitRequest) -> Result<(), ApiError> {
        if !request.record.version.is_valid() {
            return Err(ApiError::InvalidVersion(request.record.version.counter));
        }
        self.admit_write(&request.target)
    }

    fn read_one(&self, target: &ReplicaKey) -> Result<ReadResponse, ApiError> {
        self.admit_read(target)?;
        let record = self
            .store
            .read(target.partition, &target.keyspace, &target.key)?;
        Ok(ReadResponse { record })
    }

    fn prepare_one(&self, target: &ReplicaKey) -> Result<PrepareResponse, ApiError> {
        self.admit_read(target)?;
        // Raised to the partition's floor: a write prepared after the floor
        // rose takes a version above it, so it never falls below a watermark.
        let version =
            self.store
                .prepare_version(target.partition, &target.keyspace, &target.key)?;
        Ok(PrepareResponse { version })
    }
}

fn commit_op(request: CommitRequest) -> WriteOp {
    let CommitRequest { target, record } = request;
    WriteOp::Commit {
        partition: target.partition,
        epoch: Some(target.epoch),
        keyspace: target.keyspace,
        key: target.key,
        record,
    }
}

fn commit_response(
    partition: PartitionId,
    request: Epoch,
    outcome: WriteOutcome,
    catching_up: bool,
) -> Result<CommitResponse, ApiError> {
    match outcome {
        WriteOutcome::Committed { applied, current } => Ok(CommitResponse {
            applied,
            current,
            catching_up,
        }),
        WriteOutcome::Fenced { current } => Err(ApiError::StaleEpoch {
            partition,
            request,
            current,
        }),
        WriteOutcome::BelowWatermark { watermark } => {
            // Only a commit delivered later than the grace gets here: the
            // assumption collection rests on was broken, and this refusal
            // kept a collected key deleted.
            metrics::counter!("kvorum_strong_writes_below_watermark_total").increment(1);
            tracing::warn!(partition = partition.0, %watermark, "refused a strong write at or below the partition's collection watermark, on a key whose tombstone was collected");
            Err(ApiError::BelowWatermark {
                partition,
                watermark,
            })
        }
        _ => Err(ApiError::Internal(
            "the writer answered a commit with another op's outcome",
        )),
    }
}

pub(crate) fn outcome<T>(result: Result<T, ApiError>) -> ItemOutcome<T> {
    match result {
        Ok(value) => ItemOutcome::Ok(value),
        Err(error) => ItemOutcome::Error(error.detail()),
    }
}

async fn read(
    State(state): State<Arc<AppState>>,
    JsonBody(target): JsonBody<ReplicaKey>,
) -> Result<Json<ReadResponse>, ApiError> {
    state.read_one(&target).map(Json)
}

async fn read_batch(
    State(state): State<Arc<AppState>>,
    JsonBody(batch): JsonBody<Batch<ReplicaKey>>,
) -> Json<Batch<ItemOutcome<ReadResponse>>> {
    Json(Batch {
        items: batch
            .items
            .iter()
            .map(|t| outcome(state.read_one(t)))
            .collect(),
    })
}

async fn prepare(
    State(state): State<Arc<AppState>>,
    JsonBody(target): JsonBody<ReplicaKey>,
) -> Result<Json<PrepareResponse>, ApiError> {
    state.prepare_one(&target).map(Json)
}

async fn prepare_batch(
    State(state): State<Arc<AppState>>,
    JsonBody(batch): JsonBody<Batch<ReplicaKey>>,
) -> Json<Batch<ItemOutcome<PrepareResponse>>> {
    Json(Batch {
        items: batch
            .items
            .iter()
            .map(|t| outcome(state.prepare_one(t)))
            .collect(),
    })
}

async fn commit(
    State(state): State<Arc<AppState>>,
    JsonBody(request): JsonBody<CommitRequest>,
) -> Result<Json<CommitResponse>, ApiError> {
    state.admit_commit(&request)?;
    let (partition, epoch) = (request.target.partition, request.target.epoch);
    let outcome = state.writer.submit(vec![commit_op(request)]).await?;
    let outcome = outcome
        .into_iter()
        .next()
        .ok_or(ApiError::Internal("the writer answered no outcome"))?;
    commit_response(partition, epoch, outcome, !state.incarnation.counts()).map(Json)
}

async fn commit_batch(
    State(state): State<Arc<AppState>>,
    JsonBody(batch): JsonBody<Batch<CommitRequest>>,
) -> Result<Json<Batch<ItemOutcome<CommitResponse>>>, ApiError> {
    submit_batch(
        &state,
        batch.items,
        |request| {
            state.admit_commit(request)?;
            Ok((request.target.partition, request.target.epoch))
        },
        commit_op,
        |(partition, epoch), outcome| {
            outcome
                .ok_or(ApiError::Internal("the writer answered too few outcomes"))
                .and_then(|o| commit_response(partition, epoch, o, !state.incarnation.counts()))
        },
    )
    .await
    .map(Json)
}

/// Writes a batch of requests in one submission to the writer: items refused
/// by `admit` (fenced, invalid) fail alone, the admitted ones share one
/// transaction, and each is answered from its own outcome.
pub(crate) async fn submit_batch<Req, Resp, Key>(
    state: &AppState,
    requests: Vec<Req>,
    admit: impl Fn(&Req) -> Result<Key, ApiError>,
    op: impl Fn(Req) -> WriteOp,
    respond: impl Fn(Key, Option<WriteOutcome>) -> Result<Resp, ApiError>,
) -> Result<Batch<ItemOutcome<Resp>>, ApiError> {
    let mut items: Vec<Result<Key, ItemOutcome<Resp>>> = Vec::with_capacity(requests.len());
    let mut ops = Vec::new();
    for request in requests {
        match admit(&request) {
            Ok(key) => {
                items.push(Ok(key));
                ops.push(op(request));
            }
            Err(error) => items.push(Err(ItemOutcome::Error(error.detail()))),
        }
    }
    let mut outcomes = state.writer.submit(ops).await?.into_iter();
    let items = items
        .into_iter()
        .map(|item| match item {
            Err(refused) => refused,
            Ok(key) => outcome(respond(key, outcomes.next())),
        })
        .collect();
    Ok(Batch { items })
}

/// The whole partition, or with `limit` one page of it after `after_keyspace`/`after_key`.
async fn export_partition(
    State(state): State<Arc<AppState>>,
    PathParam(partition): PathParam<u32>,
    QueryParams(query): QueryParams<ExportQuery>,
) -> Result<Json<PartitionExport>, ApiError> {
    // A catching-up node is nobody's source: what it holds may lack acknowledged writes.
    state.serving()?;
    let after = match (&query.after_keyspace, &query.after_key) {
        (Some(keyspace), Some(key)) => Some((keyspace, key)),
        (None, None) => None,
        _ => return Err(ApiError::HalfCursor),
    };
    Ok(Json(state.store.export_page(
        PartitionId(partition),
        after,
        query.limit.unwrap_or(usize::MAX).max(1),
        query.max_bytes.unwrap_or(usize::MAX),
    )?))
}

/// Every checkpoint the node holds, oldest first.
async fn list_checkpoints(
    State(state): State<Arc<AppState>>,
) -> Result<Json<Vec<CheckpointInfo>>, ApiError> {
    Ok(Json(state.checkpoints.list()?))
}

/// Takes a checkpoint now.
async fn take_checkpoint(
    State(state): State<Arc<AppState>>,
) -> Result<Json<CheckpointInfo>, ApiError> {
    let (checkpoints, store) = (state.checkpoints.clone(), state.store.clone());
    let taken = tokio::task::spawn_blocking(move || checkpoints.take(&store))
        .await
        .map_err(|_| ApiError::Internal("the checkpoint task panicked"))??;
    Ok(Json(taken))
}

/// Imports every record of a checkpoint into the live database, keep-if-higher:
/// what the checkpoint holds and the node lost comes back, nothing newer is undone.
async fn restore_checkpoint(
    State(state): State<Arc<AppState>>,
    PathParam(name): PathParam<String>,
) -> Result<Json<ImportResponse>, ApiError> {
    let path = state.checkpoints.path(&name)?;
    let ops = tokio::task::spawn_blocking(move || Store::read_checkpoint(&path))
        .await
        .map_err(|_| ApiError::Internal("the checkpoint reader panicked"))??;
    let mut applied = 0;
    let mut total = 0;
    let mut ops = ops.into_iter().peekable();
    while ops.peek().is_some() {
        let chunk: Vec<WriteOp> = ops.by_ref().take(1024).collect();
        total += chunk.len();
        let outcomes = state.writer.submit(chunk).await?;
        applied += outcomes.iter().filter(|o| o.changed()).count();
    }
    Ok(Json(ImportResponse {
        applied,
        skipped: total - applied,
    }))
}

/// Raises a partition's epoch through the writer: once this answers, no commit
/// routed by an older epoch can land, not even one queued before it.
async fn fence_partition(
    State(state): State<Arc<AppState>>,
    PathParam(partition): PathParam<u32>,
    JsonBody(request): JsonBody<FenceRequest>,
) -> Result<Json<FenceResponse>, ApiError> {
    let partition = PartitionId(partition);
    state.fence.raise(partition, request.epoch);
    let outcomes = state
        .writer
        .submit(vec![WriteOp::RaiseEpoch {
            partition,
            epoch: request.epoch,
        }])
        .await?;
    match outcomes.first() {
        Some(WriteOutcome::Epoch(epoch)) => Ok(Json(FenceResponse { epoch: *epoch })),
        _ => Err(ApiError::Internal(
            "the writer answered a fence with another outcome",
        )),
    }
}

async fn import_partition(
    State(state): State<Arc<AppState>>,
    PathParam(partition): PathParam<u32>,
    JsonBody(export): JsonBody<PartitionExport>,
) -> Result<Json<ImportResponse>, ApiError> {
    state.takes_writes()?;
    let partition = PartitionId(partition);
    if export.partition != partition {
        return Err(ApiError::PartitionMismatch {
            path: partition,
            body: export.partition,
        });
    }
    let invalid = export.records.iter().find_map(|r| match &r.record {
        Held::Strong(record) if !record.version.is_valid() => Some(record.version.counter),
        _ => None,
    });
    if let Some(counter) = invalid {
        return Err(ApiError::InvalidVersion(counter));
    }
    let floors = export.strong_floors;
    let mut ops: Vec<WriteOp> = export
        .records
        .into_iter()
        .map(|r| WriteOp::import(partition, r))
        .collect();
    let records = ops.len();
    // After the records: a watermark taken first would refuse the older ones.
    ops.extend(floors.map(|floors| WriteOp::AdoptStrongFloors { partition, floors }));
    let outcomes = state.writer.submit(ops).await?;
    let applied = outcomes[..records].iter().filter(|o| o.changed()).count();

    Ok(Json(ImportResponse {
        applied,
        skipped: records - applied,
    }))
}

async fn drop_partition(
    State(state): State<Arc<AppState>>,
    PathParam(partition): PathParam<u32>,
) -> Result<Json<DropResponse>, ApiError> {
    let outcomes = state
        .writer
        .submit(vec![WriteOp::DropPartition(PartitionId(partition))])
        .await?;
    let removed = outcomes
        .iter()
        .map(|o| {
            if let WriteOutcome::Dropped(n) = o {
                *n
            } else {
                0
            }
        })
        .sum();
    Ok(Json(DropResponse { removed }))
}
