//! `kvorum-metad`: one replica of the metadata service.
//!
//! - [`config`]: flags and environment.
//! - [`identity`]: this replica's life and group, settled before the loop starts.
//! - [`node`]: the consensus loop (core, redb store, state machine) on its own thread.
//! - [`api`]: the HTTP API: peer messages, commands, linearizable reads, status.
//! - [`members`]: the membership API (`/v1/members`).

pub mod api;
pub mod config;
pub mod identity;
pub mod members;
pub mod node;

use std::collections::BTreeMap;
use std::sync::Arc;

use kvorum_consensus::{Envelope, Member};
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
    let (inputs, queue) = std::sync::mpsc::sync_channel(INPUT_QUEUE);
    let (version_sender, versions) = tokio::sync::watch::channel(0);
    let (members_sender, members) = tokio::sync::watch::channel(Vec::<Member>::new());
    let state = Arc::new(AppState {
        id: config.id,
        peers: peers.clone(),
        identity: std::sync::RwLock::new(identity.clone()),
        members: members.clone(),
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
    let sender = tokio::spawn(send_messages(
        client,
        Addresses {
            members,
            peers: peers.clone(),
        },
        messages,
        (config.id, identity.cluster.unwrap_or_default()),
        max_message_bytes,
        last_peer_error,
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

/// Where each replica is reached: the members' addresses as the log has
/// them, else `--peers` (a replica not, or not yet, a member).
struct Addresses {
    members: tokio::sync::watch::Receiver<Vec<Member>>,
    peers: BTreeMap<u64, String>,
}

impl Addresses {
    fn of(&self, id: u64) -> Option<String> {
        self.members
            .borrow()
            .iter()
            .find(|m| m.id == id)
            .map(|m| m.address.clone())
            .or_else(|| self.peers.get(&id).cloned())
    }
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

/// Delivers each batch of messages to its peers, one HTTP call per peer; a
/// batch longer than `max_message_bytes` goes in chunks (resumed where the
/// receiver's copy ends).
///
/// Paxos tolerates lost and duplicated messages, so a failed call is only
/// logged: at warn, with its cause, at most every ten seconds per peer.
async fn send_messages(
    client: HttpClient,
    addresses: Addresses,
    mut batches: mpsc::UnboundedReceiver<Vec<Envelope>>,
    (me, cluster): (u64, u64),
    max_message_bytes: usize,
    last_error: Arc<std::sync::Mutex<Option<String>>>,
) {
    let failures: Arc<std::sync::Mutex<BTreeMap<u64, (std::time::Instant, u64)>>> = Arc::default();
    // One chunked transfer per peer at a time: two would keep replacing each
    // other's partial copy on the receiver. A batch that finds one under way is
    // dropped (Paxos asks again for what it still needs).
    let chunking: Arc<std::sync::Mutex<std::collections::BTreeSet<u64>>> = Arc::default();
    while let Some(batch) = batches.recv().await {
        let mut by_peer: BTreeMap<u64, Vec<Envelope>> = BTreeMap::new();
        for envelope in batch {
            by_peer.entry(envelope.to).or_default().push(envelope);
        }
        for (peer, envelopes) in by_peer {
            let Some(address) = addresses.of(peer) else {
                continue;
            };
            let (client, failures, chunking) = (client.clone(), failures.clone(), chunking.clone());
            let last_error = last_error.clone();
            tokio::spawn(async move {
                let batch = kvorum_protocol::paxos::PeerBatch { cluster, envelopes };
                let sent = send_batch(
                    &client,
                    &address,
                    me,
                    &batch,
                    max_message_bytes,
                    || {
                        chunking
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .insert(peer)
                    },
                    || {
                        chunking
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .remove(&peer);
                    },
                )
                .await;
                metrics::counter!(
                    "kvorum_paxos_peer_sends_total",
                    "outcome" => if sent.is_ok() { "ok" } else { "failed" }
                )
                .increment(1);
                if let Err(error) = sent {
                    *last_error.lock().unwrap_or_else(|p| p.into_inner()) =
                        Some(format!("replica {peer}: {error}"));
                    let mut failures = failures.lock().unwrap_or_else(|p| p.into_inner());
                    let (last, suppressed) = failures
                        .entry(peer)
                        .or_insert((std::time::Instant::now() - LOG_FAILURES_EVERY, 0));
                    if last.elapsed() >= LOG_FAILURES_EVERY {
                        tracing::warn!(peer, %error, suppressed = *suppressed, "paxos messages not delivered to a peer");
                        *last = std::time::Instant::now();
                        *suppressed = 0;
                    } else {
                        *suppressed += 1;
                    }
                }
            });
        }
    }
}

/// The least time between two warnings about one peer's failed deliveries.
const LOG_FAILURES_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

/// Sends one peer's envelopes, in one message or in chunks; a chunked send
/// happens only if `begin` says no other is under way, and calls `end` after.
async fn send_batch(
    client: &HttpClient,
    address: &str,
    me: u64,
    batch: &kvorum_protocol::paxos::PeerBatch,
    max_message_bytes: usize,
    begin: impl FnOnce() -> bool,
    end: impl FnOnce(),
) -> Result<(), String> {
    let body = serde_json::to_vec(batch).map_err(|e| e.to_string())?;
    // A chunk's raw bytes, base64 in JSON, stay well within the limit.
    let piece = (max_message_bytes / 2).max(1024);
    if body.len() <= piece {
        return client
            .post_json::<_, serde_json::Value>(
                address,
                "/internal/v1/paxos",
                batch,
                Idempotency::NotIdempotent,
            )
            .await
            .map(drop)
            .map_err(|e| e.to_string());
    }
    if !begin() {
        tracing::debug!("a chunked transfer to this peer is under way; batch dropped");
        return Ok(());
    }
    let sent = send_chunks(client, address, me, &body, piece).await;
    end();
    sent
}

/// Sends `body` in pieces of `piece` bytes, from where the receiver's copy ends.
async fn send_chunks(
    client: &HttpClient,
    address: &str,
    me: u64,
    body: &[u8],
    piece: usize,
) -> Result<(), String> {
    let digest = xxhash_rust::xxh3::xxh3_64(body);
    let total = body.len() as u64;
    // Every piece, plus the first question and a few retries, and no more.
    let mut calls_left = body.len() / piece + 4;
    // Ask first how much the receiver already holds: a transfer cut short resumes.
    let mut offset = 0u64;
    let mut data = Vec::new();
    loop {
        if calls_left == 0 {
            return Err(format!(
                "the receiver made no progress past {offset} of {total}"
            ));
        }
        calls_left -= 1;
        let chunk = kvorum_protocol::paxos::MessageChunk {
            from: me,
            digest,
            total,
            offset,
            data: std::mem::take(&mut data),
        };
        let receipt: kvorum_protocol::paxos::ChunkReceipt = client
            .post_json(
                address,
                "/internal/v1/paxos/chunks",
                &chunk,
                Idempotency::NotIdempotent,
            )
            .await
            .map_err(|e| format!("chunk at {offset} of {total}: {e}"))?;
        if receipt.received >= total {
            metrics::counter!("kvorum_paxos_chunked_batches_total").increment(1);
            return Ok(());
        }
        offset = receipt.received;
        let start = usize::try_from(offset)
            .unwrap_or(usize::MAX)
            .min(body.len());
        let end = (start + piece).min(body.len());
        data = body[start..end].to_vec();
    }
}
