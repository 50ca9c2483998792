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
use kvorum_protocol::{ClusterSettings, NodeId};
use serde::{Deserialize, Serialize};

use crate::process::ManagedProcess;

/// The file in the data directory that pins a local cluster's sizes and ports across runs.
pub const LAYOUT_FILE: &str = "cluster.json";

/// What to start.
#[derive(Debug, Clone)]
pub struct ClusterSpec {
    /// Storage nodes to start.
    pub nodes: usize,
    /// Warm standbys to start after them (storage nodes registered with `--standby`).
    pub standbys: usize,
    /// Replicas per partition.
    pub replication_factor: usize,
    /// Partitions keys hash into.
    pub partitions: u32,
    /// The router's port; 0 picks a free one.
    pub router_port: u16,
    /// Port of storage node 1 (node i gets base + i - 1); 0 picks free ones.
    pub storage_base_port: u16,
    /// Metadata replicas to start.
    pub metad_replicas: u64,
    /// Failure detectors to start (one holds the lease, the others stand by).
    pub detectors: usize,
    /// Port of detector 1 (detector i gets base + i - 1); 0 picks free ones.
    pub detector_base_port: u16,
    /// Recovery controllers to start (one holds the lease, the others stand by).
    pub recovery: usize,
    /// Port of recovery controller 1; 0 picks free ones.
    pub recovery_base_port: u16,
    /// How long a node must be down before its replicas are replaced (the controller's default when `None`).
    pub replacement_delay: Option<Duration>,
    /// Port of metadata replica 1 (replica i gets base + i - 1); 0 picks free ones.
    pub metad_base_port: u16,
    /// Where data, logs and the layout file go.
    pub data_dir: PathBuf,
    /// Where the `kvorum-*` binaries are.
    pub bin_dir: PathBuf,
    /// Log filter passed to every process as `RUST_LOG`.
    pub log_filter: String,
    /// Extra environment for every process, such as `OTEL_EXPORTER_OTLP_ENDPOINT`.
    pub env: BTreeMap<String, String>,
}

impl ClusterSpec {
    /// A test-sized cluster (5 nodes, RF 3, 16 partitions) on free ports in `data_dir`,
    /// with binaries from the cargo target directory the calling test runs from.
    pub fn for_tests(data_dir: &Path) -> Self {
        Self {
            nodes: 5,
            standbys: 0,
            replication_factor: 3,
            partitions: 16,
            router_port: 0,
            storage_base_port: 0,
            metad_replicas: 3,
            metad_base_port: 0,
            detectors: 1,
            detector_base_port: 0,
            recovery: 1,
            recovery_base_port: 0,
            replacement_delay: None,
            data_dir: data_dir.to_owned(),
            bin_dir: default_bin_dir(),
            log_filter: "info".to_owned(),
            env: BTreeMap::new(),
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
        /// The layout file.
        path: PathBuf,
        /// The data directory.
        dir: PathBuf,
        /// What the file holds.
        found: String,
    },
    /// A process did not become healthy (or ready) in time.
    #[error("{name} did not become {what} within {timeout:?}; see its log at {log}")]
    NotHealthy {
        /// `healthy` or `ready`.
        what: &'static str,
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
    layout: Layout,
    metad: MetadGroup,
    storage: Vec<ManagedProcess>,
    router: Option<ManagedProcess>,
    detectors: Vec<ManagedProcess>,
    recovery: Vec<ManagedProcess>,
    client: HttpClient,
}

impl LocalCluster {
    /// Starts the metadata replicas, every storage node and the router, and waits
    /// until the router is ready (the storage nodes registered and the partition map exists).
    pub async fn start(spec: ClusterSpec) -> Result<Self, LaunchError> {
        if spec.nodes == 0 || spec.replication_factor == 0 || spec.replication_factor > spec.nodes {
            return Err(LaunchError::Invalid(format!(
                "{} nodes cannot hold replication factor {}",
                spec.nodes, spec.replication_factor
            )));
        }
        if spec.metad_replicas == 0 {
            return Err(LaunchError::Invalid(
                "at least one metadata replica is needed".to_owned(),
            ));
        }
        for binary in [
            "kvorum-storage",
            "kvorum-router",
            "kvorum-metad",
            "kvorum-detector",
            "kvorum-recovery",
        ] {
            let path = spec.bin_dir.join(binary);
            if !path.is_file() {
                return Err(LaunchError::MissingBinary(path));
            }
        }
        std::fs::create_dir_all(spec.data_dir.join("logs"))
            .map_err(io(format!("creating {}", spec.data_dir.display())))?;
        let layout = prepare_layout(&spec)?;
        let client = HttpClient::new(ClientConfig::new("launcher"))
            .map_err(|e| LaunchError::Invalid(e.to_string()))?;
        let metad = MetadGroup::start_at(
            &spec.data_dir,
            layout.metad.clone(),
            Some(layout.settings()),
            &spec.bin_dir,
            &spec.log_filter,
            &spec.env,
        )
        .await?;
        let mut cluster = Self {
            spec,
            layout,
            metad,
            storage: Vec::new(),
            router: None,
            detectors: Vec::new(),
            recovery: Vec::new(),
            client,
        };
        for index in 0..cluster.layout.storage.len() {
            let process = cluster.spawn_storage(index)?;
            cluster.storage.push(process);
        }
        let router = cluster.spawn_router()?;
        cluster.router = Some(router);
        for index in 0..cluster.layout.detectors.len() {
            let detector = cluster.spawn_detector(index)?;
            cluster.detectors.push(detector);
        }
        for index in 0..cluster.layout.recovery.len() {
            let controller = cluster.spawn_recovery(index)?;
            cluster.recovery.push(controller);
        }
        for index in 0..cluster.storage.len() {
            cluster
                .wait_healthy(StorageOrRouter::Storage(index))
                .await?;
        }
        cluster.wait_healthy(StorageOrRouter::Router).await?;
        for index in 0..cluster.detectors.len() {
            let address = cluster.layout.detectors[index].to_string();
            wait_for(
                &cluster.client,
                &mut cluster.detectors[index],
                &address,
                Probe::Healthy,
            )
            .await?;
        }
        for index in 0..cluster.recovery.len() {
            let address = cluster.layout.recovery[index].to_string();
            wait_for(
                &cluster.client,
                &mut cluster.recovery[index],
                &address,
                Probe::Healthy,
            )
            .await?;
        }
        cluster.wait_router_ready().await?;
        // Every storage node counts too (admitted, and caught up if it is a new
        // incarnation), so that the first request finds the whole cluster.
        for index in 0..cluster.storage.len() {
            let address = cluster.layout.storage[index].to_string();
            wait_for(
                &cluster.client,
                &mut cluster.storage[index],
                &address,
                Probe::Ready,
            )
            .await?;
        }
        Ok(cluster)
    }

    /// `http://127.0.0.1:PORT`, the router's base URL.
    pub fn router_url(&self) -> String {
        format!("http://{}", self.layout.router)
    }

    /// The storage nodes' ids and addresses.
    pub fn storage_nodes(&self) -> Vec<(NodeId, SocketAddr)> {
        self.layout
            .storage
            .iter()
            .enumerate()
            .map(|(i, address)| (NodeId(i as u64 + 1), *address))
            .collect()
    }

    /// The address of one storage node.
    pub fn storage_address(&self, node: NodeId) -> Result<SocketAddr, LaunchError> {
        Ok(self.layout.storage[self.storage_index(node)?])
    }

    /// The metadata replicas.
    pub fn metad(&self) -> &MetadGroup {
        &self.metad
    }

    /// The metadata replicas, to kill or restart some.
    pub fn metad_mut(&mut self) -> &mut MetadGroup {
        &mut self.metad
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
        self.storage[index] = self.spawn_storage(index)?;
        self.wait_healthy(StorageOrRouter::Storage(index)).await
    }

    /// Stops a storage node with SIGTERM (a graceful shutdown) and waits for it to exit.
    pub async fn terminate_storage(&mut self, node: NodeId) -> Result<(), LaunchError> {
        let index = self.storage_index(node)?;
        self.storage[index].terminate().await
    }

    /// Starts one more storage node (the next id, on a free port) and waits until
    /// it is healthy; it registers itself. Returns its id and address.
    pub async fn add_storage(&mut self) -> Result<(NodeId, SocketAddr), LaunchError> {
        if self.layout.standbys > 0 {
            return Err(LaunchError::Invalid(
                "adding a node to a cluster with standbys is not supported by the launcher".into(),
            ));
        }
        let address = SocketAddr::from(([127, 0, 0, 1], free_port()?));
        self.layout.storage.push(address);
        let index = self.layout.storage.len() - 1;
        let process = self.spawn_storage(index)?;
        self.storage.push(process);
        self.wait_healthy(StorageOrRouter::Storage(index)).await?;
        Ok((NodeId(index as u64 + 1), address))
    }

    /// Kills a storage node and deletes its data directory, as a lost disk would
    /// (its checkpoint directory, beside it, stays).
    pub async fn wipe_storage(&mut self, node: NodeId) -> Result<(), LaunchError> {
        let index = self.storage_index(node)?;
        self.storage[index].kill().await?;
        let data = self.spec.data_dir.join(format!("storage-{}", index + 1));
        std::fs::remove_dir_all(&data).map_err(io(format!("deleting {}", data.display())))
    }

    /// Kills a storage node and deletes its data directory and its checkpoints,
    /// as losing a disk (or a Kubernetes volume) that held both would.
    pub async fn wipe_storage_and_checkpoints(&mut self, node: NodeId) -> Result<(), LaunchError> {
        self.wipe_storage(node).await?;
        let index = self.storage_index(node)?;
        let checkpoints = self
            .spec
            .data_dir
            .join(format!("storage-{}-checkpoints", index + 1));
        match std::fs::remove_dir_all(&checkpoints) {
            Err(error) if error.kind() != std::io::ErrorKind::NotFound => {
                Err(io(format!("deleting {}", checkpoints.display()))(error))
            }
            _ => Ok(()),
        }
    }

    /// Freezes a storage node with SIGSTOP (a long pause, not a crash).
    pub fn pause_storage(&self, node: NodeId) -> Result<(), LaunchError> {
        self.storage[self.storage_index(node)?].pause();
        Ok(())
    }

    /// Lets a paused storage node run again with SIGCONT.
    pub fn resume_storage(&self, node: NodeId) -> Result<(), LaunchError> {
        self.storage[self.storage_index(node)?].resume();
        Ok(())
    }

    /// The failure detectors' addresses, in start order.
    pub fn detector_addresses(&self) -> &[SocketAddr] {
        &self.layout.detectors
    }

    /// The recovery controllers' addresses, in start order.
    pub fn recovery_addresses(&self) -> &[SocketAddr] {
        &self.layout.recovery
    }

    /// Kills recovery controller `index` (0-based) with SIGKILL.
    pub async fn kill_recovery(&mut self, index: usize) -> Result<(), LaunchError> {
        match self.recovery.get_mut(index) {
            Some(controller) => controller.kill().await,
            None => Err(LaunchError::Invalid(format!(
                "no recovery controller {index}"
            ))),
        }
    }

    /// Starts recovery controller `index` (0-based) again, after [`Self::kill_recovery`].
    pub async fn restart_recovery(&mut self, index: usize) -> Result<(), LaunchError> {
        if index >= self.recovery.len() {
            return Err(LaunchError::Invalid(format!(
                "no recovery controller {index}"
            )));
        }
        self.recovery[index].kill().await?;
        self.recovery[index] = self.spawn_recovery(index)?;
        Ok(())
    }

    /// Kills failure detector `index` (0-based) with SIGKILL.
    pub async fn kill_detector(&mut self, index: usize) -> Result<(), LaunchError> {
        match self.detectors.get_mut(index) {
            Some(detector) => detector.kill().await,
            None => Err(LaunchError::Invalid(format!("no detector {index}"))),
        }
    }

    /// Kills every process with SIGKILL, as a power cut would, and waits until all are gone.
    pub async fn kill_all(mut self) -> Result<(), LaunchError> {
        for process in self.detectors.iter_mut().chain(&mut self.recovery) {
            process.kill().await?;
        }
        if let Some(router) = self.router.as_mut() {
            router.kill().await?;
        }
        for process in &mut self.storage {
            process.kill().await?;
        }
        self.metad.kill_all().await
    }

    /// Stops every process with SIGTERM (detectors, router, storage nodes, then metadata), waiting for each to exit.
    pub async fn stop(mut self) -> Result<(), LaunchError> {
        for process in self.recovery.iter_mut().chain(&mut self.detectors) {
            process.terminate().await?;
        }
        if let Some(router) = self.router.as_mut() {
            router.terminate().await?;
        }
        for process in &mut self.storage {
            process.terminate().await?;
        }
        self.metad.stop().await
    }

    fn storage_index(&self, node: NodeId) -> Result<usize, LaunchError> {
        let index = usize::try_from(node.0)
            .unwrap_or(usize::MAX)
            .wrapping_sub(1);
        if index < self.layout.storage.len() {
            Ok(index)
        } else {
            Err(LaunchError::NoSuchNode(node))
        }
    }

    fn metad_list(&self) -> String {
        self.layout
            .metad
            .values()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(",")
    }

    fn spawn_storage(&self, index: usize) -> Result<ManagedProcess, LaunchError> {
        let id = index + 1;
        let name = format!("storage-{id}");
        let data = self.spec.data_dir.join(&name);
        let mut args = vec![
            "--node-id".to_owned(),
            id.to_string(),
            "--listen".to_owned(),
            self.layout.storage[index].to_string(),
            "--metad".to_owned(),
            self.metad_list(),
            "--data-dir".to_owned(),
            data.display().to_string(),
        ];
        if index >= self.layout.storage.len() - self.layout.standbys {
            args.push("--standby".to_owned());
        }
        ManagedProcess::spawn(
            &name,
            &self.spec.bin_dir.join("kvorum-storage"),
            &args,
            &self.log_path(&name),
            &self.spec.log_filter,
            &self.spec.env,
        )
    }

    fn spawn_router(&self) -> Result<ManagedProcess, LaunchError> {
        let args = vec![
            "--listen".to_owned(),
            self.layout.router.to_string(),
            "--metad".to_owned(),
            self.metad_list(),
        ];
        ManagedProcess::spawn(
            "router",
            &self.spec.bin_dir.join("kvorum-router"),
            &args,
            &self.log_path("router"),
            &self.spec.log_filter,
            &self.spec.env,
        )
    }

    fn spawn_detector(&self, index: usize) -> Result<ManagedProcess, LaunchError> {
        let name = format!("detector-{}", index + 1);
        let args = vec![
            "--listen".to_owned(),
            self.layout.detectors[index].to_string(),
            "--metad".to_owned(),
            self.metad_list(),
        ];
        ManagedProcess::spawn(
            &name,
            &self.spec.bin_dir.join("kvorum-detector"),
            &args,
            &self.log_path(&name),
            &self.spec.log_filter,
            &self.spec.env,
        )
    }

    fn spawn_recovery(&self, index: usize) -> Result<ManagedProcess, LaunchError> {
        let name = format!("recovery-{}", index + 1);
        let mut args = vec![
            "--listen".to_owned(),
            self.layout.recovery[index].to_string(),
            "--metad".to_owned(),
            self.metad_list(),
        ];
        if let Some(delay) = self.spec.replacement_delay {
            args.push("--replacement-delay-ms".to_owned());
            args.push(delay.as_millis().to_string());
        }
        ManagedProcess::spawn(
            &name,
            &self.spec.bin_dir.join("kvorum-recovery"),
            &args,
            &self.log_path(&name),
            &self.spec.log_filter,
            &self.spec.env,
        )
    }

    fn log_path(&self, name: &str) -> PathBuf {
        self.log_dir().join(format!("{name}.log"))
    }

    async fn wait_healthy(&mut self, which: StorageOrRouter) -> Result<(), LaunchError> {
        let (address, process) = match which {
            StorageOrRouter::Storage(index) => (
                self.layout.storage[index].to_string(),
                &mut self.storage[index],
            ),
            StorageOrRouter::Router => (
                self.layout.router.to_string(),
                self.router
                    .as_mut()
                    .ok_or(LaunchError::Invalid("router not started".into()))?,
            ),
        };
        wait_for(&self.client, process, &address, Probe::Healthy).await
    }

    /// Waits until the router routes by a partition map (every storage node registered).
    pub async fn wait_router_ready(&mut self) -> Result<(), LaunchError> {
        let address = self.layout.router.to_string();
        let process = self
            .router
            .as_mut()
            .ok_or(LaunchError::Invalid("router not started".into()))?;
        wait_for(&self.client, process, &address, Probe::Ready).await
    }
}

/// Which endpoint [`wait_for`] polls.
#[derive(Debug, Clone, Copy)]
enum Probe {
    /// `/healthz`: the process serves.
    Healthy,
    /// `/readyz`: the process can do its job.
    Ready,
}

/// Polls `/healthz` or `/readyz` at `address` until it answers 200, the process exits, or the startup deadline passes.
async fn wait_for(
    client: &HttpClient,
    process: &mut ManagedProcess,
    address: &str,
    probe: Probe,
) -> Result<(), LaunchError> {
    let (path, what) = match probe {
        Probe::Healthy => ("/healthz", "healthy"),
        Probe::Ready => ("/readyz", "ready"),
    };
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
        if client.get_json::<Health>(address, path).await.is_ok() {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(LaunchError::NotHealthy {
                what,
                name: process.name().to_owned(),
                log: process.log().to_owned(),
                timeout: STARTUP_TIMEOUT,
            });
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A group of metadata replicas (`kvorum-metad`); killed on drop.
#[derive(Debug)]
pub struct MetadGroup {
    dir: PathBuf,
    bin_dir: PathBuf,
    log_filter: String,
    env: BTreeMap<String, String>,
    settings: Option<ClusterSettings>,
    addresses: BTreeMap<u64, SocketAddr>,
    processes: BTreeMap<u64, ManagedProcess>,
    client: HttpClient,
}

impl MetadGroup {
    /// Starts `replicas` metadata replicas on free ports with their data under
    /// `dir` and the service's default cluster settings, and waits until all are healthy.
    pub async fn start(dir: &Path, replicas: u64, bin_dir: &Path) -> Result<Self, LaunchError> {
        let addresses = (1..=replicas)
            .map(|id| Ok((id, SocketAddr::from(([127, 0, 0, 1], free_port()?)))))
            .collect::<Result<BTreeMap<_, _>, LaunchError>>()?;
        Self::start_at(dir, addresses, None, bin_dir, "info", &BTreeMap::new()).await
    }

    /// Starts one replica per entry of `addresses`, proposing `settings` (or the
    /// service's defaults) as the cluster's shape, and waits until all are healthy.
    pub async fn start_at(
        dir: &Path,
        addresses: BTreeMap<u64, SocketAddr>,
        settings: Option<ClusterSettings>,
        bin_dir: &Path,
        log_filter: &str,
        env: &BTreeMap<String, String>,
    ) -> Result<Self, LaunchError> {
        let binary = bin_dir.join("kvorum-metad");
        if !binary.is_file() {
            return Err(LaunchError::MissingBinary(binary));
        }
        std::fs::create_dir_all(dir.join("logs"))
            .map_err(io(format!("creating {}", dir.display())))?;
        let client = HttpClient::new(ClientConfig::new("launcher"))
            .map_err(|e| LaunchError::Invalid(e.to_string()))?;
        let ids: Vec<u64> = addresses.keys().copied().collect();
        let mut group = Self {
            dir: dir.to_owned(),
            bin_dir: bin_dir.to_owned(),
            log_filter: log_filter.to_owned(),
            env: env.clone(),
            settings,
            addresses,
            processes: BTreeMap::new(),
            client,
        };
        for id in ids {
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

    /// Kills every replica with SIGKILL.
    pub async fn kill_all(&mut self) -> Result<(), LaunchError> {
        for process in self.processes.values_mut() {
            process.kill().await?;
        }
        Ok(())
    }

    /// Stops every replica with SIGTERM, waiting for each to exit.
    pub async fn stop(&mut self) -> Result<(), LaunchError> {
        for process in self.processes.values_mut() {
            process.terminate().await?;
        }
        Ok(())
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
        let mut args = vec![
            "--id".to_owned(),
            id.to_string(),
            "--peers".to_owned(),
            peers.join(","),
            "--listen".to_owned(),
            address.to_string(),
            "--data-dir".to_owned(),
            self.dir.join(&name).display().to_string(),
        ];
        if let Some(settings) = self.settings {
            args.extend([
                "--partitions".to_owned(),
                settings.partitions.to_string(),
                "--replication-factor".to_owned(),
                settings.replication_factor.to_string(),
                "--bootstrap-nodes".to_owned(),
                settings.bootstrap_nodes.to_string(),
            ]);
        }
        let log = self.dir.join("logs").join(format!("{name}.log"));
        let mut process = ManagedProcess::spawn(
            &name,
            &self.bin_dir.join("kvorum-metad"),
            &args,
            &log,
            &self.log_filter,
            &self.env,
        )?;
        wait_for(
            &self.client,
            &mut process,
            &address.to_string(),
            Probe::Healthy,
        )
        .await?;
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

/// A local cluster's sizes and addresses, pinned in the data directory so that
/// a restart finds every process where the others expect it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Layout {
    partitions: u32,
    replication_factor: usize,
    router: SocketAddr,
    metad: BTreeMap<u64, SocketAddr>,
    storage: Vec<SocketAddr>,
    #[serde(default)]
    detectors: Vec<SocketAddr>,
    #[serde(default)]
    recovery: Vec<SocketAddr>,
    /// How many of the last storage entries are standbys.
    #[serde(default)]
    standbys: usize,
}

impl Layout {
    /// The cluster settings the metadata replicas propose: the map waits for every node.
    fn settings(&self) -> ClusterSettings {
        ClusterSettings {
            partitions: self.partitions,
            replication_factor: self.replication_factor,
            bootstrap_nodes: self.storage.len() - self.standbys,
        }
    }

    fn describe(&self) -> String {
        format!(
            "{} storage nodes from {}, {} metadata replicas from {}, {} detectors, router {}, RF {}, {} partitions",
            self.storage.len(),
            self.storage
                .first()
                .map_or("?".to_owned(), ToString::to_string),
            self.metad.len(),
            self.metad
                .values()
                .next()
                .map_or("?".to_owned(), ToString::to_string),
            self.detectors.len(),
            self.router,
            self.replication_factor,
            self.partitions
        )
    }
}

/// Writes the layout file, or checks that an existing one matches the spec.
fn prepare_layout(spec: &ClusterSpec) -> Result<Layout, LaunchError> {
    let path = spec.data_dir.join(LAYOUT_FILE);
    if path.exists() {
        let text =
            std::fs::read_to_string(&path).map_err(io(format!("reading {}", path.display())))?;
        let existing: Layout =
            serde_json::from_str(&text).map_err(|e| LaunchError::ShapeMismatch {
                path: path.clone(),
                dir: spec.data_dir.clone(),
                found: format!("unreadable: {e}"),
            })?;
        let fixed = |base: u16, index: usize| {
            SocketAddr::from(([127, 0, 0, 1], base.saturating_add(index as u16)))
        };
        let same_shape = existing.storage.len() == spec.nodes + spec.standbys
            && existing.standbys == spec.standbys
            && existing.detectors.len() == spec.detectors
            && existing.recovery.len() == spec.recovery
            && existing.metad.len() as u64 == spec.metad_replicas
            && existing.partitions == spec.partitions
            && existing.replication_factor == spec.replication_factor;
        let same_ports = (spec.storage_base_port == 0
            || existing
                .storage
                .iter()
                .enumerate()
                .all(|(i, a)| *a == fixed(spec.storage_base_port, i)))
            && (spec.metad_base_port == 0
                || existing
                    .metad
                    .values()
                    .enumerate()
                    .all(|(i, a)| *a == fixed(spec.metad_base_port, i)))
            && (spec.router_port == 0 || existing.router.port() == spec.router_port)
            && (spec.detector_base_port == 0
                || existing
                    .detectors
                    .iter()
                    .enumerate()
                    .all(|(i, a)| *a == fixed(spec.detector_base_port, i)));
        if same_shape && same_ports {
            return Ok(existing);
        }
        return Err(LaunchError::ShapeMismatch {
            path,
            dir: spec.data_dir.clone(),
            found: existing.describe(),
        });
    }
    let port = |base: u16, index: usize| -> Result<SocketAddr, LaunchError> {
        let port = if base == 0 {
            free_port()?
        } else {
            base.checked_add(u16::try_from(index).unwrap_or(u16::MAX))
                .ok_or_else(|| {
                    LaunchError::Invalid(format!("port {base} + {index} is above 65535"))
                })?
        };
        Ok(SocketAddr::from(([127, 0, 0, 1], port)))
    };
    let layout = Layout {
        partitions: spec.partitions,
        replication_factor: spec.replication_factor,
        router: port(spec.router_port, 0)?,
        metad: (0..spec.metad_replicas)
            .map(|i| Ok((i + 1, port(spec.metad_base_port, i as usize)?)))
            .collect::<Result<_, LaunchError>>()?,
        storage: (0..spec.nodes + spec.standbys)
            .map(|i| port(spec.storage_base_port, i))
            .collect::<Result<_, LaunchError>>()?,
        standbys: spec.standbys,
        detectors: (0..spec.detectors)
            .map(|i| port(spec.detector_base_port, i))
            .collect::<Result<_, LaunchError>>()?,
        recovery: (0..spec.recovery)
            .map(|i| port(spec.recovery_base_port, i))
            .collect::<Result<_, LaunchError>>()?,
    };
    layout
        .settings()
        .validate()
        .map_err(|e| LaunchError::Invalid(e.to_string()))?;
    let text =
        serde_json::to_string_pretty(&layout).map_err(|e| LaunchError::Invalid(e.to_string()))?;
    std::fs::write(&path, text).map_err(io(format!("writing {}", path.display())))?;
    Ok(layout)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(dir: &Path, nodes: usize) -> ClusterSpec {
        ClusterSpec {
            nodes,
            storage_base_port: 17_001,
            metad_base_port: 17_101,
            router_port: 17_200,
            detector_base_port: 17_300,
            recovery_base_port: 17_400,
            ..ClusterSpec::for_tests(dir)
        }
    }

    #[test]
    fn a_data_directory_keeps_its_layout_across_restarts() {
        let dir = tempfile::tempdir().expect("tempdir");
        let first = prepare_layout(&spec(dir.path(), 5)).expect("first start");
        let again = prepare_layout(&spec(dir.path(), 5)).expect("restart");
        assert_eq!(first, again);
        assert_eq!(first.storage[4].to_string(), "127.0.0.1:17005");
        assert_eq!(first.metad[&3].to_string(), "127.0.0.1:17103");
        assert_eq!(first.settings().bootstrap_nodes, 5);
        // Free ports are picked once, then kept.
        let free = tempfile::tempdir().expect("tempdir");
        let picked = prepare_layout(&ClusterSpec::for_tests(free.path())).expect("free ports");
        let kept = prepare_layout(&ClusterSpec::for_tests(free.path())).expect("restart");
        assert_eq!(picked, kept);
    }

    #[test]
    fn a_data_directory_refuses_another_cluster_shape() {
        let dir = tempfile::tempdir().expect("tempdir");
        prepare_layout(&spec(dir.path(), 5)).expect("first start");
        let moved = ClusterSpec {
            metad_base_port: 18_000,
            ..spec(dir.path(), 5)
        };
        assert!(prepare_layout(&moved).is_err(), "other metadata ports");
        let error = prepare_layout(&spec(dir.path(), 7)).expect_err("different shape");
        assert!(
            error.to_string().contains("describes a different cluster"),
            "{error}"
        );
    }
}
