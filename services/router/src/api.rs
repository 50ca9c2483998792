//! The client REST API: `router(state)` and its handlers.

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::header::{CONTENT_LENGTH, CONTENT_TYPE};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use kvorum_metad_client::MetadClientError;
use kvorum_protocol::causal::{ContextTokenError, Resolution, resolve};
use kvorum_protocol::conflict::{SiblingView, SiblingsResponse};
use kvorum_protocol::metadata::MetadataError;
use kvorum_protocol::{
    ClusterView, ConsistencyLevel, ErrorCode, ErrorDetail, InvalidKeyspace, Key, KeyError,
    KeyspaceConfig, KeyspaceMode, KeyspaceName, KeyspaceSpec, UnknownConsistency, Version,
    VersionTokenError, VersionVector, headers,
};
use kvorum_server::{PathParam, error_response, with_standard_layers};
use percent_encoding::percent_decode_str;
use serde::Deserialize;

use crate::coordinator::{Coordinator, CoordinatorError, Receipt};
use crate::eventual::CausalWrite;
use crate::keyspaces::{KeyspaceError, Operation, effective_level};
use crate::metadata::{Metadata, NotReady, Snapshot};
use crate::transport::HttpReplicas;

/// How long a request fenced off by a storage node waits for a newer partition map before its one retry.
const REFRESH_WAIT: Duration = Duration::from_secs(2);

/// What every handler shares.
#[derive(Debug)]
pub struct AppState {
    /// The cluster metadata requests route by.
    pub metadata: Metadata,
    /// Quorum coordination over HTTP.
    pub coordinator: Coordinator<HttpReplicas>,
    /// Largest value a client may PUT.
    pub max_value_bytes: usize,
    /// Whether eventual writes leave durable hints for replicas that miss them.
    pub hinted_handoff: bool,
}

/// Why a client request failed; maps to the JSON error body.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The key breaks the key rules.
    #[error(transparent)]
    InvalidKey(#[from] KeyError),
    /// The query string is malformed or has unknown parameters.
    #[error("bad query string: {0}")]
    BadQuery(String),
    /// The consistency parameter is not a level.
    #[error(transparent)]
    UnknownConsistency(#[from] UnknownConsistency),
    /// The keyspace is unknown, or refuses the level.
    #[error(transparent)]
    Keyspace(#[from] KeyspaceError),
    /// The `X-Kvorum-Context` header is not a token Kvorum issued.
    #[error(transparent)]
    BadContext(#[from] VersionTokenError),
    /// The `X-Kvorum-Context` header is not a causal context of an eventual keyspace.
    #[error(transparent)]
    BadCausalContext(#[from] ContextTokenError),
    /// The value is larger than the limit.
    #[error("the value is larger than the limit of {limit} bytes")]
    ValueTooLarge {
        /// The limit.
        limit: usize,
    },
    /// The request body could not be read.
    #[error("cannot read the request body: {0}")]
    BadBody(String),
    /// The key has no live value (never written, or deleted).
    #[error("no value for key {:?} in keyspace {:?}", key.as_str(), keyspace.as_str())]
    KeyNotFound {
        /// The key.
        key: Key,
        /// Its keyspace.
        keyspace: kvorum_protocol::KeyspaceName,
        /// What the read did.
        receipt: Box<Receipt>,
    },
    /// The level could not be met.
    #[error(transparent)]
    Coordinator(#[from] CoordinatorError),
    /// The router has no partition map to route by yet.
    #[error(transparent)]
    NotReady(#[from] NotReady),
    /// A keyspace name that breaks the naming rules.
    #[error(transparent)]
    KeyspaceName(KeyError),
    /// Keyspace settings that break a rule.
    #[error(transparent)]
    InvalidKeyspace(#[from] InvalidKeyspace),
    /// A keyspace of that name exists with other settings.
    #[error("keyspace {0:?} already exists with other settings; GET /v1/keyspaces/{0} shows them")]
    KeyspaceExists(String),
    /// The metadata service refused a command or did not answer.
    #[error(transparent)]
    Metad(#[from] MetadClientError),
}

impl ApiError {
    fn detail(&self) -> ErrorDetail {
        let code = match self {
            ApiError::InvalidKey(_) => ErrorCode::InvalidKey,
            ApiError::BadQuery(_)
            | ApiError::BadContext(_)
            | ApiError::BadCausalContext(_)
            | ApiError::BadBody(_) => ErrorCode::BadRequest,
            ApiError::UnknownConsistency(_)
            | ApiError::Keyspace(KeyspaceError::LevelNotAllowed { .. }) => {
                ErrorCode::InvalidConsistency
            }
            ApiError::Keyspace(KeyspaceError::NotFound(_)) => ErrorCode::KeyspaceNotFound,
            ApiError::ValueTooLarge { .. } => ErrorCode::PayloadTooLarge,
            ApiError::KeyNotFound { .. } => ErrorCode::KeyNotFound,
            ApiError::Coordinator(CoordinatorError::QuorumNotReached { .. }) => {
                ErrorCode::QuorumNotReached
            }
            ApiError::Coordinator(CoordinatorError::VersionsExhausted { .. }) => {
                ErrorCode::Conflict
            }
            ApiError::Coordinator(CoordinatorError::KeyLimit { code, .. }) => *code,
            ApiError::NotReady(_) | ApiError::Metad(MetadClientError::Unavailable { .. }) => {
                ErrorCode::Unavailable
            }
            ApiError::KeyspaceName(_)
            | ApiError::Metad(MetadClientError::Refused(MetadataError::Invalid { .. })) => {
                ErrorCode::BadRequest
            }
            ApiError::InvalidKeyspace(_) => ErrorCode::BadRequest,
            ApiError::KeyspaceExists(_)
            | ApiError::Metad(MetadClientError::Refused(MetadataError::Conflict { .. })) => {
                ErrorCode::Conflict
            }
            ApiError::Metad(MetadClientError::Refused(MetadataError::NotFound { .. })) => {
                ErrorCode::NotFound
            }
        };
        let mut detail = ErrorDetail::new(code, self.to_string());
        if let ApiError::Coordinator(CoordinatorError::QuorumNotReached {
            answered,
            required,
            outcome_unknown,
            ..
        }) = self
        {
            detail.replicas_answered = Some(*answered);
            detail.replicas_required = Some(*required);
            detail.outcome_unknown = *outcome_unknown;
        }
        detail
    }

    fn receipt(&self) -> Option<&Receipt> {
        match self {
            ApiError::KeyNotFound { receipt, .. } => Some(receipt),
            ApiError::Coordinator(error) => Some(error.receipt()),
            _ => None,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if let ApiError::Coordinator(CoordinatorError::QuorumNotReached { phase, .. }) = &self {
            metrics::counter!("kvorum_quorum_failures_total", "phase" => format!("{phase:?}").to_lowercase()).increment(1);
        }
        let mut response = error_response(self.detail());
        if let Some(receipt) = self.receipt() {
            add_receipt(response.headers_mut(), receipt);
        }
        if matches!(self, ApiError::ValueTooLarge { .. }) {
            // The unread rest of the body is still on the wire: the connection cannot
            // carry another request, and the client must not try to reuse it.
            response.headers_mut().insert(
                axum::http::header::CONNECTION,
                HeaderValue::from_static("close"),
            );
        }
        response
    }
}

/// The client API's routes, wrapped in the standard layers.
pub fn router(state: Arc<AppState>, request_timeout: Duration) -> Router {
    let kv = get(get_key).put(put_key).delete(delete_key);
    let routes = Router::new()
        .route("/healthz", get(kvorum_server::healthz))
        .route("/readyz", state.metadata.readiness().route())
        // The bare prefix routes exist so that an empty key is a clear 400, not a 404.
        .route("/v1/kv", kv.clone())
        .route("/v1/kv/", kv.clone())
        .route("/v1/kv/{*key}", kv)
        .route("/v1/keyspaces", get(list_keyspaces))
        .route(
            "/v1/keyspaces/{name}",
            get(get_keyspace).put(create_keyspace),
        )
        .route("/v1/cluster", get(cluster))
        .route("/v1/nodes/{id}", axum::routing::put(add_node))
        .route(
            "/v1/nodes/{id}/decommission",
            axum::routing::post(decommission_node),
        )
        .route("/openapi.json", get(openapi))
        .with_state(state);
    with_standard_layers(routes, request_timeout)
}

/// The query parameters of `/v1/kv/{*key}`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct KvQuery {
    keyspace: Option<String>,
    consistency: Option<String>,
}

/// A parsed and validated key request.
#[derive(Debug)]
struct KvRequest<'a> {
    key: Key,
    keyspace: &'a KeyspaceConfig,
    level: ConsistencyLevel,
}

impl<'a> KvRequest<'a> {
    fn parse(snapshot: &'a Snapshot, uri: &Uri, operation: Operation) -> Result<Self, ApiError> {
        // The key is taken from the raw path so that percent-encoded bytes that are
        // not UTF-8 get Kvorum's error rather than the framework's.
        let raw = uri.path().strip_prefix("/v1/kv").unwrap_or_default();
        let raw = raw.strip_prefix('/').unwrap_or(raw);
        let bytes: Vec<u8> = percent_decode_str(raw).collect();
        let key = Key::from_bytes(&bytes)?;
        let query: KvQuery = serde_urlencoded::from_str(uri.query().unwrap_or_default())
            .map_err(|e| ApiError::BadQuery(e.to_string()))?;
        let keyspace = snapshot.keyspaces.get(
            query
                .keyspace
                .as_deref()
                .unwrap_or(kvorum_protocol::KeyspaceName::DEFAULT),
        )?;
        let requested = query.consistency.as_deref().map(str::parse).transpose()?;
        let level = effective_level(keyspace, requested, operation)?;
        Ok(Self {
            key,
            keyspace,
            level,
        })
    }
}

fn header_value(text: &str) -> HeaderValue {
    HeaderValue::from_str(text).unwrap_or_else(|_| HeaderValue::from_static("invalid"))
}

fn node_list(nodes: &[kvorum_protocol::NodeId]) -> HeaderValue {
    header_value(
        &nodes
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(","),
    )
}

/// Writes the consistency receipt into response headers.
fn add_receipt(headers: &mut HeaderMap, receipt: &Receipt) {
    let pairs = [
        (
            headers::CONSISTENCY,
            header_value(receipt.consistency.as_str()),
        ),
        (
            headers::PARTITION,
            header_value(&receipt.partition.to_string()),
        ),
        (headers::EPOCH, header_value(&receipt.epoch.to_string())),
        (headers::REPLICAS_ASKED, node_list(&receipt.asked)),
        (headers::REPLICAS_ACKED, node_list(&receipt.acked)),
        (
            headers::READ_REPAIR,
            header_value(if receipt.read_repair { "true" } else { "false" }),
        ),
        (
            headers::HINTED,
            header_value(if receipt.hinted { "true" } else { "false" }),
        ),
    ];
    for (name, value) in pairs {
        headers.insert(HeaderName::from_static(name), value);
    }
}

fn add_version(headers: &mut HeaderMap, version: Version) {
    let token = header_value(&version.to_token());
    headers.insert(HeaderName::from_static(headers::VERSION), token.clone());
    headers.insert(HeaderName::from_static(headers::CONTEXT), token);
}

fn add_causal_context(headers: &mut HeaderMap, token: &str) {
    headers.insert(
        HeaderName::from_static(headers::CONTEXT),
        header_value(token),
    );
}

/// The causal context a client sent back, checked against the keyspace's mode.
///
/// Strong keyspaces order writes by version alone: their token is checked so a
/// garbled one is refused, and has no further effect. Eventual keyspaces take
/// the version vector: the write supersedes exactly the siblings it names.
fn context(
    headers: &HeaderMap,
    snapshot: &Snapshot,
    request: &KvRequest<'_>,
) -> Result<Option<VersionVector>, ApiError> {
    let mode = request.keyspace.mode;
    let Some(value) = headers.get(headers::CONTEXT) else {
        return Ok(None);
    };
    match mode {
        KeyspaceMode::Strong => {
            let text = value
                .to_str()
                .map_err(|_| VersionTokenError("(not ASCII)".into()))?;
            text.parse::<Version>()?;
            Ok(None)
        }
        KeyspaceMode::Eventual => {
            let text = value
                .to_str()
                .map_err(|_| ContextTokenError("(not ASCII)".into()))?;
            // Only a context a router gave out for this key (signed) is taken.
            let vector = snapshot
                .contexts
                .verify(&request.keyspace.name, &request.key, text)?;
            // Actors are storage nodes: a context naming others was not issued
            // by this cluster, and would grow the key's context for ever.
            if vector
                .entries()
                .any(|(actor, _)| !snapshot.topology.has_node(kvorum_protocol::NodeId(actor)))
            {
                return Err(ContextTokenError(text.chars().take(64).collect()).into());
            }
            Ok(Some(vector))
        }
    }
}

async fn read_value(body: Body, headers: &HeaderMap, limit: usize) -> Result<Vec<u8>, ApiError> {
    let declared = headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|length| length > limit as u64) {
        return Err(ApiError::ValueTooLarge { limit });
    }
    match Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes().to_vec()),
        Err(error) if error.downcast_ref::<LengthLimitError>().is_some() => {
            Err(ApiError::ValueTooLarge { limit })
        }
        Err(error) => Err(ApiError::BadBody(error.to_string())),
    }
}

impl ApiError {
    /// Whether a storage node fenced the request off as routed by an old map,
    /// and retrying it with a newer map cannot apply a write twice.
    fn retry_with_newer_map(&self) -> bool {
        matches!(
            self,
            ApiError::Coordinator(CoordinatorError::QuorumNotReached {
                fenced: true,
                outcome_unknown: None | Some(false),
                ..
            })
        )
    }
}

async fn get_key(State(state): State<Arc<AppState>>, uri: Uri) -> Result<Response, ApiError> {
    let mut snapshot = state.metadata.current()?;
    let mut retried = false;
    loop {
        match read(&state, &snapshot, &uri).await {
            Err(error) if !retried && error.retry_with_newer_map() => {
                retried = true;
                state.metadata.refresh(snapshot.version, REFRESH_WAIT).await;
                snapshot = state.metadata.current()?;
            }
            result => return result,
        }
    }
}

async fn read(state: &AppState, snapshot: &Snapshot, uri: &Uri) -> Result<Response, ApiError> {
    let request = KvRequest::parse(snapshot, uri, Operation::Read)?;
    let route = snapshot.topology.route(request.keyspace, &request.key);
    if request.keyspace.mode == KeyspaceMode::Eventual {
        return read_eventual(state, snapshot, &request, &route).await;
    }
    let outcome = state
        .coordinator
        .read(&route, &request.keyspace.name, &request.key, request.level)
        .await?;
    match outcome.record {
        Some(record) if !record.is_tombstone() => {
            let mut response = (
                StatusCode::OK,
                [(
                    CONTENT_TYPE,
                    HeaderValue::from_static("application/octet-stream"),
                )],
                record.value.unwrap_or_default(),
            )
                .into_response();
            add_receipt(response.headers_mut(), &outcome.receipt);
            add_version(response.headers_mut(), record.version);
            Ok(response)
        }
        _ => Err(ApiError::KeyNotFound {
            key: request.key,
            keyspace: request.keyspace.name.clone(),
            receipt: Box::new(outcome.receipt),
        }),
    }
}

/// An eventual keyspace's read: the joined state, resolved by the keyspace's strategy.
async fn read_eventual(
    state: &AppState,
    snapshot: &Snapshot,
    request: &KvRequest<'_>,
    route: &crate::topology::Route,
) -> Result<Response, ApiError> {
    let outcome = state
        .coordinator
        .causal_read(route, &request.keyspace.name, &request.key, request.level)
        .await?;
    let token = snapshot.contexts.sign(
        &request.keyspace.name,
        &request.key,
        outcome.state.context(),
    );
    let mut response = match resolve(&outcome.state, request.keyspace.conflict) {
        Resolution::Value(value) => (
            StatusCode::OK,
            [(
                CONTENT_TYPE,
                HeaderValue::from_static("application/octet-stream"),
            )],
            value,
        )
            .into_response(),
        Resolution::Siblings(siblings) => (
            StatusCode::MULTIPLE_CHOICES,
            Json(SiblingsResponse {
                siblings: siblings.into_iter().map(SiblingView::from).collect(),
                context: token.clone(),
            }),
        )
            .into_response(),
        Resolution::Missing => ApiError::KeyNotFound {
            key: request.key.clone(),
            keyspace: request.keyspace.name.clone(),
            receipt: Box::new(outcome.receipt.clone()),
        }
        .into_response(),
    };
    add_receipt(response.headers_mut(), &outcome.receipt);
    // Also on a 404: a write with this context supersedes the delete it saw.
    add_causal_context(response.headers_mut(), &token);
    Ok(response)
}

async fn put_key(
    State(state): State<Arc<AppState>>,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    // Refuse a bad request before reading its body.
    {
        let snapshot = state.metadata.current()?;
        let request = KvRequest::parse(&snapshot, &uri, Operation::Write)?;
        context(&headers, &snapshot, &request)?;
    }
    let value = read_value(body, &headers, state.max_value_bytes).await?;
    write(&state, &uri, &headers, Some(&value)).await
}

async fn delete_key(
    State(state): State<Arc<AppState>>,
    uri: Uri,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    write(&state, &uri, &headers, None).await
}

async fn write(
    state: &AppState,
    uri: &Uri,
    headers: &HeaderMap,
    value: Option<&[u8]>,
) -> Result<Response, ApiError> {
    let mut snapshot = state.metadata.current()?;
    let mut retried = false;
    loop {
        let request = KvRequest::parse(&snapshot, uri, Operation::Write)?;
        let causal_context = context(headers, &snapshot, &request)?;
        let route = snapshot.topology.route(request.keyspace, &request.key);
        let (keyspace, key, level) = (&request.keyspace.name, &request.key, request.level);
        let written = match request.keyspace.mode {
            KeyspaceMode::Eventual => {
                let write = CausalWrite {
                    // A `siblings` keyspace keeps a write sent without a context beside
                    // what is there (the client saw nothing); `lww` and `merge` let it
                    // supersede what the coordinating replica holds, so repeated blind
                    // writes do not pile up siblings.
                    context: causal_context.or_else(|| {
                        (request.keyspace.conflict == kvorum_protocol::ConflictStrategy::Siblings)
                            .then(VersionVector::new)
                    }),
                    hinted_handoff: state.hinted_handoff,
                };
                state
                    .coordinator
                    .causal_write(&route, keyspace, key, value, write, level)
                    .await
                    .map(|outcome| {
                        let mut response = StatusCode::NO_CONTENT.into_response();
                        add_receipt(response.headers_mut(), &outcome.receipt);
                        // The new state's context also covers siblings the client never
                        // saw when the write was concurrent with others; handing it out
                        // would let the next write discard them unseen. Only a write that
                        // left one version gets a context back.
                        if outcome.state.siblings().len() == 1 {
                            let token =
                                snapshot
                                    .contexts
                                    .sign(keyspace, key, outcome.state.context());
                            add_causal_context(response.headers_mut(), &token);
                        }
                        response
                    })
            }
            KeyspaceMode::Strong => state
                .coordinator
                .write(&route, keyspace, key, value, level)
                .await
                .map(|outcome| {
                    let mut response = StatusCode::NO_CONTENT.into_response();
                    add_receipt(response.headers_mut(), &outcome.receipt);
                    add_version(response.headers_mut(), outcome.version);
                    response
                }),
        }
        .map_err(ApiError::from);
        match written {
            Err(error) if !retried && error.retry_with_newer_map() => {
                retried = true;
                state.metadata.refresh(snapshot.version, REFRESH_WAIT).await;
                snapshot = state.metadata.current()?;
            }
            written => return written,
        }
    }
}

async fn list_keyspaces(
    State(state): State<Arc<AppState>>,
) -> Result<Json<Vec<KeyspaceConfig>>, ApiError> {
    Ok(Json(state.metadata.current()?.keyspaces.list()))
}

async fn get_keyspace(
    State(state): State<Arc<AppState>>,
    PathParam(name): PathParam<String>,
) -> Result<Json<KeyspaceConfig>, ApiError> {
    Ok(Json(
        state.metadata.current()?.keyspaces.get(&name)?.clone(),
    ))
}

/// `PUT /v1/keyspaces/{name}`: 201 with the settings when created, 200 when an
/// identical keyspace exists, 409 when one exists with other settings.
///
/// The body is read as JSON whatever its `Content-Type`, so that a plain
/// `curl -d '{"mode":"strong"}'` works.
async fn create_keyspace(
    State(state): State<Arc<AppState>>,
    PathParam(name): PathParam<String>,
    body: axum::body::Bytes,
) -> Result<(StatusCode, Json<KeyspaceConfig>), ApiError> {
    let name = KeyspaceName::parse(&name).map_err(ApiError::KeyspaceName)?;
    let spec: KeyspaceSpec = serde_json::from_slice(&body)
        .map_err(|e| ApiError::BadBody(format!("not a keyspace description: {e}")))?;
    let snapshot = state.metadata.current()?;
    let keyspace = KeyspaceConfig::from_spec(name, &spec, snapshot.settings.replication_factor)?;
    if let Ok(existing) = snapshot.keyspaces.get(keyspace.name.as_str()) {
        return if *existing == keyspace {
            Ok((StatusCode::OK, Json(keyspace)))
        } else {
            Err(ApiError::KeyspaceExists(keyspace.name.to_string()))
        };
    }
    state
        .metadata
        .submit(kvorum_protocol::metadata::MetadataOp::CreateKeyspace {
            keyspace: keyspace.clone(),
        })
        .await?;
    Ok((StatusCode::CREATED, Json(keyspace)))
}

/// The OpenAPI 3.1 description of this API, kept beside the code and checked against the routes by a test.
pub const OPENAPI: &str = include_str!("../openapi.json");

async fn openapi() -> impl IntoResponse {
    (
        [(CONTENT_TYPE, HeaderValue::from_static("application/json"))],
        OPENAPI,
    )
}

/// The body of `PUT /v1/nodes/{id}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NodeSpec {
    address: String,
    #[serde(default)]
    role: Option<kvorum_protocol::cluster::NodeRole>,
}

/// `PUT /v1/nodes/{id}`: admits a node (storage or standby) before its process
/// starts; the process registering under that id takes its place, and the
/// recovery controller moves partitions onto it to even out the load.
async fn add_node(
    State(state): State<Arc<AppState>>,
    PathParam(id): PathParam<u64>,
    body: axum::body::Bytes,
) -> Result<(StatusCode, Json<kvorum_protocol::NodeInfo>), ApiError> {
    let spec: NodeSpec = serde_json::from_slice(&body)
        .map_err(|e| ApiError::BadBody(format!("not a node description: {e}")))?;
    let role = spec.role.unwrap_or_default();
    if role == kvorum_protocol::cluster::NodeRole::Leaving {
        return Err(ApiError::BadBody(
            "a node is added as storage or standby; decommission it to make it leave".to_owned(),
        ));
    }
    let node = kvorum_protocol::NodeInfo::registering(
        kvorum_protocol::NodeId(id),
        spec.address,
        role,
        false,
    );
    state
        .metadata
        .submit(kvorum_protocol::metadata::MetadataOp::RegisterNode { node: node.clone() })
        .await?;
    Ok((StatusCode::OK, Json(node)))
}

/// `POST /v1/nodes/{id}/decommission`: the node's partitions move elsewhere;
/// once it holds nothing the recovery controller marks it decommissioned.
async fn decommission_node(
    State(state): State<Arc<AppState>>,
    PathParam(id): PathParam<u64>,
) -> Result<StatusCode, ApiError> {
    // Asking again is not an error and changes nothing.
    let snapshot = state.metadata.current()?;
    if snapshot
        .topology
        .node(kvorum_protocol::NodeId(id))
        .is_some_and(|n| {
            n.role == kvorum_protocol::cluster::NodeRole::Leaving
                || n.state == kvorum_protocol::cluster::NodeState::Decommissioned
        })
    {
        return Ok(StatusCode::OK);
    }
    state
        .metadata
        .submit(kvorum_protocol::metadata::MetadataOp::SetNodeRole {
            node: kvorum_protocol::NodeId(id),
            role: kvorum_protocol::cluster::NodeRole::Leaving,
        })
        .await?;
    Ok(StatusCode::ACCEPTED)
}

async fn cluster(State(state): State<Arc<AppState>>) -> Result<Json<ClusterView>, ApiError> {
    let snapshot = state.metadata.current()?;
    let (metad, suspicion, moves) = tokio::join!(
        state.metadata.metad_view(),
        state.metadata.suspicion(),
        state.metadata.moves()
    );
    let mut view = snapshot.topology.view(metad);
    if let Some(report) = moves {
        view.moves = report.moves;
        view.recoveries = report.finished;
    }
    if let Some(report) = suspicion {
        for node in &mut view.nodes {
            node.phi = report
                .nodes
                .iter()
                .find(|s| s.node == Some(node.id))
                .map(|s| s.phi);
        }
        for replica in &mut view.metad.replicas {
            if let Some(seen) = report.metad.iter().find(|s| s.address == replica.address) {
                replica.phi = Some(seen.phi);
                replica.state = Some(seen.state);
            }
        }
    }
    Ok(Json(view))
}

#[cfg(test)]
mod tests {
    use axum::http::Request;
    use kvorum_http_client::{ClientConfig, HttpClient};
    use kvorum_metad_client::{Follower, MetadAddresses, MetadClient};
    use kvorum_protocol::metadata::MetadataState;
    use kvorum_protocol::{ClusterSettings, NodeId, NodeInfo};
    use tower::ServiceExt;

    use super::*;

    /// A router whose three replicas and metadata service are addresses nobody listens on.
    fn app() -> Router {
        // Ports 1..=4 on loopback: privileged and unused, so connections are refused at once.
        let ids: Vec<NodeId> = (1..=3).map(NodeId).collect();
        let settings = ClusterSettings {
            partitions: 8,
            replication_factor: 3,
            bootstrap_nodes: 3,
        };
        let default = KeyspaceConfig::default_keyspace(3);
        let metadata = MetadataState {
            version: 4,
            cluster: Some(settings),
            nodes: ids
                .iter()
                .map(|&id| {
                    (
                        id,
                        NodeInfo::registering(
                            id,
                            format!("127.0.0.1:{}", id.0),
                            Default::default(),
                            false,
                        ),
                    )
                })
                .collect(),
            partition_map: Some(kvorum_placement::initial_partition_map(8, &ids, 3)),
            keyspaces: [(default.name.to_string(), default)].into(),
            leases: Default::default(),
            context_key: None,
        };
        let metad = MetadClient::new(
            ClientConfig::new("test"),
            MetadAddresses(vec!["127.0.0.1:4".to_owned()]),
        )
        .expect("client")
        .with_deadline(Duration::from_millis(100));
        let mut config = ClientConfig::new("test");
        config.retries = 0;
        let state = AppState {
            metadata: Metadata::new(metad, Follower::fixed(metadata), ClientConfig::new("test")),
            coordinator: Coordinator::new(
                HttpReplicas::new(
                    HttpClient::new(config).expect("client"),
                    Duration::from_secs(2),
                ),
                1,
            ),
            hinted_handoff: true,
            max_value_bytes: 16,
        };
        router(Arc::new(state), Duration::from_secs(5))
    }

    async fn send(request: Request<Body>) -> (StatusCode, HeaderMap, serde_json::Value) {
        let response = app().oneshot(request).await.expect("infallible");
        let (parts, body) = response.into_parts();
        let bytes = body.collect().await.expect("body").to_bytes();
        (
            parts.status,
            parts.headers,
            serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null),
        )
    }

    fn request(method: &str, uri: &str, body: &'static str) -> Request<Body> {
        Request::builder()
            .method(method)
            .uri(uri)
            .body(Body::from(body))
            .expect("request")
    }

    #[tokio::test]
    async fn every_bad_input_gets_its_json_error() {
        let long_key = format!("/v1/kv/{}", "k".repeat(1025));
        let cases: Vec<(Request<Body>, StatusCode, &str)> = vec![
            (
                request("GET", "/v1/kv/", ""),
                StatusCode::BAD_REQUEST,
                "invalid_key",
            ),
            (
                request("PUT", "/v1/kv", "v"),
                StatusCode::BAD_REQUEST,
                "invalid_key",
            ),
            (
                request("GET", &long_key, ""),
                StatusCode::BAD_REQUEST,
                "invalid_key",
            ),
            (
                request("GET", "/v1/kv/%FF%FE", ""),
                StatusCode::BAD_REQUEST,
                "invalid_key",
            ),
            (
                request("PUT", "/v1/kv/a%0Ab", "v"),
                StatusCode::BAD_REQUEST,
                "invalid_key",
            ),
            (
                request("DELETE", "/v1/kv/a%00", ""),
                StatusCode::BAD_REQUEST,
                "invalid_key",
            ),
            (
                request("GET", "/v1/kv/k?consistency=two", ""),
                StatusCode::BAD_REQUEST,
                "invalid_consistency",
            ),
            (
                request("PUT", "/v1/kv/k?consistency=one", "v"),
                StatusCode::BAD_REQUEST,
                "invalid_consistency",
            ),
            (
                request("DELETE", "/v1/kv/k?consistency=one", ""),
                StatusCode::BAD_REQUEST,
                "invalid_consistency",
            ),
            (
                request("GET", "/v1/kv/k?keyspace=nope", ""),
                StatusCode::NOT_FOUND,
                "keyspace_not_found",
            ),
            (
                request("GET", "/v1/kv/k?colour=red", ""),
                StatusCode::BAD_REQUEST,
                "bad_request",
            ),
            (
                request("PUT", "/v1/kv/k", "seventeen bytes!!"),
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
            ),
            (
                request("GET", "/v1/keyspaces/nope", ""),
                StatusCode::NOT_FOUND,
                "keyspace_not_found",
            ),
            (
                request(
                    "PUT",
                    "/v1/keyspaces/new",
                    "{\"mode\":\"eventual\",\"replication_factor\":9}",
                ),
                StatusCode::BAD_REQUEST,
                "bad_request",
            ),
            (
                request(
                    "PUT",
                    "/v1/keyspaces/new",
                    "{\"mode\":\"strong\",\"replication_factor\":5}",
                ),
                StatusCode::BAD_REQUEST,
                "bad_request",
            ),
            (
                request(
                    "PUT",
                    "/v1/keyspaces/new",
                    "{\"mode\":\"strong\",\"conflict\":\"siblings\"}",
                ),
                StatusCode::BAD_REQUEST,
                "bad_request",
            ),
            (
                request("PUT", "/v1/keyspaces/new", "{\"replication_factor\":3}"),
                StatusCode::BAD_REQUEST,
                "bad_request",
            ),
            (
                request("PUT", "/v1/keyspaces/no%20spaces", "{\"mode\":\"strong\"}"),
                StatusCode::BAD_REQUEST,
                "bad_request",
            ),
            (
                request(
                    "PUT",
                    "/v1/keyspaces/default",
                    "{\"mode\":\"strong\",\"replication_factor\":1}",
                ),
                StatusCode::CONFLICT,
                "conflict",
            ),
            (
                request("PUT", "/v1/keyspaces/new", "{\"mode\":\"strong\"}"),
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
            ),
            (
                request("POST", "/v1/kv/k", ""),
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
            ),
            (
                request("GET", "/v2/kv/k", ""),
                StatusCode::NOT_FOUND,
                "not_found",
            ),
        ];
        for (request, status, code) in cases {
            let described = format!("{} {}", request.method(), request.uri());
            let (got_status, _, body) = send(request).await;
            assert_eq!(got_status, status, "{described}: {body}");
            assert_eq!(body["error"]["code"], code, "{described}: {body}");
            assert!(
                body["error"]["message"]
                    .as_str()
                    .is_some_and(|m| !m.is_empty()),
                "{described}: {body}"
            );
        }
    }

    #[tokio::test]
    async fn a_value_over_the_limit_is_refused_even_without_a_declared_length() {
        let stream = chunked(vec![b"0123456789".to_vec(), b"0123456789".to_vec()]);
        let (status, headers, body) =
            send(Request::put("/v1/kv/k").body(stream).expect("request")).await;
        assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{body}");
        assert_eq!(headers[axum::http::header::CONNECTION], "close");
    }

    /// A body of several chunks with no declared content length.
    fn chunked(chunks: Vec<Vec<u8>>) -> Body {
        Body::from_stream(futures::stream::iter(
            chunks.into_iter().map(Ok::<_, std::io::Error>),
        ))
    }

    #[tokio::test]
    async fn a_malformed_context_token_is_refused() {
        let request = Request::put("/v1/kv/k")
            .header(headers::CONTEXT, "garbage")
            .body(Body::from("v"))
            .expect("request");
        let (status, _, body) = send(request).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap_or_default()
                .contains("context"),
            "{body}"
        );
    }

    #[tokio::test]
    async fn unreachable_replicas_give_503_with_counts_and_a_receipt() {
        let (status, headers, body) = send(request("PUT", "/v1/kv/k", "v")).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
        assert_eq!(body["error"]["code"], "quorum_not_reached");
        assert_eq!(body["error"]["replicas_answered"], 0);
        assert_eq!(body["error"]["replicas_required"], 2);
        assert_eq!(
            body["error"]["outcome_unknown"], false,
            "refused connections cannot have applied the write"
        );
        assert_eq!(headers[headers::REPLICAS_ACKED], "");
        assert_eq!(
            headers[headers::REPLICAS_ASKED]
                .to_str()
                .ok()
                .map(|s| s.split(',').count()),
            Some(3)
        );

        let (status, _, body) = send(request("GET", "/v1/kv/k?consistency=one", "")).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
        assert_eq!(body["error"]["replicas_required"], 1);
        assert!(
            body["error"].get("outcome_unknown").is_none(),
            "reads have no outcome to be unsure of"
        );
    }

    #[tokio::test]
    async fn the_openapi_document_describes_exactly_the_routes_served() {
        let (status, _, document) = send(request("GET", "/openapi.json", "")).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(document["openapi"], "3.1.0");
        let paths = document["paths"].as_object().expect("paths");
        let mut documented = Vec::new();
        for (path, item) in paths {
            for method in ["get", "put", "post", "delete"] {
                if item.get(method).is_some() {
                    documented.push((method.to_uppercase(), path.clone()));
                }
            }
        }
        // Everything documented is served (not the fallback's 404 or 405)...
        for (method, path) in &documented {
            let concrete = path
                .replace("{key}", "some/key")
                .replace("{name}", "default")
                .replace("{id}", "1");
            let (status, _, body) = send(request(method, &concrete, "")).await;
            assert!(
                body["error"]["code"] != "not_found" && status != StatusCode::METHOD_NOT_ALLOWED,
                "{method} {path}: {status} {body}"
            );
        }
        // ...and everything served is documented.
        let served = [
            ("GET", "/v1/kv/{key}"),
            ("PUT", "/v1/kv/{key}"),
            ("DELETE", "/v1/kv/{key}"),
            ("GET", "/v1/keyspaces"),
            ("GET", "/v1/keyspaces/{name}"),
            ("PUT", "/v1/keyspaces/{name}"),
            ("GET", "/v1/cluster"),
            ("PUT", "/v1/nodes/{id}"),
            ("POST", "/v1/nodes/{id}/decommission"),
            ("GET", "/healthz"),
            ("GET", "/readyz"),
            ("GET", "/metrics"),
            ("GET", "/openapi.json"),
        ];
        for (method, path) in served {
            assert!(
                documented.contains(&(method.to_owned(), path.to_owned())),
                "{method} {path} is not documented"
            );
        }
        assert_eq!(
            documented.len(),
            served.len(),
            "documented routes: {documented:?}"
        );
    }

    #[tokio::test]
    async fn keyspaces_and_the_cluster_are_described() {
        let (status, _, body) = send(request("GET", "/v1/keyspaces", "")).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body[0]["name"], "default");
        assert_eq!(body[0]["mode"], "strong");
        assert_eq!(body[0]["replication_factor"], 3);

        let (status, _, body) = send(request("GET", "/v1/cluster", "")).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body["nodes"].as_array().map(Vec::len), Some(3));
        assert_eq!(body["partitions"].as_array().map(Vec::len), Some(8));
        assert_eq!(
            body["partitions"][0]["replicas"].as_array().map(Vec::len),
            Some(3)
        );
        assert!(
            body["metad"]["leader"].is_null(),
            "no metadata replica answers here"
        );
        assert!(body["moves"].as_array().is_some());
    }
}
