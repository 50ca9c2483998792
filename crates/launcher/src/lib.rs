//! A whole Kvorum cluster as local processes on 127.0.0.1.
//!
//! `make run` and the cluster tests start clusters through this one piece of
//! code. Each process gets its own log file and data directory under the
//! cluster's data directory. Children are put in process groups of their own
//! and are told by the kernel to die with their parent, and [`LocalCluster`]
//! kills them on drop, so a failing or aborted test leaves nothing behind.

mod process;

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use kvorum_http_client::{ClientConfig, HttpClient};
use kvorum_protocol::health::Health;
use kvorum_protocol::{Membership, NodeId, NodeInfo};

use crate::process::ManagedProcess;

/// The name of the membership file the launcher writes into the data directory.
pub const MEMBERSHIP_FILE: &str = "membership.json";

/// What to start.
#[derive(Debug, Clone)]
pub struct ClusterSpec {
    /// Storage nodes to start.
    pub nodes: usize,
    /// Replicas per partition.
    pub replication_factor: usize,
    /// Partitions keys hash into.
    pub partitions: u32,
    /// The router's port; 0 picks a free one.
    pub router_port: u16,
    /// Port of storage node 1 (node i gets base + i - 1); 0 picks free ones.
    pub storage_base_port: u16,
    /// Where data, logs and the membership file go.
    pub data_dir: PathBuf,
    /// Where the `kvorum-*` binaries are.
    pub bin_dir: PathBuf,
    /// Log filter passed to every process as `RUST_LOG`.
    pub log_filter: String,
}

impl ClusterSpec {
    /// A test-sized cluster (5 nodes, RF 3, 16 partitions) on free ports in `data_dir`,
    /// with binaries from the cargo target directory the calling test runs from.
    pub fn for_tests(data_dir: &Path) -> Self {
        Self {
            nodes: 5,
            replication_factor: 3,
            partitions: 16,
            router_port: 0,
            storage_base_port: 0,
            data_dir: data_dir.to_owned(),
            bin_dir: default_bin_dir(),
            log_filter: "info".to_owned(),
        }
    }
}

/// Where the binaries are: `$KVORUM_BIN_DIR`, else the cargo profile directory of the running executable.
pub fn default_bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("KVORUM_BIN_DIR") {
        return PathBuf::from(dir);
    }
    let exe = std::env::current_exe().unwrap_or_default();
    let dir = exe.parent().map(Path::to_path_buf).unwrap_or_default();
    // Test binaries live in target/<profile>/deps; the services in target/<profile>.
    if dir.file_name().is_some_and(|n| n == "deps") {
        dir.parent().map(Path::to_path_buf).unwrap_or(dir)
    } else {
        dir
    }
}

/// Why a cluster could not be started or driven.
#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    /// A binary is missing.
    #[error("{0} not found; build the binaries first (cargo build --bins, or make build)")]
    MissingBinary(PathBuf),
    /// A file or process operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The data directory was made for another cluster shape.
    #[error(
        "{path} describes a different cluster ({found}); remove {dir} or start with the same sizes"
    )]
    ShapeMismatch {
        /// The membership file.
        path: PathBuf,
        /// The data directory.
        dir: PathBuf,
        /// What the file holds.
        found: String,
    },
    /// A process did not become healthy in time.
    #[error("{name} did not become healthy within {timeout:?}; see its log at {log}")]
    NotHealthy {
        /// The process.
        name: String,
        /// Its log.
        log: PathBuf,
        /// How long we waited.
        timeout: Duration,
    },
    /// A process exited during startup.
    #[error("{name} exited during startup ({status}); its log {log} ends with:\n{tail}")]
    Exited {
        /// The process.
        name: String,
        /// How it exited.
        status: String,
        /// Its log.
        log: PathBuf,
        /// The last lines of its log.
        tail: String,
    },
    /// No such storage node.
    #[error("no storage node {0}")]
    NoSuchNode(NodeId),
    /// The spec cannot describe a cluster.
    #[error("invalid cluster: {0}")]
    Invalid(String),
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> LaunchError {
    let what = what.into();
    move |source| LaunchError::Io { what, source }
}

/// A free TCP port on 127.0.0.1, chosen below the kernel's ephemeral range.
///
/// Ports the kernel hands out for `bind(0)` and for outgoing connections come
/// from the ephemeral range, so a port found free there could be taken by some
/// connection before the child binds it. Below that range only explicit binds
/// compete, and a random pick makes two parallel tests choosing the same port
/// unlikely.
pub fn free_port() -> Result<u16, LaunchError> {
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|text| {
            text.split_whitespace()
                .next()
                .and_then(|low| low.parse::<u16>().ok())
        })
        .unwrap_or(32_768);
    let range = 10_000..ephemeral_low.max(10_001);
    for _ in 0..1_000 {
        let port = rand::random_range(range.clone());
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
    Err(LaunchError::Invalid(format!(
        "no free port in {range:?} after 1000 tries"
    )))
}

/// How long a process may take to answer `/healthz` after it starts.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);

/// A running local cluster; its processes are killed when it is dropped.
#[derive(Debug)]
pub struct LocalCluster {
    spec: ClusterSpec,
    membership: Membership,
    router_address: SocketAddr,
    storage: Vec<ManagedProcess>,
    router: Option<ManagedProcess>,
    client: HttpClient,
}

impl LocalCluster {
    /// Starts every storage node, then the router, and waits until all are healthy.
    pub async fn start(spec: ClusterSpec) -> Result<Self, LaunchError> {
        if spec.nodes == 0 || spec.replication_factor == 0 || spec.replication_factor > spec.nodes {
            return Err(LaunchError::Invalid(format!(
                "{} nodes cannot hold replication factor {}",
                spec.nodes, spec.replication_factor
            )));
        }
        for binary in ["kvorum-storage", "kvorum-router"] {
            let path = spec.bin_dir.join(binary);
            if !path.is_file() {
                return Err(LaunchError::MissingBinary(path));
            }
        }
        std::fs::create_dir_all(spec.data_dir.join("logs"))
            .map_err(io(format!("creating {}", spec.data_dir.display())))?;
        let membership = prepare_membership(&spec)?;
        let router_port = if spec.router_port == 0 {
            free_port()?
        } else {
            spec.router_port
        };
        let router_address = SocketAddr::from(([127, 0, 0, 1], router_port));
        let client = HttpClient::new(ClientConfig::new("launcher"))
            .map_err(|e| LaunchError::Invalid(e.to_string()))?;
        let mut cluster = Self {
            spec,
            membership,
            router_address,
            storage: Vec::new(),
            router: None,
            client,
        };
        for node in cluster.membership.nodes.clone() {
            let process = cluster.spawn_storage(&node)?;
            cluster.storage.push(process);
        }
        let router = cluster.spawn_router()?;
        cluster.router = Some(router);
        for index in 0..cluster.storage.len() {
            cluster
                .wait_healthy(StorageOrRouter::Storage(index))
                .await?;
        }
        cluster.wait_healthy(StorageOrRouter::Router).await?;
        Ok(cluster)
    }

    /// `http://127.0.0.1:PORT`, the router's base URL.
    pub fn router_url(&self) -> String {
        format!("http://{}", self.router_address)
    }

    /// The membership the cluster runs with.
    pub fn membership(&self) -> &Membership {
        &self.membership
    }

    /// Where process logs are written.
    pub fn log_dir(&self) -> PathBuf {
        self.spec.data_dir.join("logs")
    }

    /// Kills a storage node with SIGKILL, as a crash would, and waits for it to die.
    pub async fn kill_storage(&mut self, node: NodeId) -> Result<(), LaunchError> {
        let index = self.storage_index(node)?;
        self.storage[index].kill().await
    }

    /// Starts a storage node again (after [`Self::kill_storage`]) and waits until it is healthy.
    pub async fn restart_storage(&mut self, node: NodeId) -> Result<(), LaunchError> {
        let index = self.storage_index(node)?;
        self.storage[index].kill().await?;
        let info = self.membership.nodes[index].clone();
        self.storage[index] = self.spawn_storage(&info)?;
        self.wait_healthy(StorageOrRouter::Storage(index)).await
    }

    /// Kills every process with SIGKILL, as a power cut would, and waits until all are gone.
    pub async fn kill_all(mut self) -> Result<(), LaunchError> {
        if let Some(router) = self.router.as_mut() {
            router.kill().await?;
        }
        for process in &mut self.storage {
            process.kill().await?;
        }
        Ok(())
    }

    /// Stops every process with SIGTERM (router first), waiting for each to exit.
    pub async fn stop(mut self) -> Result<(), LaunchError> {
        if let Some(router) = self.router.as_mut() {
            router.terminate().await?;
        }
        for process in &mut self.storage {
            process.terminate().await?;
        }
        Ok(())
    }

    fn storage_index(&self, node: NodeId) -> Result<usize, LaunchError> {
        self.membership
            .nodes
            .iter()
            .position(|n| n.id == node)
            .ok_or(LaunchError::NoSuchNode(node))
    }

    fn spawn_storage(&self, node: &NodeInfo) -> Result<ManagedProcess, LaunchError> {
        let name = format!("storage-{}", node.id);
        let data = self.spec.data_dir.join(&name);
        let args = vec![
            "--node-id".to_owned(),
            node.id.to_string(),
            "--listen".to_owned(),
            node.address.clone(),
            "--data-dir".to_owned(),
            data.display().to_string(),
        ];
        ManagedProcess::spawn(
            &name,
            &self.spec.bin_dir.join("kvorum-storage"),
            &args,
            &self.log_path(&name),
            &self.spec.log_filter,
        )
    }

    fn spawn_router(&self) -> Result<ManagedProcess, LaunchError> {
        let args = vec![
            "--listen".to_owned(),
            self.router_address.to_string(),
            "--membership".to_owned(),
            self.spec
                .data_dir
                .join(MEMBERSHIP_FILE)
                .display()
                .to_string(),
        ];
        ManagedProcess::spawn(
            "router",
            &self.spec.bin_dir.join("kvorum-router"),
            &args,
            &self.log_path("router"),
            &self.spec.log_filter,
        )
    }

    fn log_path(&self, name: &str) -> PathBuf {
        self.log_dir().join(format!("{name}.log"))
    }

    async fn wait_healthy(&mut self, which: StorageOrRouter) -> Result<(), LaunchError> {
        let (address, process) = match which {
            StorageOrRouter::Storage(index) => (
                self.membership.nodes[index].address.clone(),
                &mut self.storage[index],
            ),
            StorageOrRouter::Router => {
                let address = self.router_address.to_string();
                (
                    address,
                    self.router
                        .as_mut()
                        .ok_or(LaunchError::Invalid("router not started".into()))?,
                )
            }
        };
        wait_healthy(&self.client, process, &address).await
    }
}

/// Polls `/healthz` at `address` until it answers, the process exits, or the startup deadline passes.
async fn wait_healthy(
    client: &HttpClient,
    process: &mut ManagedProcess,
    address: &str,
) -> Result<(), LaunchError> {
    let deadline = Instant::now() + STARTUP_TIMEOUT;
    loop {
        if let Some(status) = process.exit_status()? {
            return Err(LaunchError::Exited {
                name: process.name().to_owned(),
                status,
                log: process.log().to_owned(),
                tail: log_tail(process.log(), 10),
            });
        }
        if client.get_json::<Health>(address, "/healthz").await.is_ok() {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(LaunchError::NotHealthy {
                name: process.name().to_owned(),
                log: process.log().to_owned(),
                timeout: STARTUP_TIMEOUT,
            });
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A group of metadata replicas (`kvorum-metad`) on free ports; killed on drop.
#[derive(Debug)]
pub struct MetadGroup {
    dir: PathBuf,
    bin_dir: PathBuf,
    addresses: BTreeMap<u64, SocketAddr>,
    processes: BTreeMap<u64, ManagedProcess>,
    client: HttpClient,
}

impl MetadGroup {
    /// Starts `replicas` metadata replicas with their data under `dir`, and waits until all are healthy.
    pub async fn start(dir: &Path, replicas: u64, bin_dir: &Path) -> Result<Self, LaunchError> {
        let binary = bin_dir.join("kvorum-metad");
        if !binary.is_file() {
            return Err(LaunchError::MissingBinary(binary));
        }
        std::fs::create_dir_all(dir.join("logs"))
            .map_err(io(format!("creating {}", dir.display())))?;
        let addresses = (1..=replicas)
            .map(|id| Ok((id, SocketAddr::from(([127, 0, 0, 1], free_port()?)))))
            .collect::<Result<BTreeMap<_, _>, LaunchError>>()?;
        let client = HttpClient::new(ClientConfig::new("launcher"))
            .map_err(|e| LaunchError::Invalid(e.to_string()))?;
        let mut group = Self {
            dir: dir.to_owned(),
            bin_dir: bin_dir.to_owned(),
            addresses,
            processes: BTreeMap::new(),
            client,
        };
        for id in 1..=replicas {
            group.restart(id).await?;
        }
        Ok(group)
    }

    /// Every replica's address, by id.
    pub fn addresses(&self) -> &BTreeMap<u64, SocketAddr> {
        &self.addresses
    }

    /// Kills one replica with SIGKILL and waits for it to die.
    pub async fn kill(&mut self, id: u64) -> Result<(), LaunchError> {
        match self.processes.get_mut(&id) {
            Some(process) => process.kill().await,
            None => Ok(()),
        }
    }

    /// Starts one replica (again), on its data directory and address, and waits until it is healthy.
    pub async fn restart(&mut self, id: u64) -> Result<(), LaunchError> {
        self.kill(id).await?;
        let address = *self
            .addresses
            .get(&id)
            .ok_or(LaunchError::NoSuchNode(NodeId(id)))?;
        let peers: Vec<String> = self
            .addresses
            .iter()
            .map(|(id, a)| format!("{id}={a}"))
            .collect();
        let name = format!("metad-{id}");
        let args = vec![
            "--id".to_owned(),
            id.to_string(),
            "--peers".to_owned(),
            peers.join(","),
            "--listen".to_owned(),
            address.to_string(),
            "--data-dir".to_owned(),
            self.dir.join(&name).display().to_string(),
        ];
        let log = self.dir.join("logs").join(format!("{name}.log"));
        let mut process = ManagedProcess::spawn(
            &name,
            &self.bin_dir.join("kvorum-metad"),
            &args,
            &log,
            "info",
        )?;
        wait_healthy(&self.client, &mut process, &address.to_string()).await?;
        self.processes.insert(id, process);
        Ok(())
    }
}

/// The last `lines` lines of a log file, for error messages.
fn log_tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

enum StorageOrRouter {
    Storage(usize),
    Router,
}

/// Writes the membership file, or checks that an existing one matches the spec.
fn prepare_membership(spec: &ClusterSpec) -> Result<Membership, LaunchError> {
    let path = spec.data_dir.join(MEMBERSHIP_FILE);
    let fixed_ports = spec.storage_base_port != 0;
    if path.exists() {
        let text =
            std::fs::read_to_string(&path).map_err(io(format!("reading {}", path.display())))?;
        let existing: Membership =
            serde_json::from_str(&text).map_err(|e| LaunchError::ShapeMismatch {
                path: path.clone(),
                dir: spec.data_dir.clone(),
                found: format!("unreadable: {e}"),
            })?;
        let same_shape = existing.nodes.len() == spec.nodes
            && existing.partitions == spec.partitions
            && existing.replication_factor == spec.replication_factor;
        let same_ports =
            !fixed_ports
                || existing.nodes.iter().enumerate().all(|(i, n)| {
                    n.address == storage_address(spec.storage_base_port, i).to_string()
                });
        if same_shape && same_ports {
            // Restarting on the same data: keep the same addresses, so the same map.
            return Ok(existing);
        }
        return Err(LaunchError::ShapeMismatch {
            path,
            dir: spec.data_dir.clone(),
            found: format!(
                "{} nodes from port {}, RF {}, {} partitions",
                existing.nodes.len(),
                existing
                    .nodes
                    .first()
                    .map_or("?".to_owned(), |n| n.address.clone()),
                existing.replication_factor,
                existing.partitions
            ),
        });
    }
    let nodes = (0..spec.nodes)
        .map(|i| {
            let address = if fixed_ports {
                storage_address(spec.storage_base_port, i)
            } else {
                SocketAddr::from(([127, 0, 0, 1], free_port()?))
            };
            Ok(NodeInfo {
                id: NodeId(i as u64 + 1),
                address: address.to_string(),
                role: Default::default(),
                state: Default::default(),
            })
        })
        .collect::<Result<Vec<_>, LaunchError>>()?;
    let membership = Membership {
        partitions: spec.partitions,
        replication_factor: spec.replication_factor,
        nodes,
    };
    membership
        .validate()
        .map_err(|e| LaunchError::Invalid(e.to_string()))?;
    let text = serde_json::to_string_pretty(&membership)
        .map_err(|e| LaunchError::Invalid(e.to_string()))?;
    std::fs::write(&path, text).map_err(io(format!("writing {}", path.display())))?;
    Ok(membership)
}

fn storage_address(base: u16, index: usize) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], base.saturating_add(index as u16)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(dir: &Path, nodes: usize) -> ClusterSpec {
        ClusterSpec {
            nodes,
            storage_base_port: 17_001,
            ..ClusterSpec::for_tests(dir)
        }
    }

    #[test]
    fn a_data_directory_keeps_its_membership_across_restarts() {
        let dir = tempfile::tempdir().expect("tempdir");
        let first = prepare_membership(&spec(dir.path(), 5)).expect("first start");
        let again = prepare_membership(&spec(dir.path(), 5)).expect("restart");
        assert_eq!(first, again);
        assert_eq!(first.nodes[4].address, "127.0.0.1:17005");
    }

    #[test]
    fn a_data_directory_refuses_another_cluster_shape() {
        let dir = tempfile::tempdir().expect("tempdir");
        prepare_membership(&spec(dir.path(), 5)).expect("first start");
        let error = prepare_membership(&spec(dir.path(), 7)).expect_err("different shape");
        assert!(
            error.to_string().contains("describes a different cluster"),
            "{error}"
        );
    }
}
