//! How the coordinator reaches replicas: a narrow trait, and its HTTP implementation.
//!
//! The trait exists so that the coordinator's quorum logic can be tested against
//! in-process replicas that fail, stall or lag on command.

use std::future::Future;

use kvorum_http_client::{CallError, HttpClient, Idempotency};
use kvorum_protocol::storage::{
    CausalMergeRequest, CausalMergeResponse, CausalReadResponse, CausalWriteRequest,
    CausalWriteResponse, CommitRequest, CommitResponse, HintRequest, HintResponse, PrepareResponse,
    ReadResponse, ReplicaKey,
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

    /// Reads an eventual keyspace's causal state of a key.
    fn causal_read(
        &self,
        replica: &Replica,
        target: ReplicaKey,
    ) -> impl Future<Output = Result<CausalReadResponse, ReplicaError>> + Send + 'static + use<Self>;

    /// Asks a replica to coordinate an eventual write (it gives the write its dot).
    fn causal_write(
        &self,
        replica: &Replica,
        request: CausalWriteRequest,
    ) -> impl Future<Output = Result<CausalWriteResponse, ReplicaError>> + Send + 'static + use<Self>;

    /// Joins a causal state into a replica's (replication and read repair).
    fn causal_merge(
        &self,
        replica: &Replica,
        request: CausalMergeRequest,
    ) -> impl Future<Output = Result<CausalMergeResponse, ReplicaError>> + Send + 'static + use<Self>;

    /// Asks a replica to keep durable hints for replicas that missed a write.
    fn store_hints(
        &self,
        replica: &Replica,
        request: HintRequest,
    ) -> impl Future<Output = Result<HintResponse, ReplicaError>> + Send + 'static + use<Self>;
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

    fn causal_read(
        &self,
        replica: &Replica,
        target: ReplicaKey,
    ) -> impl Future<Output = Result<CausalReadResponse, ReplicaError>> + Send + 'static + use<>
    {
        let (client, address) = (self.client.clone(), replica.address.clone());
        async move {
            client
                .post_json(
                    &address,
                    "/internal/v1/causal/read",
                    &target,
                    Idempotency::Idempotent,
                )
                .await
                .map_err(replica_error)
        }
    }

    fn causal_write(
        &self,
        replica: &Replica,
        request: CausalWriteRequest,
    ) -> impl Future<Output = Result<CausalWriteResponse, ReplicaError>> + Send + 'static + use<>
    {
        let (client, address) = (self.client.clone(), replica.address.clone());
        // Each delivery makes a new dot: a retry could write the value twice as two siblings.
        async move {
            client
                .post_json(
                    &address,
                    "/internal/v1/causal/write",
                    &request,
                    Idempotency::NotIdempotent,
                )
                .await
                .map_err(replica_error)
        }
    }

    fn causal_merge(
        &self,
        replica: &Replica,
        request: CausalMergeRequest,
    ) -> impl Future<Output = Result<CausalMergeResponse, ReplicaError>> + Send + 'static + use<>
    {
        let (client, address) = (self.client.clone(), replica.address.clone());
        // A join is idempotent: merging the same state twice equals once.
        async move {
            client
                .post_json(
                    &address,
                    "/internal/v1/causal/merge",
                    &request,
                    Idempotency::Idempotent,
                )
                .await
                .map_err(replica_error)
        }
    }

    fn store_hints(
        &self,
        replica: &Replica,
        request: HintRequest,
    ) -> impl Future<Output = Result<HintResponse, ReplicaError>> + Send + 'static + use<> {
        let (client, address) = (self.client.clone(), replica.address.clone());
        async move {
            client
                .post_json(
                    &address,
                    "/internal/v1/hints",
                    &request,
                    Idempotency::Idempotent,
                )
                .await
                .map_err(replica_error)
        }
    }
}
