//! Rebalancing on real processes: a sixth node gets an even share, and a
//! decommissioned node ends holding nothing, with no data lost either way.

// The measured timings are printed for the closing notes and CI logs.
#![allow(clippy::print_stderr)]

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use kvorum_cluster_tests::TestCluster;
use kvorum_protocol::NodeId;
use kvorum_protocol::cluster::{NodeRole, NodeState};
use kvorum_protocol::metadata::MetadataState;
use reqwest::{Method, StatusCode};

fn loads(state: &MetadataState) -> BTreeMap<NodeId, usize> {
    let mut load: BTreeMap<NodeId, usize> = state
        .nodes
        .values()
        .filter(|n| n.state != NodeState::Decommissioned)
        .map(|n| (n.id, 0))
        .collect();
    for p in &state.partition_map.as_ref().expect("a map").partitions {
        for n in &p.replicas {
            *load.entry(*n).or_default() += 1;
        }
    }
    load
}

fn settled(state: &MetadataState) -> bool {
    state
        .partition_map
        .as_ref()
        .is_some_and(|m| m.partitions.iter().all(|p| p.pending.is_empty()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_node_gets_an_even_share_and_a_decommissioned_one_ends_empty() -> anyhow::Result<()> {
    let mut cluster = TestCluster::start().await?;
    let metad = cluster.metad_client()?;
    let client = cluster.client.clone();
    let mut written = BTreeMap::new();
    for i in 0..200 {
        let (key, value) = (format!("r-{i}"), format!("v{i}"));
        let put = client.put(&key, value.as_bytes()).await?;
        anyhow::ensure!(put.status == StatusCode::NO_CONTENT, "{:?}", put.json());
        written.insert(key, value);
    }
    let before = loads(&metad.state().await?);
    let (min, max) = (before.values().min(), before.values().max());
    assert!(
        max.zip(min).is_some_and(|(max, min)| max - min <= 1),
        "the bootstrap map is already even: {before:?}"
    );

    // Add a sixth node: the operator admits it, its process starts and registers.
    let started = Instant::now();
    let (added, _) = cluster.cluster.add_storage().await?;
    let deadline = Instant::now() + Duration::from_secs(60);
    let after = loop {
        let state = metad.state().await?;
        let load = loads(&state);
        let (min, max) = (load.values().min(), load.values().max());
        if settled(&state)
            && load.len() == 6
            && max.zip(min).is_some_and(|(max, min)| max - min <= 1)
        {
            break load;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "not even after adding node {added}: {load:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    eprintln!(
        "node {added} added: {before:?} -> {after:?} in {:?}",
        started.elapsed()
    );
    assert!(after[&added] >= 7, "{after:?}");

    // Decommission node 2: it drains, then is marked decommissioned.
    let leaving = NodeId(2);
    let answer = client
        .send(
            Method::POST,
            &format!("/v1/nodes/{}/decommission", leaving.0),
            Vec::new(),
        )
        .await?;
    assert_eq!(answer.status, StatusCode::ACCEPTED, "{:?}", answer.json());
    let started = Instant::now();
    let deadline = Instant::now() + Duration::from_secs(60);
    let state = loop {
        let state = metad.state().await?;
        if state.nodes[&leaving].state == NodeState::Decommissioned && settled(&state) {
            break state;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "node {leaving} not drained: {:?}",
            loads(&state)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let load = loads(&state);
    eprintln!(
        "node {leaving} decommissioned in {:?}: {load:?}",
        started.elapsed()
    );
    assert!(!load.contains_key(&leaving), "it holds nothing: {load:?}");
    assert!(
        state
            .partition_map
            .as_ref()
            .is_some_and(|m| m.partitions.iter().all(|p| !p.replicas.contains(&leaving))),
        "no partition names it"
    );
    // It drops what it no longer replicates: every partition it exports is empty.
    let address = cluster.cluster.storage_address(leaving)?;
    let http = reqwest::Client::new();
    let partitions = state
        .partition_map
        .as_ref()
        .map_or(0, |m| m.partitions.len());
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut held = 0;
        for partition in 0..partitions {
            let export: serde_json::Value = http
                .get(format!(
                    "http://{address}/internal/v1/partitions/{partition}"
                ))
                .send()
                .await?
                .json()
                .await?;
            held += export["records"].as_array().map_or(0, Vec::len);
        }
        if held == 0 {
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "node {leaving} still holds {held} records of partitions it left"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Its process can go; nothing is lost.
    cluster.cluster.kill_storage(leaving).await?;
    for (key, value) in &written {
        let got = client.get(&format!("{key}?consistency=all")).await?;
        assert_eq!(got.status, StatusCode::OK, "{key}: {:?}", got.json());
        assert_eq!(got.body, value.as_bytes(), "{key}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decommissions_that_cannot_work_are_refused_and_change_nothing() -> anyhow::Result<()> {
    let cluster = TestCluster::start().await?;
    let metad = cluster.metad_client()?;
    let client = cluster.client.clone();
    let decommission = |id: u64| {
        let client = client.clone();
        async move {
            client
                .send(
                    Method::POST,
                    &format!("/v1/nodes/{id}/decommission"),
                    Vec::new(),
                )
                .await
        }
    };
    let unknown = decommission(99).await?;
    assert_eq!(
        unknown.status,
        StatusCode::NOT_FOUND,
        "{:?}",
        unknown.json()
    );
    // Five nodes, RF 3: two may leave, a third would leave too few for RF.
    assert_eq!(decommission(1).await?.status, StatusCode::ACCEPTED);
    let again = decommission(1).await?;
    assert_eq!(again.status, StatusCode::OK, "asking again is not an error");
    assert_eq!(decommission(2).await?.status, StatusCode::ACCEPTED);
    let third = decommission(3).await?;
    assert_eq!(third.status, StatusCode::CONFLICT, "{:?}", third.json());
    assert_eq!(third.json()["error"]["code"], "conflict");
    let state = metad.state().await?;
    assert_eq!(state.nodes[&NodeId(3)].role, NodeRole::Storage);
    assert_eq!(state.nodes[&NodeId(1)].role, NodeRole::Leaving);
    Ok(())
}
