//! The metadata service's HTTP API: `router(state)` and its handlers.

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, Uri};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use kvorum_http_client::HttpClient;
use kvorum_protocol::metadata::{
    MetadStatus, MetadataCommand, MetadataError, MetadataOutcome, MetadataState,
};
use kvorum_protocol::paxos::{PeerBatch, ReplicaIdentity};
use kvorum_protocol::{ErrorCode, ErrorDetail};
use kvorum_server::{JsonBody, QueryParams, error_response, with_standard_layers};
use tokio::sync::oneshot;

use crate::node::{Input, ProposeError};

/// What every handler shares.
#[derive(Debug)]
pub struct AppState {
    /// This replica's id.
    pub id: u64,

    /// Who this replica is; its group is unknown until settled.
    pub identity: std::sync::RwLock<ReplicaIdentity>,
    /// Where the members (as the loop last applied them) and `--peers` are.
    pub addresses: crate::sender::Addresses,
    /// The consensus loop's input.
    pub inputs: crate::queue::Inputs,
    /// The applied state's version, as it changes.
    pub versions: tokio::sync::watch::Receiver<u64>,
    /// How long a client waits for a decision.
    pub request_timeout: Duration,
    /// The peer route's body limit; longer batches come in chunks.
    pub max_message_bytes: usize,
    /// The last failure to deliver to a peer, for the status.
    pub last_peer_error: Arc<std::sync::Mutex<Option<String>>>,
    /// Chunked transfers under way, one per sending replica.
    pub chunks: std::sync::Mutex<std::collections::HashMap<u64, PartialBatch>>,
    /// Calls to other replicas (the membership API asks a new replica who it is).
    pub client: HttpClient,
}

/// A chunked batch being received: which one, how long, and the bytes so far.
#[derive(Debug, Default)]
pub struct PartialBatch {
    digest: u64,
    total: u64,
    bytes: Vec<u8>,
}

/// The longest batch a chunked transfer may announce (a bound on the buffer it needs).
const MAX_CHUNKED_BYTES: u64 = 1 << 30;

/// Why a request failed; maps to the JSON error body (or a redirect to the leader).
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The command was refused by the state machine.
    #[error(transparent)]
    Refused(#[from] MetadataError),
    /// Another replica leads: the client is sent there.
    #[error("replica {0} leads")]
    NotLeader(String, Uri),
    /// No leader is known (an election is under way, or too few replicas are up).
    #[error(
        "no leader is known yet (an election is under way, or a majority of replicas is down); retry with the same request_id"
    )]
    NoLeader,
    /// The command was not decided in time; it may still be.
    #[error(
        "the command was not decided within {0:?}; retry with the same request_id, which applies it at most once"
    )]
    Undecided(Duration),
    /// A peer message addressed to another replica.
    #[error("message addressed to replica {to}, but this is replica {me}")]
    Misaddressed {
        /// The addressee.
        to: u64,
        /// This replica.
        me: u64,
    },
    /// A chunk from a replica that is not a member, or one that cannot fit.
    #[error("{0}")]
    BadChunk(String),
    /// Peer messages from another metadata group.
    #[error("messages from metadata group {from:x}, but this replica belongs to group {mine:x}")]
    OtherCluster {
        /// The sender's group.
        from: u64,
        /// This replica's group.
        mine: u64,
    },
    /// The group is not settled yet: this replica is waiting for its peers.
    #[error("this replica is still waiting for every peer of --peers to settle the group")]
    Unsettled,
    /// A membership change that cannot be made as asked.
    #[error("{0}")]
    Membership(String),
    /// A membership change that conflicts with the members as they are.
    #[error("{0}")]
    MembershipConflict(String),
    /// The consensus loop has stopped.
    #[error("the replica is shutting down")]
    Stopped,
    /// The consensus loop's queue is full.
    #[error("the replica is overloaded; retry shortly")]
    Busy,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let code = match &self {
            ApiError::Refused(MetadataError::Invalid { .. })
            | ApiError::Misaddressed { .. }
            | ApiError::BadChunk(_)
            | ApiError::Membership(_) => ErrorCode::BadRequest,
            ApiError::OtherCluster { .. } | ApiError::MembershipConflict(_) => ErrorCode::Conflict,
            ApiError::Refused(MetadataError::NotFound { .. }) => ErrorCode::NotFound,
            ApiError::Refused(MetadataError::Conflict { .. }) => ErrorCode::Conflict,
            ApiError::NotLeader(address, uri) => {
                let target = format!(
                    "http://{address}{}",
                    uri.path_and_query().map_or("", |p| p.as_str())
                );
                return Redirect::temporary(&target).into_response();
            }
            ApiError::NoLeader
            | ApiError::Undecided(_)
            | ApiError::Stopped
            | ApiError::Busy
            | ApiError::Unsettled => ErrorCode::Unavailable,
        };
        error_response(ErrorDetail::new(code, self.to_string()))
    }
}

/// The metadata API's routes, wrapped in the standard layers.
pub fn router(state: Arc<AppState>) -> Router {
    let request_timeout = state.request_timeout;
    // A chunk carries up to half the limit in raw bytes, base64 in JSON: a little
    // more than two thirds of the limit on the wire.
    let max_body = state.max_message_bytes;
    let routes = Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route(
            "/internal/v1/paxos",
            post(paxos).layer(axum::extract::DefaultBodyLimit::max(max_body)),
        )
        .route(
            "/internal/v1/paxos/chunks",
            post(paxos_chunk).layer(axum::extract::DefaultBodyLimit::max(max_body)),
        )
        .route("/internal/v1/paxos/identity", get(identity))
        .route(
            "/v1/members",
            get(crate::members::list).post(crate::members::add),
        )
        .route(
            "/v1/members/{id}",
            axum::routing::delete(crate::members::remove),
        )
        .route("/v1/members/{id}/replace", post(crate::members::replace))
        .route("/v1/commands", post(command))
        .route("/v1/state", get(read_state))
        .route("/v1/status", get(status))
        .route("/v1/watch", get(watch))
        .with_state(state);
    // The layer's deadline sits past the decision wait, so a slow decision is a clear 503.
    with_standard_layers(routes, request_timeout + Duration::from_secs(1))
}

impl AppState {
    /// This replica's group, once settled.
    pub fn cluster(&self) -> Option<u64> {
        self.identity
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .cluster
    }

    /// Whether the group is settled and the consensus loop runs.
    fn settled(&self) -> bool {
        self.identity
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .founding
            .is_some()
    }

    /// Where replica `id` is reached: its member address, else `--peers`.
    fn address_of(&self, id: u64) -> Option<String> {
        self.addresses.of(id)
    }

    /// Hands `input` to the consensus loop.
    pub(crate) fn submit(&self, input: Input) -> Result<(), ApiError> {
        if !self.settled() {
            return Err(ApiError::Unsettled);
        }
        self.inputs.send(input).map_err(|refused| match refused {
            crate::queue::Refused::Full => ApiError::Busy,
            crate::queue::Refused::Stopped => ApiError::Stopped,
        })
    }

    /// Sends the client to the leader, if one is known.
    pub(crate) fn redirect(&self, error: ProposeError, uri: Uri) -> ApiError {
        let ProposeError::NotLeader(leader) = error;
        match leader
            .filter(|l| *l != self.id)
            .and_then(|l| self.address_of(l))
        {
            Some(address) => ApiError::NotLeader(address, uri),
            None => ApiError::NoLeader,
        }
    }

    /// The consensus loop's answer, within the request timeout.
    pub(crate) async fn wait<T>(&self, reply: oneshot::Receiver<T>) -> Result<T, ApiError> {
        match tokio::time::timeout(self.request_timeout, reply).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(_)) => Err(ApiError::Stopped),
            Err(_) => Err(ApiError::Undecided(self.request_timeout)),
        }
    }
}

/// Who this replica is, for peers settling the group and for membership changes.
async fn identity(State(state): State<Arc<AppState>>) -> Json<ReplicaIdentity> {
    Json(
        state
            .identity
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone(),
    )
}

async fn paxos(
    State(state): State<Arc<AppState>>,
    JsonBody(batch): JsonBody<PeerBatch>,
) -> Result<Json<serde_json::Value>, ApiError> {
    deliver(&state, batch)?;
    Ok(Json(serde_json::json!({})))
}

/// Hands a peer batch to the loop: only one of this group, addressed here.
fn deliver(state: &AppState, batch: PeerBatch) -> Result<(), ApiError> {
    let mine = state.cluster().ok_or(ApiError::Unsettled)?;
    if batch.cluster != mine {
        return Err(ApiError::OtherCluster {
            from: batch.cluster,
            mine,
        });
    }
    if let Some(wrong) = batch.envelopes.iter().find(|e| e.to != state.id) {
        return Err(ApiError::Misaddressed {
            to: wrong.to,
            me: state.id,
        });
    }
    state.submit(Input::Messages(batch.envelopes))
}

/// One piece of a batch too long for one message: appended when it starts where
/// this replica's copy ends; the batch is delivered once whole and checked.
async fn paxos_chunk(
    State(state): State<Arc<AppState>>,
    JsonBody(chunk): JsonBody<kvorum_protocol::paxos::MessageChunk>,
) -> Result<Json<kvorum_protocol::paxos::ChunkReceipt>, ApiError> {
    if chunk.from == state.id {
        return Err(ApiError::BadChunk(format!(
            "replica {} is not a peer of replica {}",
            chunk.from, state.id
        )));
    }
    if chunk.total > MAX_CHUNKED_BYTES {
        return Err(ApiError::BadChunk(format!(
            "a chunked batch of {} bytes is over the {MAX_CHUNKED_BYTES} bytes one may hold",
            chunk.total
        )));
    }
    let whole = {
        let mut chunks = state.chunks.lock().unwrap_or_else(|p| p.into_inner());
        let entry = chunks.entry(chunk.from).or_default();
        // A new transfer from this sender replaces an unfinished older one.
        if (entry.digest, entry.total) != (chunk.digest, chunk.total) {
            *entry = PartialBatch {
                digest: chunk.digest,
                total: chunk.total,
                bytes: Vec::new(),
            };
        }
        let held = entry.bytes.len() as u64;
        if chunk.offset == held && held + chunk.data.len() as u64 <= chunk.total {
            entry.bytes.extend_from_slice(&chunk.data);
        }
        let held = entry.bytes.len() as u64;
        if held < chunk.total {
            return Ok(Json(kvorum_protocol::paxos::ChunkReceipt {
                received: held,
            }));
        }
        chunks
            .remove(&chunk.from)
            .map(|partial| partial.bytes)
            .unwrap_or_default()
    };
    if xxhash_rust::xxh3::xxh3_64(&whole) != chunk.digest {
        return Err(ApiError::BadChunk(
            "the chunked batch does not match its digest; it is dropped".to_owned(),
        ));
    }
    let batch: PeerBatch = serde_json::from_slice(&whole)
        .map_err(|e| ApiError::BadChunk(format!("the chunked batch is not envelopes: {e}")))?;
    deliver(&state, batch)?;
    Ok(Json(kvorum_protocol::paxos::ChunkReceipt {
        received: chunk.total,
    }))
}

async fn command(
    State(state): State<Arc<AppState>>,
    uri: Uri,
    JsonBody(command): JsonBody<MetadataCommand>,
) -> Result<(StatusCode, Json<MetadataOutcome>), ApiError> {
    // Malformed commands never reach the log.
    kvorum_metadata::validate(&command)?;
    let (reply, answer) = oneshot::channel();
    state.submit(Input::Command(command, reply, tracing::Span::current()))?;
    match state.wait(answer).await? {
        Ok(Ok(outcome)) => Ok((StatusCode::OK, Json(outcome))),
        Ok(Err(refused)) => Err(ApiError::Refused(refused)),
        Err(not_leader) => Err(state.redirect(not_leader, uri)),
    }
}

async fn read_state(
    State(state): State<Arc<AppState>>,
    uri: Uri,
) -> Result<Json<MetadataState>, ApiError> {
    let (reply, answer) = oneshot::channel();
    state.submit(Input::Read(reply))?;
    match state.wait(answer).await? {
        Ok(snapshot) => Ok(Json(snapshot)),
        Err(not_leader) => Err(state.redirect(not_leader, uri)),
    }
}

/// The query of `GET /v1/watch`.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct WatchQuery {
    /// Answer once the state's version is above this one.
    after: u64,
    /// How long to wait, in milliseconds (at most the request timeout).
    wait_ms: Option<u64>,
}

/// Long-poll: answers this replica's state once its version passes `after`, or
/// the current state when the wait ends (compare its version with `after`).
async fn watch(
    State(state): State<Arc<AppState>>,
    QueryParams(query): QueryParams<WatchQuery>,
) -> Result<Json<MetadataState>, ApiError> {
    let wait = Duration::from_millis(query.wait_ms.unwrap_or(u64::MAX)).min(state.request_timeout);
    let mut versions = state.versions.clone();
    let after = query.after;
    // A timeout just means nothing changed: the current state is the answer.
    let _ = tokio::time::timeout(wait, versions.wait_for(|version| *version > after)).await;
    let (reply, answer) = oneshot::channel();
    state.submit(Input::LocalState(reply))?;
    state.wait(answer).await.map(Json)
}

async fn status(State(state): State<Arc<AppState>>) -> Result<Json<MetadStatus>, ApiError> {
    let (reply, answer) = oneshot::channel();
    state.submit(Input::Status(reply))?;
    let mut status = state.wait(answer).await?;
    status.peers = state
        .addresses
        .members
        .borrow()
        .iter()
        .map(|m| (m.id, m.address.clone()))
        .collect();
    status.last_peer_error = state
        .last_peer_error
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    Ok(Json(status))
}

/// How long a health probe waits for the consensus loop.
const PROBE_WAIT: Duration = Duration::from_secs(1);

/// The loop's status within [`PROBE_WAIT`], or why there is none.
async fn probe(state: &AppState) -> Result<MetadStatus, String> {
    let (reply, answer) = oneshot::channel();
    state
        .submit(Input::Status(reply))
        .map_err(|e| format!("the consensus loop takes no input: {e}"))?;
    match tokio::time::timeout(PROBE_WAIT, answer).await {
        Ok(Ok(status)) => Ok(status),
        Ok(Err(_)) => Err("the consensus loop has stopped".to_owned()),
        Err(_) => Err(format!(
            "the consensus loop did not answer within {PROBE_WAIT:?}"
        )),
    }
}

/// Live while the consensus loop answers (or the group is still being
/// settled, before the loop starts): a replica whose loop died is restarted.
async fn healthz(State(state): State<Arc<AppState>>) -> Response {
    if !state.settled() {
        return kvorum_server::healthz().await.into_response();
    }
    match probe(&state).await {
        Ok(_) => kvorum_server::healthz().await.into_response(),
        Err(reason) => error_response(ErrorDetail::new(ErrorCode::Unavailable, reason)),
    }
}

/// Ready while the consensus loop answers and this replica leads or hears its
/// leader: only then can a command sent here be decided.
async fn readyz(State(state): State<Arc<AppState>>) -> Response {
    match probe(&state).await {
        Ok(status) if !status.member => error_response(ErrorDetail::new(
            ErrorCode::Unavailable,
            format!(
                "not ready: this replica (life {}) is not a member; if it lost its store, run `kvorumctl metad replace {}`",
                status.incarnation, status.id
            ),
        )),
        Ok(status) if status.hears_leader => kvorum_server::ready().await.into_response(),
        Ok(_) => error_response(ErrorDetail::new(
            ErrorCode::Unavailable,
            "not ready: no leader heard from within an election timeout",
        )),
        Err(reason) => error_response(ErrorDetail::new(
            ErrorCode::Unavailable,
            format!("not ready: {reason}"),
        )),
    }
}
