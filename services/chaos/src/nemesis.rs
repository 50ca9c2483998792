//! Faults: kill, terminate, pause and partition storage nodes, kill the
//! metadata leader and the active recovery controller — on local processes,
//! Docker Compose containers, or Kubernetes pods.

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
    /// Cut a storage container off the network, reconnect it when healed (Docker only).
    PartitionStorage,
    /// SIGKILL a storage node and delete its data directory, keeping its
    /// checkpoints; restart it when healed (it restores the newest checkpoint
    /// and comes back as a new incarnation). Local processes only.
    WipeStorage,
    /// As [`FaultKind::WipeStorage`], deleting its checkpoints too: the disk is
    /// lost for good and the node catches up from nothing.
    WipeStorageAll,
}

impl FaultKind {
    /// Every kind, in the order a periodic schedule cycles through them.
    pub const ALL: [FaultKind; 8] = [
        FaultKind::KillStorage,
        FaultKind::KillMetadLeader,
        FaultKind::PauseStorage,
        FaultKind::TermStorage,
        FaultKind::KillRecovery,
        FaultKind::PartitionStorage,
        FaultKind::WipeStorage,
        FaultKind::WipeStorageAll,
    ];

    /// Its name, as on the command line.
    pub fn name(self) -> &'static str {
        match self {
            FaultKind::KillStorage => "kill-storage",
            FaultKind::TermStorage => "term-storage",
            FaultKind::PauseStorage => "pause-storage",
            FaultKind::KillMetadLeader => "kill-metad-leader",
            FaultKind::KillRecovery => "kill-recovery",
            FaultKind::PartitionStorage => "partition-storage",
            FaultKind::WipeStorage => "wipe-storage",
            FaultKind::WipeStorageAll => "wipe-storage-all",
        }
    }

    /// Whether the fault stops a process (a kill, SIGTERM or pod deletion), as opposed to pausing or cutting it off.
    pub fn is_kill(self) -> bool {
        !matches!(self, FaultKind::PauseStorage | FaultKind::PartitionStorage)
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
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Heal {
    /// Start a storage node again.
    RestartStorage(NodeId),
    /// SIGCONT a storage node.
    Resume(NodeId),
    /// Start a metadata replica again.
    RestartMetad(u64),
    /// Start a recovery controller again.
    RestartRecovery(usize),
    /// `docker-compose start` a service.
    ComposeStart(String),
    /// `docker-compose unpause` a service.
    ComposeUnpause(String),
    /// Reconnect a container to a network under its service's name.
    Reconnect {
        /// The container id.
        container: String,
        /// The network.
        network: String,
        /// The service name, restored as its DNS alias.
        service: String,
    },
    /// Wait until a pod Kubernetes recreates is ready again.
    PodReady(String),
}

/// Where faults go.
#[derive(Debug)]
pub enum Nemesis {
    /// Local processes.
    Process(Box<ProcessNemesis>),
    /// Docker Compose containers.
    Docker(DockerNemesis),
    /// Kubernetes pods.
    K8s(K8sNemesis),
}

impl Nemesis {
    /// Injects one fault; returns what it hit and how to heal it.
    pub async fn inject(
        &mut self,
        kind: FaultKind,
        rng: &mut StdRng,
        router: &str,
    ) -> anyhow::Result<(String, Heal)> {
        match self {
            Nemesis::Process(nemesis) => nemesis.inject(kind, rng).await,
            Nemesis::Docker(nemesis) => nemesis.inject(kind, rng, router).await,
            Nemesis::K8s(nemesis) => nemesis.inject(kind, rng, router).await,
        }
    }

    /// Undoes a fault.
    pub async fn heal(&mut self, heal: Heal) -> anyhow::Result<()> {
        match self {
            Nemesis::Process(nemesis) => nemesis.heal(heal).await,
            Nemesis::Docker(nemesis) => nemesis.heal(heal).await,
            Nemesis::K8s(nemesis) => nemesis.heal(heal).await,
        }
    }
}

/// The metadata leader's id as the router reports it.
async fn leader_from_router(router: &str) -> anyhow::Result<u64> {
    let view: kvorum_protocol::ClusterView = reqwest::get(format!("{router}/v1/cluster"))
        .await?
        .error_for_status()?
        .json()
        .await?;
    view.metad
        .leader
        .map(|id| id.0)
        .ok_or_else(|| anyhow::anyhow!("the router knows no metadata leader"))
}

/// Runs a command, failing with its stderr.
async fn command(program: &str, args: &[String]) -> anyhow::Result<String> {
    let output = tokio::process::Command::new(program)
        .args(args)
        .kill_on_drop(true)
        .output()
        .await
        .map_err(|e| anyhow::anyhow!("cannot run {program}: {e}"))?;
    anyhow::ensure!(
        output.status.success(),
        "{program} {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr).trim()
    );
    Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
}

/// Faults on a Docker Compose cluster, through `docker-compose` and `docker`.
#[derive(Debug)]
pub struct DockerNemesis {
    /// `docker-compose` and its project and file flags.
    pub compose: Vec<String>,
    /// The project's network, where partitions cut containers off.
    pub network: String,
    /// Storage services, `storage-1` ...
    pub storage: Vec<String>,
}

impl DockerNemesis {
    async fn compose(&self, args: &[&str]) -> anyhow::Result<String> {
        let mut all: Vec<String> = self.compose[1..].to_vec();
        all.extend(args.iter().map(|a| (*a).to_owned()));
        command(&self.compose[0], &all).await
    }

    async fn inject(
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
            FaultKind::KillMetadLeader => {
                let service = format!("metad-{}", leader_from_router(router).await?);
                self.compose(&["kill", &service]).await?;
                Ok((format!("{service} (leader)"), Heal::ComposeStart(service)))
            }
            FaultKind::KillRecovery => {
                self.compose(&["kill", "recovery"]).await?;
                Ok((
                    "recovery".to_owned(),
                    Heal::ComposeStart("recovery".to_owned()),
                ))
            }
            FaultKind::WipeStorage | FaultKind::WipeStorageAll => {
                anyhow::bail!("{} needs the process backend", kind.name())
            }
        }
    }

    async fn heal(&mut self, heal: Heal) -> anyhow::Result<()> {
        match heal {
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
            other => anyhow::bail!("{other:?} does not heal a Docker fault"),
        }
        Ok(())
    }
}

/// Faults on a Kubernetes deployment, through `kubectl`: pods are deleted, as a
/// user's chaos test does, and Kubernetes recreates them.
#[derive(Debug)]
pub struct K8sNemesis {
    /// The namespace.
    pub namespace: String,
    /// Delete with `--grace-period=0 --force`.
    pub force: bool,
    /// Storage pods, `kvorum-storage-0` ...
    pub storage_pods: Vec<String>,
}

impl K8sNemesis {
    async fn kubectl(&self, args: &[&str]) -> anyhow::Result<String> {
        let mut all = vec!["--namespace".to_owned(), self.namespace.clone()];
        all.extend(args.iter().map(|a| (*a).to_owned()));
        command("kubectl", &all).await
    }

    async fn delete(&self, target: &str) -> anyhow::Result<()> {
        let mut args = vec!["delete", target, "--wait=false"];
        if self.force {
            args.extend(["--grace-period=0", "--force"]);
        }
        self.kubectl(&args).await.map(drop)
    }

    async fn inject(
        &mut self,
        kind: FaultKind,
        rng: &mut StdRng,
        router: &str,
    ) -> anyhow::Result<(String, Heal)> {
        let pod = match kind {
            FaultKind::KillStorage | FaultKind::TermStorage => {
                self.storage_pods[rng.random_range(0..self.storage_pods.len())].clone()
            }
            // StatefulSet ordinals start at 0, metad ids at 1.
            FaultKind::KillMetadLeader => {
                format!(
                    "kvorum-metad-{}",
                    leader_from_router(router).await?.saturating_sub(1)
                )
            }
            FaultKind::KillRecovery => {
                let pods = self
                    .kubectl(&[
                        "get",
                        "pods",
                        "-l",
                        "app.kubernetes.io/name=kvorum-recovery",
                        "-o",
                        "name",
                    ])
                    .await?;
                let pods: Vec<&str> = pods.lines().collect();
                anyhow::ensure!(!pods.is_empty(), "no recovery controller pods");
                pods[rng.random_range(0..pods.len())]
                    .trim_start_matches("pod/")
                    .to_owned()
            }
            FaultKind::PauseStorage
            | FaultKind::PartitionStorage
            | FaultKind::WipeStorage
            | FaultKind::WipeStorageAll => {
                anyhow::bail!("{} is not available on Kubernetes", kind.name())
            }
        };
        self.delete(&format!("pod/{pod}")).await?;
        Ok((format!("pod {pod}"), Heal::PodReady(pod)))
    }

    async fn heal(&mut self, heal: Heal) -> anyhow::Result<()> {
        match heal {
            Heal::PodReady(pod) => {
                // A Deployment's replacement has a new name: wait for the whole set instead.
                let target = if pod.starts_with("kvorum-recovery") {
                    "deployment/kvorum-recovery".to_owned()
                } else {
                    format!("pod/{pod}")
                };
                if target.starts_with("deployment") {
                    self.kubectl(&["rollout", "status", &target, "--timeout=180s"])
                        .await?;
                } else {
                    // The recreated pod may not exist yet; wait until it does and is ready.
                    let deadline = std::time::Instant::now() + Duration::from_secs(180);
                    loop {
                        match self
                            .kubectl(&["wait", "--for=condition=Ready", &target, "--timeout=10s"])
                            .await
                        {
                            Ok(_) => break,
                            Err(error) if std::time::Instant::now() >= deadline => {
                                return Err(error);
                            }
                            Err(_) => tokio::time::sleep(Duration::from_secs(1)).await,
                        }
                    }
                }
                Ok(())
            }
            other => anyhow::bail!("{other:?} does not heal a Kubernetes fault"),
        }
    }
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
