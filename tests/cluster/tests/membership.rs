//! The cluster runs on its metadata service: storage nodes register there, the
//! partition map is bootstrapped there, keyspaces are created through it, and
//! the router and the storage nodes follow its changes.

use std::time::{Duration, Instant};

use kvorum_cluster_tests::TestCluster;
use kvorum_protocol::cluster::{NodeRole, NodeState};
use kvorum_protocol::metadata::MetadataOp;
use kvorum_protocol::storage::ReplicaKey;
use kvorum_protocol::{ClusterSettings, Epoch, Key, KeyspaceName, NodeId, PartitionMap};
use reqwest::{Method, StatusCode};

/// Polls `check` every 50 ms until it holds or `within` passes.
async fn eventually<F, Fut>(within: Duration, what: &str, mut check: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<bool>>,
{
    let deadline = Instant::now() + within;
    loop {
        if check().await? {
            return Ok(());
        }
        anyhow::ensure!(Instant::now() < deadline, "{what}: not within {within:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cluster_runs_on_the_metadata_service() -> anyhow::Result<()> {
    let mut cluster = TestCluster::start().await?;
    let metad = cluster.metad_client()?;
    let client = cluster.client.clone();

    // Every storage node registered itself; the map was made once all five had.
    let state = metad.state().await?;
    assert_eq!(
        state.cluster,
        Some(ClusterSettings {
            partitions: 16,
            replication_factor: 3,
            bootstrap_nodes: 5
        })
    );
    for (id, address) in cluster.cluster.storage_nodes() {
        let node = &state.nodes[&id];
        assert_eq!(node.address, address.to_string());
        assert_eq!((node.role, node.state), (NodeRole::Storage, NodeState::Up));
    }
    let map = state.partition_map.clone().expect("bootstrapped");
    assert_eq!(map.partitions.len(), 16);
    let used: std::collections::BTreeSet<NodeId> = map
        .partitions
        .iter()
        .flat_map(|p| p.replicas.clone())
        .collect();
    assert_eq!(used.len(), 5, "the map spreads over every registered node");

    // The router shows metad's map, its nodes and its leader.
    let view = client.get_json("/v1/cluster").await?;
    let routed: PartitionMap = PartitionMap {
        partitions: serde_json::from_value(view["partitions"].clone())?,
    };
    assert_eq!(routed, map);
    assert_eq!(view["nodes"].as_array().map(Vec::len), Some(5));
    let leader = view["metad"]["leader"].as_u64().expect("a leader is known");
    assert!((1..=3).contains(&leader), "{view}");
    let replicas = view["metad"]["replicas"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let listed: Vec<(u64, String)> = replicas
        .iter()
        .map(|r| {
            (
                r["id"].as_u64().unwrap_or(0),
                r["address"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect();
    let expected: Vec<(u64, String)> = cluster
        .cluster
        .metad()
        .addresses()
        .iter()
        .map(|(id, a)| (*id, a.to_string()))
        .collect();
    assert_eq!(listed, expected);

    // Keyspaces are created through the router, stored by metad, and usable at once.
    let create = |name: &str, body: &'static str| {
        let client = client.clone();
        let path = format!("/v1/keyspaces/{name}");
        async move {
            client
                .send(Method::PUT, &path, body.as_bytes().to_vec())
                .await
        }
    };
    let created = create("orders", r#"{"mode":"strong","replication_factor":1}"#).await?;
    assert_eq!(created.status, StatusCode::CREATED, "{:?}", created.json());
    assert_eq!(created.json()["replication_factor"], 1);
    assert_eq!(created.json()["write_consistency"], "quorum");
    let written = client.put("item?keyspace=orders", b"one replica").await?;
    assert_eq!(
        written.status,
        StatusCode::NO_CONTENT,
        "{:?}",
        written.json()
    );
    assert_eq!(written.nodes("x-kvorum-replicas-asked").len(), 1);
    let read = client.get("item?keyspace=orders").await?;
    assert_eq!(read.body, b"one replica");
    assert!(metad.state().await?.keyspaces.contains_key("orders"));

    let again = create("orders", r#"{"mode":"strong","replication_factor":1}"#).await?;
    assert_eq!(
        again.status,
        StatusCode::OK,
        "an identical keyspace is no conflict"
    );
    // (The state's version moves on by itself: the detector and the recovery
    // controller renew their leases; the keyspaces are what must not change.)
    let keyspaces = metad.state().await?.keyspaces;
    for (body, status) in [
        (r#"{"mode":"strong"}"#, StatusCode::CONFLICT),
        (
            r#"{"mode":"strong","write_consistency":"one"}"#,
            StatusCode::BAD_REQUEST,
        ),
        (
            r#"{"mode":"strong","replication_factor":4}"#,
            StatusCode::BAD_REQUEST,
        ),
        (r#"{"mode":"eventual"}"#, StatusCode::CONFLICT),
        (
            r#"{"mode":"eventual","replication_factor":0}"#,
            StatusCode::BAD_REQUEST,
        ),
    ] {
        let refused = create("orders", body).await?;
        assert_eq!(refused.status, status, "{body}: {:?}", refused.json());
    }
    assert_eq!(
        metad.state().await?.keyspaces,
        keyspaces,
        "refused keyspaces change nothing"
    );

    // The router and the storage nodes follow a new partition map. The map is
    // changed by hand, so no recovery controller may even it out meanwhile.
    cluster.cluster.kill_recovery(0).await?;
    let first = client.put("moving", b"v1").await?;
    let (partition, epoch) = first.route();
    assert_eq!(epoch, Epoch(1));
    let old_set = first.nodes("x-kvorum-replicas-asked");
    let newcomer = (1..=5)
        .map(NodeId)
        .find(|n| !old_set.contains(n))
        .expect("5 nodes, 3 replicas");
    let mut moved = map.clone();
    let assignment = &mut moved.partitions[partition.0 as usize];
    assignment.replicas[2] = newcomer;
    assignment.epoch = Epoch(2);
    let new_set = assignment.replicas.clone();
    metad
        .submit(MetadataOp::SetPartitionMap { map: moved })
        .await?;
    eventually(
        Duration::from_secs(10),
        "the router routes by epoch 2",
        || {
            let client = client.clone();
            async move {
                let view = client.get_json("/v1/cluster").await?;
                Ok(view["partitions"][partition.0 as usize]["epoch"] == 2)
            }
        },
    )
    .await?;
    let fenced_node = cluster.cluster.storage_address(old_set[0])?;
    let http = reqwest::Client::new();
    let old_route = ReplicaKey {
        partition,
        epoch: Epoch(1),
        keyspace: KeyspaceName::default_keyspace(),
        key: Key::parse("moving")?,
    };
    eventually(
        Duration::from_secs(10),
        "the storage node fences epoch 1",
        || {
            let (http, old_route) = (http.clone(), old_route.clone());
            async move {
                let answer = http
                    .post(format!("http://{fenced_node}/internal/v1/read"))
                    .json(&old_route)
                    .send()
                    .await?;
                Ok(answer.status() == StatusCode::CONFLICT)
            }
        },
    )
    .await?;
    let second = client.put("moving", b"v2").await?;
    assert_eq!(second.status, StatusCode::NO_CONTENT, "{:?}", second.json());
    assert_eq!(second.route(), (partition, Epoch(2)));
    assert_eq!(second.nodes("x-kvorum-replicas-asked"), new_set);
    assert_eq!(client.get("moving").await?.body, b"v2");

    // Losing the metadata leader stops neither the data path nor, after the
    // election, metadata changes.
    cluster.cluster.metad_mut().kill(leader).await?;
    let during = client.put("during-failover", b"x").await?;
    assert_eq!(during.status, StatusCode::NO_CONTENT, "{:?}", during.json());
    assert_eq!(client.get("during-failover").await?.body, b"x");
    let after = create("after-failover", r#"{"mode":"strong"}"#).await?;
    assert_eq!(after.status, StatusCode::CREATED, "{:?}", after.json());
    eventually(
        Duration::from_secs(10),
        "a new metadata leader is shown",
        || {
            let client = client.clone();
            async move {
                let view = client.get_json("/v1/cluster").await?;
                Ok(view["metad"]["leader"]
                    .as_u64()
                    .is_some_and(|l| l != leader))
            }
        },
    )
    .await?;
    Ok(())
}
