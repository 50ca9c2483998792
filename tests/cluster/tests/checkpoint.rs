//! Checkpoint restore on real processes: a node whose data directory is lost
//! restarts from its latest checkpoint and catches up from its peers, verified
//! by reading every key it holds straight from it.

// The measured timings are printed for the closing notes and CI logs.
#![allow(clippy::print_stderr)]

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use kvorum_cluster_tests::TestCluster;
use kvorum_protocol::{Epoch, NodeId, PartitionId};
use reqwest::StatusCode;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wiped_node_comes_back_from_its_checkpoint_and_its_peers() -> anyhow::Result<()> {
    let mut cluster = TestCluster::start().await?;
    let client = cluster.client.clone();
    let node = NodeId(1);
    let address = cluster.cluster.storage_address(node)?;
    let http = reqwest::Client::new();

    // key -> (partition, epoch, replicas, last value)
    let mut written: BTreeMap<String, (PartitionId, Epoch, Vec<NodeId>, String)> = BTreeMap::new();
    let put = |key: String, value: String| {
        let client = client.clone();
        async move {
            let answer = client.put(&key, value.as_bytes()).await?;
            anyhow::ensure!(
                answer.status == StatusCode::NO_CONTENT,
                "{:?}",
                answer.json()
            );
            let (partition, epoch) = answer.route();
            anyhow::Ok((
                key,
                (
                    partition,
                    epoch,
                    answer.nodes("x-kvorum-replicas-asked"),
                    value,
                ),
            ))
        }
    };
    for i in 0..200 {
        let (key, entry) = put(format!("c-{i}"), format!("before-{i}")).await?;
        written.insert(key, entry);
    }
    let taken = http
        .post(format!("http://{address}/internal/v1/checkpoints"))
        .send()
        .await?;
    assert_eq!(taken.status(), StatusCode::OK);
    let taken: serde_json::Value = taken.json().await?;
    // Writes after the checkpoint: new keys and overwrites of old ones.
    for i in 150..300 {
        let (key, entry) = put(format!("c-{i}"), format!("after-{i}")).await?;
        written.insert(key, entry);
    }

    cluster.cluster.wipe_storage(node).await?;
    let restarted = Instant::now();
    cluster.cluster.restart_storage(node).await?;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let ready = http.get(format!("http://{address}/readyz")).send().await?;
        if ready.status() == StatusCode::OK {
            break;
        }
        anyhow::ensure!(Instant::now() < deadline, "node {node} never caught up");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!(
        "node {node} restored from {} and caught up in {:?}",
        taken["name"],
        restarted.elapsed()
    );
    let listed: serde_json::Value = http
        .get(format!("http://{address}/internal/v1/checkpoints"))
        .send()
        .await?
        .json()
        .await?;
    assert!(
        listed
            .as_array()
            .is_some_and(|l| l.iter().any(|c| c["name"] == taken["name"])),
        "the checkpoint survived the lost data directory: {listed}"
    );

    // Every key the node replicates, read from the node itself.
    let mut checked = 0;
    for (key, (partition, epoch, replicas, value)) in &written {
        if !replicas.contains(&node) {
            continue;
        }
        let held = cluster.read_replica(node, key, *partition, *epoch).await?;
        assert_eq!(
            held.record.and_then(|r| r.value),
            Some(value.as_bytes().to_vec()),
            "{key} on node {node}"
        );
        checked += 1;
    }
    assert!(checked > 50, "only {checked} keys on node {node}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_node_catches_up_with_writes_it_missed() -> anyhow::Result<()> {
    let mut cluster = TestCluster::start().await?;
    let client = cluster.client.clone();
    let first = client.put("missed", b"old").await?;
    assert_eq!(first.status, StatusCode::NO_CONTENT);
    let (partition, epoch) = first.route();
    let node = first.nodes("x-kvorum-replicas-asked")[0];
    cluster.cluster.kill_storage(node).await?;
    // Written at QUORUM by the two others while it is down.
    let second = client.put("missed", b"new").await?;
    assert_eq!(second.status, StatusCode::NO_CONTENT, "{:?}", second.json());
    cluster.cluster.restart_storage(node).await?;
    // No client reads the key: the node's own catch-up brings the write.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let held = cluster
            .read_replica(node, "missed", partition, epoch)
            .await?;
        if held.record.and_then(|r| r.value) == Some(b"new".to_vec()) {
            break;
        }
        anyhow::ensure!(Instant::now() < deadline, "node {node} never caught up");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}
