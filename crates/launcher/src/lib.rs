//! A whole Kvorum cluster as local processes on 127.0.0.1 (or, for chaos
//! runs, on a loopback address of each process's own).
//!
//! `make run` and the cluster tests start clusters through this one piece of
//! code. Each process gets its own log file and data directory under the
//! cluster's data directory. Children are put in process groups of their own
//! and are told by the kernel to die with their parent, and [`LocalCluster`]
//! kills them on drop, so a failing or aborted test leaves nothing behind.

mod clock;
mod layout;
mod metad;
mod process;

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

pub use crate::clock::{DEFAULT_LIBFAKETIME, FakeClocks};
use crate::layout::{Layout, prepare_layout};
pub use crate::metad::MetadGroup;
use crate::process::ManagedProcess;
use kvorum_http_client::{ClientConfig, HttpClient};
use kvorum_protocol::NodeId;
use kvorum_protocol::health::Health;

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
    /// Routers to start.
    pub routers: usize,
    /// Port of router 1 (router i gets base + i - 1); 0 picks free ones.
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
    /// Give each process a loopback address of its own (127.a.b.c), so that
    /// firewall rules can cut the links between two of them.
    pub own_addresses: bool,
    /// Start routers, metadata replicas, detectors and recovery controllers
    /// with this libfaketime library preloaded, so that their wall clocks can
    /// be stepped ([`LocalCluster::clocks`]).
    pub fake_clocks: Option<PathBuf>,
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
            routers: 1,
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
            own_addresses: false,
            fake_clocks: None,
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
    free_port_on(IpAddr::V4(Ipv4Addr::LOCALHOST))
}

/// A free TCP port on `ip`, chosen as [`free_port`] chooses one.
pub fn free_port_on(ip: IpAddr) -> Result<u16, LaunchError> {
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
        if TcpListener::bind((ip, port)).is_ok() {
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
    routers: Vec<ManagedProcess>,
    detectors: Vec<ManagedProcess>,
    recovery: Vec<ManagedProcess>,
    clocks: Option<FakeClocks>,
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
        let clocks = spec
            .fake_clocks
            .as_deref()
            .map(|library| FakeClocks::new(library, &spec.data_dir.join("clocks")))
            .transpose()?;
        let metad = MetadGroup::start_at(
            &spec.data_dir,
            layout.metad.clone(),
            Some(layout.settings()),
            &spec.bin_dir,
            &spec.log_filter,
            &spec.env,
            clocks.clone(),
        )
        .await?;
        let mut cluster = Self {
            spec,
            layout,
            metad,
            storage: Vec::new(),
            routers: Vec::new(),
            detectors: Vec::new(),
            recovery: Vec::new(),
            clocks,
            client,
        };
        for index in 0..cluster.layout.storage.len() {
            let process = cluster.spawn_storage(index)?;
            cluster.storage.push(process);
        }
        for index in 0..cluster.layout.routers().len() {
            let router = cluster.spawn_router(index)?;
            cluster.routers.push(router);
        }
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
        for index in 0..cluster.routers.len() {
            cluster.wait_healthy(StorageOrRouter::Router(index)).await?;
        }
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

    /// `http://127.0.0.1:PORT`, the (first) router's base URL.
    pub fn router_url(&self) -> String {
        format!("http://{}", self.layout.router)
    }

    /// Every router's base URL, in start order.
    pub fn router_urls(&self) -> Vec<String> {
        self.layout
            .routers()
            .iter()
            .map(|address| format!("http://{address}"))
            .collect()
    }

    /// Every process of the cluster: its name (as its log file has it), kind and address.
    pub fn processes(&self) -> Vec<ProcessInfo> {
        let mut all = Vec::new();
        let mut add = |kind, name: String, address| {
            all.push(ProcessInfo {
                kind,
                name,
                address,
            });
        };
        for (id, address) in &self.layout.metad {
            add(ProcessKind::Metad, format!("metad-{id}"), *address);
        }
        for (i, address) in self.layout.storage.iter().enumerate() {
            add(ProcessKind::Storage, format!("storage-{}", i + 1), *address);
        }
        for (i, address) in self.layout.routers().iter().enumerate() {
            add(ProcessKind::Router, router_name(i), *address);
        }
        for (i, address) in self.layout.detectors.iter().enumerate() {
            add(
                ProcessKind::Detector,
                format!("detector-{}", i + 1),
                *address,
            );
        }
        for (i, address) in self.layout.recovery.iter().enumerate() {
            add(
                ProcessKind::Recovery,
                format!("recovery-{}", i + 1),
                *address,
            );
        }
        all
    }

    /// The wall clocks of the processes started on fake clocks, when the spec asked for them.
    pub fn clocks(&self) -> Option<&FakeClocks> {
        self.clocks.as_ref()
    }

    /// Freezes router `index` (0-based) with SIGSTOP.
    pub fn pause_router(&self, index: usize) -> Result<(), LaunchError> {
        self.router(index)?.pause();
        Ok(())
    }

    /// Lets a paused router run again with SIGCONT.
    pub fn resume_router(&self, index: usize) -> Result<(), LaunchError> {
        self.router(index)?.resume();
        Ok(())
    }

    fn router(&self, index: usize) -> Result<&ManagedProcess, LaunchError> {
        self.routers
            .get(index)
            .ok_or_else(|| LaunchError::Invalid(format!("no router {index}")))
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
        let address = self.layout.next_address()?;
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
        for router in &mut self.routers {
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
        for router in &mut self.routers {
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

    fn spawn_router(&self, index: usize) -> Result<ManagedProcess, LaunchError> {
        let name = router_name(index);
        let args = vec![
            "--listen".to_owned(),
            self.layout.routers()[index].to_string(),
            "--metad".to_owned(),
            self.metad_list(),
        ];
        ManagedProcess::spawn(
            &name,
            &self.spec.bin_dir.join("kvorum-router"),
            &args,
            &self.log_path(&name),
            &self.spec.log_filter,
            &self.env_for(&name)?,
        )
    }

    /// The environment of process `name`: the spec's, and its fake clock if
    /// the cluster has them (storage nodes keep the true time).
    fn env_for(&self, name: &str) -> Result<BTreeMap<String, String>, LaunchError> {
        process_env(&self.spec.env, self.clocks.as_ref(), name)
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
            &self.env_for(&name)?,
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
            &self.env_for(&name)?,
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
            StorageOrRouter::Router(index) => (
                self.layout.routers()[index].to_string(),
                self.routers
                    .get_mut(index)
                    .ok_or(LaunchError::Invalid(format!("router {index} not started")))?,
            ),
        };
        wait_for(&self.client, process, &address, Probe::Healthy).await
    }

    /// Waits until every router routes by a partition map (every storage node registered).
    pub async fn wait_router_ready(&mut self) -> Result<(), LaunchError> {
        for (address, process) in self.layout.routers().iter().zip(&mut self.routers) {
            wait_for(&self.client, process, &address.to_string(), Probe::Ready).await?;
        }
        Ok(())
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

/// The last `lines` lines of a log file, for error messages.
fn log_tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

enum StorageOrRouter {
    Storage(usize),
    Router(usize),
}

/// Router `index`'s name: `router` for the first (as `make run` has always
/// named it), `router-2` and on for the others.
fn router_name(index: usize) -> String {
    if index == 0 {
        "router".to_owned()
    } else {
        format!("router-{}", index + 1)
    }
}

/// The environment of process `name`: `base`, and its fake clock when there are clocks.
pub(crate) fn process_env(
    base: &BTreeMap<String, String>,
    clocks: Option<&FakeClocks>,
    name: &str,
) -> Result<BTreeMap<String, String>, LaunchError> {
    let mut env = base.clone();
    if let Some(clocks) = clocks {
        env.extend(clocks.env(name)?);
    }
    Ok(env)
}

/// What a process of a local cluster is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProcessKind {
    /// A metadata replica.
    Metad,
    /// A storage node.
    Storage,
    /// A router.
    Router,
    /// A failure detector.
    Detector,
    /// A recovery controller.
    Recovery,
}

/// One process of a local cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessInfo {
    /// What it is.
    pub kind: ProcessKind,
    /// Its name, as its log file and its clock file have it (`storage-2`).
    pub name: String,
    /// Where it listens.
    pub address: SocketAddr,
}
