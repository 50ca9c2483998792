//! The router's copy of the cluster metadata: it follows the metadata service
//! and derives, once per version, the topology and keyspaces requests route by.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use kvorum_http_client::{ClientConfig, HttpClient};
use kvorum_metad_client::{Follower, MetadClient, MetadClientError};
use kvorum_protocol::cluster::{MetadReplica, MetadView};
use kvorum_protocol::detector::{DETECTOR_LEASE, SuspicionReport};
use kvorum_protocol::metadata::{MetadataOp, MetadataState};
use kvorum_protocol::recovery::{RECOVERY_LEASE, RecoveryReport};
use kvorum_protocol::{ClusterSettings, NodeId};
use kvorum_server::Readiness;

use crate::keyspaces::Keyspaces;
use crate::topology::Topology;

/// How long without an answer from the metadata service before the router warns
/// that it routes by a map it cannot refresh.
const CONTACT_WARNING: Duration = Duration::from_secs(15);

/// How long `GET /v1/cluster` waits for the metadata replicas' status.
const STATUS_TIMEOUT: Duration = Duration::from_millis(500);

/// Everything a request routes by, derived from one metadata version.
#[derive(Debug)]
pub struct Snapshot {
    /// The metadata version it was derived from.
    pub version: u64,
    /// The cluster's shape.
    pub settings: ClusterSettings,
    /// Nodes and the partition map.
    pub topology: Topology,
    /// Keyspaces.
    pub keyspaces: Keyspaces,
    /// Signs and checks the causal contexts of eventual keyspaces.
    pub contexts: crate::context_token::ContextSigner,
}

impl Snapshot {
    /// The snapshot of `state`, or why requests cannot be routed yet.
    pub fn from_state(state: &MetadataState) -> Result<Self, NotReady> {
        let settings = state.cluster.ok_or(NotReady::NotInitialised)?;
        let topology = Topology::from_state(state).ok_or(NotReady::NoMap {
            registered: state.nodes.len(),
            needed: settings.bootstrap_nodes,
        })?;
        Ok(Self {
            version: state.version,
            settings,
            topology,
            keyspaces: Keyspaces::new(state.keyspaces.clone()),
            contexts: crate::context_token::ContextSigner::new(state.context_key.as_deref()),
        })
    }
}

/// Why the router cannot route requests yet.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NotReady {
    /// No answer from the metadata service yet.
    #[error("the router has not reached the metadata service yet")]
    NoContact,
    /// The cluster's shape is not set yet.
    #[error(
        "the cluster is not initialised yet (the metadata service has no leader, or is starting)"
    )]
    NotInitialised,
    /// Too few storage nodes registered for the partition map to exist.
    #[error(
        "the cluster has no partition map yet: {registered} nodes registered, {needed} storage nodes needed"
    )]
    NoMap {
        /// Nodes registered so far.
        registered: usize,
        /// Storage nodes the bootstrap waits for.
        needed: usize,
    },
}

/// The router's link to the metadata service (and, through it, to the active failure detector).
#[derive(Debug, Clone)]
pub struct Metadata {
    client: MetadClient,
    follower: Follower,
    cache: Arc<Mutex<Option<Arc<Snapshot>>>>,
    /// Reaches the lease holders (detector, recovery controller).
    lease_holders: HttpClient,
}

impl Metadata {
    /// Metadata followed through `follower`, with commands sent through
    /// `client`; lease holders are called as `calls` says, with short timeouts.
    pub fn new(client: MetadClient, follower: Follower, calls: ClientConfig) -> Self {
        let mut config = calls;
        config.request_timeout = STATUS_TIMEOUT;
        config.connect_timeout = STATUS_TIMEOUT;
        config.retries = 0;
        Self {
            client,
            follower,
            cache: Arc::new(Mutex::new(None)),
            lease_holders: HttpClient::new(config).expect("a client with timeouts always builds"),
        }
    }

    /// The active failure detector's report: the holder of its lease is its address.
    pub async fn suspicion(&self) -> Option<SuspicionReport> {
        self.ask_lease_holder(DETECTOR_LEASE, "/v1/suspicion").await
    }

    /// The active recovery controller's moves, found the same way.
    pub async fn moves(&self) -> Option<RecoveryReport> {
        self.ask_lease_holder(RECOVERY_LEASE, "/v1/moves").await
    }

    async fn ask_lease_holder<T: serde::de::DeserializeOwned>(
        &self,
        lease: &str,
        path: &str,
    ) -> Option<T> {
        let holder = self.follower.current()?.leases.get(lease)?.holder.clone();
        self.lease_holders
            .get_json(&holder, path)
            .await
            .map_err(|error| tracing::debug!(lease, %error, "no report from the lease holder"))
            .ok()
    }

    /// The snapshot of the newest metadata seen.
    pub fn current(&self) -> Result<Arc<Snapshot>, NotReady> {
        let state = self.follower.current().ok_or(NotReady::NoContact)?;
        let mut cache = self
            .cache
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(snapshot) = cache.as_ref()
            && snapshot.version == state.version
        {
            return Ok(snapshot.clone());
        }
        let snapshot = Arc::new(Snapshot::from_state(&state)?);
        *cache = Some(snapshot.clone());
        Ok(snapshot)
    }

    /// Asks for a linearizable read and waits (up to `timeout`) for a version newer than `than`.
    pub async fn refresh(&self, than: u64, timeout: Duration) -> bool {
        self.follower.wait_for_version(than + 1, timeout).await
    }

    /// Submits a command (a keyspace, a node added or decommissioned) and waits
    /// until this router routes by a version that holds it, so the client's next
    /// request sees it.
    pub async fn submit(&self, op: MetadataOp) -> Result<(), MetadClientError> {
        let outcome = self.client.submit(op).await?;
        if !self
            .follower
            .wait_for_version(outcome.version, Duration::from_secs(5))
            .await
        {
            tracing::warn!(
                version = outcome.version,
                "the command is applied, but this router has not seen it yet"
            );
        }
        Ok(())
    }

    /// The metadata service as `GET /v1/cluster` reports it: its replicas and the leader they name.
    pub async fn metad_view(&self) -> MetadView {
        let statuses = self.client.statuses(STATUS_TIMEOUT).await;
        let answered: Vec<_> = statuses.into_iter().filter_map(|(_, s)| s).collect();
        let leader = answered
            .iter()
            .find(|s| s.is_leader)
            .map(|s| s.id)
            .or_else(|| answered.iter().find_map(|s| s.leader));
        let replicas = match answered.first() {
            Some(status) => status
                .peers
                .iter()
                .map(|(id, address)| MetadReplica {
                    id: NodeId(*id),
                    address: address.clone(),
                    phi: None,
                    state: None,
                })
                .collect(),
            None => Vec::new(),
        };
        MetadView {
            leader: leader.map(NodeId),
            replicas,
            contact_age_ms: self
                .follower
                .since_last_contact()
                .map(|age| u64::try_from(age.as_millis()).unwrap_or(u64::MAX)),
        }
    }

    /// Reports the age of the last answer from the metadata service (a gauge),
    /// and warns once when it passes [`CONTACT_WARNING`] and when contact is back.
    pub async fn watch_contact(self, shutdown: tokio_util::sync::CancellationToken) {
        let mut lost = false;
        loop {
            let age = self.follower.since_last_contact();
            metrics::gauge!("kvorum_metad_contact_age_seconds")
                .set(age.map_or(f64::INFINITY, |a| a.as_secs_f64()));
            match age {
                Some(age) if age > CONTACT_WARNING && !lost => {
                    lost = true;
                    tracing::warn!(
                        seconds = age.as_secs(),
                        "no answer from the metadata service: routing by the map held, which cannot change until it is back"
                    );
                }
                Some(age) if age <= CONTACT_WARNING && lost => {
                    lost = false;
                    tracing::info!("the metadata service answers again");
                }
                _ => {}
            }
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
    }

    /// Ready while it routes by a partition map: a metadata outage alone does
    /// not make it unready, since reads and writes need only the map it holds
    /// and the storage nodes (the lost contact shows in `GET /v1/cluster`, in
    /// `kvorum_metad_contact_age_seconds` and in the log).
    pub fn readiness(&self) -> Readiness {
        let metadata = self.clone();
        Readiness::new(move || metadata.current().map(drop).map_err(|e| e.to_string()))
    }
}
