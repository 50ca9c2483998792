//! The router's configuration: every flag also readable from the environment.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use clap::builder::{NonEmptyStringValueParser, TypedValueParser};
use kvorum_protocol::{Membership, MembershipError};
use kvorum_telemetry::LogArgs;

/// `kvorum-router`: the client REST API.
#[derive(Debug, Clone, Parser)]
#[command(name = "kvorum-router", version, about)]
pub struct RouterConfig {
    /// Address to serve the client API on.
    #[arg(long, env = "KVORUM_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,

    /// JSON file describing the cluster: partitions, replication_factor and storage nodes.
    #[arg(long, env = "KVORUM_MEMBERSHIP", value_parser = NonEmptyStringValueParser::new().map(PathBuf::from))]
    pub membership: PathBuf,

    /// Largest value a client may PUT, in bytes (at most 16 MiB, which fits a storage node's request limit once encoded).
    #[arg(long, env = "KVORUM_MAX_VALUE_BYTES", default_value_t = 1 << 20, value_parser = clap::value_parser!(u64).range(1..=(16 << 20)))]
    pub max_value_bytes: u64,

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
    /// The membership file cannot be read.
    #[error("--membership {path}: cannot read: {source}")]
    ReadMembership {
        /// The file.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The membership file is not the expected JSON.
    #[error("--membership {path}: not a valid membership document: {source}")]
    ParseMembership {
        /// The file.
        path: String,
        /// The cause.
        source: serde_json::Error,
    },
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
    /// The membership breaks a rule.
    #[error("--membership {path}: {source}")]
    InvalidMembership {
        /// The file.
        path: String,
        /// The rule broken.
        source: MembershipError,
    },
}

impl RouterConfig {
    /// Checks the settings that depend on each other, and reads the membership file.
    pub fn validate(&self) -> Result<Membership, ConfigError> {
        let phases = 2 * self.replica_timeout_ms * u64::from(self.replica_retries + 1);
        if self.request_timeout_ms <= phases {
            return Err(ConfigError::Timeouts {
                request: self.request_timeout_ms,
                replica: self.replica_timeout_ms,
                retries: self.replica_retries,
            });
        }
        self.load_membership()
    }

    /// Reads and validates the membership file.
    pub fn load_membership(&self) -> Result<Membership, ConfigError> {
        let path = self.membership.display().to_string();
        let text = std::fs::read_to_string(&self.membership).map_err(|source| {
            ConfigError::ReadMembership {
                path: path.clone(),
                source,
            }
        })?;
        let membership: Membership =
            serde_json::from_str(&text).map_err(|source| ConfigError::ParseMembership {
                path: path.clone(),
                source,
            })?;
        membership
            .validate()
            .map_err(|source| ConfigError::InvalidMembership { path, source })?;
        Ok(membership)
    }

    /// The client request deadline.
    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.request_timeout_ms)
    }

    /// The replica call deadline.
    pub fn replica_timeout(&self) -> Duration {
        Duration::from_millis(self.replica_timeout_ms)
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

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
            (&[], "--membership"),
            (&["--membership", ""], "--membership"),
            (&["--membership", "m", "--listen", "8080"], "--listen"),
            (
                &["--membership", "m", "--max-value-bytes", "0"],
                "--max-value-bytes",
            ),
            (
                &["--membership", "m", "--request-timeout-ms", "soon"],
                "--request-timeout-ms",
            ),
            (
                &["--membership", "m", "--replica-timeout-ms", "0"],
                "--replica-timeout-ms",
            ),
            (
                &["--membership", "m", "--replica-retries", "11"],
                "--replica-retries",
            ),
        ];
        for (args, flag) in cases {
            let error = parse(args).expect_err("must be refused");
            assert!(error.contains(flag), "{args:?}: {error}");
        }
    }

    #[test]
    fn a_bad_membership_file_is_named_with_its_fault() {
        let cases = [
            ("not json", "not a valid membership document"),
            (
                r#"{"partitions":8,"replication_factor":3,"nodes":[]}"#,
                "needs at least that many storage nodes",
            ),
            (
                r#"{"partitions":0,"replication_factor":1,"nodes":[{"id":1,"address":"127.0.0.1:1"}]}"#,
                "partitions must be",
            ),
        ];
        for (text, expected) in cases {
            let mut file = tempfile::NamedTempFile::new().expect("temp file");
            file.write_all(text.as_bytes()).expect("write");
            let path = file.path().display().to_string();
            let config = parse(&["--membership", &path]).expect("flags parse");
            let error = config.load_membership().expect_err("refused").to_string();
            assert!(
                error.starts_with("--membership ") && error.contains(expected),
                "{error}"
            );
        }
        let missing =
            parse(&["--membership", "/nonexistent/membership.json"]).expect("flags parse");
        assert!(
            missing
                .load_membership()
                .expect_err("missing")
                .to_string()
                .contains("cannot read")
        );
    }
}
