//! `kvorum-detector`: the phi accrual failure detector.
//!
//! - [`config`]: flags and environment.
//! - [`monitor`]: arrival histories and verdicts (pure).
//! - [`api`]: `GET /v1/suspicion`, probes and metrics.
//!
//! It heartbeats every storage node and metadata replica (`GET /healthz`) each
//! interval. Any number of detectors may run; the one holding the
//! `failure-detector` lease in the metadata service reports state changes
//! there, the others keep warm histories and take over when the lease lapses,
//! so two detectors never write competing verdicts.

pub mod api;
pub mod config;
pub mod monitor;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kvorum_failure_detector::{JudgeConfig, PhiConfig};
use kvorum_http_client::{ClientConfig, HttpClient};
use kvorum_metad_client::{Follower, Lease, MetadClient};
use kvorum_protocol::NodeId;
use kvorum_protocol::cluster::NodeState;
use kvorum_protocol::detector::DETECTOR_LEASE;
use kvorum_protocol::health::Health;
use kvorum_protocol::metadata::MetadataOp;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

pub use config::DetectorConfig;

use crate::monitor::{Monitor, Target, Wanted};

/// The least time between two warnings that downs are held back.
const WARN_EVERY: Duration = Duration::from_secs(10);

/// How often verdicts are recomputed.
const EVALUATE_EVERY: Duration = Duration::from_millis(50);

/// The least time between two reports of one node's state, while the metadata
/// the detector follows has not caught up with the first.
const REPORT_AGAIN_AFTER: Duration = Duration::from_secs(1);

/// Why the detector stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum DetectorError {
    /// The configuration cannot work.
    #[error("{0}")]
    Config(String),
    /// Serving failed.
    #[error("server failed: {0}")]
    Serve(#[from] std::io::Error),
}

/// What the detector's tasks share.
#[derive(Debug)]
pub struct Shared {
    /// Histories and verdicts.
    pub monitor: Mutex<Monitor>,
    /// The detector lease, held by the one detector that reports.
    pub lease: Lease,
    /// The metadata this detector follows.
    pub follower: Follower,
    started: Instant,
}

impl Shared {
    /// Milliseconds since the detector started: the clock every history uses.
    pub fn now_ms(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Whether this detector holds the lease now.
    pub fn is_active(&self) -> bool {
        self.lease.is_held()
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Runs the detector on `listener` until `shutdown` fires.
pub async fn run(
    config: DetectorConfig,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> Result<(), DetectorError> {
    let advertised = config.advertised().map_err(DetectorError::Config)?;
    let metad = MetadClient::new(
        ClientConfig::new("detector").speaking_from(config.listen),
        config.metad.clone(),
    )
    .map_err(DetectorError::Config)?;
    let follower = kvorum_metad_client::follow(metad.clone(), shutdown.clone());
    let shared = Arc::new(Shared {
        monitor: Mutex::new(Monitor::new(
            PhiConfig::for_interval(config.heartbeat_interval_ms),
            JudgeConfig {
                threshold: config.phi_threshold,
                grace_ms: config.down_grace_ms,
            },
        )),
        lease: Lease::default(),
        follower,
        started: Instant::now(),
    });
    let mut probe_config = ClientConfig::new("detector").speaking_from(config.listen);
    probe_config.connect_timeout = config.interval();
    probe_config.request_timeout = config.interval();
    probe_config.retries = 0;
    let probes = HttpClient::new(probe_config).map_err(|e| DetectorError::Config(e.to_string()))?;

    let tasks = [
        tokio::spawn(heartbeat(
            shared.clone(),
            metad.clone(),
            probes,
            config.interval(),
        )),
        tokio::spawn(judge(shared.clone(), metad.clone())),
        tokio::spawn({
            let (metad, holder, lease) = (metad.clone(), advertised.clone(), shared.lease.clone());
            let duration = Duration::from_millis(config.lease_ms);
            async move {
                kvorum_metad_client::lease::hold(metad, DETECTOR_LEASE, holder, duration, lease)
                    .await;
            }
        }),
    ];
    let app = api::router(shared);
    tracing::info!(address = %listener.local_addr()?, %advertised, "failure detector serving");
    kvorum_server::serve(listener, app, shutdown).await?;
    for task in tasks {
        task.abort();
    }
    tracing::info!("failure detector stopped");
    Ok(())
}

/// The processes to watch: every storage node the cluster knows (not decommissioned) and every metadata replica.
fn wanted(shared: &Shared, metad: &MetadClient) -> Vec<Wanted> {
    let mut wanted: Vec<Wanted> = metad
        .replicas()
        .iter()
        .map(|address| Wanted {
            target: Target::Metad(address.clone()),
            address: address.clone(),
            recorded: NodeState::Up,
        })
        .collect();
    if let Some(state) = shared.follower.current() {
        wanted.extend(
            state
                .nodes
                .values()
                .filter(|n| n.state != NodeState::Decommissioned)
                .map(|n| Wanted {
                    target: Target::Node(n.id),
                    address: n.address.clone(),
                    recorded: n.state,
                }),
        );
    }
    wanted
}

/// Probes every watched process each interval; an answer is a heartbeat.
async fn heartbeat(
    shared: Arc<Shared>,
    metad: MetadClient,
    probes: HttpClient,
    interval: Duration,
) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let wanted = wanted(&shared, &metad);
        let targets = {
            let mut monitor = lock(&shared.monitor);
            monitor.set_targets(&wanted, shared.now_ms());
            monitor.targets()
        };
        for (target, address) in targets {
            let (shared, probes) = (shared.clone(), probes.clone());
            // A heartbeat is dated when the probe left, not when its answer came
            // back: the intervals are then as regular as the ticker, and a slow
            // answer (a busy node, a busy detector) does not widen the distribution.
            let sent = shared.now_ms();
            tokio::spawn(async move {
                if probes
                    .get_json::<Health>(&address, "/healthz")
                    .await
                    .is_ok()
                {
                    lock(&shared.monitor).heartbeat(&target, sent);
                }
            });
        }
    }
}

/// Recomputes verdicts, logs changes, and (when active) makes the metadata service record them.
async fn judge(shared: Arc<Shared>, metad: MetadClient) {
    let mut ticker = tokio::time::interval(EVALUATE_EVERY);
    let mut reported: std::collections::HashMap<NodeId, (NodeState, Instant)> = Default::default();
    let mut last_warning = None;
    loop {
        ticker.tick().await;
        let now = shared.now_ms();
        let (changes, verdicts, report) = {
            let mut monitor = lock(&shared.monitor);
            let changes = monitor.evaluate(now);
            (changes, monitor.node_verdicts(), monitor.report(now, false))
        };
        for (target, change) in changes {
            tracing::info!(?target, from = ?change.from, to = ?change.to, "verdict changed");
            metrics::counter!("kvorum_detector_transitions_total", "to" => format!("{:?}", change.to).to_lowercase()).increment(1);
        }
        for suspicion in report.nodes.iter().chain(&report.metad) {
            let name = suspicion.node.map_or_else(
                || format!("metad@{}", suspicion.address),
                |id| id.to_string(),
            );
            metrics::gauge!("kvorum_phi", "node" => name).set(suspicion.phi.min(1e6));
        }
        if !shared.is_active() {
            continue;
        }
        let Some(state) = shared.follower.current() else {
            continue;
        };
        let recorded: std::collections::BTreeMap<NodeId, NodeState> =
            state.nodes.values().map(|n| (n.id, n.state)).collect();
        let (verdicts, held_back) = monitor::cap_downs(&verdicts, &recorded);
        metrics::gauge!("kvorum_detector_downs_held_back").set(held_back as f64);
        if held_back > 0 && last_warning.is_none_or(|at: Instant| at.elapsed() > WARN_EVERY) {
            last_warning = Some(Instant::now());
            tracing::warn!(
                held_back,
                watched = verdicts.len(),
                "most storage nodes are silent at once: this detector's own network is the likely cause; reporting them suspect, not down"
            );
        }
        for (node, verdict) in verdicts {
            let recorded = state.nodes.get(&node).map(|n| n.state);
            if recorded.is_none_or(|r| r == verdict || r == NodeState::Decommissioned) {
                continue;
            }
            if reported
                .get(&node)
                .is_some_and(|(s, at)| *s == verdict && at.elapsed() < REPORT_AGAIN_AFTER)
            {
                continue;
            }
            reported.insert(node, (verdict, Instant::now()));
            let (metad, lease) = (metad.clone(), shared.lease.clone());
            let span = tracing::info_span!("report_suspicion", node = node.0, state = ?verdict);
            tokio::spawn(
                async move {
                    // Fenced: a detector that lost its lease meanwhile is refused.
                    match metad
                        .submit_as_holder(
                            MetadataOp::SetNodeState {
                                node,
                                state: verdict,
                            },
                            &lease,
                        )
                        .await
                    {
                        Ok(_) => tracing::info!("recorded"),
                        Err(error) => tracing::warn!(%error, "cannot record the verdict yet"),
                    }
                }
                .instrument(span),
            );
        }
    }
}
