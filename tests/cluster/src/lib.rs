//! Helpers for the cluster tests: start a local cluster in a temporary directory and talk to its router.
//!
//! - [`history`]: concurrent clients recording strong histories, and the linearizability check.

pub mod history;

use std::collections::BTreeMap;
use std::time::Duration;

use kvorum_launcher::{ClusterSpec, LocalCluster};
use kvorum_metad_client::{MetadAddresses, MetadClient};
use kvorum_protocol::storage::{CausalReadResponse, ReadResponse, ReplicaKey};
use kvorum_protocol::{CausalState, Epoch, Key, KeyspaceName, NodeId, PartitionId};
use reqwest::StatusCode;
use reqwest::header::HeaderMap;
use tempfile::TempDir;

/// A running cluster and the directory holding its data; both go away on drop.
#[derive(Debug)]
pub struct TestCluster {
    /// The cluster; its processes are killed when it is dropped.
    pub cluster: LocalCluster,
    /// The data directory (kept alive as long as the cluster).
    pub dir: TempDir,
    /// A client for the router.
    pub client: Client,
}

impl TestCluster {
    /// Starts the test-sized cluster (5 nodes, RF 3) on free ports.
    pub async fn start() -> anyhow::Result<Self> {
        Self::start_in(tempfile::tempdir()?).await
    }

    /// Kills every process with SIGKILL, then starts the cluster again on the same data directory.
    pub async fn crash_and_restart(self) -> anyhow::Result<Self> {
        let Self { cluster, dir, .. } = self;
        cluster.kill_all().await?;
        Self::start_in(dir).await
    }

    /// Stops every process with SIGTERM, then starts the cluster again on the same data directory.
    pub async fn stop_and_restart(self) -> anyhow::Result<Self> {
        let Self { cluster, dir, .. } = self;
        cluster.stop().await?;
        Self::start_in(dir).await
    }

    /// Starts the test-sized cluster with extra environment for every process (such as `OTEL_*`).
    pub async fn start_with_env(env: BTreeMap<String, String>) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let spec = ClusterSpec {
            env,
            ..ClusterSpec::for_tests(dir.path())
        };
        Self::start_spec_in(dir, spec).await
    }

    /// Starts the cluster on `dir`, fresh or holding an earlier run's data.
    async fn start_in(dir: TempDir) -> anyhow::Result<Self> {
        let spec = ClusterSpec::for_tests(dir.path());
        Self::start_spec_in(dir, spec).await
    }

    /// Starts the cluster `spec` describes, with its data in `dir`.
    pub async fn start_spec_in(dir: TempDir, spec: ClusterSpec) -> anyhow::Result<Self> {
        let cluster = LocalCluster::start(spec).await?;
        let client = Client::new(cluster.router_url())?;
        Ok(Self {
            cluster,
            dir,
            client,
        })
    }

    /// Creates a keyspace through the router (`PUT /v1/keyspaces/{name}` with
    /// the JSON `spec`), failing unless it answers 201.
    pub async fn create_keyspace(&self, name: &str, spec: &str) -> anyhow::Result<()> {
        let answer = self
            .client
            .send(
                reqwest::Method::PUT,
                &format!("/v1/keyspaces/{name}"),
                spec.as_bytes().to_vec(),
            )
            .await?;
        anyhow::ensure!(
            answer.status == StatusCode::CREATED,
            "create {name}: {} {:?}",
            answer.status,
            answer.json()
        );
        Ok(())
    }

    /// A client of the cluster's metadata service.
    pub fn metad_client(&self) -> anyhow::Result<MetadClient> {
        let addresses = self
            .cluster
            .metad()
            .addresses()
            .values()
            .map(ToString::to_string)
            .collect();
        MetadClient::new(
            kvorum_http_client::ClientConfig::new("tests"),
            MetadAddresses(addresses),
        )
        .map_err(anyhow::Error::msg)
    }

    /// Reads a key straight from one storage node's internal API, bypassing the router.
    pub async fn read_replica(
        &self,
        node: NodeId,
        key: &str,
        partition: PartitionId,
        epoch: Epoch,
    ) -> anyhow::Result<ReadResponse> {
        let address = self.cluster.storage_address(node)?;
        let target = ReplicaKey {
            partition,
            epoch,
            keyspace: KeyspaceName::default_keyspace(),
            key: Key::parse(key)?,
        };
        let response = self
            .client
            .http
            .post(format!("http://{address}/internal/v1/read"))
            .json(&target)
            .send()
            .await?;
        anyhow::ensure!(
            response.status().is_success(),
            "replica read answered {}",
            response.status()
        );
        Ok(response.json().await?)
    }
}

impl TestCluster {
    /// Reads an eventual keyspace's causal state of a key straight from one storage node.
    pub async fn read_causal(
        &self,
        node: NodeId,
        keyspace: &str,
        key: &str,
        partition: PartitionId,
        epoch: Epoch,
    ) -> anyhow::Result<CausalState> {
        let address = self.cluster.storage_address(node)?;
        let target = ReplicaKey {
            partition,
            epoch,
            keyspace: KeyspaceName::parse(keyspace)?,
            key: Key::parse(key)?,
        };
        let response = self
            .client
            .http
            .post(format!("http://{address}/internal/v1/causal/read"))
            .json(&target)
            .send()
            .await?;
        anyhow::ensure!(
            response.status().is_success(),
            "replica causal read answered {}",
            response.status()
        );
        let answer: CausalReadResponse = response.json().await?;
        Ok(answer.state)
    }
}

/// An answer from the router.
#[derive(Debug)]
pub struct Answer {
    /// The status.
    pub status: StatusCode,
    /// The headers.
    pub headers: HeaderMap,
    /// The body.
    pub body: Vec<u8>,
}

impl Answer {
    /// The body as JSON (`Null` when it is not JSON).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }

    /// A header as a string ("" when absent).
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
    }

    /// The replica ids of a receipt header such as `x-kvorum-replicas-asked`.
    pub fn nodes(&self, name: &str) -> Vec<NodeId> {
        self.header(name)
            .split(',')
            .filter_map(|id| id.parse().ok())
            .map(NodeId)
            .collect()
    }

    /// The partition and epoch the receipt names.
    pub fn route(&self) -> (PartitionId, Epoch) {
        let number = |name| self.header(name).parse().unwrap_or_default();
        (
            PartitionId(number("x-kvorum-partition") as u32),
            Epoch(number("x-kvorum-epoch")),
        )
    }
}

/// A client of the router's REST API.
#[derive(Debug, Clone)]
pub struct Client {
    base: String,
    http: reqwest::Client,
}

impl Client {
    /// A client of the router at `base` (`http://127.0.0.1:PORT`).
    pub fn new(base: String) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()?;
        Ok(Self { base, http })
    }

    /// `GET {path}` on the router, decoded as JSON.
    pub async fn get_json(&self, path: &str) -> anyhow::Result<serde_json::Value> {
        let answer = self.send(reqwest::Method::GET, path, Vec::new()).await?;
        anyhow::ensure!(answer.status.is_success(), "GET {path}: {}", answer.status);
        Ok(answer.json())
    }

    /// Sends `method` to `path` (with its query) with `body`.
    pub async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Vec<u8>,
    ) -> anyhow::Result<Answer> {
        let response = self
            .http
            .request(method, format!("{}{path}", self.base))
            .body(body)
            .send()
            .await?;
        Ok(Answer {
            status: response.status(),
            headers: response.headers().clone(),
            body: response.bytes().await?.to_vec(),
        })
    }

    /// `PUT /v1/kv/{key_and_query}` carrying a causal context from an earlier answer.
    pub async fn put_with_context(
        &self,
        key_and_query: &str,
        value: &[u8],
        context: &str,
    ) -> anyhow::Result<Answer> {
        let response = self
            .http
            .put(format!("{}/v1/kv/{key_and_query}", self.base))
            .header("x-kvorum-context", context)
            .body(value.to_vec())
            .send()
            .await?;
        Ok(Answer {
            status: response.status(),
            headers: response.headers().clone(),
            body: response.bytes().await?.to_vec(),
        })
    }

    /// `PUT /v1/kv/{key_and_query}`.
    pub async fn put(&self, key_and_query: &str, value: &[u8]) -> anyhow::Result<Answer> {
        self.kv(reqwest::Method::PUT, key_and_query, value.to_vec())
            .await
    }

    /// `GET /v1/kv/{key_and_query}`.
    pub async fn get(&self, key_and_query: &str) -> anyhow::Result<Answer> {
        self.kv(reqwest::Method::GET, key_and_query, Vec::new())
            .await
    }

    /// `DELETE /v1/kv/{key_and_query}`.
    pub async fn delete(&self, key_and_query: &str) -> anyhow::Result<Answer> {
        self.kv(reqwest::Method::DELETE, key_and_query, Vec::new())
            .await
    }

    async fn kv(
        &self,
        method: reqwest::Method,
        key_and_query: &str,
        body: Vec<u8>,
    ) -> anyhow::Result<Answer> {
        self.send(method, &format!("/v1/kv/{key_and_query}"), body)
            .await
    }
}
