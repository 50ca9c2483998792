//! The storage node's configuration: every flag also readable from the environment.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use clap::builder::{NonEmptyStringValueParser, TypedValueParser};
use kvorum_protocol::NodeId;
use kvorum_telemetry::LogArgs;

/// `kvorum-storage`: holds partition replicas in a redb database.
#[derive(Debug, Clone, Parser)]
#[command(name = "kvorum-storage", version, about)]
pub struct StorageConfig {
    /// This node's id in the cluster (1 or more); its data directory is bound to it.
    #[arg(long, env = "KVORUM_NODE_ID", value_parser = clap::value_parser!(u64).range(1..))]
    pub node_id: u64,

    /// Address to serve the internal API on.
    #[arg(long, env = "KVORUM_LISTEN", default_value = "127.0.0.1:7001")]
    pub listen: SocketAddr,

    /// Directory holding the node's database.
    #[arg(long, env = "KVORUM_DATA_DIR", value_parser = NonEmptyStringValueParser::new().map(PathBuf::from))]
    pub data_dir: PathBuf,

    /// Most write ops one group-commit transaction takes.
    #[arg(long, env = "KVORUM_MAX_BATCH", default_value_t = 1024, value_parser = clap::value_parser!(u64).range(1..=65_536))]
    pub max_batch: u64,

    /// Deadline of one internal request, in milliseconds.
    #[arg(long, env = "KVORUM_REQUEST_TIMEOUT_MS", default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..=600_000))]
    pub request_timeout_ms: u64,

    /// Largest internal request body, in bytes (partition imports are the large ones).
    #[arg(long, env = "KVORUM_MAX_REQUEST_BYTES", default_value_t = 64 << 20, value_parser = clap::value_parser!(u64).range(1024..=(1 << 32)))]
    pub max_request_bytes: u64,

    /// Logging.
    #[command(flatten)]
    pub log: LogArgs,
}

impl StorageConfig {
    /// The node id as its newtype.
    pub fn node(&self) -> NodeId {
        NodeId(self.node_id)
    }

    /// The request deadline.
    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.request_timeout_ms)
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    fn parse(args: &[&str]) -> Result<StorageConfig, String> {
        StorageConfig::try_parse_from(std::iter::once("kvorum-storage").chain(args.iter().copied()))
            .map_err(|e| e.to_string())
    }

    #[test]
    fn sound_flags_parse() {
        let config = parse(&["--node-id", "3", "--data-dir", "/tmp/x"]).expect("valid");
        assert_eq!(config.node(), NodeId(3));
        assert_eq!(config.max_batch, 1024);
    }

    #[test]
    fn every_flag_can_be_set_from_the_environment() {
        kvorum_telemetry::assert_every_flag_has_an_env(
            &<StorageConfig as clap::CommandFactory>::command(),
        );
    }

    #[test]
    fn each_bad_flag_is_named_in_the_error() {
        let cases: &[(&[&str], &str)] = &[
            (&["--node-id", "0", "--data-dir", "d"], "--node-id"),
            (&["--node-id", "x", "--data-dir", "d"], "--node-id"),
            (&["--node-id", "1", "--data-dir", ""], "--data-dir"),
            (
                &["--node-id", "1", "--data-dir", "d", "--listen", "nowhere"],
                "--listen",
            ),
            (
                &["--node-id", "1", "--data-dir", "d", "--max-batch", "0"],
                "--max-batch",
            ),
            (
                &[
                    "--node-id",
                    "1",
                    "--data-dir",
                    "d",
                    "--request-timeout-ms",
                    "0",
                ],
                "--request-timeout-ms",
            ),
            (
                &["--node-id", "1", "--data-dir", "d", "--log-format", "xml"],
                "--log-format",
            ),
            (&["--data-dir", "d"], "--node-id"),
        ];
        for (args, flag) in cases {
            let error = parse(args).expect_err("must be refused");
            assert!(error.contains(flag), "{args:?}: {error}");
        }
    }
}
