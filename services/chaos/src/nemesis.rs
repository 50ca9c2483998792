//! Faults for local processes: kill, terminate, pause and restart storage nodes,
//! the metadata leader and the active recovery controller.

use std::str::FromStr;
use std::time::Duration;

use kvorum_launcher::LocalCluster;
use kvorum_metad_client::MetadClient;
use kvorum_protocol::NodeId;
use rand::Rng;
use rand::rngs::StdRng;

/// A kind of fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FaultKind {
    /// SIGKILL a storage node, restart it when healed.
    KillStorage,
    /// SIGTERM a storage node (a graceful stop), restart it when healed.
    TermStorage,
    /// SIGSTOP a storage node, SIGCONT it when healed.
    PauseStorage,
    /// SIGKILL the metadata service's leader, restart it when healed.
    KillMetadLeader,
    /// SIGKILL the active recovery controller, restart it when healed.
    KillRecovery,
}

impl FaultKind {
    /// Every kind, in the order a periodic schedule cycles through them.
    pub const ALL: [FaultKind; 5] = [
        FaultKind::KillStorage,
        FaultKind::KillMetadLeader,
        FaultKind::PauseStorage,
        FaultKind::TermStorage,
        FaultKind::KillRecovery,
    ];

    /// Its name, as on the command line.
    pub fn name(self) -> &'static str {
        match self {
            FaultKind::KillStorage => "kill-storage",
            FaultKind::TermStorage => "term-storage",
            FaultKind::PauseStorage => "pause-storage",
            FaultKind::KillMetadLeader => "kill-metad-leader",
            FaultKind::KillRecovery => "kill-recovery",
        }
    }

    /// Whether the fault stops a process (a kill or SIGTERM), as opposed to pausing it.
    pub fn is_kill(self) -> bool {
        !matches!(self, FaultKind::PauseStorage)
    }
}

impl FromStr for FaultKind {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|k| k.name() == text)
            .ok_or_else(|| {
                let names: Vec<&str> = Self::ALL.iter().map(|k| k.name()).collect();
                format!("unknown fault {text:?}; one of {}", names.join(", "))
            })
    }
}

/// How to undo a fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Heal {
    /// Start a storage node again.
    RestartStorage(NodeId),
    /// SIGCONT a storage node.
    Resume(NodeId),
    /// Start a metadata replica again.
    RestartMetad(u64),
    /// Start a recovery controller again.
    RestartRecovery(usize),
}

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
