//! `kvorum-metad`: one replica of the metadata service.
//!
//! - [`config`]: flags and environment.
//! - [`node`]: the consensus loop (core, redb store, state machine) on its own thread.
//! - [`api`]: the HTTP API: peer messages, commands, linearizable reads, status.

pub mod api;
pub mod config;
pub mod node;

use std::collections::BTreeMap;
use std::sync::Arc;

use kvorum_consensus::Envelope;
use kvorum_http_client::{ClientConfig, HttpClient, Idempotency};
use kvorum_paxos_store::PaxosStore;
use kvorum_protocol::ClusterSettings;
use kvorum_protocol::metadata::{MetadataCommand, MetadataOp, RequestId};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

pub use config::MetadConfig;

use crate::api::AppState;
use crate::node::Input;

/// How many inputs may wait for the consensus loop before callers are refused.
const INPUT_QUEUE: usize = 4_096;

/// Why the replica stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum MetadError {
    /// The configuration cannot work.
    #[error("{0}")]
    Config(String),
    /// The Paxos store could not be opened.
    #[error("cannot open the paxos store in {dir}: {source}")]
    Store {
        /// The data directory.
        dir: String,
        /// The cause.
        source: kvorum_paxos_store::PaxosStoreError,
    },
    /// Serving failed.
    #[error("server failed: {0}")]
    Serve(#[from] std::io::Error),
}

/// Runs the replica on `listener` until `shutdown` fires.
pub async fn run(
    config: MetadConfig,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> Result<(), MetadError> {
    config.validate().map_err(MetadError::Config)?;
    std::fs::create_dir_all(&config.data_dir)?;
    let store = PaxosStore::open(&config.data_dir.join("paxos.redb")).map_err(|source| {
        MetadError::Store {
            dir: config.data_dir.display().to_string(),
            source,
        }
    })?;
    let peers: BTreeMap<u64, String> = config.peers.0.clone();
    let core = kvorum_consensus::Config {
        id: config.id,
        members: peers.keys().copied().collect(),
        election_ticks: (10, 20),
        heartbeat_ticks: 3,
        seed: rand::random(),
    };

    let (outbound, messages) = mpsc::unbounded_channel();
    let mut client_config = ClientConfig::new("metad");
    client_config.request_timeout = config.tick() * 10;
    client_config.retries = 0;
    let client = HttpClient::new(client_config).map_err(|e| MetadError::Config(e.to_string()))?;
    let sender = tokio::spawn(send_messages(client, peers.clone(), messages));

    let (inputs, queue) = std::sync::mpsc::sync_channel(INPUT_QUEUE);
    let (version_sender, versions) = tokio::sync::watch::channel(0);
    let tick = config.tick();
    let consensus = std::thread::Builder::new()
        .name("consensus".into())
        .spawn(move || node::run(core, store, queue, outbound, version_sender, tick))?;

    let initialiser = tokio::spawn(initialise_cluster(
        inputs.clone(),
        config.cluster_settings(),
        config.tick() * 5,
    ));
    let state = Arc::new(AppState {
        id: config.id,
        peers,
        inputs,
        versions,
        request_timeout: config.request_timeout(),
    });
    let app = api::router(state);
    tracing::info!(id = config.id, address = %listener.local_addr()?, "metadata replica serving");
    kvorum_server::serve(listener, app, shutdown).await?;
    initialiser.abort();
    let _ = initialiser.await;
    // The router held the last input sender: the consensus loop now ends.
    if tokio::task::spawn_blocking(move || consensus.join())
        .await
        .is_err()
    {
        tracing::error!("the consensus loop panicked");
    }
    sender.abort();
    tracing::info!(id = config.id, "metadata replica stopped");
    Ok(())
}

/// Initialises the cluster's shape from this replica's flags unless it already is.
///
/// Every replica runs this; only the leader's proposal gets into the log, and
/// the fixed request id makes concurrent proposals apply once. A replica whose
/// flags differ from the settings the cluster holds says so and changes nothing.
async fn initialise_cluster(
    inputs: std::sync::mpsc::SyncSender<Input>,
    settings: ClusterSettings,
    retry: std::time::Duration,
) {
    loop {
        let (reply, answer) = oneshot::channel();
        if inputs.try_send(Input::LocalState(reply)).is_err() {
            tokio::time::sleep(retry).await;
            continue;
        }
        let Ok(state) = answer.await else { return };
        match state.cluster {
            Some(cluster) if cluster == settings => return,
            Some(cluster) => {
                tracing::warn!(
                    flags = ?settings,
                    cluster = ?cluster,
                    "this replica's cluster flags differ from the settings the cluster was initialised with; the cluster's settings stand"
                );
                return;
            }
            None => {}
        }
        let command = MetadataCommand {
            request_id: RequestId("init-cluster".to_owned()),
            expected_version: None,
            // Every replica proposes its own secret under the one request id:
            // whichever is decided first is the cluster's.
            op: MetadataOp::InitCluster {
                settings,
                context_key: Some(format!(
                    "{:032x}{:032x}",
                    rand::random::<u128>(),
                    rand::random::<u128>()
                )),
            },
        };
        let (reply, answer) = oneshot::channel();
        let span = tracing::info_span!("init_cluster");
        if inputs
            .try_send(Input::Command(command, reply, span))
            .is_ok()
        {
            match answer.await {
                Ok(Ok(Ok(_))) => {
                    tracing::info!(?settings, "cluster initialised");
                    continue;
                }
                Ok(Ok(Err(refused))) => {
                    tracing::error!(%refused, "the cluster settings were refused");
                    return;
                }
                // Not the leader (or the loop is stopping): look again later.
                Ok(Err(_)) | Err(_) => {}
            }
        }
        tokio::time::sleep(retry).await;
    }
}

/// Delivers each batch of messages to its peers, one HTTP call per peer.
///
/// Paxos tolerates lost and duplicated messages, so a failed call is only logged.
async fn send_messages(
    client: HttpClient,
    peers: BTreeMap<u64, String>,
    mut batches: mpsc::UnboundedReceiver<Vec<Envelope>>,
) {
    while let Some(batch) = batches.recv().await {
        let mut by_peer: BTreeMap<u64, Vec<Envelope>> = BTreeMap::new();
        for envelope in batch {
            by_peer.entry(envelope.to).or_default().push(envelope);
        }
        for (peer, envelopes) in by_peer {
            let Some(address) = peers.get(&peer).cloned() else {
                continue;
            };
            let client = client.clone();
            tokio::spawn(async move {
                let sent: Result<serde_json::Value, _> = client
                    .post_json(
                        &address,
                        "/internal/v1/paxos",
                        &envelopes,
                        Idempotency::NotIdempotent,
                    )
                    .await;
                if let Err(error) = sent {
                    tracing::debug!(peer, %error, "paxos message not delivered");
                }
            });
        }
    }
}
