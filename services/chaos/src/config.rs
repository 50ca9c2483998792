//! The chaos tool's flags (every one with an environment variable).

use std::path::PathBuf;

use clap::Parser;
use kvorum_telemetry::LogArgs;

use crate::nemesis::FaultKind;

/// Runs a recorded workload against a local Kvorum cluster while a nemesis
/// kills, stops and pauses its processes, then heals everything, checks the
/// history and writes a report.
#[derive(Debug, Clone, Parser)]
#[command(name = "kvorum-chaos", version)]
pub struct ChaosConfig {
    /// Seconds the workload runs.
    #[arg(long, env = "KVORUM_CHAOS_DURATION_S", default_value_t = 150, value_parser = clap::value_parser!(u64).range(5..=86_400))]
    pub duration_s: u64,

    /// Concurrent clients.
    #[arg(long, env = "KVORUM_CHAOS_CLIENTS", default_value_t = 8, value_parser = clap::value_parser!(u64).range(1..=1024))]
    pub clients: u64,

    /// Operations per second over all clients.
    #[arg(long, env = "KVORUM_CHAOS_RATE", default_value_t = 60.0)]
    pub rate: f64,

    /// Keys of the strong keyspace.
    #[arg(long, env = "KVORUM_CHAOS_STRONG_KEYS", default_value_t = 12, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    pub strong_keys: u64,

    /// Keys of the eventual keyspace.
    #[arg(long, env = "KVORUM_CHAOS_EVENTUAL_KEYS", default_value_t = 24, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    pub eventual_keys: u64,

    /// Share of operations on the eventual keyspace (0 to 1).
    #[arg(long, env = "KVORUM_CHAOS_EVENTUAL_SHARE", default_value_t = 0.3)]
    pub eventual_share: f64,

    /// Faults the periodic schedule cycles through, comma-separated.
    #[arg(
        long,
        env = "KVORUM_CHAOS_FAULTS",
        value_delimiter = ',',
        default_value = "kill-storage,kill-metad-leader,pause-storage,term-storage,kill-storage,kill-recovery"
    )]
    pub faults: Vec<FaultKind>,

    /// Seconds of undisturbed traffic before the first fault.
    #[arg(long, env = "KVORUM_CHAOS_QUIET_START_S", default_value_t = 8, value_parser = clap::value_parser!(u64).range(0..=3600))]
    pub quiet_start_s: u64,

    /// Seconds between the starts of two faults.
    #[arg(long, env = "KVORUM_CHAOS_FAULT_INTERVAL_S", default_value_t = 7, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub fault_interval_s: u64,

    /// Seconds a fault lasts before it is healed.
    #[arg(long, env = "KVORUM_CHAOS_FAULT_HOLD_S", default_value_t = 3, value_parser = clap::value_parser!(u64).range(0..=3600))]
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

    /// Start the router with its deliberate test-only bug (strong writes acknowledged
    /// by one replica), to see the checkers catch it.
    #[arg(long, env = "KVORUM_CHAOS_INJECT_BUG", default_value_t = false)]
    pub inject_bug: bool,

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
        if self.faults.is_empty() {
            return Err("--faults needs at least one fault".to_owned());
        }
        Ok(())
    }
}
