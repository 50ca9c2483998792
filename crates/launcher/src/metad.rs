//! A group of metadata replicas as local processes.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use kvorum_http_client::{ClientConfig, HttpClient};
use kvorum_protocol::{ClusterSettings, NodeId};

use crate::process::ManagedProcess;
use crate::{FakeClocks, LaunchError, Probe, free_port, io, process_env, wait_for};

/// A group of metadata replicas (`kvorum-metad`); killed on drop.
#[derive(Debug)]
pub struct MetadGroup {
    dir: PathBuf,
    bin_dir: PathBuf,
    log_filter: String,
    env: BTreeMap<String, String>,
    clocks: Option<FakeClocks>,
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
        Self::start_at(
            dir,
            addresses,
            None,
            bin_dir,
            "info",
            &BTreeMap::new(),
            None,
        )
        .await
    }

    /// Starts one replica per entry of `addresses`, proposing `settings` (or the
    /// service's defaults) as the cluster's shape, and waits until all are
    /// healthy; with `clocks`, each replica runs on a fake clock of its own.
    pub async fn start_at(
        dir: &Path,
        addresses: BTreeMap<u64, SocketAddr>,
        settings: Option<ClusterSettings>,
        bin_dir: &Path,
        log_filter: &str,
        env: &BTreeMap<String, String>,
        clocks: Option<FakeClocks>,
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
            clocks,
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

    /// Kills one replica and deletes its data directory: the disk is lost.
    /// Started again, it comes back empty, in a new life, and is not a member
    /// until `POST /v1/members/{id}/replace` makes it one.
    pub async fn wipe(&mut self, id: u64) -> Result<(), LaunchError> {
        self.kill(id).await?;
        let dir = self.dir.join(format!("metad-{id}"));
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => Ok(()),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(error) => Err(io(format!("deleting {}", dir.display()))(error)),
        }
    }

    /// Starts a new replica `id` on a free port of `ip`, with an empty store
    /// and the group's replicas as its --peers, and waits until it is healthy;
    /// it is a member once `POST /v1/members` adds it.
    pub async fn start_new(
        &mut self,
        id: u64,
        ip: std::net::IpAddr,
    ) -> Result<SocketAddr, LaunchError> {
        if self.addresses.contains_key(&id) {
            return Err(LaunchError::Invalid(format!("metad replica {id} exists")));
        }
        let address = SocketAddr::new(ip, crate::free_port_on(ip)?);
        self.addresses.insert(id, address);
        self.restart(id).await?;
        Ok(address)
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
            &process_env(&self.env, self.clocks.as_ref(), &name)?,
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
