//! `kvorumctl`: the human's client of a Kvorum cluster, through the router's REST API.
//!
//! Its output is its interface: values and tables go to stdout, errors and
//! (with `--verbose`) consistency receipts to stderr.

#![allow(clippy::print_stdout, clippy::print_stderr)]

mod metad;
mod table;

use std::io::{Read, Write};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use kvorum_protocol::storage::{CheckpointInfo, ImportResponse};
use kvorum_protocol::{
    ClusterView, ConflictStrategy, ConsistencyLevel, ErrorBody, KeyspaceConfig, KeyspaceMode,
    KeyspaceSpec,
};
use reqwest::{Method, StatusCode};

/// Talks to a Kvorum cluster through its router.
#[derive(Debug, Parser)]
#[command(name = "kvorumctl", version, about)]
struct Cli {
    /// The router's base URL.
    #[arg(long, env = "KVORUM_ROUTER", default_value = "http://127.0.0.1:8080")]
    router: String,

    /// Show each response's consistency receipt (X-Kvorum-* headers) on stderr.
    #[arg(long, short, env = "KVORUM_VERBOSE")]
    verbose: bool,

    /// How long to wait for an answer, in milliseconds.
    #[arg(long, env = "KVORUM_TIMEOUT_MS", default_value_t = 15_000, value_parser = clap::value_parser!(u64).range(1..))]
    timeout_ms: u64,

    #[command(subcommand)]
    command: Command,
}

/// Key-level options shared by get, put and delete.
#[derive(Debug, clap::Args)]
struct KeyArgs {
    /// The key (may contain '/').
    key: String,
    /// The keyspace (default: `default`).
    #[arg(long)]
    keyspace: Option<String>,
    /// one, quorum or all (default: the keyspace's).
    #[arg(long)]
    consistency: Option<String>,
    /// For put and delete: the causal context of an earlier read (its X-Kvorum-Context,
    /// shown by `get --verbose` and with siblings); the write supersedes what that read saw.
    #[arg(long)]
    context: Option<String>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Print a key's value to stdout.
    Get(KeyArgs),
    /// Write a value: the argument, or stdin when it is `-`.
    Put {
        #[command(flatten)]
        key: KeyArgs,
        /// The value, or `-` to read it from stdin.
        value: String,
    },
    /// Delete a key.
    Delete(KeyArgs),
    /// Keyspaces.
    #[command(subcommand)]
    Keyspace(KeyspaceCommand),
    /// The cluster.
    #[command(subcommand)]
    Cluster(ClusterCommand),
    /// A storage node's checkpoints.
    #[command(subcommand)]
    Checkpoint(CheckpointCommand),
    /// Adding and decommissioning storage nodes.
    #[command(subcommand)]
    Node(NodeCommand),
    /// The metadata group's members: list, add, remove, replace.
    Metad(metad::MetadArgs),
}

#[derive(Debug, Subcommand)]
enum NodeCommand {
    /// Admit a node before its process starts; once it registers, partitions move onto it.
    Add {
        /// The node's id.
        id: u64,
        /// The `host:port` it will serve at.
        #[arg(long)]
        address: String,
        /// Admit it as a warm standby rather than a storage node.
        #[arg(long)]
        standby: bool,
    },
    /// Move every partition off a node, then mark it decommissioned.
    Decommission {
        /// The node's id.
        id: u64,
        /// Wait until it is drained, showing a progress bar.
        #[arg(long)]
        wait: bool,
    },
}

#[derive(Debug, Subcommand)]
enum CheckpointCommand {
    /// List a node's checkpoints, oldest first.
    List {
        /// The storage node's id.
        #[arg(long)]
        node: u64,
    },
    /// Take a checkpoint on a node now.
    Create {
        /// The storage node's id.
        #[arg(long)]
        node: u64,
    },
    /// Import a checkpoint's records back into a node (newer records are kept).
    Restore {
        /// The storage node's id.
        #[arg(long)]
        node: u64,
        /// The checkpoint's name, as `checkpoint list` shows it.
        name: String,
    },
}

#[derive(Debug, Subcommand)]
enum KeyspaceCommand {
    /// List keyspaces.
    List,
    /// Show one keyspace.
    Get {
        /// Its name.
        name: String,
    },
    /// Create a keyspace (unset settings take the cluster's defaults).
    Create {
        /// Its name.
        name: String,
        /// strong or eventual.
        #[arg(long, value_parser = parse_word::<KeyspaceMode>)]
        mode: KeyspaceMode,
        /// Replicas per key (at most the cluster's replication factor).
        #[arg(long)]
        replication_factor: Option<usize>,
        /// lww, merge or siblings (eventual keyspaces).
        #[arg(long, value_parser = parse_word::<ConflictStrategy>)]
        conflict: Option<ConflictStrategy>,
        /// Default read level: one, quorum or all.
        #[arg(long)]
        read_consistency: Option<ConsistencyLevel>,
        /// Default write level: quorum or all (one only for eventual keyspaces).
        #[arg(long)]
        write_consistency: Option<ConsistencyLevel>,
    },
}

#[derive(Debug, Subcommand)]
enum ClusterCommand {
    /// Nodes, their states and load, and the metadata leader, as a table.
    Status,
}

/// An answer from the router.
struct Answer {
    status: StatusCode,
    headers: reqwest::header::HeaderMap,
    body: Vec<u8>,
}

impl Answer {
    /// The router's error message, or the status when the body is not a Kvorum error.
    fn error(&self) -> String {
        match serde_json::from_slice::<ErrorBody>(&self.body) {
            Ok(body) => format!(
                "{} ({}): {}",
                self.status,
                serde_json::to_value(body.error.code)
                    .unwrap_or_default()
                    .as_str()
                    .unwrap_or("error"),
                body.error.message
            ),
            Err(_) => format!("{}: {}", self.status, String::from_utf8_lossy(&self.body)),
        }
    }
}

struct Client {
    http: reqwest::Client,
    router: String,
    verbose: bool,
}

impl Client {
    async fn call(&self, method: Method, path: &str, body: Vec<u8>) -> anyhow::Result<Answer> {
        self.call_with_context(method, path, body, None).await
    }

    /// A key request, carrying the causal context the user gave.
    async fn call_key(
        &self,
        method: Method,
        args: &KeyArgs,
        body: Vec<u8>,
    ) -> anyhow::Result<Answer> {
        self.call_with_context(method, &key_path(args), body, args.context.as_deref())
            .await
    }

    async fn call_with_context(
        &self,
        method: Method,
        path: &str,
        body: Vec<u8>,
        context: Option<&str>,
    ) -> anyhow::Result<Answer> {
        let url = format!("{}{path}", self.router.trim_end_matches('/'));
        self.send(&url, method, body, context).await
    }

    /// A call to another service than the router (at `base`, a URL).
    async fn call_at(
        &self,
        base: &str,
        method: Method,
        path: &str,
        body: Vec<u8>,
    ) -> anyhow::Result<Answer> {
        self.send(&format!("{base}{path}"), method, body, None)
            .await
    }

    async fn send(
        &self,
        url: &str,
        method: Method,
        body: Vec<u8>,
        context: Option<&str>,
    ) -> anyhow::Result<Answer> {
        let mut request = self.http.request(method, url).body(body);
        if let Some(context) = context {
            request = request.header(kvorum_protocol::headers::CONTEXT, context);
        }
        let response = request
            .send()
            .await
            .map_err(|e| anyhow::anyhow!("cannot reach {url}: {e}"))?;
        let answer = Answer {
            status: response.status(),
            headers: response.headers().clone(),
            body: response.bytes().await?.to_vec(),
        };
        if self.verbose {
            for (name, value) in &answer.headers {
                if name.as_str().starts_with("x-kvorum-") {
                    eprintln!("{name}: {}", value.to_str().unwrap_or("?"));
                }
            }
        }
        Ok(answer)
    }
}

impl Client {
    /// Calls storage node `node`'s internal API, found through the router's cluster view.
    async fn call_node(&self, node: u64, method: Method, path: &str) -> anyhow::Result<Answer> {
        let view = cluster_view(self).await?;
        let address = view
            .nodes
            .iter()
            .find(|n| n.id.0 == node)
            .map(|n| n.address.clone())
            .ok_or_else(|| anyhow::anyhow!("the cluster has no node {node}"))?;
        let response = self
            .http
            .request(method, format!("http://{address}{path}"))
            .send()
            .await
            .map_err(|e| anyhow::anyhow!("cannot reach node {node} at {address}: {e}"))?;
        Ok(Answer {
            status: response.status(),
            headers: response.headers().clone(),
            body: response.bytes().await?.to_vec(),
        })
    }
}

/// `/v1/kv/{key}?keyspace=..&consistency=..`, with the key's bytes percent-encoded but its slashes kept.
/// Follows a decommission until the node holds nothing and is decommissioned,
/// with a progress bar of the replicas moved off it.
async fn cluster_view(client: &Client) -> anyhow::Result<ClusterView> {
    let answer = client.call(Method::GET, "/v1/cluster", Vec::new()).await?;
    anyhow::ensure!(answer.status == StatusCode::OK, "{}", answer.error());
    Ok(serde_json::from_slice(&answer.body)?)
}

async fn drain_with_progress(client: &Client, id: u64) -> anyhow::Result<()> {
    let view = cluster_view;
    let held = |view: &ClusterView| {
        view.partitions
            .iter()
            .filter(|p| p.replicas.iter().any(|r| r.0 == id))
            .count() as u64
    };
    let first = view(client).await?;
    let total = held(&first);
    let bar = indicatif::ProgressBar::new(total);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "draining node {msg} [{bar:40}] {pos}/{len} partitions moved ({elapsed})",
        )?
        .progress_chars("=> "),
    );
    bar.set_message(id.to_string());
    loop {
        let now = view(client).await?;
        bar.set_position(total.saturating_sub(held(&now)));
        let decommissioned = now.nodes.iter().any(|n| {
            n.id.0 == id && n.state == kvorum_protocol::cluster::NodeState::Decommissioned
        });
        if decommissioned {
            bar.finish_with_message(format!("{id} done"));
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Parses a lowercase word such as `strong` or `siblings` into the protocol enum it names.
fn parse_word<T: serde::de::DeserializeOwned + 'static>(text: &str) -> Result<T, String> {
    serde_json::from_value(serde_json::Value::String(text.to_owned()))
        .map_err(|e| format!("{text:?}: {e}"))
}

fn key_path(args: &KeyArgs) -> String {
    let mut path = String::from("/v1/kv/");
    for byte in args.key.bytes() {
        if byte.is_ascii_alphanumeric() || b"/-_.~".contains(&byte) {
            path.push(char::from(byte));
        } else {
            path.push_str(&format!("%{byte:02X}"));
        }
    }
    let query: Vec<String> = [
        ("keyspace", &args.keyspace),
        ("consistency", &args.consistency),
    ]
    .into_iter()
    .filter_map(|(name, value)| value.as_ref().map(|v| format!("{name}={v}")))
    .collect();
    if !query.is_empty() {
        path.push('?');
        path.push_str(&query.join("&"));
    }
    path
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_millis(cli.timeout_ms))
        .build()?;
    let client = Client {
        http,
        router: cli.router,
        verbose: cli.verbose,
    };
    match cli.command {
        Command::Get(args) => {
            let answer = client.call_key(Method::GET, &args, Vec::new()).await?;
            if answer.status == StatusCode::MULTIPLE_CHOICES {
                // Concurrent siblings: show them all, and how to resolve them.
                let siblings: kvorum_protocol::conflict::SiblingsResponse =
                    serde_json::from_slice(&answer.body)?;
                println!("{}", serde_json::to_string_pretty(&siblings)?);
                eprintln!(
                    "{} concurrent versions; write the resolved value with --context {}",
                    siblings.siblings.len(),
                    siblings.context
                );
                return Ok(());
            }
            anyhow::ensure!(answer.status == StatusCode::OK, "{}", answer.error());
            std::io::stdout().write_all(&answer.body)?;
        }
        Command::Put { key, value } => {
            let bytes = if value == "-" {
                let mut buffer = Vec::new();
                std::io::stdin().read_to_end(&mut buffer)?;
                buffer
            } else {
                value.into_bytes()
            };
            let answer = client.call_key(Method::PUT, &key, bytes).await?;
            anyhow::ensure!(answer.status.is_success(), "{}", answer.error());
        }
        Command::Delete(args) => {
            let answer = client.call_key(Method::DELETE, &args, Vec::new()).await?;
            anyhow::ensure!(answer.status.is_success(), "{}", answer.error());
        }
        Command::Keyspace(KeyspaceCommand::List) => {
            let answer = client
                .call(Method::GET, "/v1/keyspaces", Vec::new())
                .await?;
            anyhow::ensure!(answer.status == StatusCode::OK, "{}", answer.error());
            let keyspaces: Vec<KeyspaceConfig> = serde_json::from_slice(&answer.body)?;
            print!("{}", table::keyspaces(&keyspaces));
        }
        Command::Keyspace(KeyspaceCommand::Get { name }) => {
            let answer = client
                .call(Method::GET, &format!("/v1/keyspaces/{name}"), Vec::new())
                .await?;
            anyhow::ensure!(answer.status == StatusCode::OK, "{}", answer.error());
            let keyspace: KeyspaceConfig = serde_json::from_slice(&answer.body)?;
            print!("{}", table::keyspaces(&[keyspace]));
        }
        Command::Keyspace(KeyspaceCommand::Create {
            name,
            mode,
            replication_factor,
            conflict,
            read_consistency,
            write_consistency,
        }) => {
            let spec = KeyspaceSpec {
                mode,
                replication_factor,
                conflict,
                read_consistency,
                write_consistency,
            };
            let answer = client
                .call(
                    Method::PUT,
                    &format!("/v1/keyspaces/{name}"),
                    serde_json::to_vec(&spec)?,
                )
                .await?;
            anyhow::ensure!(answer.status.is_success(), "{}", answer.error());
            let keyspace: KeyspaceConfig = serde_json::from_slice(&answer.body)?;
            if answer.status == StatusCode::OK {
                println!(
                    "keyspace {} already exists with these settings",
                    keyspace.name
                );
            }
            print!("{}", table::keyspaces(&[keyspace]));
        }
        Command::Checkpoint(CheckpointCommand::List { node }) => {
            let answer = client
                .call_node(node, Method::GET, "/internal/v1/checkpoints")
                .await?;
            anyhow::ensure!(answer.status == StatusCode::OK, "{}", answer.error());
            let checkpoints: Vec<CheckpointInfo> = serde_json::from_slice(&answer.body)?;
            print!("{}", table::checkpoints(&checkpoints));
        }
        Command::Checkpoint(CheckpointCommand::Create { node }) => {
            let answer = client
                .call_node(node, Method::POST, "/internal/v1/checkpoints")
                .await?;
            anyhow::ensure!(answer.status == StatusCode::OK, "{}", answer.error());
            let taken: CheckpointInfo = serde_json::from_slice(&answer.body)?;
            print!("{}", table::checkpoints(&[taken]));
        }
        Command::Checkpoint(CheckpointCommand::Restore { node, name }) => {
            let path = format!("/internal/v1/checkpoints/{name}/restore");
            let answer = client.call_node(node, Method::POST, &path).await?;
            anyhow::ensure!(answer.status == StatusCode::OK, "{}", answer.error());
            let restored: ImportResponse = serde_json::from_slice(&answer.body)?;
            println!(
                "restored {name} on node {node}: {} records brought back, {} already as new or newer",
                restored.applied, restored.skipped
            );
        }
        Command::Node(NodeCommand::Add {
            id,
            address,
            standby,
        }) => {
            let body = serde_json::json!({
                "address": address,
                "role": if standby { "standby" } else { "storage" },
            });
            let answer = client
                .call(
                    Method::PUT,
                    &format!("/v1/nodes/{id}"),
                    serde_json::to_vec(&body)?,
                )
                .await?;
            anyhow::ensure!(answer.status.is_success(), "{}", answer.error());
            println!("node {id} admitted at {address}; start its process with --node-id {id}");
        }
        Command::Node(NodeCommand::Decommission { id, wait }) => {
            let answer = client
                .call(
                    Method::POST,
                    &format!("/v1/nodes/{id}/decommission"),
                    Vec::new(),
                )
                .await?;
            anyhow::ensure!(answer.status.is_success(), "{}", answer.error());
            if wait {
                drain_with_progress(&client, id).await?;
            } else {
                println!(
                    "node {id} is leaving; `kvorumctl cluster status` shows its replicas going to 0"
                );
            }
        }
        Command::Metad(args) => metad::run(&client, args).await?,
        Command::Cluster(ClusterCommand::Status) => {
            let answer = client.call(Method::GET, "/v1/cluster", Vec::new()).await?;
            anyhow::ensure!(answer.status == StatusCode::OK, "{}", answer.error());
            let view: ClusterView = serde_json::from_slice(&answer.body)?;
            print!("{}", table::cluster(&view));
        }
    }
    Ok(())
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("kvorumctl: {error}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_flag_can_be_set_from_the_environment() {
        kvorum_telemetry::assert_every_flag_has_an_env(&<Cli as clap::CommandFactory>::command());
    }

    #[test]
    fn keys_keep_their_slashes_and_escape_the_rest() {
        let args = |key: &str, keyspace: Option<&str>| KeyArgs {
            key: key.into(),
            keyspace: keyspace.map(Into::into),
            consistency: None,
            context: None,
        };
        assert_eq!(key_path(&args("a/b", None)), "/v1/kv/a/b");
        assert_eq!(
            key_path(&args("a b?c", Some("users"))),
            "/v1/kv/a%20b%3Fc?keyspace=users"
        );
        assert_eq!(
            key_path(&args("ключ", None)),
            "/v1/kv/%D0%BA%D0%BB%D1%8E%D1%87"
        );
    }
}
