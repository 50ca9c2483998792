//! The chaos tool's flags (every one with an environment variable).

use std::path::PathBuf;

use clap::Parser;
use kvorum_telemetry::LogArgs;

use crate::nemesis::FaultKind;

/// Where the cluster runs, and so how faults are made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Backend {
    /// A local cluster this tool starts as processes (SIGKILL, SIGTERM, SIGSTOP).
    Process,
    /// A running Docker Compose cluster (`docker-compose kill/stop/pause`, `docker network disconnect`).
    Docker,
    /// A running Kubernetes deployment (`kubectl delete pod`).
    K8s,
}

impl Backend {
    /// Its name, as on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Backend::Process => "process",
            Backend::Docker => "docker",
            Backend::K8s => "k8s",
        }
    }
}

/// A deliberate bug of the router, for testing the checkers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum InjectedBug {
    /// Strong writes are committed to one replica and acknowledged from there.
    AckBeforeQuorum,
    /// Strong reads answer from the first replica that replies.
    ReadFirstReply,
}

impl InjectedBug {
    /// The router's environment variable that turns it on.
    pub fn router_env(self) -> &'static str {
        match self {
            InjectedBug::AckBeforeQuorum => "KVORUM_TEST_ONLY_ACK_BEFORE_QUORUM",
            InjectedBug::ReadFirstReply => "KVORUM_TEST_ONLY_READ_FIRST_REPLY",
        }
    }
}

/// Runs a recorded workload against a Kvorum cluster while a nemesis kills,
/// stops, pauses and partitions its parts, then heals everything, checks the
/// history and writes a report.
#[derive(Debug, Clone, Parser)]
#[command(name = "kvorum-chaos", version)]
pub struct ChaosConfig {
    /// Where the cluster runs: `process` starts one here; `docker` and `k8s` attach to a running one.
    #[arg(long, env = "KVORUM_CHAOS_BACKEND", value_enum, default_value_t = Backend::Process)]
    pub backend: Backend,

    /// The routers' URLs (docker and k8s backends), comma-separated, such as
    /// `http://127.0.0.1:8080`; the clients are spread over them. On Docker
    /// they are the Compose services `router`, `router-2`, ... in that order.
    #[arg(long, env = "KVORUM_CHAOS_ROUTER", value_delimiter = ',')]
    pub router: Vec<String>,

    /// Docker backend: the Compose project name.
    #[arg(long, env = "KVORUM_CHAOS_COMPOSE_PROJECT")]
    pub compose_project: Option<String>,

    /// Docker backend: the Compose files, comma-separated.
    #[arg(
        long,
        env = "KVORUM_CHAOS_COMPOSE_FILES",
        value_delimiter = ',',
        default_value = "deploy/docker-compose.yml"
    )]
    pub compose_files: Vec<PathBuf>,

    /// Kubernetes backend: the namespace.
    #[arg(long, env = "KVORUM_CHAOS_NAMESPACE", default_value = "kvorum")]
    pub namespace: String,

    /// Kubernetes backend: delete pods with `--grace-period=0 --force`.
    #[arg(long, env = "KVORUM_CHAOS_FORCE_DELETE", default_value_t = false)]
    pub force_delete: bool,

    /// Docker and k8s backends: storage nodes in the cluster.
    #[arg(long, env = "KVORUM_CHAOS_STORAGE_NODES", default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=1000))]
    pub storage_nodes: u64,

    /// How this tool reaches storage nodes whose registered address it cannot
    /// (for the convergence check): `registered=reachable` pairs, comma-separated,
    /// such as `storage-1:7001=127.0.0.1:49153`.
    #[arg(long, env = "KVORUM_CHAOS_ADDRESS_MAP", value_delimiter = ',')]
    pub address_map: Vec<String>,

    /// Seconds the workload runs.
    #[arg(long, env = "KVORUM_CHAOS_DURATION_S", default_value_t = 150, value_parser = clap::value_parser!(u64).range(5..=86_400))]
    pub duration_s: u64,

    /// Concurrent clients.
    #[arg(long, env = "KVORUM_CHAOS_CLIENTS", default_value_t = 16, value_parser = clap::value_parser!(u64).range(1..=1024))]
    pub clients: u64,

    /// Operations per second over all clients.
    #[arg(long, env = "KVORUM_CHAOS_RATE", default_value_t = 160.0)]
    pub rate: f64,

    /// Keys of the strong keyspace.
    #[arg(long, env = "KVORUM_CHAOS_STRONG_KEYS", default_value_t = 12, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    pub strong_keys: u64,

    /// Keys of the eventual keyspace.
    #[arg(long, env = "KVORUM_CHAOS_EVENTUAL_KEYS", default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    pub eventual_keys: u64,

    /// Share of operations on the eventual keyspace (0 to 1).
    #[arg(long, env = "KVORUM_CHAOS_EVENTUAL_SHARE", default_value_t = 0.3)]
    pub eventual_share: f64,

    /// Share of strong operations that write a key of their own, delete it
    /// and leave it, so that the storage nodes collect its tombstone while
    /// the faults go on (0 to 1).
    #[arg(long, env = "KVORUM_CHAOS_RETIRED_SHARE", default_value_t = 0.04)]
    pub retired_share: f64,

    /// Share of writes with a large value (1 KiB up to --max-value-bytes; the others are a few bytes).
    #[arg(long, env = "KVORUM_CHAOS_LARGE_VALUE_SHARE", default_value_t = 0.02)]
    pub large_value_share: f64,

    /// The largest value a write carries, in bytes (the router takes up to 1 MiB by default).
    #[arg(long, env = "KVORUM_CHAOS_MAX_VALUE_BYTES", default_value_t = 1 << 20, value_parser = clap::value_parser!(u64).range(1024..=(16 << 20)))]
    pub max_value_bytes: u64,

    /// Faults the periodic schedule cycles through, comma-separated.
    #[arg(
        long,
        env = "KVORUM_CHAOS_FAULTS",
        value_delimiter = ',',
        default_value = "partition-halves,kill-storage,clock-forward,wipe-storage,kill-two-storage,partition-one-way,kill-metad-leader,pause-router,clock-back,wipe-storage-all,partition-bridge,pause-storage,kill-storage-and-metad-leader,lossy-links,clock-drift,term-storage,partition-storage,churn-storage,kill-recovery,wipe-metad,kill-metad"
    )]
    pub faults: Vec<FaultKind>,

    /// Seconds of undisturbed traffic before the first fault.
    #[arg(long, env = "KVORUM_CHAOS_QUIET_START_S", default_value_t = 8, value_parser = clap::value_parser!(u64).range(0..=3600))]
    pub quiet_start_s: u64,

    /// Seconds between the starts of two faults.
    #[arg(long, env = "KVORUM_CHAOS_FAULT_INTERVAL_S", default_value_t = 4, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub fault_interval_s: u64,

    /// Seconds a fault lasts before it is healed.
    #[arg(long, env = "KVORUM_CHAOS_FAULT_HOLD_S", default_value_t = 2, value_parser = clap::value_parser!(u64).range(0..=3600))]
    pub fault_hold_s: u64,

    /// A scripted scenario instead of the periodic schedule: a JSON file
    /// `{"faults":[{"at_s":10,"fault":"kill-metad-leader","hold_s":3},...]}`.
    #[arg(long, env = "KVORUM_CHAOS_SCENARIO")]
    pub scenario: Option<PathBuf>,

    /// Successful operations needed before the first fault for the run to count.
    #[arg(long, env = "KVORUM_CHAOS_MIN_OK_BEFORE_FAULT", default_value_t = 100)]
    pub min_ok_before_fault: usize,

    /// Seconds allowed, after the last heal, for every partition to be back to its replication factor.
    #[arg(long, env = "KVORUM_CHAOS_RECOVERY_BOUND_S", default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub recovery_bound_s: u64,

    /// Seeds the workload's and the nemesis's choices (random when absent; printed either way).
    #[arg(long, env = "KVORUM_CHAOS_SEED")]
    pub seed: Option<u64>,

    /// Where the report goes (report.json, report.html, history.jsonl, the cluster's data and logs).
    #[arg(long, env = "KVORUM_CHAOS_OUT", default_value = "target/chaos/latest")]
    pub out: PathBuf,

    /// Directory of the kvorum-* binaries (default: next to this one).
    #[arg(long, env = "KVORUM_CHAOS_BIN_DIR")]
    pub bin_dir: Option<PathBuf>,

    /// Link of a trace in the report; `{trace_id}` is replaced.
    #[arg(
        long,
        env = "KVORUM_CHAOS_TRACE_URL",
        default_value = "http://localhost:16686/trace/{trace_id}"
    )]
    pub trace_url: String,

    /// Process backend: routers to start; the clients are spread over them (a
    /// network split puts one on each side when there are two).
    #[arg(long, env = "KVORUM_CHAOS_ROUTERS", default_value_t = 2, value_parser = clap::value_parser!(u64).range(1..=16))]
    pub routers: u64,

    /// Process backend: failure detectors to start (one holds the lease; 2 is
    /// the Kubernetes layout).
    #[arg(long, env = "KVORUM_CHAOS_DETECTORS", default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=8))]
    pub detectors: u64,

    /// Docker backend: the host directory the Compose files mount at `/clocks`
    /// in every service but the storage nodes, which run under libfaketime
    /// reading their offsets from `/clocks/<service>`; clock faults need it.
    #[arg(long, env = "KVORUM_CHAOS_CLOCK_DIR")]
    pub clock_dir: Option<PathBuf>,

    /// The libfaketime library clock faults run processes with (on Docker,
    /// the host's copy the Compose files mount).
    #[arg(long, env = "KVORUM_CHAOS_LIBFAKETIME", default_value = kvorum_launcher::DEFAULT_LIBFAKETIME)]
    pub libfaketime: PathBuf,

    /// Start the routers with one of their deliberate test-only bugs, to see
    /// the checkers catch it: `ack-before-quorum` (strong writes acknowledged
    /// by one replica; the default when the flag has no value) or
    /// `read-first-reply` (strong reads answered by one replica, which only a
    /// partition or a lagging replica reveals).
    #[arg(long, env = "KVORUM_CHAOS_INJECT_BUG", value_enum, num_args = 0..=1, default_missing_value = "ack-before-quorum")]
    pub inject_bug: Option<InjectedBug>,

    /// Logging.
    #[command(flatten)]
    pub log: LogArgs,
}

impl ChaosConfig {
    /// Checks what clap cannot.
    pub fn validate(&self) -> Result<(), String> {
        if !(self.rate.is_finite() && self.rate > 0.0 && self.rate <= 100_000.0) {
            return Err(format!(
                "--rate must be above 0 and at most 100000, not {}",
                self.rate
            ));
        }
        if !(0.0..=1.0).contains(&self.eventual_share) {
            return Err(format!(
                "--eventual-share must be between 0 and 1, not {}",
                self.eventual_share
            ));
        }
        if !(0.0..=1.0).contains(&self.retired_share) {
            return Err(format!(
                "--retired-share must be between 0 and 1, not {}",
                self.retired_share
            ));
        }
        if !(0.0..=1.0).contains(&self.large_value_share) {
            return Err(format!(
                "--large-value-share must be between 0 and 1, not {}",
                self.large_value_share
            ));
        }
        if self.faults.is_empty() {
            return Err("--faults needs at least one fault".to_owned());
        }
        if self.backend != Backend::Process && self.router.is_empty() {
            return Err(format!("--backend {} needs --router", self.backend.name()));
        }
        if self.backend == Backend::Docker && self.compose_project.is_none() {
            return Err("--backend docker needs --compose-project".to_owned());
        }
        let available = |fault: FaultKind| match self.backend {
            // Loopback is shared by the whole host: it must not be shaped.
            Backend::Process => fault != FaultKind::SlowLinks,
            // A node added by the tool would need a service the Compose files lack.
            Backend::Docker => {
                fault != FaultKind::ChurnStorage && (!fault.is_clock() || self.clock_dir.is_some())
            }
            Backend::K8s => matches!(
                fault,
                FaultKind::KillStorage
                    | FaultKind::TermStorage
                    | FaultKind::KillMetadLeader
                    | FaultKind::KillRecovery
            ),
        };
        if let Some(fault) = self.faults.iter().find(|f| !available(**f)) {
            let hint = if self.backend == Backend::Docker && fault.is_clock() {
                " without --clock-dir"
            } else {
                ""
            };
            return Err(format!(
                "fault {} is not available with --backend {}{hint}",
                fault.name(),
                self.backend.name()
            ));
        }
        if let Some(bad) = self.address_map.iter().find(|pair| {
            pair.split_once('=')
                .is_none_or(|(from, to)| from.is_empty() || to.is_empty())
        }) {
            return Err(format!(
                "--address-map entry {bad:?} is not registered=reachable"
            ));
        }
        if self.inject_bug.is_some() && self.backend != Backend::Process {
            return Err(
                "--inject-bug needs --backend process (it starts the router itself)".to_owned(),
            );
        }
        Ok(())
    }

    /// The address this tool uses for a node registered at `address`.
    pub fn reachable(&self, address: &str) -> String {
        self.address_map
            .iter()
            .filter_map(|pair| pair.split_once('='))
            .find(|(from, _)| *from == address)
            .map_or_else(|| address.to_owned(), |(_, to)| to.to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<ChaosConfig, String> {
        let config = ChaosConfig::try_parse_from(
            std::iter::once("kvorum-chaos").chain(args.iter().copied()),
        )
        .map_err(|e| e.to_string())?;
        config.validate().map(|()| config)
    }

    #[test]
    fn every_flag_can_be_set_from_the_environment() {
        kvorum_telemetry::assert_every_flag_has_an_env(
            &<ChaosConfig as clap::CommandFactory>::command(),
        );
    }

    #[test]
    fn backends_refuse_what_they_cannot_do() {
        assert!(parse(&[]).is_ok());
        let every: Vec<&str> = FaultKind::ALL
            .iter()
            .filter(|k| **k != FaultKind::SlowLinks)
            .map(|k| k.name())
            .collect();
        assert!(
            parse(&["--faults", &every.join(",")]).is_ok(),
            "local processes take every fault but slow links"
        );
        let docker = [
            "--backend",
            "docker",
            "--router",
            "http://x,http://y",
            "--compose-project",
            "p",
        ];
        let on_docker: Vec<&str> = FaultKind::ALL
            .iter()
            .filter(|k| **k != FaultKind::ChurnStorage)
            .map(|k| k.name())
            .collect();
        let with = |extra: &[&str]| {
            let mut args = docker.to_vec();
            args.extend_from_slice(extra);
            parse(&args)
        };
        let joined = on_docker.join(",");
        let parsed = with(&["--clock-dir", "/tmp/c", "--faults", &joined]).expect("docker");
        assert_eq!(parsed.router, ["http://x", "http://y"]);
        for (args, reason) in [
            (
                &[
                    "--backend",
                    "docker",
                    "--router",
                    "http://x",
                    "--compose-project",
                    "p",
                    "--faults",
                    "clock-forward",
                ][..],
                "not available with --backend docker without --clock-dir",
            ),
            (
                &[
                    "--backend",
                    "docker",
                    "--router",
                    "http://x",
                    "--compose-project",
                    "p",
                    "--faults",
                    "churn-storage",
                ][..],
                "not available with --backend docker",
            ),
            (
                &["--faults", "slow-links"][..],
                "not available with --backend process",
            ),
            (&["--backend", "docker"][..], "needs --router"),
            (
                &["--backend", "docker", "--router", "http://x"][..],
                "needs --compose-project",
            ),
            (
                &[
                    "--backend",
                    "k8s",
                    "--router",
                    "http://x",
                    "--faults",
                    "pause-storage",
                ][..],
                "not available",
            ),
            (&["--rate", "0"][..], "--rate"),
            (&["--eventual-share", "2"][..], "--eventual-share"),
            (
                &["--address-map", "storage-1:7001"][..],
                "registered=reachable",
            ),
            (&["--faults", "nuke"][..], "unknown fault"),
        ] {
            let error = parse(args).expect_err(&format!("{args:?}"));
            assert!(error.contains(reason), "{args:?}: {error}");
        }
        let mapped = parse(&["--address-map", "storage-1:7001=127.0.0.1:5"]).expect("valid");
        assert_eq!(mapped.reachable("storage-1:7001"), "127.0.0.1:5");
        assert_eq!(mapped.reachable("storage-2:7001"), "storage-2:7001");
        assert_eq!(
            parse(&["--inject-bug"]).expect("valid").inject_bug,
            Some(InjectedBug::AckBeforeQuorum)
        );
        assert_eq!(
            parse(&["--inject-bug", "read-first-reply"])
                .expect("valid")
                .inject_bug,
            Some(InjectedBug::ReadFirstReply)
        );
    }
}
