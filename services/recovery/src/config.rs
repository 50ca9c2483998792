//! The recovery controller's configuration: every flag also readable from the environment.

use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;
use kvorum_metad_client::MetadAddresses;
use kvorum_telemetry::LogArgs;

/// `kvorum-recovery`: the recovery controller.
#[derive(Debug, Clone, Parser)]
#[command(name = "kvorum-recovery", version, about)]
pub struct RecoveryConfig {
    /// The metadata service's replicas, comma-separated `host:port`.
    #[arg(long, env = "KVORUM_METAD", value_parser = kvorum_metad_client::parse_addresses)]
    pub metad: MetadAddresses,

    /// Address to serve /v1/moves, /metrics and the probes on.
    #[arg(long, env = "KVORUM_LISTEN", default_value = "127.0.0.1:7400")]
    pub listen: SocketAddr,

    /// The `host:port` routers reach this controller at (default: --listen, which must then not be a wildcard address).
    #[arg(long, env = "KVORUM_ADVERTISE_ADDRESS")]
    pub advertise_address: Option<String>,

    /// How long a node must stay down before its replicas are replaced, in milliseconds.
    #[arg(long, env = "KVORUM_REPLACEMENT_DELAY_MS", default_value_t = 15_000, value_parser = clap::value_parser!(u64).range(0..=86_400_000))]
    pub replacement_delay_ms: u64,

    /// Moves under way at once, at most.
    #[arg(long, env = "KVORUM_MAX_CONCURRENT_MOVES", default_value_t = 4, value_parser = clap::value_parser!(u64).range(1..=256))]
    pub max_concurrent_moves: u64,

    /// Records per streamed chunk.
    #[arg(long, env = "KVORUM_CHUNK_RECORDS", default_value_t = 512, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    pub chunk_records: u64,

    /// Copy rate limit of one move, in bytes per second.
    #[arg(long, env = "KVORUM_TRANSFER_BYTES_PER_SEC", default_value_t = 32 << 20, value_parser = clap::value_parser!(u64).range(1024..))]
    pub transfer_bytes_per_sec: u64,

    /// Milliseconds the active controller's lease lasts; a standby takes over within this after it dies.
    #[arg(long, env = "KVORUM_LEASE_MS", default_value_t = 5_000, value_parser = clap::value_parser!(u64).range(100..=600_000))]
    pub lease_ms: u64,

    /// Logging.
    #[command(flatten)]
    pub log: LogArgs,
}

impl RecoveryConfig {
    /// Checks what depends on several flags.
    pub fn validate(&self) -> Result<(), String> {
        self.advertised().map(|_| ())
    }

    /// The address this controller names as the lease holder.
    pub fn advertised(&self) -> Result<String, String> {
        kvorum_protocol::cluster::advertised_address(self.listen, self.advertise_address.as_deref())
    }

    /// The replacement delay.
    pub fn replacement_delay(&self) -> Duration {
        Duration::from_millis(self.replacement_delay_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<RecoveryConfig, String> {
        RecoveryConfig::try_parse_from(
            std::iter::once("kvorum-recovery").chain(args.iter().copied()),
        )
        .map_err(|e| e.to_string())
    }

    #[test]
    fn every_flag_can_be_set_from_the_environment() {
        kvorum_telemetry::assert_every_flag_has_an_env(
            &<RecoveryConfig as clap::CommandFactory>::command(),
        );
    }

    #[test]
    fn defaults_follow_the_design_and_bad_flags_are_named() {
        let config = parse(&["--metad", "127.0.0.1:9001"]).expect("defaults");
        assert_eq!(config.replacement_delay(), Duration::from_secs(15));
        for (args, flag) in [
            (
                &["--metad", "m:1", "--replacement-delay-ms", "soon"][..],
                "--replacement-delay-ms",
            ),
            (
                &["--metad", "m:1", "--max-concurrent-moves", "0"][..],
                "--max-concurrent-moves",
            ),
            (
                &["--metad", "m:1", "--transfer-bytes-per-sec", "10"][..],
                "--transfer-bytes-per-sec",
            ),
            (
                &["--metad", "m:1", "--chunk-records", "0"][..],
                "--chunk-records",
            ),
            (&[][..], "--metad"),
        ] {
            let error = parse(args).expect_err("refused");
            assert!(error.contains(flag), "{args:?}: {error}");
        }
        let wildcard = parse(&["--metad", "m:1", "--listen", "0.0.0.0:7400"]).expect("parses");
        assert!(
            wildcard
                .validate()
                .is_err_and(|e| e.contains("--advertise-address"))
        );
    }
}
