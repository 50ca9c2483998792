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
use std::sync::Arc;
use std::time::Duration;

use kvorum_protocol::Epoch;

use crate::batcher::Batcher;
use crate::topology::Replica;

/// A failed call to a replica.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ReplicaError {
    /// Whether the replica may have acted on the request.
    pub maybe_delivered: bool,
    /// When the replica fenced the request off: the newer epoch it knows.
    pub stale_epoch: Option<Epoch>,
    /// The error the replica answered with, when it answered one.
    pub detail: Option<Box<kvorum_protocol::ErrorDetail>>,
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

/// Replicas reached over HTTP with the shared client; reads, prepares,
/// commits and merges to one node are coalesced into batches under load.
#[derive(Debug, Clone)]
pub struct HttpReplicas {
    client: HttpClient,
    reads: Arc<Batcher<ReplicaKey, ReadResponse>>,
    prepares: Arc<Batcher<ReplicaKey, PrepareResponse>>,
    commits: Arc<Batcher<CommitRequest, CommitResponse>>,
    causal_reads: Arc<Batcher<ReplicaKey, CausalReadResponse>>,
    merges: Arc<Batcher<CausalMergeRequest, CausalMergeResponse>>,
}

impl HttpReplicas {
    /// Replicas reached through `client`; a queued call that waited longer than `timeout` is not sent.
    pub fn new(client: HttpClient, timeout: Duration) -> Self {
        Self {
            reads: Arc::new(Batcher::new(
                client.clone(),
                timeout,
                "/internal/v1/read",
                "/internal/v1/read/batch",
            )),
            prepares: Arc::new(Batcher::new(
                client.clone(),
                timeout,
                "/internal/v1/prepare",
                "/internal/v1/prepare/batch",
            )),
            commits: Arc::new(Batcher::new(
                client.clone(),
                timeout,
                "/internal/v1/commit",
                "/internal/v1/commit/batch",
            )),
            causal_reads: Arc::new(Batcher::new(
                client.clone(),
                timeout,
                "/internal/v1/causal/read",
                "/internal/v1/causal/read/batch",
            )),
            merges: Arc::new(Batcher::new(
                client.clone(),
                timeout,
                "/internal/v1/causal/merge",
                "/internal/v1/causal/merge/batch",
            )),
            client,
        }
    }
}

fn replica_error(error: CallError) -> ReplicaError {
    crate::batcher::replica_error(&error)
}

impl ReplicaTransport for HttpReplicas {
    fn read(
        &self,
        replica: &Replica,
        target: ReplicaKey,
    ) -> impl Future<Output = Result<ReadResponse, ReplicaError>> + Send + 'static + use<> {
        self.reads.call(&replica.address, target)
    }

    fn prepare(
        &self,
        replica: &Replica,
        target: ReplicaKey,
    ) -> impl Future<Output = Result<PrepareResponse, ReplicaError>> + Send + 'static + use<> {
        self.prepares.call(&replica.address, target)
    }

    fn commit(
        &self,
        replica: &Replica,
        request: CommitRequest,
    ) -> impl Future<Output = Result<CommitResponse, ReplicaError>> + Send + 'static + use<> {
        self.commits.call(&replica.address, request)
    }

    fn causal_read(
        &self,
        replica: &Replica,
        target: ReplicaKey,
    ) -> impl Future<Output = Result<CausalReadResponse, ReplicaError>> + Send + 'static + use<>
    {
        self.causal_reads.call(&replica.address, target)
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
        self.merges.call(&replica.address, request)
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
