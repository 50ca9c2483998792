//! Faults: kill, terminate, pause, wipe and partition storage nodes, kill the
//! metadata leader and the active recovery controller, split the network,
//! move clocks, and break two things at once — on local processes, Docker
//! Compose containers, or Kubernetes pods.

use std::str::FromStr;

use kvorum_protocol::NodeId;
use rand::rngs::StdRng;

/// A kind of fault.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
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
    /// SIGKILL a metadata replica chosen at random, restart it when healed.
    KillMetad,
    /// SIGKILL the active recovery controller, restart it when healed.
    KillRecovery,
    /// Cut a storage node off from every other process (a container off the
    /// network, on Docker); let it back when healed.
    PartitionStorage,
    /// SIGKILL a storage node and delete its data directory, keeping its
    /// checkpoints; restart it when healed (it restores the newest checkpoint
    /// and comes back as a new incarnation). Local processes only.
    WipeStorage,
    /// As [`FaultKind::WipeStorage`], deleting its checkpoints too: the disk is
    /// lost for good and the node catches up from nothing.
    WipeStorageAll,
    /// Split the whole cluster in two (each kind of process dealt out between
    /// the sides, a router on each side when there are two); the larger side
    /// holds a majority of metadata replicas and storage nodes.
    PartitionHalves,
    /// Two sides that cannot see each other, and a metadata replica and a
    /// storage node that see both (Jepsen's bridge).
    PartitionBridge,
    /// A one-way cut: what a storage node or the metadata leader sends is
    /// lost, while what is sent to it arrives.
    PartitionOneWay,
    /// Drop 30% of the packets on every link of a storage node.
    LossyLinks,
    /// Slow what a storage node sends: `tc netem` delay (150 ± 50 ms) on its
    /// container's link, or, on a kernel without netem, a `tbf` rate limit of
    /// 1 Mbit/s. Docker only: local processes share loopback, which must not
    /// be shaped.
    SlowLinks,
    /// Step the wall clock of a router, metadata replica, detector or recovery
    /// controller forward by 10 to 90 seconds; step it back when healed.
    ClockForward,
    /// As [`FaultKind::ClockForward`], backwards.
    ClockBack,
    /// Make such a clock run fast or slow (±0.5 to 1 s per second) for the
    /// fault's duration; step it back to the true time when healed.
    ClockDrift,
    /// SIGKILL two storage nodes at once: the keys they both hold lose their
    /// quorum, and writes to them must fail or end unknown, never wrongly.
    KillTwoStorage,
    /// SIGKILL a storage node and the metadata leader at once.
    KillStorageAndMetadLeader,
    /// SIGSTOP one of the routers (mid-way through whatever writes it is
    /// coordinating), SIGCONT it when healed.
    PauseRouter,
    /// Add a storage node and decommission another, so that partitions move
    /// while the faults after it go on; the cluster keeps its new shape.
    ChurnStorage,
    /// SIGKILL a metadata replica and delete its store, then start it again
    /// empty: a new life, refused a vote; when healed, `metad replace` makes
    /// it a member again and it catches up. Local processes only.
    WipeMetad,
}

impl FaultKind {
    /// Every kind, in the order a periodic schedule cycles through them.
    pub const ALL: [FaultKind; 22] = [
        FaultKind::KillStorage,
        FaultKind::KillMetadLeader,
        FaultKind::PauseStorage,
        FaultKind::TermStorage,
        FaultKind::KillRecovery,
        FaultKind::PartitionStorage,
        FaultKind::WipeStorage,
        FaultKind::WipeStorageAll,
        FaultKind::PartitionHalves,
        FaultKind::PartitionBridge,
        FaultKind::PartitionOneWay,
        FaultKind::LossyLinks,
        FaultKind::ClockForward,
        FaultKind::ClockBack,
        FaultKind::ClockDrift,
        FaultKind::KillTwoStorage,
        FaultKind::KillStorageAndMetadLeader,
        FaultKind::PauseRouter,
        FaultKind::ChurnStorage,
        FaultKind::WipeMetad,
        FaultKind::KillMetad,
        FaultKind::SlowLinks,
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
            FaultKind::PartitionHalves => "partition-halves",
            FaultKind::PartitionBridge => "partition-bridge",
            FaultKind::PartitionOneWay => "partition-one-way",
            FaultKind::LossyLinks => "lossy-links",
            FaultKind::SlowLinks => "slow-links",
            FaultKind::ClockForward => "clock-forward",
            FaultKind::ClockBack => "clock-back",
            FaultKind::ClockDrift => "clock-drift",
            FaultKind::KillTwoStorage => "kill-two-storage",
            FaultKind::KillStorageAndMetadLeader => "kill-storage-and-metad-leader",
            FaultKind::PauseRouter => "pause-router",
            FaultKind::ChurnStorage => "churn-storage",
            FaultKind::WipeMetad => "wipe-metad",
            FaultKind::KillMetad => "kill-metad",
        }
    }

    /// Whether the fault stops a process (a kill, SIGTERM or pod deletion), as
    /// opposed to pausing it, cutting it off or moving its clock.
    pub fn is_kill(self) -> bool {
        matches!(
            self,
            FaultKind::KillStorage
                | FaultKind::TermStorage
                | FaultKind::KillMetadLeader
                | FaultKind::KillRecovery
                | FaultKind::WipeStorage
                | FaultKind::WipeStorageAll
                | FaultKind::KillTwoStorage
                | FaultKind::KillStorageAndMetadLeader
                | FaultKind::WipeMetad
                | FaultKind::KillMetad
        )
    }

    /// Whether the fault cuts or degrades network links.
    pub fn is_network(self) -> bool {
        matches!(
            self,
            FaultKind::PartitionStorage
                | FaultKind::PartitionHalves
                | FaultKind::PartitionBridge
                | FaultKind::PartitionOneWay
                | FaultKind::LossyLinks
                | FaultKind::SlowLinks
        )
    }

    /// Whether the fault moves a process's wall clock.
    pub fn is_clock(self) -> bool {
        matches!(
            self,
            FaultKind::ClockForward | FaultKind::ClockBack | FaultKind::ClockDrift
        )
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
#[derive(Debug)]
pub enum Heal {
    /// Start a storage node again.
    RestartStorage(NodeId),
    /// SIGCONT a storage node.
    Resume(NodeId),
    /// Start a metadata replica again.
    RestartMetad(u64),
    /// Make the metadata replica that lost its store a member again
    /// (`POST /v1/members/{id}/replace`) and wait until it hears its leader.
    ReplaceMetad(u64),
    /// Start a recovery controller again.
    RestartRecovery(usize),
    /// SIGCONT a router (by its index).
    ResumeRouter(usize),
    /// Let the links of one firewall fault through again.
    Restore(String),
    /// Put a process's wall clock back to the true time, stopping its drift if it drifts.
    TrueClock {
        /// The process.
        name: String,
        /// The task that moves a drifting clock.
        drift: Option<tokio::task::JoinHandle<()>>,
    },
    /// Heal each, in order.
    All(Vec<Heal>),
    /// Nothing to undo: the fault changed the cluster for good.
    Nothing,
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
    /// Delete the nftables table of one fault from each container's network
    /// namespace (those whose process has not changed since).
    Unfilter(Vec<container::Filtered>),
    /// Take the traffic shaping off a container's link.
    Unshape(container::Filtered),
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

mod clock;
mod container;
mod docker;
mod k8s;
mod metad;
mod process;

pub use docker::DockerNemesis;
pub use k8s::K8sNemesis;
pub use process::ProcessNemesis;
