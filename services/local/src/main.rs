//! `kvorum-local`: starts a local cluster (metadata replicas, storage nodes and a router) and stops it on Ctrl-C.

use std::path::PathBuf;

use clap::Parser;
use clap::builder::{NonEmptyStringValueParser, TypedValueParser};
use kvorum_launcher::{ClusterSpec, LocalCluster, default_bin_dir};
use kvorum_telemetry::LogArgs;

/// Runs a whole Kvorum cluster on 127.0.0.1 with its data in one directory.
#[derive(Debug, Parser)]
#[command(name = "kvorum-local", version, about)]
struct LocalConfig {
    /// Storage nodes to run.
    #[arg(long, env = "KVORUM_NODES", default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=64))]
    nodes: u64,

    /// Warm standby storage nodes, promoted by the recovery controller into a failed node's place.
    #[arg(long, env = "KVORUM_STANDBYS", default_value_t = 0, value_parser = clap::value_parser!(u64).range(0..=16))]
    standbys: u64,

    /// Replicas per partition.
    #[arg(long, env = "KVORUM_REPLICATION_FACTOR", default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..=64))]
    replication_factor: u64,

    /// Partitions keys hash into, fixed for the life of the data directory.
    #[arg(long, env = "KVORUM_PARTITIONS", default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=65_536))]
    partitions: u32,

    /// The router's port on 127.0.0.1.
    #[arg(long, env = "KVORUM_PORT", default_value_t = 8080, value_parser = clap::value_parser!(u16).range(1..))]
    port: u16,

    /// Port of storage node 1; node i listens on this + i - 1.
    #[arg(long, env = "KVORUM_STORAGE_PORT", default_value_t = 7001, value_parser = clap::value_parser!(u16).range(1..))]
    storage_port: u16,

    /// Metadata (Multi-Paxos) replicas to run.
    #[arg(long, env = "KVORUM_METAD_REPLICAS", default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..=9))]
    metad_replicas: u64,

    /// Port of metadata replica 1; replica i listens on this + i - 1.
    #[arg(long, env = "KVORUM_METAD_PORT", default_value_t = 9001, value_parser = clap::value_parser!(u16).range(1..))]
    metad_port: u16,

    /// Failure detectors to run (one reports, the others stand by).
    #[arg(long, env = "KVORUM_DETECTORS", default_value_t = 1, value_parser = clap::value_parser!(u64).range(0..=5))]
    detectors: u64,

    /// Port of detector 1; detector i listens on this + i - 1.
    #[arg(long, env = "KVORUM_DETECTOR_PORT", default_value_t = 7300, value_parser = clap::value_parser!(u16).range(1..))]
    detector_port: u16,

    /// Recovery controllers to run (one acts, the others stand by).
    #[arg(long, env = "KVORUM_RECOVERY_CONTROLLERS", default_value_t = 1, value_parser = clap::value_parser!(u64).range(0..=5))]
    recovery_controllers: u64,

    /// Port of recovery controller 1; controller i listens on this + i - 1.
    #[arg(long, env = "KVORUM_RECOVERY_PORT", default_value_t = 7400, value_parser = clap::value_parser!(u16).range(1..))]
    recovery_port: u16,

    /// How long a node must stay down before the controller replaces its replicas, in milliseconds.
    #[arg(long, env = "KVORUM_REPLACEMENT_DELAY_MS", default_value_t = 15_000, value_parser = clap::value_parser!(u64).range(0..=86_400_000))]
    replacement_delay_ms: u64,

    /// Directory for data and logs; kept across runs.
    #[arg(long, env = "KVORUM_DATA_DIR", default_value = "data", value_parser = NonEmptyStringValueParser::new().map(PathBuf::from))]
    data_dir: PathBuf,

    /// Directory holding the kvorum-* binaries (default: next to this one).
    #[arg(long, env = "KVORUM_BIN_DIR")]
    bin_dir: Option<PathBuf>,

    /// Log filter for every process (RUST_LOG syntax).
    #[arg(long, env = "KVORUM_CLUSTER_LOG", default_value = "info")]
    cluster_log: String,

    /// Logging of this launcher.
    #[command(flatten)]
    log: LogArgs,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = LocalConfig::parse();
    let _telemetry = kvorum_telemetry::init("kvorum-local", &config.log)?;
    if config.replication_factor > config.nodes {
        anyhow::bail!(
            "--replication-factor {} needs at least that many --nodes, not {}",
            config.replication_factor,
            config.nodes
        );
    }
    let ranges = [
        ("--port", u64::from(config.port), 1),
        (
            "--storage-port",
            u64::from(config.storage_port),
            config.nodes,
        ),
        (
            "--metad-port",
            u64::from(config.metad_port),
            config.metad_replicas,
        ),
    ];
    for (i, (flag, first, count)) in ranges.iter().enumerate() {
        let last = first + count - 1;
        if last > u64::from(u16::MAX) {
            anyhow::bail!(
                "{flag} {first} with {count} processes needs ports up to {last}, above 65535"
            );
        }
        for (other, other_first, other_count) in &ranges[i + 1..] {
            let other_last = other_first + other_count - 1;
            if *first <= other_last && *other_first <= last {
                anyhow::bail!(
                    "{flag} needs ports {first}..={last}, which overlap the ports {other} needs ({other_first}..={other_last})"
                );
            }
        }
    }
    let spec = ClusterSpec {
        nodes: usize::try_from(config.nodes)?,
        standbys: usize::try_from(config.standbys)?,
        replication_factor: usize::try_from(config.replication_factor)?,
        partitions: config.partitions,
        routers: 1,
        router_port: config.port,
        storage_base_port: config.storage_port,
        metad_replicas: config.metad_replicas,
        metad_base_port: config.metad_port,
        detectors: usize::try_from(config.detectors)?,
        detector_base_port: config.detector_port,
        recovery: usize::try_from(config.recovery_controllers)?,
        recovery_base_port: config.recovery_port,
        replacement_delay: Some(std::time::Duration::from_millis(
            config.replacement_delay_ms,
        )),
        data_dir: std::path::absolute(&config.data_dir)?,
        bin_dir: config.bin_dir.unwrap_or_else(default_bin_dir),
        log_filter: config.cluster_log,
        // Children inherit this process's environment, OTEL_* included.
        env: Default::default(),
        own_addresses: false,
        fake_clocks: None,
    };
    let shutdown = kvorum_server::shutdown_on_signal();
    let cluster = LocalCluster::start(spec).await?;
    tracing::info!(
        router = %cluster.router_url(),
        storage_nodes = cluster.storage_nodes().len(),
        metad = ?cluster.metad().addresses().values().collect::<Vec<_>>(),
        logs = %cluster.log_dir().display(),
        "Kvorum is up; press Ctrl-C to stop"
    );
    tracing::info!(
        "try: curl -X PUT {0}/v1/kv/hello -d world && curl {0}/v1/kv/hello",
        cluster.router_url()
    );
    shutdown.cancelled().await;
    tracing::info!("stopping every process");
    cluster.stop().await?;
    tracing::info!("stopped; data kept for the next run");
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::LocalConfig;

    #[test]
    fn every_flag_can_be_set_from_the_environment() {
        kvorum_telemetry::assert_every_flag_has_an_env(&LocalConfig::command());
    }
}
