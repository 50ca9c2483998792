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
    /// This node's id in the cluster (1 or more, or `from-hostname`: a StatefulSet pod's ordinal + 1); its data directory is bound to it.
    #[arg(long, env = "KVORUM_NODE_ID", value_parser = kvorum_telemetry::parse_member_id)]
    pub node_id: u64,

    /// Address to serve the internal API on.
    #[arg(long, env = "KVORUM_LISTEN", default_value = "127.0.0.1:7001")]
    pub listen: SocketAddr,

    /// The metadata service's replicas, comma-separated `host:port`; the node registers there and follows the partition map.
    #[arg(long, env = "KVORUM_METAD", value_parser = kvorum_metad_client::parse_addresses)]
    pub metad: kvorum_metad_client::MetadAddresses,

    /// The `host:port` other services reach this node at (default: --listen, which must then not be a wildcard address).
    #[arg(long, env = "KVORUM_ADVERTISE_ADDRESS")]
    pub advertise_address: Option<String>,

    /// Register as a warm standby rather than a node that holds replicas.
    #[arg(long, env = "KVORUM_STANDBY")]
    pub standby: bool,

    /// Directory holding the node's database.
    #[arg(long, env = "KVORUM_DATA_DIR", value_parser = NonEmptyStringValueParser::new().map(PathBuf::from))]
    pub data_dir: PathBuf,

    /// Directory for checkpoints, beside --data-dir on the same volume (default: <data-dir>-checkpoints); Compose and Kubernetes use /data/checkpoints on the data volume.
    #[arg(long, env = "KVORUM_CHECKPOINT_DIR")]
    pub checkpoint_dir: Option<PathBuf>,

    /// Milliseconds between two periodic checkpoints (0: only on request).
    #[arg(long, env = "KVORUM_CHECKPOINT_INTERVAL_MS", default_value_t = 60_000, value_parser = clap::value_parser!(u64).range(0..=86_400_000))]
    pub checkpoint_interval_ms: u64,

    /// Checkpoints kept; older ones are deleted.
    #[arg(long, env = "KVORUM_CHECKPOINT_RETENTION", default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..=1000))]
    pub checkpoint_retention: u64,

    /// Milliseconds between two passes that hand hinted writes to replicas that are back.
    #[arg(long, env = "KVORUM_HINT_REPLAY_INTERVAL_MS", default_value_t = 1_000, value_parser = clap::value_parser!(u64).range(10..=3_600_000))]
    pub hint_replay_interval_ms: u64,

    /// Milliseconds between two anti-entropy rounds with every peer (0: never).
    #[arg(long, env = "KVORUM_ANTI_ENTROPY_INTERVAL_MS", default_value_t = 30_000, value_parser = clap::value_parser!(u64).range(0..=86_400_000))]
    pub anti_entropy_interval_ms: u64,

    /// Most records anti-entropy exchanges per second.
    #[arg(long, env = "KVORUM_ANTI_ENTROPY_KEYS_PER_SECOND", default_value_t = 5_000, value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
    pub anti_entropy_keys_per_second: u64,

    /// Milliseconds a tombstone is kept at least, even once every replica holds it (in-flight writes older than this must not exist).
    #[arg(long, env = "KVORUM_TOMBSTONE_GRACE_MS", default_value_t = 60_000, value_parser = clap::value_parser!(u64).range(0..=31_536_000_000))]
    pub tombstone_grace_ms: u64,

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
    /// The address this node registers under, checked.
    pub fn advertised(&self) -> Result<String, String> {
        kvorum_protocol::cluster::advertised_address(self.listen, self.advertise_address.as_deref())
    }

    /// Where checkpoints go.
    pub fn checkpoint_dir(&self) -> PathBuf {
        self.checkpoint_dir.clone().unwrap_or_else(|| {
            let mut name = self.data_dir.as_os_str().to_owned();
            name.push("-checkpoints");
            PathBuf::from(name)
        })
    }

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
        let config = parse(&[
            "--node-id",
            "3",
            "--data-dir",
            "/tmp/x",
            "--metad",
            "127.0.0.1:9001",
        ])
        .expect("valid");
        assert_eq!(config.node(), NodeId(3));
        assert_eq!(config.max_batch, 1024);
        assert_eq!(config.advertised(), Ok("127.0.0.1:7001".to_owned()));
    }

    #[test]
    fn the_advertised_address_must_be_reachable() {
        let base = ["--node-id", "3", "--data-dir", "d", "--metad", "m:1"];
        let with = |extra: &[&str]| {
            let args: Vec<&str> = base.iter().chain(extra).copied().collect();
            parse(&args).expect("parses").advertised()
        };
        assert!(
            with(&["--listen", "0.0.0.0:7001"]).is_err_and(|e| e.contains("--advertise-address"))
        );
        assert_eq!(
            with(&[
                "--listen",
                "0.0.0.0:7001",
                "--advertise-address",
                "storage-3.kvorum:7001"
            ]),
            Ok("storage-3.kvorum:7001".to_owned())
        );
        assert!(with(&["--advertise-address", "storage-3"]).is_err());
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
            (&["--node-id", "1", "--data-dir", "d"], "--metad"),
            (
                &["--node-id", "1", "--data-dir", "d", "--metad", "x"],
                "--metad",
            ),
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
