//! Faults on a local cluster's processes.

use std::time::Duration;

use kvorum_launcher::LocalCluster;
use kvorum_metad_client::MetadClient;
use kvorum_protocol::NodeId;
use rand::Rng;
use rand::rngs::StdRng;

use super::{FaultKind, Heal};

/// Faults on a local cluster's processes.
#[derive(Debug)]
pub struct ProcessNemesis {
    /// The cluster.
    pub cluster: LocalCluster,
    /// Its metadata service, to find the leader and the lease holders.
    pub metad: MetadClient,
    /// Storage node ids.
    pub storage: Vec<NodeId>,
}

impl ProcessNemesis {
    /// Injects one fault; returns what it hit and how to heal it.
    pub async fn inject(
        &mut self,
        kind: FaultKind,
        rng: &mut StdRng,
    ) -> anyhow::Result<(String, Heal)> {
        let node = self.storage[rng.random_range(0..self.storage.len())];
        match kind {
            FaultKind::KillStorage => {
                self.cluster.kill_storage(node).await?;
                Ok((format!("storage {node}"), Heal::RestartStorage(node)))
            }
            FaultKind::TermStorage => {
                self.cluster.terminate_storage(node).await?;
                Ok((format!("storage {node}"), Heal::RestartStorage(node)))
            }
            FaultKind::PauseStorage => {
                self.cluster.pause_storage(node)?;
                Ok((format!("storage {node}"), Heal::Resume(node)))
            }
            FaultKind::KillMetadLeader => {
                let leader = self.metad_leader().await;
                self.cluster.metad_mut().kill(leader).await?;
                Ok((
                    format!("metad {leader} (leader)"),
                    Heal::RestartMetad(leader),
                ))
            }
            FaultKind::PartitionStorage => {
                anyhow::bail!("partition-storage needs the docker backend")
            }
            FaultKind::WipeStorage => {
                self.cluster.wipe_storage(node).await?;
                Ok((
                    format!("storage {node} (data wiped, checkpoints kept)"),
                    Heal::RestartStorage(node),
                ))
            }
            FaultKind::WipeStorageAll => {
                self.cluster.wipe_storage_and_checkpoints(node).await?;
                Ok((
                    format!("storage {node} (data and checkpoints wiped)"),
                    Heal::RestartStorage(node),
                ))
            }
            FaultKind::KillRecovery => {
                let index = match self.active_recovery().await {
                    Some(index) => index,
                    None => {
                        tracing::warn!("no recovery controller holds the lease; killing the first");
                        0
                    }
                };
                self.cluster.kill_recovery(index).await?;
                Ok((
                    format!("recovery {} (active)", index + 1),
                    Heal::RestartRecovery(index),
                ))
            }
        }
    }

    /// Undoes a fault.
    pub async fn heal(&mut self, heal: Heal) -> anyhow::Result<()> {
        match heal {
            Heal::RestartStorage(node) => self.cluster.restart_storage(node).await?,
            Heal::Resume(node) => self.cluster.resume_storage(node)?,
            Heal::RestartMetad(id) => self.cluster.metad_mut().restart(id).await?,
            Heal::RestartRecovery(index) => self.cluster.restart_recovery(index).await?,
            other => anyhow::bail!("{other:?} does not heal a process fault"),
        }
        Ok(())
    }

    /// The metadata leader, as the replicas report it (replica 1 when none is known).
    async fn metad_leader(&self) -> u64 {
        let statuses = self.metad.statuses(Duration::from_secs(1)).await;
        statuses
            .iter()
            .filter_map(|(_, status)| status.as_ref()?.leader)
            .next()
            .unwrap_or(1)
    }

    /// The recovery controller holding the lease, by its index in start order.
    async fn active_recovery(&self) -> Option<usize> {
        let state = self.metad.state().await.ok()?;
        let holder = state
            .leases
            .get(kvorum_protocol::recovery::RECOVERY_LEASE)?
            .holder
            .clone();
        self.cluster
            .recovery_addresses()
            .iter()
            .position(|address| address.to_string() == holder)
    }
}
