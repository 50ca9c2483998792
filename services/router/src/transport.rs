//! How the coordinator reaches replicas: a narrow trait, and its HTTP implementation.
//!
//! The trait exists so that the coordinator's quorum logic can be tested against
//! in-process replicas that fail, stall or lag on command.

use std::future::Future;

use kvorum_http_client::{CallError, HttpClient, Idempotency};
use kvorum_protocol::storage::{
    CommitRequest, CommitResponse, PrepareResponse, ReadResponse, ReplicaKey,
};
use kvorum_protocol::{Epoch, ErrorCode};

use crate::topology::Replica;

/// A failed call to a replica.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ReplicaError {
    /// Whether the replica may have acted on the request.
    pub maybe_delivered: bool,
    /// When the replica fenced the request off: the newer epoch it knows.
    pub stale_epoch: Option<Epoch>,
    /// What went wrong.
    pub message: String,
}

/// The storage node calls the coordinator makes.
pub trait ReplicaTransport: Send + Sync + 'static {
    /// Reads the record a replica holds.
    fn read(
        &self,
        replica: &Replica,
        target: ReplicaKey,
    ) -> impl Future<Output = Result<ReadResponse, ReplicaError>> + Send + 'static + use<Self>;

    /// Asks a replica for the version it holds (phase one of a write).
    fn prepare(
        &self,
        replica: &Replica,
        target: ReplicaKey,
    ) -> impl Future<Output = Result<PrepareResponse, ReplicaError>> + Send + 'static + use<Self>;

    /// Asks a replica to keep a record if it is newer (phase two, and write-back).
    fn commit(
        &self,
        replica: &Replica,
        request: CommitRequest,
    ) -> impl Future<Output = Result<CommitResponse, ReplicaError>> + Send + 'static + use<Self>;
}

/// Replicas reached over HTTP with the shared client.
#[derive(Debug, Clone)]
pub struct HttpReplicas {
    client: HttpClient,
}

impl HttpReplicas {
    /// Replicas reached through `client`.
    pub fn new(client: HttpClient) -> Self {
        Self { client }
    }
}

fn replica_error(error: CallError) -> ReplicaError {
    let stale_epoch = match &error {
        CallError::Status {
            detail: Some(detail),
            ..
        } if detail.code == ErrorCode::StaleEpoch => detail.current_epoch,
        _ => None,
    };
    ReplicaError {
        maybe_delivered: error.maybe_delivered(),
        stale_epoch,
        message: error.to_string(),
    }
}

impl ReplicaTransport for HttpReplicas {
    fn read(
        &self,
        replica: &Replica,
        target: ReplicaKey,
    ) -> impl Future<Output = Result<ReadResponse, ReplicaError>> + Send + 'static + use<> {
        let (client, address) = (self.client.clone(), replica.address.clone());
        async move {
            client
                .post_json(
                    &address,
                    "/internal/v1/read",
                    &target,
                    Idempotency::Idempotent,
                )
                .await
                .map_err(replica_error)
        }
    }

    fn prepare(
        &self,
        replica: &Replica,
        target: ReplicaKey,
    ) -> impl Future<Output = Result<PrepareResponse, ReplicaError>> + Send + 'static + use<> {
        let (client, address) = (self.client.clone(), replica.address.clone());
        async move {
            client
                .post_json(
                    &address,
                    "/internal/v1/prepare",
                    &target,
                    Idempotency::Idempotent,
                )
                .await
                .map_err(replica_error)
        }
    }

    fn commit(
        &self,
        replica: &Replica,
        request: CommitRequest,
    ) -> impl Future<Output = Result<CommitResponse, ReplicaError>> + Send + 'static + use<> {
        let (client, address) = (self.client.clone(), replica.address.clone());
        // A commit carries a fixed version and replicas keep only higher versions,
        // so applying it twice is the same as applying it once: safe to retry.
        async move {
            client
                .post_json(
                    &address,
                    "/internal/v1/commit",
                    &request,
                    Idempotency::Idempotent,
                )
                .await
                .map_err(replica_error)
        }
    }
}
