//! Faults on a local cluster's processes.

use std::time::Duration;

use kvorum_launcher::{LocalCluster, ProcessKind};
use kvorum_metad_client::MetadClient;
use kvorum_protocol::NodeId;
use rand::Rng;
use rand::rngs::StdRng;

use super::{FaultKind, Heal};
use crate::firewall::{Firewall, Link};
use crate::partition::{self, Grudge};

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
    /// The most any other metadata replica has decided.
    async fn peers_decided(&self, id: u64) -> u64 {
        let mut most = 0;
        for (other, address) in self.cluster.metad().addresses() {
            if *other != id
                && let Some(status) = metad_status(&address.to_string()).await
            {
                most = most.max(status.decided_upto);
            }
        }
        most
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
            .cluster
            .metad()
            .addresses()
            .get(&id)
            .map(ToString::to_string)
            .ok_or_else(|| anyhow::anyhow!("no metad replica {id}"))?;
        let deadline = started + Duration::from_secs(60);
        loop {
            if let Some(status) = metad_status(&address).await
                && status.member
                && status.decided_upto >= target
            {
                let ms = started.elapsed().as_secs_f64() * 1000.0;
                tracing::info!(metad = id, catch_up_ms = ms, "metad replica caught up");
                self.metad_catch_ups_ms.push(ms);
                return Ok(());
            }
            anyhow::ensure!(
                std::time::Instant::now() < deadline,
                "metad {id} did not catch up to slot {target} within 60 s"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
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
        let names = |side: &[usize]| {
            side.iter()
                .map(|i| processes[*i].name.as_str())
                .collect::<Vec<_>>()
                .join(" ")
        };
        let (grudge, loss, target) = match kind {
            FaultKind::PartitionStorage => (
                Grudge::isolate(processes.len(), storage),
                None,
                format!("storage {node} isolated"),
            ),
            FaultKind::PartitionHalves => {
                let [a, b] = partition::halves(&processes, rng);
                let target = format!("[{}] | [{}]", names(&a), names(&b));
                (Grudge::sides(&[a, b]), None, target)
            }
            FaultKind::PartitionBridge => {
                let ([a, b], bridge) = partition::bridge(&processes, rng);
                let target = format!(
                    "[{}] | [{}] bridged by [{}]",
                    names(&a),
                    names(&b),
                    names(&bridge)
                );
                (Grudge::sides(&[a, b]), None, target)
            }
            FaultKind::PartitionOneWay => {
                let muted = if rng.random_bool(0.5) {
                    let leader = self.metad_leader().await;
                    index_of(&format!("metad-{leader}")).unwrap_or(storage)
                } else {
                    storage
                };
                (
                    Grudge::mute(processes.len(), muted),
                    None,
                    format!(
                        "{} unheard (it still hears the others)",
                        processes[muted].name
                    ),
                )
            }
            FaultKind::LossyLinks => (
                Grudge::isolate(processes.len(), storage),
                Some(30),
                format!("storage {node} loses 30% of its packets"),
            ),
            other => anyhow::bail!("{} is not a network fault", other.name()),
        };
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
            .ok_or_else(|| anyhow::anyhow!("{} needs the run's fake clocks", kind.name()))?
            .clone();
        let faked: Vec<String> = self
            .cluster
            .processes()
            .into_iter()
            .filter(|p| p.kind != ProcessKind::Storage)
            .map(|p| p.name)
            .collect();
        let name = faked[rng.random_range(0..faked.len())].clone();
        match kind {
            FaultKind::ClockForward | FaultKind::ClockBack => {
                let step = rng.random_range(10.0..90.0_f64);
                let offset = if kind == FaultKind::ClockBack {
                    -step
                } else {
                    step
                };
                clocks.set_offset(&name, offset)?;
                Ok((
                    format!("{name} clock {offset:+.0} s"),
                    Heal::TrueClock { name, drift: None },
                ))
            }
            _ => {
                let rate =
                    rng.random_range(0.5..1.0_f64) * if rng.random_bool(0.5) { 1.0 } else { -1.0 };
                let started = std::time::Instant::now();
                let drifting = name.clone();
                let drift = tokio::spawn(async move {
                    let mut tick = tokio::time::interval(Duration::from_millis(500));
                    loop {
                        tick.tick().await;
                        let offset = started.elapsed().as_secs_f64() * rate;
                        if let Err(error) = clocks.set_offset(&drifting, offset) {
                            tracing::warn!(%error, "cannot move a drifting clock");
                        }
                    }
                });
                Ok((
                    format!("{name} clock drifts {rate:+.2} s/s"),
                    Heal::TrueClock {
                        name,
                        drift: Some(drift),
                    },
                ))
            }
        }
    }

    /// Undoes a fault.
    pub async fn heal(&mut self, heal: Heal) -> anyhow::Result<()> {
        match heal {
            Heal::RestartStorage(node) => self.cluster.restart_storage(node).await?,
            Heal::Resume(node) => self.cluster.resume_storage(node)?,
            Heal::RestartMetad(id) => {
                let started = std::time::Instant::now();
                let target = self.peers_decided(id).await;
                self.cluster.metad_mut().restart(id).await?;
                self.wait_caught_up(id, target, started).await?;
            }
            Heal::ReplaceMetad(id) => {
                let addresses: std::collections::BTreeMap<u64, String> = self
                    .cluster
                    .metad_mut()
                    .addresses()
                    .iter()
                    .map(|(id, a)| (*id, a.to_string()))
                    .collect();
                let started = std::time::Instant::now();
                let target = self.peers_decided(id).await;
                replace_metad(&addresses, id).await?;
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
                if let Some(drift) = drift {
                    drift.abort();
                    let _ = drift.await;
                }
                let clocks = self
                    .cluster
                    .clocks()
                    .ok_or_else(|| anyhow::anyhow!("no fake clocks to put back"))?;
                clocks.set_offset(&name, 0.0)?;
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

/// Asks the metadata group to take back replica `id` in its new life
/// (through any replica; a follower sends it on to the leader), until one
/// takes it; [`ProcessNemesis::wait_caught_up`] then waits for the replica.
async fn replace_metad(
    addresses: &std::collections::BTreeMap<u64, String>,
    id: u64,
) -> anyhow::Result<()> {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        for address in addresses.values() {
            let url = format!("http://{address}/v1/members/{id}/replace");
            match http.post(&url).send().await {
                Ok(response) if response.status().is_success() => return Ok(()),
                Ok(response) => {
                    tracing::debug!(status = %response.status(), %url, "replace not taken yet");
                }
                Err(error) => tracing::debug!(%error, %url, "replace not taken yet"),
            }
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "no metad replica took the replacement of {id} within 60 s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A metadata replica's own status, if it answers.
async fn metad_status(address: &str) -> Option<kvorum_protocol::metadata::MetadStatus> {
    let response = reqwest::Client::new()
        .get(format!("http://{address}/v1/status"))
        .timeout(Duration::from_secs(2))
        .send()
        .await
        .ok()?;
    response.json().await.ok()
}
