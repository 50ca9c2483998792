//! The node's place in the cluster: it registers with the metadata service at
//! start and follows the partition map, raising its epoch fence as the map moves.

use std::sync::Arc;

use kvorum_metad_client::{Follower, MetadClient, MetadClientError};
use kvorum_protocol::cluster::NodeRole;
use kvorum_protocol::metadata::{MetadataCommand, MetadataOp};
use kvorum_protocol::{NodeId, NodeInfo};
use kvorum_server::Readiness;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::fence::EpochFence;

/// A running membership: the follower of the metadata state and whether registration succeeded.
#[derive(Debug, Clone)]
pub struct Membership {
    client: MetadClient,
    node: NodeInfo,
    follower: Follower,
    /// The metadata version the registration was applied at, once it was.
    registered: tokio::sync::watch::Receiver<Option<u64>>,
}

impl Membership {
    /// Registers `node` (retrying under one request id until it is applied) and follows the map.
    pub fn start(
        client: MetadClient,
        node: NodeInfo,
        fence: Arc<EpochFence>,
        shutdown: CancellationToken,
    ) -> Self {
        let follower = kvorum_metad_client::follow(client.clone(), shutdown.clone());
        let (publish, registered) = tokio::sync::watch::channel(None);
        let span = tracing::info_span!("register_node", node = node.id.0);
        tokio::spawn(
            register(client.clone(), node.clone(), publish, shutdown.clone()).instrument(span),
        );
        tokio::spawn(raise_fences(node.id, follower.clone(), fence, shutdown));
        Self {
            client,
            node,
            follower,
            registered,
        }
    }

    /// Waits until the registration is applied; the metadata version it was applied at
    /// (`None` if it was refused or the node shut down first).
    pub async fn registered(&self) -> Option<u64> {
        let mut registered = self.registered.clone();
        let version = registered.wait_for(Option::is_some).await.ok()?;
        *version
    }

    /// Registers again, as a new incarnation catching up; the metadata version
    /// it was applied at (`None` if refused).
    pub async fn register_catching_up(&self) -> Option<u64> {
        let node = NodeInfo {
            catching_up: true,
            ..self.node.clone()
        };
        let command = MetadataCommand {
            request_id: self.client.new_request_id(),
            expected_version: None,
            fence: None,
            op: MetadataOp::RegisterNode { node },
        };
        loop {
            match self.client.submit_command(&command).await {
                Ok(outcome) => return Some(outcome.version),
                Err(MetadClientError::Refused(refused)) => {
                    tracing::error!(%refused, "the metadata service refused the new incarnation");
                    return None;
                }
                Err(error) => {
                    tracing::warn!(%error, "cannot register the new incarnation yet; retrying");
                    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                }
            }
        }
    }

    /// The metadata state, read linearizably (it holds every command applied before the read).
    pub async fn read_state(
        &self,
    ) -> Result<kvorum_protocol::metadata::MetadataState, MetadClientError> {
        self.client.state().await
    }

    /// Tells the metadata service that incarnation `incarnation` of `node` has caught up.
    pub async fn report_caught_up(
        &self,
        node: NodeId,
        incarnation: u64,
    ) -> Result<u64, MetadClientError> {
        let outcome = self
            .client
            .submit(MetadataOp::NodeCaughtUp { node, incarnation })
            .await?;
        Ok(outcome.version)
    }

    /// The follower of the metadata state.
    pub fn follower(&self) -> Follower {
        self.follower.clone()
    }

    /// Ready once registered and holding a partition map.
    pub fn readiness(&self) -> Readiness {
        let membership = self.clone();
        Readiness::new(move || {
            if membership.registered.borrow().is_none() {
                return Err("not registered with the metadata service yet".to_owned());
            }
            match membership.follower.current() {
                Some(state) if state.partition_map.is_some() => Ok(()),
                Some(_) => Err(
                    "the cluster has no partition map yet (too few storage nodes registered)"
                        .to_owned(),
                ),
                None => Err("no answer from the metadata service yet".to_owned()),
            }
        })
    }
}

async fn register(
    client: MetadClient,
    node: NodeInfo,
    registered: tokio::sync::watch::Sender<Option<u64>>,
    shutdown: CancellationToken,
) {
    let command = MetadataCommand {
        request_id: client.new_request_id(),
        expected_version: None,
        fence: None,
        op: MetadataOp::RegisterNode { node: node.clone() },
    };
    loop {
        let attempt = tokio::select! {
            () = shutdown.cancelled() => return,
            attempt = client.submit_command(&command) => attempt,
        };
        match attempt {
            Ok(outcome) => {
                tracing::info!(node = %node.id, address = %node.address, catching_up = node.catching_up, version = outcome.version, "registered with the metadata service");
                registered.send_replace(Some(outcome.version));
                return;
            }
            Err(MetadClientError::Refused(refused)) => {
                tracing::error!(node = %node.id, %refused, "the metadata service refused this node's registration; it will not become ready");
                return;
            }
            Err(error) => {
                tracing::warn!(%error, "cannot register with the metadata service yet; retrying");
            }
        }
    }
}

/// Raises the fence to each partition's epoch in the newest map, so that a
/// router still using an older map is refused even before it sends a newer epoch.
async fn raise_fences(
    node: NodeId,
    follower: Follower,
    fence: Arc<EpochFence>,
    shutdown: CancellationToken,
) {
    let mut states = follower.subscribe();
    loop {
        if let Some(map) = states
            .borrow_and_update()
            .as_ref()
            .and_then(|s| s.partition_map.clone())
        {
            for assignment in &map.partitions {
                fence.raise(assignment.id, assignment.epoch);
                fence.place(assignment.id, assignment.epoch, assignment.places(node));
            }
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            changed = states.changed() => if changed.is_err() { return },
        }
    }
}

/// The description this node registers with; `catching_up` when its data directory is new or restored.
pub fn node_info(id: NodeId, address: String, standby: bool, catching_up: bool) -> NodeInfo {
    let role = if standby {
        NodeRole::Standby
    } else {
        NodeRole::Storage
    };
    NodeInfo::registering(id, address, role, catching_up)
}
