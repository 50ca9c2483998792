//! Faults on a local cluster's processes.

use std::collections::BTreeMap;
use std::time::Duration;

use kvorum_launcher::{LocalCluster, ProcessKind};
use kvorum_metad_client::MetadClient;
use kvorum_protocol::NodeId;
use rand::Rng;
use rand::rngs::StdRng;

use super::{FaultKind, Heal, clock, metad};
use crate::firewall::{Firewall, Link};
use crate::partition;

/// Faults on a local cluster's processes.
#[derive(Debug)]
pub struct ProcessNemesis {
    /// The cluster.
    pub cluster: LocalCluster,
    /// Its metadata service, to find the leader and the lease holders.
    pub metad: MetadClient,
    /// Storage node ids.
    pub storage: Vec<NodeId>,
    /// Cuts links between processes (when the run has network faults).
    pub firewall: Option<Firewall>,
    /// How long each metadata replica restarted or replaced took to catch up, in ms.
    pub metad_catch_ups_ms: Vec<f64>,
}

impl ProcessNemesis {
    /// Every metadata replica's address, by id.
    fn metad_addresses(&self) -> BTreeMap<u64, String> {
        self.cluster
            .metad()
            .addresses()
            .iter()
            .map(|(id, a)| (*id, a.to_string()))
            .collect()
    }

    /// Waits until metadata replica `id` is a member that decided `target`;
    /// records how long that took from `started`.
    async fn wait_caught_up(
        &mut self,
        id: u64,
        target: u64,
        started: std::time::Instant,
    ) -> anyhow::Result<()> {
        let address = self
            .metad_addresses()
            .remove(&id)
            .ok_or_else(|| anyhow::anyhow!("no metad replica {id}"))?;
        let ms = metad::wait_caught_up(&address, id, target, started).await?;
        self.metad_catch_ups_ms.push(ms);
        Ok(())
    }

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
            FaultKind::KillMetad => {
                let ids: Vec<u64> = self.cluster.metad().addresses().keys().copied().collect();
                let id = ids[rng.random_range(0..ids.len())];
                self.cluster.metad_mut().kill(id).await?;
                Ok((format!("metad {id}"), Heal::RestartMetad(id)))
            }
            FaultKind::WipeMetad => {
                let ids: Vec<u64> = self
                    .cluster
                    .metad_mut()
                    .addresses()
                    .keys()
                    .copied()
                    .collect();
                let id = ids[rng.random_range(0..ids.len())];
                let metad = self.cluster.metad_mut();
                metad.wipe(id).await?;
                metad.restart(id).await?;
                Ok((
                    format!("metad {id} (store wiped, restarted empty)"),
                    Heal::ReplaceMetad(id),
                ))
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
            FaultKind::KillTwoStorage => {
                let others: Vec<NodeId> = self
                    .storage
                    .iter()
                    .copied()
                    .filter(|n| *n != node)
                    .collect();
                anyhow::ensure!(
                    !others.is_empty(),
                    "kill-two-storage needs two storage nodes"
                );
                let second = others[rng.random_range(0..others.len())];
                self.cluster.kill_storage(node).await?;
                self.cluster.kill_storage(second).await?;
                Ok((
                    format!("storage {node} and storage {second}"),
                    Heal::All(vec![
                        Heal::RestartStorage(node),
                        Heal::RestartStorage(second),
                    ]),
                ))
            }
            FaultKind::KillStorageAndMetadLeader => {
                let leader = self.metad_leader().await;
                self.cluster.metad_mut().kill(leader).await?;
                self.cluster.kill_storage(node).await?;
                Ok((
                    format!("storage {node} and metad {leader} (leader)"),
                    Heal::All(vec![Heal::RestartMetad(leader), Heal::RestartStorage(node)]),
                ))
            }
            FaultKind::PauseRouter => {
                let routers = self.cluster.router_urls().len();
                let index = rng.random_range(0..routers);
                self.cluster.pause_router(index)?;
                Ok((format!("router {}", index + 1), Heal::ResumeRouter(index)))
            }
            FaultKind::ChurnStorage => {
                let (added, _) = self.cluster.add_storage().await?;
                let url = format!(
                    "{}/v1/nodes/{}/decommission",
                    self.cluster.router_url(),
                    node.0
                );
                crate::run::call_router(
                    reqwest::Client::new()
                        .post(&url)
                        .timeout(Duration::from_secs(10)),
                    &format!("decommissioning storage {node}"),
                )
                .await?;
                self.storage.retain(|n| *n != node);
                self.storage.push(added);
                Ok((
                    format!("storage {added} added, storage {node} decommissioned"),
                    Heal::Nothing,
                ))
            }
            FaultKind::PartitionStorage
            | FaultKind::PartitionHalves
            | FaultKind::PartitionBridge
            | FaultKind::PartitionOneWay
            | FaultKind::LossyLinks => self.cut(kind, node, rng).await,
            FaultKind::ClockForward | FaultKind::ClockBack | FaultKind::ClockDrift => {
                self.move_clock(kind, rng)
            }
            // Which faults a backend offers is said once, in ChaosConfig::validate.
            FaultKind::SlowLinks => anyhow::bail!("slow-links needs the docker backend"),
        }
    }

    /// A network fault: which links it cuts, as firewall rules.
    async fn cut(
        &mut self,
        kind: FaultKind,
        node: NodeId,
        rng: &mut StdRng,
    ) -> anyhow::Result<(String, Heal)> {
        let processes = self.cluster.processes();
        let index_of = |name: &str| processes.iter().position(|p| p.name == name);
        let storage = index_of(&format!("storage-{}", node.0))
            .ok_or_else(|| anyhow::anyhow!("storage {node} is not in the cluster"))?;
        let muted = if kind == FaultKind::PartitionOneWay && rng.random_bool(0.5) {
            let leader = self.metad_leader().await;
            index_of(&format!("metad-{leader}"))
        } else {
            None
        };
        let (grudge, loss, target) = partition::plan(kind, &processes, storage, muted, rng)?;
        let links: Vec<Link> = grudge
            .0
            .iter()
            .map(|(from, to)| Link {
                from: processes[*from].address,
                to: processes[*to].address,
            })
            .collect();
        let firewall = self
            .firewall
            .as_mut()
            .ok_or_else(|| anyhow::anyhow!("{} needs the run's firewall", kind.name()))?;
        let chain = firewall.drop_links(&links, loss).await?;
        Ok((target, Heal::Restore(chain)))
    }

    /// A clock fault on a router, metadata replica, detector or recovery controller.
    fn move_clock(&mut self, kind: FaultKind, rng: &mut StdRng) -> anyhow::Result<(String, Heal)> {
        let clocks = self
            .cluster
            .clocks()
            .ok_or_else(|| anyhow::anyhow!("{} needs the run's fake clocks", kind.name()))?;
        let faked: Vec<String> = self
            .cluster
            .processes()
            .into_iter()
            .filter(|p| p.kind != ProcessKind::Storage)
            .map(|p| p.name)
            .collect();
        clock::move_clock(kind, clocks, &faked, rng)
    }

    /// Undoes a fault.
    pub async fn heal(&mut self, heal: Heal) -> anyhow::Result<()> {
        match heal {
            Heal::RestartStorage(node) => self.cluster.restart_storage(node).await?,
            Heal::Resume(node) => self.cluster.resume_storage(node)?,
            Heal::RestartMetad(id) => {
                let started = std::time::Instant::now();
                let target = metad::peers_decided(&self.metad_addresses(), id).await;
                self.cluster.metad_mut().restart(id).await?;
                self.wait_caught_up(id, target, started).await?;
            }
            Heal::ReplaceMetad(id) => {
                let addresses = self.metad_addresses();
                let started = std::time::Instant::now();
                let target = metad::peers_decided(&addresses, id).await;
                metad::replace(&addresses, id).await?;
                self.wait_caught_up(id, target, started).await?;
            }
            Heal::RestartRecovery(index) => self.cluster.restart_recovery(index).await?,
            Heal::ResumeRouter(index) => self.cluster.resume_router(index)?,
            Heal::Nothing => {}
            Heal::Restore(chain) => {
                self.firewall
                    .as_mut()
                    .ok_or_else(|| anyhow::anyhow!("no firewall to restore {chain} in"))?
                    .restore(&chain)
                    .await?;
            }
            Heal::TrueClock { name, drift } => {
                clock::true_clock(self.cluster.clocks(), &name, drift).await?;
            }
            Heal::All(heals) => {
                // Each is tried, so that one failure does not leave the rest broken.
                let mut first_error = None;
                for heal in heals {
                    if let Err(error) = Box::pin(self.heal(heal)).await {
                        first_error.get_or_insert(error);
                    }
                }
                if let Some(error) = first_error {
                    return Err(error);
                }
            }
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
