//! The JSON error body every Kvorum service answers with: `{"error":{"code","message",...}}`.

use serde::{Deserialize, Serialize};

use crate::ids::Epoch;

/// A machine-readable error code; each maps to one HTTP status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// 400: a malformed request (query, header or body).
    BadRequest,
    /// 400: a key that breaks the key rules.
    InvalidKey,
    /// 400: a consistency level that is unknown or not allowed here.
    InvalidConsistency,
    /// 404: no such key.
    KeyNotFound,
    /// 404: no such keyspace.
    KeyspaceNotFound,
    /// 404: no such route.
    NotFound,
    /// 405: the route exists but not with this method.
    MethodNotAllowed,
    /// 409: the request conflicts with the current state.
    Conflict,
    /// 409: the request was routed by an older epoch than the node knows.
    StaleEpoch,
    /// 409: an eventual key holds too many concurrent versions to take another
    /// blind write; read it and write back with its context to resolve them.
    SiblingLimit,
    /// 409: the storage node is a new incarnation catching up from its peers: it
    /// answers no reads until it has (SYSTEM.md, invariant 6).
    CatchingUp,
    /// 409: a strong record at or below its partition's collection watermark,
    /// for a key the replica does not hold as new: it may be older than a
    /// tombstone already collected, so the replica refuses it.
    BelowWatermark,
    /// 413: the body is over the size limit.
    PayloadTooLarge,
    /// 501: the feature arrives with a later part of the system.
    NotImplemented,
    /// 503: too few replicas answered to meet the consistency level.
    QuorumNotReached,
    /// 503: a dependency is unavailable.
    Unavailable,
    /// 504: the request ran past its deadline.
    Timeout,
    /// 500: a fault of the server, never of the client.
    Internal,
}

impl ErrorCode {
    /// The HTTP status code this error is served with.
    pub fn status(self) -> u16 {
        match self {
            ErrorCode::BadRequest | ErrorCode::InvalidKey | ErrorCode::InvalidConsistency => 400,
            ErrorCode::KeyNotFound | ErrorCode::KeyspaceNotFound | ErrorCode::NotFound => 404,
            ErrorCode::MethodNotAllowed => 405,
            ErrorCode::Conflict
            | ErrorCode::StaleEpoch
            | ErrorCode::CatchingUp
            | ErrorCode::BelowWatermark
            | ErrorCode::SiblingLimit => 409,
            ErrorCode::PayloadTooLarge => 413,
            ErrorCode::NotImplemented => 501,
            ErrorCode::QuorumNotReached | ErrorCode::Unavailable => 503,
            ErrorCode::Timeout => 504,
            ErrorCode::Internal => 500,
        }
    }
}

/// The body of every error response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// What went wrong.
    pub error: ErrorDetail,
}

/// What went wrong, for machines (`code` and the optional fields) and people (`message`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorDetail {
    /// The error code.
    pub code: ErrorCode,
    /// A sentence a person can act on.
    pub message: String,
    /// For quorum failures: how many replicas answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas_answered: Option<usize>,
    /// For quorum failures: how many the level needed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas_required: Option<usize>,
    /// For failed writes: whether the write may have taken effect on some replicas.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome_unknown: Option<bool>,
    /// For stale epochs: the epoch the node knows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_epoch: Option<Epoch>,
}

impl ErrorDetail {
    /// An error with only a code and a message.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            replicas_answered: None,
            replicas_required: None,
            outcome_unknown: None,
            current_epoch: None,
        }
    }
}

impl From<ErrorDetail> for ErrorBody {
    fn from(error: ErrorDetail) -> Self {
        Self { error }
    }
}
