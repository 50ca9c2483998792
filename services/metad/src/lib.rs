//! `kvorum-metad`: one replica of the metadata service.
//!
//! - [`config`]: flags and environment.
//! - [`identity`]: this replica's life and group, settled before the loop starts.
//! - [`node`]: the consensus loop (core, redb store, state machine) on its own thread.
//! - [`api`]: the HTTP API: peer messages, commands, linearizable reads, status.
//! - [`members`]: the membership API (`/v1/members`).
//! - [`queue`]: the loop's input queue, with room kept for peer messages.
//! - [`sender`]: delivery to the peers, one bounded queue per peer.

pub mod api;
pub mod config;
pub mod identity;
pub mod members;
pub mod node;
pub mod queue;
pub mod sender;

use std::collections::BTreeMap;
use std::sync::Arc;

use kvorum_consensus::Member;
use kvorum_http_client::{ClientConfig, HttpClient};
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

/// How many of them may be client requests: the rest is kept for peer messages.
const CLIENT_SHARE: usize = INPUT_QUEUE / 2;

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
    let store_error = |source| MetadError::Store {
        dir: config.data_dir.display().to_string(),
        source,
    };
    let peers: BTreeMap<u64, String> = config.peers.0.clone();
    let identity = identity::load_or_create(&store, config.id, &peers).map_err(store_error)?;

    let (outbound, messages) = mpsc::unbounded_channel();
    let mut client_config = ClientConfig::new("metad").speaking_from(config.listen);
    client_config.request_timeout = config.tick() * 10;
    client_config.retries = 0;
    let client = HttpClient::new(client_config).map_err(|e| MetadError::Config(e.to_string()))?;
    let max_message_bytes = usize::try_from(config.max_message_bytes).unwrap_or(usize::MAX);
    let last_peer_error: Arc<std::sync::Mutex<Option<String>>> = Arc::default();
    let (inputs, queue) = queue::queue(INPUT_QUEUE, CLIENT_SHARE);
    let (version_sender, versions) = tokio::sync::watch::channel(0);
    let (members_sender, members) = tokio::sync::watch::channel(Vec::<Member>::new());
    let state = Arc::new(AppState {
        id: config.id,
        identity: std::sync::RwLock::new(identity.clone()),
        addresses: sender::Addresses {
            members: members.clone(),
            peers: peers.clone(),
        },
        inputs: inputs.clone(),
        versions,
        request_timeout: config.request_timeout(),
        max_message_bytes,
        last_peer_error: last_peer_error.clone(),
        chunks: Default::default(),
        client: client.clone(),
    });
    let app = api::router(state.clone());
    tracing::info!(id = config.id, address = %listener.local_addr()?, "metadata replica serving");
    // Served from the start: peers settling the group ask this replica too.
    let server = tokio::spawn(kvorum_server::serve(listener, app, shutdown.clone()));

    let settled = identity::settle(
        &store,
        identity,
        &peers,
        &client,
        config.tick() * 5,
        &shutdown,
        &state.identity,
    )
    .await
    .map_err(store_error)?;
    let Some(identity) = settled else {
        drop(state);
        server.await.map_err(std::io::Error::other)??;
        return Ok(());
    };
    let core = kvorum_consensus::Config {
        id: config.id,
        incarnation: identity.incarnation,
        members: identity.founding.clone().unwrap_or_default(),
        election_ticks: (10, 20),
        heartbeat_ticks: 3,
        // Headroom for the envelope and the JSON around the entries.
        max_message_bytes: usize::try_from(config.max_message_bytes / 2).unwrap_or(usize::MAX),
        pre_vote: true,
        seed: rand::random(),
    };
    let sender = tokio::spawn(sender::send_messages(
        sender::Sending {
            client,
            addresses: sender::Addresses {
                members,
                peers: peers.clone(),
            },
            me: config.id,
            cluster: identity.cluster.unwrap_or_default(),
            max_message_bytes,
            last_error: last_peer_error,
        },
        messages,
    ));
    let (tick, compact_every) = (config.tick(), config.compact_every);
    let consensus = std::thread::Builder::new()
        .name("consensus".into())
        .spawn(move || {
            node::run(
                core,
                store,
                queue,
                node::Outputs {
                    messages: outbound,
                    versions: version_sender,
                    members: members_sender,
                },
                tick,
                compact_every,
            )
        })?;

    let initialiser = tokio::spawn(initialise_cluster(
        inputs,
        config.cluster_settings(),
        config.tick() * 5,
    ));
    drop(state);
    server.await.map_err(std::io::Error::other)??;
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
    inputs: queue::Inputs,
    settings: ClusterSettings,
    retry: std::time::Duration,
) {
    loop {
        let (reply, answer) = oneshot::channel();
        if inputs.send(Input::LocalState(reply)).is_err() {
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
            fence: None,
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
        if inputs.send(Input::Command(command, reply, span)).is_ok() {
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
