//! The router's configuration: every flag also readable from the environment.

use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;
use kvorum_telemetry::LogArgs;

/// `kvorum-router`: the client REST API.
#[derive(Debug, Clone, Parser)]
#[command(name = "kvorum-router", version, about)]
pub struct RouterConfig {
    /// Address to serve the client API on.
    #[arg(long, env = "KVORUM_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,

    /// The metadata service's replicas, comma-separated `host:port`; the router follows the partition map and keyspaces there.
    #[arg(long, env = "KVORUM_METAD", value_parser = kvorum_metad_client::parse_addresses)]
    pub metad: kvorum_metad_client::MetadAddresses,

    /// Largest value a client may PUT, in bytes (at most 16 MiB, which fits a storage node's request limit once encoded).
    #[arg(long, env = "KVORUM_MAX_VALUE_BYTES", default_value_t = 1 << 20, value_parser = clap::value_parser!(u64).range(1..=(16 << 20)))]
    pub max_value_bytes: u64,

    /// Whether eventual writes leave durable hints for replicas that miss them (`false` leaves them to anti-entropy alone).
    #[arg(long, env = "KVORUM_HINTED_HANDOFF", default_value_t = true, action = clap::ArgAction::Set)]
    pub hinted_handoff: bool,

    /// A deliberate bug, for testing the chaos checkers only: strong writes are
    /// committed to one replica and acknowledged from there. Loses writes.
    #[arg(long, env = "KVORUM_TEST_ONLY_ACK_BEFORE_QUORUM", default_value_t = false, action = clap::ArgAction::Set)]
    pub test_only_ack_before_quorum: bool,

    /// A deliberate bug, for testing the chaos checkers only: strong reads are
    /// answered from the first replica that replies, without a quorum. Reads
    /// stale values when that replica is cut off from the writes.
    #[arg(long, env = "KVORUM_TEST_ONLY_READ_FIRST_REPLY", default_value_t = false, action = clap::ArgAction::Set)]
    pub test_only_read_first_reply: bool,

    /// A deliberate fault, for testing tombstone collection only: each commit
    /// of a strong value (not a tombstone) is held this many milliseconds
    /// after the commit deadline's checks, as a network that delivers it later
    /// than the storage nodes' `--tombstone-grace-ms` would (0: off).
    #[arg(long, env = "KVORUM_TEST_ONLY_DELAY_VALUE_COMMITS_MS", default_value_t = 0, value_parser = clap::value_parser!(u64).range(0..=600_000))]
    pub test_only_delay_value_commits_ms: u64,

    /// Deadline of one client request, in milliseconds; past it the client gets 504.
    #[arg(long, env = "KVORUM_REQUEST_TIMEOUT_MS", default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..=600_000))]
    pub request_timeout_ms: u64,

    /// Deadline of one call to a replica, in milliseconds.
    #[arg(long, env = "KVORUM_REPLICA_TIMEOUT_MS", default_value_t = 2_000, value_parser = clap::value_parser!(u64).range(1..=600_000))]
    pub replica_timeout_ms: u64,

    /// Extra attempts of a replica call that failed to connect.
    #[arg(long, env = "KVORUM_REPLICA_RETRIES", default_value_t = 1, value_parser = clap::value_parser!(u32).range(0..=10))]
    pub replica_retries: u32,

    /// Logging.
    #[command(flatten)]
    pub log: LogArgs,
}

/// A configuration that cannot work.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The client deadline leaves no room for the replica calls it waits on.
    #[error(
        "--request-timeout-ms {request} must exceed twice --replica-timeout-ms {replica} times (--replica-retries {retries} + 1), so that a write's two phases can finish and report their outcome"
    )]
    Timeouts {
        /// The client deadline.
        request: u64,
        /// The replica call deadline.
        replica: u64,
        /// Retries per replica call.
        retries: u32,
    },
}

impl RouterConfig {
    /// Checks the settings that depend on each other.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let phases = 2 * self.replica_timeout_ms * u64::from(self.replica_retries + 1);
        if self.request_timeout_ms <= phases {
            return Err(ConfigError::Timeouts {
                request: self.request_timeout_ms,
                replica: self.replica_timeout_ms,
                retries: self.replica_retries,
            });
        }
        Ok(())
    }

    /// The client request deadline.
    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.request_timeout_ms)
    }

    /// The replica call deadline.
    pub fn replica_timeout(&self) -> Duration {
        Duration::from_millis(self.replica_timeout_ms)
    }

    /// How long after a strong write began its commits may still be sent: the
    /// client deadline less one commit's calls, so that every commit is
    /// delivered (or abandoned) within `--request-timeout-ms` of its write's
    /// start. Storage nodes' `--tombstone-grace-ms` must exceed that.
    pub fn commit_deadline(&self) -> Duration {
        let commit = self.replica_timeout_ms * u64::from(self.replica_retries + 1);
        Duration::from_millis(self.request_timeout_ms.saturating_sub(commit))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<RouterConfig, String> {
        RouterConfig::try_parse_from(std::iter::once("kvorum-router").chain(args.iter().copied()))
            .map_err(|e| e.to_string())
    }

    #[test]
    fn every_flag_can_be_set_from_the_environment() {
        kvorum_telemetry::assert_every_flag_has_an_env(
            &<RouterConfig as clap::CommandFactory>::command(),
        );
    }

    #[test]
    fn each_bad_flag_is_named_in_the_error() {
        let cases: &[(&[&str], &str)] = &[
            (&[], "--metad"),
            (&["--metad", ""], "--metad"),
            (&["--metad", "127.0.0.1"], "--metad"),
            (&["--metad", "m:1", "--listen", "8080"], "--listen"),
            (
                &["--metad", "m:1", "--max-value-bytes", "0"],
                "--max-value-bytes",
            ),
            (
                &["--metad", "m:1", "--request-timeout-ms", "soon"],
                "--request-timeout-ms",
            ),
            (
                &["--metad", "m:1", "--replica-timeout-ms", "0"],
                "--replica-timeout-ms",
            ),
            (
                &["--metad", "m:1", "--replica-retries", "11"],
                "--replica-retries",
            ),
        ];
        for (args, flag) in cases {
            let error = parse(args).expect_err("must be refused");
            assert!(error.contains(flag), "{args:?}: {error}");
        }
    }

    #[test]
    fn a_client_deadline_too_short_for_two_phases_is_refused() {
        let config = parse(&[
            "--metad",
            "m:1",
            "--request-timeout-ms",
            "4000",
            "--replica-timeout-ms",
            "1000",
            "--replica-retries",
            "1",
        ])
        .expect("flags parse");
        let error = config
            .validate()
            .expect_err("4000 <= 2 * 1000 * 2")
            .to_string();
        assert!(error.contains("--request-timeout-ms 4000"), "{error}");
        assert!(
            parse(&["--metad", "m:1"])
                .expect("defaults")
                .validate()
                .is_ok()
        );
    }
}
