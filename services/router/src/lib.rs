//! `kvorum-router`: the client REST API, routing keys to replicas and coordinating quorums.
//!
//! - [`config`]: flags and environment.
//! - [`metadata`]: following the metadata service; the snapshot requests route by.
//! - [`topology`]: nodes, the partition map and the route of a key.
//! - [`keyspaces`]: keyspace settings and the levels each accepts.
//! - [`quorum`]: pure quorum arithmetic and read resolution.
//! - [`transport`]: the replica calls, behind a narrow trait.
//! - [`coordinator`]: the strong two-phase write and the read with write-back.
//! - [`api`]: the HTTP routes.

pub mod api;
pub mod batcher;
pub mod config;
pub mod context_token;
pub mod coordinator;
pub mod eventual;
pub mod keyspaces;
pub mod metadata;
pub mod quorum;
pub mod topology;
pub mod transport;

use std::sync::Arc;

use kvorum_http_client::{ClientConfig, HttpClient};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use config::RouterConfig;

use crate::api::AppState;
use crate::config::ConfigError;
use crate::coordinator::Coordinator;
use crate::metadata::Metadata;
use crate::transport::HttpReplicas;

/// Why the router stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum RouterError {
    /// The configuration cannot work.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The HTTP client could not be built.
    #[error("cannot build the HTTP client: {0}")]
    Client(String),
    /// Serving failed.
    #[error("server failed: {0}")]
    Serve(#[from] std::io::Error),
}

/// Runs the router on `listener` until `shutdown` fires, then drains in-flight requests.
pub async fn run(
    config: RouterConfig,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> Result<(), RouterError> {
    config.validate()?;
    let metad = kvorum_metad_client::MetadClient::new(
        ClientConfig::new("router").speaking_from(config.listen),
        config.metad.clone(),
    )
    .map_err(RouterError::Client)?;
    let follower = kvorum_metad_client::follow(metad.clone(), shutdown.clone());
    let mut client_config = ClientConfig::new("router").speaking_from(config.listen);
    client_config.request_timeout = config.replica_timeout();
    client_config.retries = config.replica_retries;
    let client = HttpClient::new(client_config).map_err(|e| RouterError::Client(e.to_string()))?;
    if config.test_only_ack_before_quorum {
        tracing::warn!(
            "--test-only-ack-before-quorum is set: strong writes are acknowledged by one replica and WILL be lost; this router is for testing the chaos checkers only"
        );
    }
    if config.test_only_read_first_reply {
        tracing::warn!(
            "--test-only-read-first-reply is set: strong reads answer from one replica and WILL be stale; this router is for testing the chaos checkers only"
        );
    }
    if config.test_only_delay_value_commits_ms > 0 {
        tracing::warn!(
            delay_ms = config.test_only_delay_value_commits_ms,
            "--test-only-delay-value-commits-ms is set: strong value commits are delivered late on purpose; this router is for testing tombstone collection only"
        );
    }
    let state = Arc::new(AppState {
        metadata: Metadata::new(
            metad,
            follower,
            ClientConfig::new("router").speaking_from(config.listen),
        ),
        coordinator: Coordinator::new(
            HttpReplicas::new(client, config.replica_timeout()),
            rand::random(),
        )
        .with_test_only_ack_before_quorum(config.test_only_ack_before_quorum)
        .with_test_only_read_first_reply(config.test_only_read_first_reply)
        .with_test_only_delay_value_commits(std::time::Duration::from_millis(
            config.test_only_delay_value_commits_ms,
        ))
        .with_commit_deadline(config.commit_deadline()),
        max_value_bytes: usize::try_from(config.max_value_bytes).unwrap_or(usize::MAX),
        hinted_handoff: config.hinted_handoff,
    });
    tokio::spawn(state.metadata.clone().watch_contact(shutdown.clone()));
    let app = api::router(state.clone(), config.request_timeout());
    tracing::info!(address = %listener.local_addr()?, "router serving");
    kvorum_server::serve(listener, app, shutdown).await?;
    // Commits still in flight to slow replicas finish before the process exits.
    let drain_limit = config.replica_timeout() * (config.replica_retries + 1);
    if tokio::time::timeout(drain_limit, state.coordinator.drain())
        .await
        .is_err()
    {
        tracing::warn!("replica calls still in flight at exit");
    }
    tracing::info!("router stopped");
    Ok(())
}
