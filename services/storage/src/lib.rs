//! `kvorum-storage`: a storage node holding partition replicas in redb.
//!
//! - [`config`]: flags and environment.
//! - [`store`]: the redb database: records grouped by partition, epochs, node identity.
//! - [`record_codec`]: the on-disk record layout.
//! - [`writer`]: group commit of concurrent writes into one fsync'd transaction.
//! - [`fence`]: refusing requests routed by an old epoch.
//! - [`membership`]: registering with the metadata service and following the partition map.
//! - [`checkpoint`]: periodic consistent checkpoints, and restoring a lost data directory.
//! - [`catchup`]: streaming every partition from peers after a restart or a restore.
//! - [`incarnation`]: a node on new or restored data counts for nothing until it caught up.
//! - [`garbage`]: dropping partitions the map no longer assigns here.
//! - [`hints`]: handing replicas the writes they missed (hinted handoff).
//! - [`anti_entropy`]: comparing hashed key ranges with peers, and collecting tombstones.
//! - [`api`]: the internal HTTP API.
//! - [`causal_api`]: the internal API of eventual keyspaces, hints and anti-entropy.

pub mod anti_entropy;
pub mod api;
pub mod catchup;
pub mod causal_api;
pub mod checkpoint;
pub mod config;
pub mod fence;
pub mod garbage;
pub mod hints;
pub mod incarnation;
pub mod membership;
pub mod record_codec;
pub mod store;
pub mod strong_collection;
pub mod strong_collection_api;
pub mod writer;

use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use config::StorageConfig;

use crate::api::AppState;
use crate::checkpoint::Checkpoints;
use crate::fence::EpochFence;
use crate::incarnation::{Incarnation, NewIncarnation, Registration};
use crate::membership::Membership;
use crate::store::{Store, StoreError};
use crate::writer::Writer;
use kvorum_metad_client::MetadClient;

/// Why the node stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// The database could not be opened.
    #[error("cannot open the database in {dir}: {source}")]
    Open {
        /// The data directory.
        dir: String,
        /// The cause.
        source: StoreError,
    },
    /// The configuration cannot work.
    #[error("{0}")]
    Config(String),
    /// Serving failed.
    #[error("server failed: {0}")]
    Serve(#[from] std::io::Error),
}

/// Runs the node on `listener` until `shutdown` fires, then drains requests and pending writes.
pub async fn run(
    config: StorageConfig,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> Result<(), StorageError> {
    let address = config.advertised().map_err(StorageError::Config)?;
    let metad = MetadClient::new(
        kvorum_http_client::ClientConfig::new("storage").speaking_from(config.listen),
        config.metad.clone(),
    )
    .map_err(StorageError::Config)?;
    let checkpoints = Checkpoints::new(
        config.checkpoint_dir(),
        usize::try_from(config.checkpoint_retention).unwrap_or(usize::MAX),
    );
    let data_file = config.data_dir.join(store::DATABASE_FILE);
    // A directory without its database (or with the mark of an unfinished
    // start) holds a new incarnation: marked durably before anything is
    // restored or created, so no crash can make it pass for the node's own data.
    let had_data = data_file.exists() && !incarnation::is_marked(&config.data_dir);
    if !had_data {
        incarnation::mark_new(&config.data_dir).map_err(|e| {
            StorageError::Config(format!("cannot mark {}: {e}", config.data_dir.display()))
        })?;
    }
    let restored = checkpoints
        .restore_if_lost(&data_file)
        .map_err(|e| StorageError::Config(e.to_string()))?;
    let open = |dir: &std::path::Path| Store::open(dir, config.node());
    let opening = |source| StorageError::Open {
        dir: config.data_dir.display().to_string(),
        source,
    };
    let store = Arc::new(open(&config.data_dir).map_err(opening)?);
    // New or restored data is a new incarnation until it has caught up; the
    // database's own flag replaces the mark.
    if !had_data {
        store
            .apply(&[store::WriteOp::Incarnation {
                catching_up: true,
                incarnation: None,
            }])
            .map_err(opening)?;
        incarnation::unmark(&config.data_dir).map_err(|e| {
            StorageError::Config(format!("cannot unmark {}: {e}", config.data_dir.display()))
        })?;
    }
    let new_incarnation = store.catching_up().map_err(opening)?;
    let persisted_incarnation = store.incarnation().map_err(opening)?;
    let incarnation = if new_incarnation {
        Incarnation::admitting()
    } else {
        Incarnation::serving()
    };
    if let Some(name) = &restored {
        tracing::warn!(checkpoint = %name, "the data directory was lost; restored it from the newest checkpoint: a new incarnation, catching up from peers");
    } else if new_incarnation && had_data {
        tracing::warn!("resuming an unfinished catch-up of a new incarnation");
    } else if new_incarnation {
        tracing::info!("an empty data directory: a new incarnation if the cluster knew this node");
    } else {
        tracing::info!("restarting on existing data: catching up from peers in the background");
    }
    let epochs = store.partition_epochs().map_err(opening)?;
    let (writer, writer_task) = Writer::start(
        store.clone(),
        usize::try_from(config.max_batch).unwrap_or(usize::MAX),
    );
    let fence = Arc::new(EpochFence::new(epochs));
    let membership = Membership::start(
        metad,
        membership::node_info(config.node(), address, config.standby, new_incarnation),
        fence.clone(),
        shutdown.clone(),
    );
    let peers = {
        let mut peers =
            kvorum_http_client::ClientConfig::new("storage").speaking_from(config.listen);
        peers.request_timeout = std::time::Duration::from_secs(30);
        kvorum_http_client::HttpClient::new(peers)
            .map_err(|e| StorageError::Config(e.to_string()))?
    };
    // Hints and anti-entropy move small batches: a short deadline keeps a
    // paused peer from holding up a whole round.
    let background_peers = {
        let mut config =
            kvorum_http_client::ClientConfig::new("storage").speaking_from(config.listen);
        config.request_timeout = std::time::Duration::from_secs(3);
        kvorum_http_client::HttpClient::new(config)
            .map_err(|e| StorageError::Config(e.to_string()))?
    };
    tokio::spawn(garbage::drop_unassigned(
        config.node(),
        store.clone(),
        writer.clone(),
        membership.follower(),
        shutdown.clone(),
    ));
    tokio::spawn(hints::replay_hints(
        store.clone(),
        writer.clone(),
        membership.follower(),
        background_peers.clone(),
        std::time::Duration::from_millis(config.hint_replay_interval_ms),
        shutdown.clone(),
    ));
    if config.anti_entropy_interval_ms > 0 {
        let anti_entropy = anti_entropy::AntiEntropy {
            node: config.node(),
            store: store.clone(),
            writer: writer.clone(),
            follower: membership.follower(),
            peers: background_peers,
            config: anti_entropy::AntiEntropyConfig {
                interval: std::time::Duration::from_millis(config.anti_entropy_interval_ms),
                keys_per_second: config.anti_entropy_keys_per_second,
                tombstone_grace: std::time::Duration::from_millis(config.tombstone_grace_ms),
            },
            incarnation: incarnation.clone(),
            strong: Default::default(),
        };
        tokio::spawn(anti_entropy.run(shutdown.clone()));
    }
    let admission = |registration, incarnation: &Incarnation| NewIncarnation {
        registration,
        node: config.node(),
        membership: membership.clone(),
        writer: writer.clone(),
        store: store.clone(),
        fence: fence.clone(),
        peers: peers.clone(),
        incarnation: incarnation.clone(),
    };
    // The tasks hold writer handles: they end with the node, or the writer
    // would never drain and stop.
    if new_incarnation {
        tokio::spawn(admission(Registration::AtStart, &incarnation).run(shutdown.clone()));
    } else {
        // A restart on its own data: the node counts at once and catches up in
        // the background (read repair covers what it serves meanwhile), unless
        // the metadata service says its data is not this incarnation's.
        tokio::spawn(incarnation::verify_own_data(
            admission(Registration::Again, &incarnation),
            persisted_incarnation,
            shutdown.clone(),
        ));
        catchup::start_after_restart(
            config.node(),
            membership.follower(),
            store.clone(),
            writer.clone(),
            peers,
            shutdown.clone(),
        );
    }
    if config.checkpoint_interval_ms > 0 {
        tokio::spawn(take_checkpoints(
            checkpoints.clone(),
            store.clone(),
            std::time::Duration::from_millis(config.checkpoint_interval_ms),
            shutdown.clone(),
        ));
    }
    let membership_ready = membership.readiness();
    let phase = incarnation.clone();
    let state = Arc::new(AppState {
        store,
        writer,
        fence,
        readiness: kvorum_server::Readiness::new(move || {
            membership_ready.check()?;
            if phase.counts() {
                Ok(())
            } else {
                Err("a new incarnation catching up from its peers".to_owned())
            }
        }),
        incarnation,
        checkpoints,
    });
    let app = api::router(
        state,
        config.request_timeout(),
        usize::try_from(config.max_request_bytes).unwrap_or(usize::MAX),
    );
    tracing::info!(node = %config.node(), address = %listener.local_addr()?, data_dir = %config.data_dir.display(), "storage node serving");
    kvorum_server::serve(listener, app, shutdown).await?;
    // The router (and with it the last writer handle) is gone: the writer drains and stops.
    if writer_task.await.is_err() {
        tracing::error!("the writer task panicked while draining");
    }
    tracing::info!(node = %config.node(), "storage node stopped");
    Ok(())
}

/// Takes a checkpoint every `interval` until shutdown (on a blocking thread: it copies the database).
async fn take_checkpoints(
    checkpoints: Checkpoints,
    store: Arc<Store>,
    interval: std::time::Duration,
    shutdown: CancellationToken,
) {
    let mut ticker = tokio::time::interval(interval);
    ticker.tick().await;
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = ticker.tick() => {}
        }
        let (checkpoints, store) = (checkpoints.clone(), store.clone());
        match tokio::task::spawn_blocking(move || checkpoints.take(&store)).await {
            Ok(Ok(info)) => {
                tracing::info!(checkpoint = %info.name, bytes = info.bytes, "checkpoint taken")
            }
            Ok(Err(error)) => tracing::warn!(%error, "checkpoint failed"),
            Err(error) => tracing::warn!(%error, "checkpoint task failed"),
        }
    }
}
