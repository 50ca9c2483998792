//! `kvorum-recovery`: the recovery controller.
//!
//! - [`config`]: flags and environment.
//! - [`plan`]: which replicas to replace and by which nodes (pure).
//! - [`transfer`]: one replacement by state transfer.
//! - [`api`]: `GET /v1/moves`, probes and metrics.
//!
//! Any number may run; the holder of the `recovery-controller` lease acts. It
//! waits until a node has been down for the replacement delay (a restarted
//! process or a rescheduled pod comes back sooner and costs no copy), then
//! replaces each of its replicas, a bounded number of moves at a time. Moves a
//! previous controller left half done (a pending replacement in the map) are
//! resumed: every step is idempotent.

pub mod api;
pub mod config;
pub mod plan;
pub mod transfer;

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kvorum_http_client::{ClientConfig, HttpClient};
use kvorum_metad_client::{Follower, Lease, MetadClient};
use kvorum_protocol::cluster::{FinishedRecovery, NodeRole, NodeState, RecoveryStrategy};
use kvorum_protocol::metadata::MetadataOp;
use kvorum_protocol::recovery::{RECOVERY_LEASE, RecoveryReport};
use kvorum_protocol::{NodeId, PartitionId};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

pub use config::RecoveryConfig;

use crate::plan::PlannedMove;
use crate::transfer::{Mover, Progress};

/// How often the controller looks at the cluster.
const RECONCILE_EVERY: Duration = Duration::from_millis(500);

/// How many finished moves the report keeps.
const FINISHED_KEPT: usize = 100;

/// Why the controller stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum RecoveryError {
    /// The configuration cannot work.
    #[error("{0}")]
    Config(String),
    /// Serving failed.
    #[error("server failed: {0}")]
    Serve(#[from] std::io::Error),
}

/// What the controller's tasks and handlers share.
#[derive(Debug, Default)]
pub struct Moves {
    in_flight: Mutex<BTreeMap<PartitionId, (Progress, Instant, tokio::task::AbortHandle)>>,
    finished: Mutex<VecDeque<FinishedRecovery>>,
}

impl Moves {
    /// The report `GET /v1/moves` serves.
    pub fn report(&self, active: bool) -> RecoveryReport {
        RecoveryReport {
            active,
            moves: lock(&self.in_flight)
                .values()
                .map(|(progress, started, _)| progress.snapshot(*started))
                .collect(),
            finished: lock(&self.finished).iter().cloned().collect(),
        }
    }

    fn busy(&self) -> BTreeSet<PartitionId> {
        lock(&self.in_flight).keys().copied().collect()
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

/// Runs the controller on `listener` until `shutdown` fires.
pub async fn run(
    config: RecoveryConfig,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> Result<(), RecoveryError> {
    let advertised = config.advertised().map_err(RecoveryError::Config)?;
    let metad = MetadClient::new(
        ClientConfig::new("recovery").speaking_from(config.listen),
        config.metad.clone(),
    )
    .map_err(RecoveryError::Config)?;
    let follower = kvorum_metad_client::follow(metad.clone(), shutdown.clone());
    let lease = Lease::default();
    let moves = Arc::new(Moves::default());
    let mut storage = ClientConfig::new("recovery").speaking_from(config.listen);
    storage.request_timeout = Duration::from_secs(30);
    storage.retries = 1;
    let mover = Mover {
        metad: metad.clone(),
        storage: HttpClient::new(storage).map_err(|e| RecoveryError::Config(e.to_string()))?,
        chunk_records: usize::try_from(config.chunk_records).unwrap_or(usize::MAX),
        bytes_per_sec: config.transfer_bytes_per_sec,
        lease: lease.clone(),
    };
    let tasks = [
        tokio::spawn({
            let (metad, lease) = (metad.clone(), lease.clone());
            let (holder, duration) = (advertised.clone(), Duration::from_millis(config.lease_ms));
            async move {
                kvorum_metad_client::lease::hold(metad, RECOVERY_LEASE, holder, duration, lease)
                    .await
            }
        }),
        tokio::spawn(reconcile(
            follower.clone(),
            lease.clone(),
            moves.clone(),
            mover,
            config.replacement_delay(),
            usize::try_from(config.max_concurrent_moves).unwrap_or(usize::MAX),
        )),
    ];
    let app = api::router(moves, lease, follower);
    tracing::info!(address = %listener.local_addr()?, %advertised, delay = ?config.replacement_delay(), "recovery controller serving");
    kvorum_server::serve(listener, app, shutdown).await?;
    for task in tasks {
        task.abort();
    }
    tracing::info!("recovery controller stopped");
    Ok(())
}

/// The reconcile loop: while active, replace the replicas of nodes down past the delay.
async fn reconcile(
    follower: Follower,
    lease: Lease,
    moves: Arc<Moves>,
    mover: Mover,
    delay: Duration,
    max_concurrent: usize,
) {
    let mut down_since: HashMap<NodeId, Instant> = HashMap::new();
    // Promoted standbys, by the dead node whose place each takes.
    let mut designated: BTreeMap<NodeId, NodeId> = BTreeMap::new();
    let mut ticker = tokio::time::interval(RECONCILE_EVERY);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let Some(state) = follower.current() else {
            continue;
        };
        // Down time is counted by every controller, active or not, so that a
        // standby that takes over does not start the delay again.
        down_since.retain(|node, _| {
            state
                .nodes
                .get(node)
                .is_some_and(|n| n.state == NodeState::Down)
        });
        for node in state.nodes.values().filter(|n| n.state == NodeState::Down) {
            down_since.entry(node.id).or_insert_with(Instant::now);
        }
        if !lease.is_held() {
            // A controller without the lease stops its moves at once: the new
            // holder resumes them from the map, and two runs of one move would
            // only waste copies (or abort what the other is about to switch).
            let stopped = std::mem::take(&mut *lock(&moves.in_flight));
            for (partition, (_, _, task)) in stopped {
                task.abort();
                tracing::info!(%partition, "lease lost; move left to the next holder");
            }
            continue;
        }
        let mut busy = moves.busy();
        let mut room = max_concurrent.saturating_sub(busy.len());
        // Resume moves a previous controller (or an earlier pass) left pending.
        let mut planned: Vec<PlannedMove> = state
            .partition_map
            .iter()
            .flat_map(|m| &m.partitions)
            .filter(|a| !busy.contains(&a.id))
            .filter_map(|a| {
                a.pending.first().map(|replacement| PlannedMove {
                    partition: a.id,
                    replacement: *replacement,
                    strategy: if designated.get(&replacement.leaving) == Some(&replacement.joining)
                    {
                        RecoveryStrategy::StandbyPromotion
                    } else {
                        RecoveryStrategy::StateTransfer
                    },
                    resume: true,
                })
            })
            .take(room)
            .collect();
        room -= planned.len();
        busy.extend(planned.iter().map(|m| m.partition));
        let dead: BTreeSet<NodeId> = down_since
            .iter()
            .filter(|(_, since)| since.elapsed() >= delay)
            .map(|(node, _)| *node)
            .collect();
        designated.retain(|node, _| dead.contains(node));
        for (node, standby) in plan::standbys_for(&state, &dead, &designated) {
            match mover
                .metad
                .submit_as_holder(
                    MetadataOp::SetNodeRole {
                        node: standby,
                        role: NodeRole::Storage,
                    },
                    &mover.lease,
                )
                .await
            {
                Ok(_) => {
                    tracing::info!(%standby, dead = %node, "standby promoted into the dead node's place");
                    designated.insert(node, standby);
                }
                Err(error) => tracing::warn!(%standby, %error, "cannot promote the standby yet"),
            }
        }
        let replacing = plan::replacements(&state, &dead, &designated, &busy, room);
        room -= replacing.len();
        busy.extend(replacing.iter().map(|m| m.partition));
        planned.extend(replacing);
        // Rebalance only a settled cluster: while a node that holds replicas is
        // not up, moving others would be churn its return undoes.
        let settled = state.nodes.values().all(|n| {
            (n.state == NodeState::Up && !n.catching_up)
                || n.state == NodeState::Decommissioned
                || !state
                    .partition_map
                    .iter()
                    .flat_map(|m| &m.partitions)
                    .any(|p| p.replicas.contains(&n.id))
        });
        if settled && planned.is_empty() && busy.is_empty() {
            planned.extend(plan::rebalance(&state, &busy, room));
        }
        for node in plan::drained(&state) {
            match mover
                .metad
                .submit_as_holder(
                    MetadataOp::SetNodeState {
                        node,
                        state: NodeState::Decommissioned,
                    },
                    &mover.lease,
                )
                .await
            {
                Ok(_) => tracing::info!(%node, "node drained and decommissioned"),
                Err(error) => {
                    tracing::warn!(%node, %error, "cannot decommission the drained node yet")
                }
            }
        }
        for planned in planned {
            start(&moves, &mover, planned);
        }
        metrics::gauge!("kvorum_recovery_moves_in_flight").set(moves.busy().len() as f64);
    }
}

fn start(moves: &Arc<Moves>, mover: &Mover, planned: PlannedMove) {
    let (progress, started) = Progress::new(&planned);
    let progress_for_report = progress.clone();
    tracing::info!(partition = %planned.partition, leaving = %planned.replacement.leaving, joining = %planned.replacement.joining, strategy = ?planned.strategy, "move started");
    let (moves, mover) = (moves.clone(), mover.clone());
    let span = tracing::info_span!(
        "recovery.move",
        kvorum.partition = planned.partition.0,
        leaving = planned.replacement.leaving.0,
        joining = planned.replacement.joining.0,
    );
    let partition = planned.partition;
    let registry = moves.clone();
    // The task starts once it is registered, so that its own removal cannot
    // come before the registration and leave the partition busy for ever.
    let (go, registered) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(
        async move {
            if registered.await.is_err() {
                return;
            }
            let Some(finished) = mover.run(planned, progress, started).await else {
                // A resumed move that an earlier run had already ended.
                lock(&moves.in_flight).remove(&partition);
                return;
            };
            tracing::info!(
                completed = finished.completed,
                duration_ms = finished.duration_ms,
                bytes = finished.bytes_copied,
                "move ended"
            );
            metrics::counter!(
                "kvorum_recovery_moves_total",
                "strategy" => format!("{:?}", finished.strategy),
                "completed" => finished.completed.to_string()
            )
            .increment(1);
            lock(&moves.in_flight).remove(&finished.partition);
            let mut kept = lock(&moves.finished);
            kept.push_back(finished);
            while kept.len() > FINISHED_KEPT {
                kept.pop_front();
            }
        }
        .instrument(span),
    );
    lock(&registry.in_flight).insert(
        partition,
        (progress_for_report, started, task.abort_handle()),
    );
    let _ = go.send(());
}
