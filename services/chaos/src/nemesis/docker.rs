//! Faults on a Docker Compose cluster.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use kvorum_launcher::{FakeClocks, ProcessInfo, ProcessKind};
use rand::Rng;
use rand::rngs::StdRng;

use super::container::{self, Container};
use super::{FaultKind, Heal, clock, command, leader_from_router, metad};
use crate::partition;

/// The port every metadata replica listens on inside its container.
const METAD_PORT: u16 = 9001;

/// Faults on a Docker Compose cluster, through `docker-compose` and `docker`.
#[derive(Debug)]
pub struct DockerNemesis {
    /// `docker-compose` and its project and file flags.
    pub compose: Vec<String>,
    /// The project's network, where partitions cut containers off.
    pub network: String,
    /// Storage services, `storage-1` ...
    pub storage: Vec<String>,
    /// Metadata services by replica id, `metad-1` ...
    pub metad: BTreeMap<u64, String>,
    /// Router services: `router`, then `router-2` ...
    pub routers: Vec<String>,
    /// The other services: the failure detector and the recovery controller.
    pub others: Vec<(ProcessKind, String)>,
    /// The clock files of the services that run under libfaketime (every
    /// service but the storage nodes), when the Compose files mount them.
    pub clocks: Option<FakeClocks>,
    /// How long each metadata replica replaced after a wipe took to catch up, in ms.
    pub metad_catch_ups_ms: Vec<f64>,
    /// Network faults made so far, to name each one's table.
    pub cuts: u64,
}

impl DockerNemesis {
    async fn compose(&self, args: &[&str]) -> anyhow::Result<String> {
        let mut all: Vec<String> = self.compose[1..].to_vec();
        all.extend(args.iter().map(|a| (*a).to_owned()));
        command(&self.compose[0], &all).await
    }

    /// The running container of `service`.
    async fn container(&self, service: &str) -> anyhow::Result<Container> {
        let id = self.compose(&["ps", "-q", service]).await?;
        anyhow::ensure!(!id.is_empty(), "{service} has no container");
        container::inspect(&id, &self.network).await
    }

    /// Every service, as the partition planner sees processes.
    fn services(&self) -> Vec<(ProcessKind, String)> {
        let metad = self.metad.values().map(|s| (ProcessKind::Metad, s.clone()));
        let storage = self
            .storage
            .iter()
            .map(|s| (ProcessKind::Storage, s.clone()));
        let routers = self
            .routers
            .iter()
            .map(|s| (ProcessKind::Router, s.clone()));
        metad
            .chain(storage)
            .chain(routers)
            .chain(self.others.iter().cloned())
            .collect()
    }

    /// Every metadata replica's address on the project's network, by id.
    pub(crate) async fn metad_addresses(&self) -> BTreeMap<u64, String> {
        let mut addresses = BTreeMap::new();
        for (id, service) in &self.metad {
            match self.container(service).await {
                Ok(c) => {
                    addresses.insert(*id, SocketAddr::new(c.ip, METAD_PORT).to_string());
                }
                Err(error) => tracing::debug!(service, %error, "metad replica not reachable"),
            }
        }
        addresses
    }

    /// Checks that every service with a clock file runs under libfaketime
    /// reading its own file, so that a clock fault moves the clock it names
    /// (a Compose override that gives one service another's file would make
    /// clock faults move nothing, or the wrong process's clock).
    pub(crate) async fn check_clocks(&self) -> anyhow::Result<()> {
        if self.clocks.is_none() {
            return Ok(());
        }
        for (kind, service) in self.services() {
            if kind == ProcessKind::Storage {
                continue;
            }
            let container = self.container(&service).await?;
            let environ = std::fs::read(format!("/proc/{}/environ", container.pid))?;
            let maps = std::fs::read_to_string(format!("/proc/{}/maps", container.pid))?;
            clock_file_is_own(&service, &environ, &maps)?;
        }
        Ok(())
    }

    /// Kills `service` and deletes its data volume's contents but `keep`.
    async fn wipe(&self, service: &str, keep: &[&str]) -> anyhow::Result<()> {
        let id = self.compose(&["ps", "-q", service]).await?;
        let dir = container::data_dir(&id).await?;
        self.compose(&["kill", service]).await?;
        container::wipe(&dir, keep)
    }

    pub(super) async fn inject(
        &mut self,
        kind: FaultKind,
        rng: &mut StdRng,
        router: &str,
    ) -> anyhow::Result<(String, Heal)> {
        let service = self.storage[rng.random_range(0..self.storage.len())].clone();
        match kind {
            FaultKind::KillStorage => {
                self.compose(&["kill", &service]).await?;
                Ok((service.clone(), Heal::ComposeStart(service)))
            }
            FaultKind::TermStorage => {
                self.compose(&["stop", "--timeout", "10", &service]).await?;
                Ok((service.clone(), Heal::ComposeStart(service)))
            }
            FaultKind::PauseStorage => {
                self.compose(&["pause", &service]).await?;
                Ok((service.clone(), Heal::ComposeUnpause(service)))
            }
            FaultKind::WipeStorage => {
                self.wipe(&service, &["checkpoints"]).await?;
                Ok((
                    format!("{service} (data wiped, checkpoints kept)"),
                    Heal::ComposeStart(service),
                ))
            }
            FaultKind::WipeStorageAll => {
                self.wipe(&service, &[]).await?;
                Ok((
                    format!("{service} (data and checkpoints wiped)"),
                    Heal::ComposeStart(service),
                ))
            }
            FaultKind::PartitionStorage => {
                let container = self.compose(&["ps", "-q", &service]).await?;
                command(
                    "docker",
                    &[
                        "network",
                        "disconnect",
                        "--force",
                        &self.network,
                        &container,
                    ]
                    .map(str::to_owned),
                )
                .await?;
                Ok((
                    format!("{service} (partitioned)"),
                    Heal::Reconnect {
                        container,
                        network: self.network.clone(),
                        service,
                    },
                ))
            }
            FaultKind::PartitionHalves
            | FaultKind::PartitionBridge
            | FaultKind::PartitionOneWay
            | FaultKind::LossyLinks => self.cut(kind, &service, router, rng).await,
            FaultKind::SlowLinks => {
                let container = self.container(&service).await?;
                let (shaped, how) = container::shape(&container).await?;
                Ok((
                    format!("{service} sends through {how}"),
                    Heal::Unshape(shaped),
                ))
            }
            FaultKind::KillMetadLeader => {
                let service = format!("metad-{}", leader_from_router(router).await?);
                self.compose(&["kill", &service]).await?;
                Ok((format!("{service} (leader)"), Heal::ComposeStart(service)))
            }
            FaultKind::KillMetad => {
                let ids: Vec<u64> = self.metad.keys().copied().collect();
                let service = self.metad[&ids[rng.random_range(0..ids.len())]].clone();
                self.compose(&["kill", &service]).await?;
                Ok((service.clone(), Heal::ComposeStart(service)))
            }
            FaultKind::WipeMetad => {
                let ids: Vec<u64> = self.metad.keys().copied().collect();
                let id = ids[rng.random_range(0..ids.len())];
                let service = self.metad[&id].clone();
                self.wipe(&service, &[]).await?;
                self.compose(&["start", &service]).await?;
                Ok((
                    format!("{service} (store wiped, restarted empty)"),
                    Heal::ReplaceMetad(id),
                ))
            }
            FaultKind::KillRecovery => {
                self.compose(&["kill", "recovery"]).await?;
                Ok((
                    "recovery".to_owned(),
                    Heal::ComposeStart("recovery".to_owned()),
                ))
            }
            FaultKind::PauseRouter => {
                let router = self.routers[rng.random_range(0..self.routers.len())].clone();
                self.compose(&["pause", &router]).await?;
                Ok((router.clone(), Heal::ComposeUnpause(router)))
            }
            FaultKind::ClockForward | FaultKind::ClockBack | FaultKind::ClockDrift => {
                let clocks = self.clocks.as_ref().ok_or_else(|| {
                    anyhow::anyhow!("{} needs --clock-dir on Docker", kind.name())
                })?;
                let faked: Vec<String> = self
                    .services()
                    .into_iter()
                    .filter(|(kind, _)| *kind != ProcessKind::Storage)
                    .map(|(_, name)| name)
                    .collect();
                clock::move_clock(kind, clocks, &faked, rng)
            }
            FaultKind::KillTwoStorage => {
                let mut others: Vec<&String> =
                    self.storage.iter().filter(|s| **s != service).collect();
                anyhow::ensure!(
                    !others.is_empty(),
                    "kill-two-storage needs two storage nodes"
                );
                let second = others
                    .swap_remove(rng.random_range(0..others.len()))
                    .clone();
                self.compose(&["kill", &service, &second]).await?;
                Ok((
                    format!("{service} and {second}"),
                    Heal::All(vec![
                        Heal::ComposeStart(service),
                        Heal::ComposeStart(second),
                    ]),
                ))
            }
            FaultKind::KillStorageAndMetadLeader => {
                let leader = format!("metad-{}", leader_from_router(router).await?);
                self.compose(&["kill", &service, &leader]).await?;
                Ok((
                    format!("{service} and {leader} (leader)"),
                    Heal::All(vec![
                        Heal::ComposeStart(leader),
                        Heal::ComposeStart(service),
                    ]),
                ))
            }
            // Which faults a backend offers is said once, in ChaosConfig::validate.
            FaultKind::ChurnStorage => {
                anyhow::bail!("{} needs the process backend", kind.name())
            }
        }
    }

    /// A network fault: nftables rules in the namespaces of the containers
    /// whose incoming packets it drops.
    async fn cut(
        &mut self,
        kind: FaultKind,
        storage: &str,
        router: &str,
        rng: &mut StdRng,
    ) -> anyhow::Result<(String, Heal)> {
        // Every container at once: a fault is made within a second, not one
        // `docker inspect` per service later.
        let ids: Vec<String> = self
            .compose(&["ps", "-q"])
            .await?
            .lines()
            .map(str::to_owned)
            .collect();
        let running: BTreeMap<String, Container> = container::inspect_all(&ids, &self.network)
            .await?
            .into_iter()
            .collect();
        let mut processes = Vec::new();
        let mut containers = Vec::new();
        for (kind, name) in self.services() {
            let container = running
                .get(&name)
                .cloned()
                .ok_or_else(|| anyhow::anyhow!("{name} is not running"))?;
            processes.push(ProcessInfo {
                kind,
                name,
                address: SocketAddr::new(container.ip, 0),
            });
            containers.push(container);
        }
        let index_of = |name: &str| processes.iter().position(|p| p.name == name);
        let storage =
            index_of(storage).ok_or_else(|| anyhow::anyhow!("{storage} is not in the cluster"))?;
        let muted = if kind == FaultKind::PartitionOneWay && rng.random_bool(0.5) {
            let leader = leader_from_router(router).await?;
            index_of(&format!("metad-{leader}"))
        } else {
            None
        };
        let (grudge, loss, target) = partition::plan(kind, &processes, storage, muted, rng)?;
        self.cuts += 1;
        let table = format!("kvorum_chaos_fault{}", self.cuts);
        let mut filtered = Vec::new();
        for (to, container) in containers.iter().enumerate() {
            let from: Vec<_> = (0..containers.len())
                .filter(|from| !grudge.passes(*from, to))
                .map(|from| containers[from].ip)
                .collect();
            if from.is_empty() {
                continue;
            }
            let script = container::drop_from(&table, &from, loss);
            match container::filter(container, &table, &script).await {
                Ok(done) => filtered.push(done),
                Err(error) => {
                    // Undo what was made, so that a half-made fault does not stay.
                    let heal = Heal::Unfilter(filtered);
                    if let Err(undo) = Box::pin(self.heal(heal)).await {
                        tracing::error!(%undo, "cannot undo a half-made network fault");
                    }
                    return Err(error);
                }
            }
        }
        Ok((target, Heal::Unfilter(filtered)))
    }

    /// Undoes a fault.
    pub(super) async fn heal(&mut self, heal: Heal) -> anyhow::Result<()> {
        match heal {
            Heal::All(heals) => {
                for heal in heals {
                    Box::pin(self.heal(heal)).await?;
                }
            }
            Heal::ComposeStart(service) => {
                self.compose(&["start", &service]).await?;
            }
            Heal::ComposeUnpause(service) => {
                self.compose(&["unpause", &service]).await?;
            }
            Heal::Reconnect {
                container,
                network,
                service,
            } => {
                command(
                    "docker",
                    &[
                        "network", "connect", "--alias", &service, &network, &container,
                    ]
                    .map(str::to_owned),
                )
                .await?;
            }
            Heal::Unfilter(filtered) => {
                let mut first_error = None;
                for one in &filtered {
                    if let Err(error) = container::unfilter(one, &self.network).await {
                        first_error.get_or_insert(error);
                    }
                }
                if let Some(error) = first_error {
                    return Err(error);
                }
            }
            Heal::Unshape(shaped) => container::unshape(&shaped, &self.network).await?,
            Heal::ReplaceMetad(id) => {
                let addresses = self.metad_addresses().await;
                let started = std::time::Instant::now();
                let target = metad::peers_decided(&addresses, id).await;
                metad::replace(&addresses, id).await?;
                let address = addresses
                    .get(&id)
                    .ok_or_else(|| anyhow::anyhow!("metad {id} has no address"))?;
                let ms = metad::wait_caught_up(address, id, target, started).await?;
                self.metad_catch_ups_ms.push(ms);
            }
            Heal::TrueClock { name, drift } => {
                clock::true_clock(self.clocks.as_ref(), &name, drift).await?;
            }
            other => anyhow::bail!("{other:?} does not heal a Docker fault"),
        }
        Ok(())
    }
}

/// Whether a process whose environment is `environ` (NUL-separated) and whose
/// memory map is `maps` has libfaketime loaded and reads `/clocks/<service>`.
fn clock_file_is_own(service: &str, environ: &[u8], maps: &str) -> anyhow::Result<()> {
    let want = format!("FAKETIME_TIMESTAMP_FILE=/clocks/{service}");
    let file = environ
        .split(|b| *b == 0)
        .map(String::from_utf8_lossy)
        .find(|v| v.starts_with("FAKETIME_TIMESTAMP_FILE="));
    anyhow::ensure!(
        file.as_deref() == Some(want.as_str()),
        "{service} must read its clock from /clocks/{service}, but its environment has {}",
        file.as_deref().unwrap_or("no FAKETIME_TIMESTAMP_FILE")
    );
    anyhow::ensure!(
        maps.contains("libfaketime"),
        "{service} does not run under libfaketime (LD_PRELOAD did not take)"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_clock_fault_needs_the_service_on_its_own_clock_file_under_libfaketime() {
        let maps = "7f00 r-xp /faketime/libfaketimeMT.so.1\n";
        let own = b"PATH=/bin\0FAKETIME_TIMESTAMP_FILE=/clocks/router-2\0";
        assert!(clock_file_is_own("router-2", own, maps).is_ok());
        let other = b"FAKETIME_TIMESTAMP_FILE=/clocks/router\0";
        let error = clock_file_is_own("router-2", other, maps).expect_err("another's file");
        assert!(error.to_string().contains("/clocks/router"), "{error}");
        assert!(clock_file_is_own("router-2", b"PATH=/bin\0", maps).is_err());
        assert!(clock_file_is_own("router-2", own, "7f00 libc.so.6\n").is_err());
    }
}
