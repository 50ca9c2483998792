//! The metadata service's configuration: every flag also readable from the environment.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use clap::builder::{NonEmptyStringValueParser, TypedValueParser};
use kvorum_protocol::ClusterSettings;
use kvorum_telemetry::LogArgs;

/// `kvorum-metad`: one replica of the metadata service.
#[derive(Debug, Clone, Parser)]
#[command(name = "kvorum-metad", version, about)]
pub struct MetadConfig {
    /// This replica's id; it must appear in --peers (`from-hostname`: a StatefulSet pod's ordinal + 1).
    #[arg(long, env = "KVORUM_METAD_ID", value_parser = kvorum_telemetry::parse_member_id)]
    pub id: u64,

    /// Every replica of the group, this one included: `1=127.0.0.1:9001,2=metad-2:9001,...`.
    #[arg(long, env = "KVORUM_METAD_PEERS", value_parser = parse_peers)]
    pub peers: Peers,

    /// Address to serve on.
    #[arg(long, env = "KVORUM_LISTEN", default_value = "127.0.0.1:9001")]
    pub listen: SocketAddr,

    /// Directory holding the replica's Paxos store.
    #[arg(long, env = "KVORUM_DATA_DIR", value_parser = NonEmptyStringValueParser::new().map(PathBuf::from))]
    pub data_dir: PathBuf,

    /// Length of one consensus tick, in milliseconds (elections take 10 to 20 ticks).
    #[arg(long, env = "KVORUM_METAD_TICK_MS", default_value_t = 50, value_parser = clap::value_parser!(u64).range(5..=10_000))]
    pub tick_ms: u64,

    /// How long a client request waits for its command to be decided, in milliseconds.
    #[arg(long, env = "KVORUM_REQUEST_TIMEOUT_MS", default_value_t = 5_000, value_parser = clap::value_parser!(u64).range(1..=600_000))]
    pub request_timeout_ms: u64,

    /// Partitions keys hash into, fixed when the cluster is first initialised.
    #[arg(long, env = "KVORUM_PARTITIONS", default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=i64::from(kvorum_protocol::cluster::MAX_PARTITIONS)))]
    pub partitions: u32,

    /// Replicas per partition, fixed when the cluster is first initialised.
    #[arg(long, env = "KVORUM_REPLICATION_FACTOR", default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..=64))]
    pub replication_factor: u64,

    /// Storage nodes that must register before the partition map is made (default: the replication factor).
    #[arg(long, env = "KVORUM_BOOTSTRAP_NODES", value_parser = clap::value_parser!(u64).range(1..=4096))]
    pub bootstrap_nodes: Option<u64>,

    /// Largest message between replicas, in bytes: the peer route's body limit.
    /// Longer messages (a big snapshot) travel in chunks of this size, and a
    /// transfer cut short resumes where it stopped.
    #[arg(long, env = "KVORUM_METAD_MAX_MESSAGE_BYTES", default_value_t = 4 << 20, value_parser = clap::value_parser!(u64).range(4096..=(1 << 30)))]
    pub max_message_bytes: u64,

    /// Log entries applied between two compactions (each writes a snapshot).
    #[arg(long, env = "KVORUM_METAD_COMPACT_EVERY", default_value_t = 1_000, value_parser = clap::value_parser!(u64).range(10..=10_000_000))]
    pub compact_every: u64,

    /// Logging.
    #[command(flatten)]
    pub log: LogArgs,
}

/// The group's replicas, by id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peers(pub BTreeMap<u64, String>);

fn parse_peers(text: &str) -> Result<Peers, String> {
    let mut peers = BTreeMap::new();
    for part in text.split(',').filter(|p| !p.trim().is_empty()) {
        let (id, address) = part
            .split_once('=')
            .ok_or_else(|| format!("{part:?} is not id=host:port"))?;
        let id: u64 = id
            .trim()
            .parse()
            .map_err(|_| format!("{id:?} is not a replica id"))?;
        let address = address.trim();
        if !kvorum_protocol::cluster::is_host_port(address) {
            return Err(format!("{address:?} is not host:port"));
        }
        let address = address.to_owned();
        if id == 0 || peers.insert(id, address).is_some() {
            return Err(format!("replica id {id} is zero or appears twice"));
        }
    }
    if peers.is_empty() {
        return Err("name at least one replica".to_owned());
    }
    Ok(Peers(peers))
}

impl MetadConfig {
    /// Checks what depends on several flags.
    pub fn validate(&self) -> Result<(), String> {
        if !self.peers.0.contains_key(&self.id) {
            return Err(format!("--id {} does not appear in --peers", self.id));
        }
        self.cluster_settings()
            .validate()
            .map_err(|e| format!("--partitions/--replication-factor/--bootstrap-nodes: {e}"))
    }

    /// The cluster shape this replica proposes if the cluster is not initialised yet.
    pub fn cluster_settings(&self) -> ClusterSettings {
        let replication_factor = usize::try_from(self.replication_factor).unwrap_or(usize::MAX);
        ClusterSettings {
            partitions: self.partitions,
            replication_factor,
            bootstrap_nodes: self.bootstrap_nodes.map_or(replication_factor, |n| {
                usize::try_from(n).unwrap_or(usize::MAX)
            }),
        }
    }

    /// One consensus tick.
    pub fn tick(&self) -> Duration {
        Duration::from_millis(self.tick_ms)
    }

    /// The client request deadline.
    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.request_timeout_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<MetadConfig, String> {
        MetadConfig::try_parse_from(std::iter::once("kvorum-metad").chain(args.iter().copied()))
            .map_err(|e| e.to_string())
    }

    #[test]
    fn every_flag_can_be_set_from_the_environment() {
        kvorum_telemetry::assert_every_flag_has_an_env(
            &<MetadConfig as clap::CommandFactory>::command(),
        );
    }

    #[test]
    fn bad_peers_and_ids_are_named() {
        for (peers, expected) in [
            ("1=x", "--peers"),
            ("1=host:0", "--peers"),
            ("1:127.0.0.1:1", "--peers"),
            ("1=127.0.0.1:1,1=127.0.0.1:2", "--peers"),
            ("", "--peers"),
        ] {
            let error =
                parse(&["--id", "1", "--peers", peers, "--data-dir", "d"]).expect_err("refused");
            assert!(error.contains(expected), "{peers}: {error}");
        }
        let config =
            parse(&["--id", "4", "--peers", "1=127.0.0.1:1", "--data-dir", "d"]).expect("parses");
        assert!(
            config
                .validate()
                .expect_err("not a member")
                .contains("--id 4")
        );
    }

    #[test]
    fn cluster_settings_default_sensibly_and_bad_ones_are_named() {
        let base = ["--id", "1", "--peers", "1=127.0.0.1:1", "--data-dir", "d"];
        let config = parse(&base).expect("parses");
        assert_eq!(
            config.cluster_settings(),
            ClusterSettings {
                partitions: 64,
                replication_factor: 3,
                bootstrap_nodes: 3
            }
        );
        for (extra, flag) in [
            (&["--partitions", "0"][..], "--partitions"),
            (&["--partitions", "70000"][..], "--partitions"),
            (&["--replication-factor", "0"][..], "--replication-factor"),
            (&["--bootstrap-nodes", "none"][..], "--bootstrap-nodes"),
        ] {
            let args: Vec<&str> = base.iter().chain(extra).copied().collect();
            let error = parse(&args).expect_err("refused");
            assert!(error.contains(flag), "{extra:?}: {error}");
        }
        let args: Vec<&str> = base
            .iter()
            .chain(&["--replication-factor", "5", "--bootstrap-nodes", "3"])
            .copied()
            .collect();
        let error = parse(&args)
            .expect("parses")
            .validate()
            .expect_err("too few");
        assert!(error.contains("bootstrap_nodes 3"), "{error}");
    }
}
