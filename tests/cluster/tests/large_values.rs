//! Partitions of 1 MB values move and replay hints like any others: every bulk
//! message (an export page, a hint batch, a router batch) is bounded in bytes
//! as well as in records. The storage nodes run with a 16 MiB request limit, so
//! one unbounded page or batch of these 20 values (about 27 MB once encoded)
//! would be refused on every try.

// The measured timings are printed for the closing notes and CI logs.
#![allow(clippy::print_stderr)]

use std::time::{Duration, Instant};

use kvorum_cluster_tests::TestCluster;
use kvorum_launcher::ClusterSpec;
use kvorum_protocol::NodeId;
use reqwest::StatusCode;

const VALUES: usize = 20;
const VALUE_BYTES: usize = 1_000_000;

fn value(i: usize) -> Vec<u8> {
    (0..VALUE_BYTES)
        .map(|j| ((i * 31 + j) % 251) as u8)
        .collect()
}

/// One partition on four nodes, so that every value shares one partition.
async fn start(replacement_delay: Duration) -> anyhow::Result<TestCluster> {
    let dir = tempfile::tempdir()?;
    let spec = ClusterSpec {
        nodes: 4,
        partitions: 1,
        replacement_delay: Some(replacement_delay),
        env: [
            ("KVORUM_MAX_REQUEST_BYTES", "16777216"),
            ("KVORUM_CHECKPOINT_INTERVAL_MS", "0"),
            ("KVORUM_ANTI_ENTROPY_INTERVAL_MS", "0"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect(),
        ..ClusterSpec::for_tests(dir.path())
    };
    TestCluster::start_spec_in(dir, spec).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_of_large_values_moves_to_a_new_replica() -> anyhow::Result<()> {
    let mut cluster = start(Duration::from_secs(1)).await?;
    let metad = cluster.metad_client()?;
    let mut replicas = Vec::new();
    for i in 0..VALUES {
        let answer = cluster.client.put(&format!("big-{i}"), &value(i)).await?;
        anyhow::ensure!(
            answer.status == StatusCode::NO_CONTENT,
            "{:?}",
            answer.json()
        );
        replicas = answer.nodes("x-kvorum-replicas-asked");
    }
    let victim = replicas[0];
    cluster.cluster.kill_storage(victim).await?;
    let killed = Instant::now();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let state = metad.state().await?;
        let assignment = &state.partition_map.as_ref().expect("map").partitions[0];
        if !assignment.replicas.contains(&victim) && assignment.pending.is_empty() {
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the partition never left node {victim}: {assignment:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eprintln!(
        "{VALUES} values of {VALUE_BYTES} bytes moved off node {victim} {:?} after the kill",
        killed.elapsed()
    );
    for i in 0..VALUES {
        let answer = cluster
            .client
            .get(&format!("big-{i}?consistency=all"))
            .await?;
        anyhow::ensure!(
            answer.status == StatusCode::OK && answer.body == value(i),
            "big-{i}: {} ({} bytes)",
            answer.status,
            answer.body.len()
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hints_of_large_values_are_handed_off() -> anyhow::Result<()> {
    let cluster = start(Duration::from_secs(600)).await?;
    cluster
        .create_keyspace("blobs", r#"{"mode":"eventual","conflict":"lww"}"#)
        .await?;
    let first = cluster
        .client
        .put("blob-0?keyspace=blobs&consistency=all", &value(0))
        .await?;
    anyhow::ensure!(first.status == StatusCode::NO_CONTENT, "{:?}", first.json());
    let (partition, epoch) = first.route();
    // The last replica misses the writes: they reach it only as hints.
    let absent: NodeId = first.nodes("x-kvorum-replicas-asked")[2];
    cluster.cluster.pause_storage(absent)?;
    let written = async {
        for i in 1..VALUES {
            let answer = cluster
                .client
                .put(&format!("blob-{i}?keyspace=blobs"), &value(i))
                .await?;
            anyhow::ensure!(
                answer.status == StatusCode::NO_CONTENT,
                "{:?}",
                answer.json()
            );
        }
        anyhow::Ok(())
    }
    .await;
    cluster.cluster.resume_storage(absent)?;
    written?;
    let resumed = Instant::now();
    let deadline = Instant::now() + Duration::from_secs(120);
    for i in 1..VALUES {
        loop {
            let state = cluster
                .read_causal(absent, "blobs", &format!("blob-{i}"), partition, epoch)
                .await;
            if state.is_ok_and(|s| {
                s.siblings()
                    .iter()
                    .any(|sibling| sibling.value.as_deref() == Some(value(i).as_slice()))
            }) {
                break;
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "node {absent} never got blob-{i} by hinted handoff"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    eprintln!(
        "{} hinted values of {VALUE_BYTES} bytes handed off {:?} after node {absent} resumed",
        VALUES - 1,
        resumed.elapsed()
    );
    Ok(())
}
