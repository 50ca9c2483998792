//! A storage node that loses its disk is a new incarnation (SYSTEM.md,
//! invariant 6): on real processes, the scenario that lost an acknowledged
//! write before incarnations existed.
//!
//! Key k lives on replicas {A, B, C}. C is killed; k = v1 is written at QUORUM
//! (acknowledged by A and B); B loses its disk (with or without its
//! checkpoints, one of them older than v1) and restarts; A is paused; C comes
//! back on its own data. B and C answer, yet only C holds anything B may vouch
//! for: no QUORUM read may answer v0, and none may count B. Once A is back, B
//! catches up from a read quorum of the others and counts again. On the
//! strong keyspace, clients read, write and delete keys of the same replicas
//! throughout, and their history (with final reads at ALL) must be
//! linearizable: nothing acknowledged lost, nothing deleted back.

// The measured catch-up times are printed for the closing notes and CI logs.
#![allow(clippy::print_stderr)]

use std::time::{Duration, Instant};

use kvorum_cluster_tests::history::{Workload, ensure_linearizable};
use kvorum_cluster_tests::{Answer, TestCluster};
use kvorum_protocol::NodeId;
use reqwest::StatusCode;

/// What the lost disk took with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Loss {
    /// The data directory and every checkpoint.
    Everything,
    /// The data directory; a checkpoint taken before v1 survives.
    DataWithOlderCheckpoint,
}

/// Eventual writers: blind writes of unique values into a `siblings` keyspace,
/// where no write supersedes another, so every acknowledged value must be
/// among its key's final siblings. Returns the acknowledged (key, value) pairs.
fn eventual_writers(
    client: &kvorum_cluster_tests::Client,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> Vec<tokio::task::JoinHandle<Vec<(String, String)>>> {
    (0..2)
        .map(|writer| {
            let (client, stop) = (client.clone(), stop.clone());
            tokio::spawn(async move {
                let mut acknowledged = Vec::new();
                let mut n = 0;
                while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                    let key = format!("evw/{}", n % 5);
                    let value = format!("w{writer}-{n}");
                    let put = client
                        .put(&format!("{key}?keyspace=evs"), value.as_bytes())
                        .await;
                    if put.is_ok_and(|a| a.status == StatusCode::NO_CONTENT) {
                        acknowledged.push((key, value));
                    }
                    n += 1;
                }
                acknowledged
            })
        })
        .collect()
}

/// What the cluster view says of `node`: (catching up, incarnation).
async fn incarnation_of(cluster: &TestCluster, node: NodeId) -> anyhow::Result<(bool, u64)> {
    let view = cluster.client.get_json("/v1/cluster").await?;
    let entry = view["nodes"]
        .as_array()
        .and_then(|nodes| nodes.iter().find(|n| n["id"] == node.0))
        .ok_or_else(|| anyhow::anyhow!("node {node} not in the view: {view}"))?;
    Ok((
        entry["catching_up"].as_bool().unwrap_or(false),
        entry["incarnation"].as_u64().unwrap_or(0),
    ))
}

fn ensure_not_counted(answer: &Answer, node: NodeId, what: &str) -> anyhow::Result<()> {
    anyhow::ensure!(
        !answer.nodes("x-kvorum-replicas-acked").contains(&node),
        "{what}: the catching-up node {node} was counted: {:?}",
        answer.headers
    );
    Ok(())
}

async fn scenario(eventual: bool, loss: Loss) -> anyhow::Result<()> {
    let mut cluster = TestCluster::start().await?;
    let query = if eventual {
        cluster
            .create_keyspace("ev", r#"{"mode":"eventual","conflict":"lww"}"#)
            .await?;
        cluster
            .create_keyspace("evs", r#"{"mode":"eventual","conflict":"siblings"}"#)
            .await?;
        "?keyspace=ev"
    } else {
        ""
    };
    let key = format!("k{query}");
    let first = cluster.client.put(&key, b"v0").await?;
    anyhow::ensure!(first.status == StatusCode::NO_CONTENT, "{:?}", first.json());
    let replicas = first.nodes("x-kvorum-replicas-asked");
    let (a, b, c) = (replicas[0], replicas[1], replicas[2]);
    // Strong keyspaces: clients read, write and delete keys on the same three
    // replicas throughout, and their history must stay linearizable.
    let seed = std::env::var("KVORUM_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random::<u64>);
    eprintln!("workload seed {seed} (KVORUM_TEST_SEED replays its operations)");
    let mut same_replicas = Vec::new();
    if !eventual {
        let mut sorted = replicas.clone();
        sorted.sort();
        for i in 0..500 {
            let probe = cluster.client.get(&format!("w/{i}")).await?;
            let mut on = probe.nodes("x-kvorum-replicas-asked");
            on.sort();
            if on == sorted {
                same_replicas.push(format!("w/{i}"));
            }
            if same_replicas.len() == 3 {
                break;
            }
        }
        anyhow::ensure!(same_replicas.len() == 3, "too few keys share {replicas:?}");
    }
    let workload = Workload {
        keys: same_replicas,
        clients: 4,
        seed,
        operations_per_client: 100_000,
    };
    let running = (!eventual).then(|| workload.start(&cluster.client));
    let stop_writers = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writers = if eventual {
        eventual_writers(&cluster.client, stop_writers.clone())
    } else {
        Vec::new()
    };
    let http = reqwest::Client::new();
    if loss == Loss::DataWithOlderCheckpoint {
        let address = cluster.cluster.storage_address(b)?;
        let taken = http
            .post(format!("http://{address}/internal/v1/checkpoints"))
            .send()
            .await?;
        anyhow::ensure!(
            taken.status().is_success(),
            "checkpoint: {}",
            taken.status()
        );
    }

    cluster.cluster.kill_storage(c).await?;
    let second = cluster.client.put(&key, b"v1").await?;
    anyhow::ensure!(
        second.status == StatusCode::NO_CONTENT,
        "{:?}",
        second.json()
    );
    match loss {
        Loss::Everything => cluster.cluster.wipe_storage_and_checkpoints(b).await?,
        Loss::DataWithOlderCheckpoint => cluster.cluster.wipe_storage(b).await?,
    }
    cluster.cluster.restart_storage(b).await?;
    cluster.cluster.pause_storage(a)?;
    let paused = async {
        cluster.cluster.restart_storage(c).await?;
        // B registers as a new incarnation; it cannot catch up while A is away.
        let deadline = Instant::now() + Duration::from_secs(20);
        while incarnation_of(&cluster, b).await? != (true, 1) {
            anyhow::ensure!(
                Instant::now() < deadline,
                "node {b} never showed as a catching-up incarnation"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        for attempt in 0..3 {
            let read = cluster.client.get(&key).await?;
            ensure_not_counted(&read, b, "read")?;
            anyhow::ensure!(
                read.body != b"v0",
                "attempt {attempt}: a QUORUM read answered the overwritten v0 (status {})",
                read.status
            );
            anyhow::ensure!(
                read.status == StatusCode::SERVICE_UNAVAILABLE || read.body == b"v1",
                "attempt {attempt}: {} {:?}",
                read.status,
                read.json()
            );
            let write = cluster.client.put(&format!("other{query}"), b"x").await?;
            ensure_not_counted(&write, b, "write")?;
        }
        anyhow::Ok(())
    }
    .await;
    let resumed = Instant::now();
    cluster.cluster.resume_storage(a)?;
    paused?;

    let deadline = Instant::now() + Duration::from_secs(60);
    while incarnation_of(&cluster, b).await? != (false, 1) {
        anyhow::ensure!(Instant::now() < deadline, "node {b} never caught up");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!(
        "eventual={eventual} {loss:?}: node {b} caught up {:?} after its peers were back",
        resumed.elapsed()
    );
    for level in ["quorum", "all"] {
        let separator = if query.is_empty() { '?' } else { '&' };
        let read = cluster
            .client
            .get(&format!("{key}{separator}consistency={level}"))
            .await?;
        anyhow::ensure!(
            read.status == StatusCode::OK && read.body == b"v1",
            "{level}: {} {:?}",
            read.status,
            String::from_utf8_lossy(&read.body)
        );
    }
    stop_writers.store(true, std::sync::atomic::Ordering::SeqCst);
    let mut acknowledged = Vec::new();
    for writer in writers {
        acknowledged.extend(writer.await?);
    }
    if eventual {
        anyhow::ensure!(
            acknowledged.len() > 10,
            "too few eventual writes: {}",
            acknowledged.len()
        );
        let mut missing = Vec::new();
        for i in 0..5 {
            let key = format!("evw/{i}");
            let read = cluster
                .client
                .get(&format!("{key}?keyspace=evs&consistency=all"))
                .await?;
            let held: Vec<String> = match read.status {
                StatusCode::OK => vec![String::from_utf8_lossy(&read.body).into_owned()],
                StatusCode::MULTIPLE_CHOICES => read.json()["siblings"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|s| s["text"].as_str().map(str::to_owned))
                    .collect(),
                status => anyhow::bail!("{key}: {status}"),
            };
            missing.extend(
                acknowledged
                    .iter()
                    .filter(|(k, v)| *k == key && !held.contains(v))
                    .cloned(),
            );
        }
        eprintln!(
            "{} acknowledged eventual writes, {} missing",
            acknowledged.len(),
            missing.len()
        );
        anyhow::ensure!(
            missing.is_empty(),
            "acknowledged eventual writes lost: {missing:?}"
        );
    }
    if let Some(running) = running {
        let history = running.stop_and_read_back(&cluster.client).await?;
        let acknowledged = history
            .iter()
            .filter(|(_, op)| {
                op.input != kvorum_linearizability::model::RegisterInput::Get
                    && matches!(
                        op.outcome,
                        kvorum_linearizability::history::Outcome::Returned { .. }
                    )
            })
            .count();
        eprintln!(
            "{} operations, {acknowledged} acknowledged writes and deletes",
            history.len()
        );
        anyhow::ensure!(acknowledged > 10, "too few writes to judge: {acknowledged}");
        ensure_linearizable(&history, seed)?;
    }
    // The acknowledged write is on B itself now, not only on A.
    let (partition, epoch) = second.route();
    if eventual {
        let held = cluster.read_causal(b, "ev", "k", partition, epoch).await?;
        anyhow::ensure!(
            held.siblings()
                .iter()
                .any(|s| s.value.as_deref() == Some(b"v1".as_slice())),
            "node {b} holds {held:?}"
        );
    } else {
        let held = cluster.read_replica(b, "k", partition, epoch).await?;
        anyhow::ensure!(
            held.record.and_then(|r| r.value).as_deref() == Some(b"v1".as_slice()),
            "node {b} lacks v1"
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_strong_write_survives_a_wiped_replica_without_checkpoints() -> anyhow::Result<()> {
    scenario(false, Loss::Everything).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_strong_write_survives_a_replica_restored_from_an_older_checkpoint() -> anyhow::Result<()>
{
    scenario(false, Loss::DataWithOlderCheckpoint).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_eventual_write_survives_a_wiped_replica_without_checkpoints() -> anyhow::Result<()> {
    scenario(true, Loss::Everything).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_eventual_write_survives_a_replica_restored_from_an_older_checkpoint()
-> anyhow::Result<()> {
    scenario(true, Loss::DataWithOlderCheckpoint).await
}
