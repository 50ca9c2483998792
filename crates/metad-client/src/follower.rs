//! Following the metadata state: a task that keeps the newest state it has
//! seen in a `watch` channel.
//!
//! It starts with a linearizable read, then long-polls one replica's watch
//! endpoint. A watch answers from that replica's own state, which may lag the
//! leader, so the follower also reads linearizably when asked to (a storage node
//! fenced a request: the caller's map is old) and at a fixed interval, which
//! bounds how long a follower attached to a cut-off replica can stay behind.
//! Versions only move forward: an answer older than what was published is dropped.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use kvorum_protocol::metadata::MetadataState;
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;

use crate::MetadClient;

/// How long one watch call waits for a change.
const WATCH_WAIT: Duration = Duration::from_secs(5);

/// How often the follower reads linearizably even when nobody asks.
const FULL_READ_INTERVAL: Duration = Duration::from_secs(30);

/// The pause after a failed call.
const RETRY_PAUSE: Duration = Duration::from_millis(200);

/// The caller's side of a running follower.
#[derive(Debug, Clone)]
pub struct Follower {
    states: watch::Receiver<Option<Arc<MetadataState>>>,
    refresh: Arc<Notify>,
    started: Instant,
    /// Milliseconds since `started` of the last answer from any replica, plus one (0 = never).
    last_contact_ms: Arc<AtomicU64>,
}

impl Follower {
    /// A follower that holds `state` for ever and reaches no service (for handler tests and tools).
    pub fn fixed(state: MetadataState) -> Self {
        let (publish, states) = watch::channel(Some(Arc::new(state)));
        // Dropping the sender leaves the last value readable.
        drop(publish);
        Self {
            states,
            refresh: Arc::new(Notify::new()),
            started: Instant::now(),
            last_contact_ms: Arc::new(AtomicU64::new(1)),
        }
    }

    /// The newest state seen, or `None` before the first answer.
    pub fn current(&self) -> Option<Arc<MetadataState>> {
        self.states.borrow().clone()
    }

    /// `Ok` once the metadata service has answered at least once (a readiness check).
    pub fn has_answered(&self) -> Result<(), String> {
        match self.current() {
            Some(_) => Ok(()),
            None => Err("no answer from the metadata service yet".to_owned()),
        }
    }

    /// A receiver that sees every newly published state.
    pub fn subscribe(&self) -> watch::Receiver<Option<Arc<MetadataState>>> {
        self.states.clone()
    }

    /// Asks for a linearizable read now (the caller learnt that its state is old).
    pub fn refresh(&self) {
        self.refresh.notify_one();
    }

    /// Waits until the published state's version is at least `version`, or `timeout` passes.
    pub async fn wait_for_version(&self, version: u64, timeout: Duration) -> bool {
        let mut states = self.states.clone();
        self.refresh();
        tokio::time::timeout(
            timeout,
            states.wait_for(|s| s.as_ref().is_some_and(|s| s.version >= version)),
        )
        .await
        .is_ok_and(|r| r.is_ok())
    }

    /// How long ago a metadata replica last answered, or `None` if none ever has.
    pub fn since_last_contact(&self) -> Option<Duration> {
        match self.last_contact_ms.load(Ordering::Relaxed) {
            0 => None,
            ms => Some(
                self.started
                    .elapsed()
                    .saturating_sub(Duration::from_millis(ms - 1)),
            ),
        }
    }
}

/// Starts following the metadata service; the task ends when `shutdown` fires.
pub fn follow(client: MetadClient, shutdown: CancellationToken) -> Follower {
    let (publish, states) = watch::channel(None);
    let follower = Follower {
        states,
        refresh: Arc::new(Notify::new()),
        started: Instant::now(),
        last_contact_ms: Arc::new(AtomicU64::new(0)),
    };
    let task = follower.clone();
    tokio::spawn(async move {
        tokio::select! {
            () = shutdown.cancelled() => {}
            () = run(client, task, publish) => {}
        }
    });
    follower
}

async fn run(
    client: MetadClient,
    follower: Follower,
    publish: watch::Sender<Option<Arc<MetadataState>>>,
) {
    let mut version = 0;
    let mut last_full_read: Option<Instant> = None;
    loop {
        let full_read = last_full_read.is_none_or(|at| at.elapsed() >= FULL_READ_INTERVAL);
        let answer = if full_read {
            client.state().await
        } else {
            tokio::select! {
                answer = client.watch(version, WATCH_WAIT) => answer,
                () = follower.refresh.notified() => client.state().await,
            }
        };
        match answer {
            Ok(state) => {
                if full_read {
                    last_full_read = Some(Instant::now());
                }
                let elapsed =
                    u64::try_from(follower.started.elapsed().as_millis()).unwrap_or(u64::MAX);
                follower
                    .last_contact_ms
                    .store(elapsed.saturating_add(1), Ordering::Relaxed);
                let newer = publish
                    .borrow()
                    .as_ref()
                    .is_none_or(|s| state.version > s.version);
                if newer {
                    version = state.version;
                    tracing::debug!(version, "metadata state updated");
                    publish.send_replace(Some(Arc::new(state)));
                }
            }
            Err(error) => {
                tracing::debug!(%error, "cannot reach the metadata service");
                tokio::time::sleep(RETRY_PAUSE).await;
            }
        }
    }
}
