//! Faults: kill, terminate, pause and partition storage nodes, kill the
//! metadata leader and the active recovery controller — on local processes,
//! Docker Compose containers, or Kubernetes pods.

use std::str::FromStr;

use kvorum_protocol::NodeId;
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

mod docker;
mod k8s;
mod process;

pub use docker::DockerNemesis;
pub use k8s::K8sNemesis;
pub use process::ProcessNemesis;
