//! The detector's configuration: every flag also readable from the environment.

use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;
use kvorum_metad_client::MetadAddresses;
use kvorum_telemetry::LogArgs;

/// `kvorum-detector`: the phi accrual failure detector.
#[derive(Debug, Clone, Parser)]
#[command(name = "kvorum-detector", version, about)]
pub struct DetectorConfig {
    /// The metadata service's replicas, comma-separated `host:port`.
    #[arg(long, env = "KVORUM_METAD", value_parser = kvorum_metad_client::parse_addresses)]
    pub metad: MetadAddresses,

    /// Address to serve /v1/suspicion, /metrics and the probes on.
    #[arg(long, env = "KVORUM_LISTEN", default_value = "127.0.0.1:7300")]
    pub listen: SocketAddr,

    /// The `host:port` routers reach this detector at (default: --listen, which must then not be a wildcard address).
    #[arg(long, env = "KVORUM_ADVERTISE_ADDRESS")]
    pub advertise_address: Option<String>,

    /// Milliseconds between two heartbeats of one process.
    #[arg(long, env = "KVORUM_HEARTBEAT_INTERVAL_MS", default_value_t = 500, value_parser = clap::value_parser!(u64).range(10..=60_000))]
    pub heartbeat_interval_ms: u64,

    /// The phi at which a process becomes suspect.
    #[arg(long, env = "KVORUM_PHI_THRESHOLD", default_value_t = 8.0, value_parser = parse_threshold)]
    pub phi_threshold: f64,

    /// Milliseconds a process stays suspect before it is declared down.
    #[arg(long, env = "KVORUM_DOWN_GRACE_MS", default_value_t = 1_500, value_parser = clap::value_parser!(u64).range(0..=600_000))]
    pub down_grace_ms: u64,

    /// Milliseconds the active detector's lease lasts; a standby takes over within this after the active one dies.
    #[arg(long, env = "KVORUM_LEASE_MS", default_value_t = 3_000, value_parser = clap::value_parser!(u64).range(100..=600_000))]
    pub lease_ms: u64,

    /// Logging.
    #[command(flatten)]
    pub log: LogArgs,
}

fn parse_threshold(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(value) if value.is_finite() && value > 0.0 => Ok(value),
        _ => Err(format!("{text:?} is not a positive number")),
    }
}

impl DetectorConfig {
    /// Checks what depends on several flags.
    pub fn validate(&self) -> Result<(), String> {
        self.advertised().map(|_| ())
    }

    /// The address this detector names as the lease holder.
    pub fn advertised(&self) -> Result<String, String> {
        kvorum_protocol::cluster::advertised_address(self.listen, self.advertise_address.as_deref())
    }

    /// The heartbeat interval.
    pub fn interval(&self) -> Duration {
        Duration::from_millis(self.heartbeat_interval_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<DetectorConfig, String> {
        DetectorConfig::try_parse_from(
            std::iter::once("kvorum-detector").chain(args.iter().copied()),
        )
        .map_err(|e| e.to_string())
    }

    #[test]
    fn every_flag_can_be_set_from_the_environment() {
        kvorum_telemetry::assert_every_flag_has_an_env(
            &<DetectorConfig as clap::CommandFactory>::command(),
        );
    }

    #[test]
    fn defaults_follow_the_design_and_bad_flags_are_named() {
        let config = parse(&["--metad", "127.0.0.1:9001"]).expect("defaults");
        assert_eq!(config.heartbeat_interval_ms, 500);
        assert_eq!(config.phi_threshold, 8.0);
        assert_eq!(config.advertised(), Ok("127.0.0.1:7300".to_owned()));
        for (args, flag) in [
            (
                &["--metad", "m:1", "--phi-threshold", "0"][..],
                "--phi-threshold",
            ),
            (
                &["--metad", "m:1", "--phi-threshold", "NaN"][..],
                "--phi-threshold",
            ),
            (
                &["--metad", "m:1", "--heartbeat-interval-ms", "1"][..],
                "--heartbeat-interval-ms",
            ),
            (&["--metad", "m:1", "--lease-ms", "soon"][..], "--lease-ms"),
            (&[][..], "--metad"),
        ] {
            let error = parse(args).expect_err("refused");
            assert!(error.contains(flag), "{args:?}: {error}");
        }
        let wildcard = parse(&["--metad", "m:1", "--listen", "0.0.0.0:7300"]).expect("parses");
        assert!(
            wildcard
                .validate()
                .is_err_and(|e| e.contains("--advertise-address"))
        );
    }
}
