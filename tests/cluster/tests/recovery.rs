//! The recovery controller on real processes: a node killed for good has its
//! replicas replaced by state transfer once the replacement delay has passed,
//! with writes going on meanwhile, and no acknowledged write is lost.

// The measured timings are printed for the closing notes and CI logs.
#![allow(clippy::print_stderr)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use kvorum_cluster_tests::TestCluster;
use kvorum_launcher::ClusterSpec;
use kvorum_protocol::NodeId;
use reqwest::StatusCode;

const DELAY: Duration = Duration::from_secs(3);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_nodes_replicas_are_replaced_and_no_acknowledged_write_is_lost() -> anyhow::Result<()>
{
    let dir = tempfile::tempdir()?;
    let spec = ClusterSpec {
        replacement_delay: Some(DELAY),
        ..ClusterSpec::for_tests(dir.path())
    };
    let mut cluster = TestCluster::start_spec_in(dir, spec).await?;
    let metad = cluster.metad_client()?;
    let client = cluster.client.clone();

    // Data loaded at QUORUM: 300 keys over every partition.
    let mut acknowledged: BTreeMap<String, String> = BTreeMap::new();
    for i in 0..300 {
        let (key, value) = (format!("key-{i}"), format!("value-{i}"));
        let put = client.put(&key, value.as_bytes()).await?;
        anyhow::ensure!(put.status == StatusCode::NO_CONTENT, "{:?}", put.json());
        acknowledged.insert(key, value);
    }

    let victim = NodeId(3);
    let held_before = metad
        .state()
        .await?
        .partition_map
        .map(|m| {
            m.partitions
                .iter()
                .filter(|p| p.replicas.contains(&victim))
                .count()
        })
        .unwrap_or_default();
    assert!(held_before > 0);
    cluster.cluster.kill_storage(victim).await?;
    let killed = Instant::now();

    // Writes go on during detection, the delay and the transfer; every
    // acknowledged one must survive.
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (client, stop) = (client.clone(), stop.clone());
        tokio::spawn(async move {
            let mut acknowledged = BTreeMap::new();
            let mut unknown: BTreeMap<String, Vec<String>> = BTreeMap::new();
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                let (key, value) = (format!("during-{}", n % 100), format!("v{n}"));
                let put = client.put(&key, value.as_bytes()).await?;
                match put.status {
                    StatusCode::NO_CONTENT => {
                        acknowledged.insert(key, value);
                    }
                    // A write that failed with its outcome unknown may still take
                    // effect, at any point after it began; one refused with
                    // outcome_unknown false took effect nowhere.
                    StatusCode::SERVICE_UNAVAILABLE => {
                        if put.json()["error"]["outcome_unknown"] == true {
                            unknown.entry(key).or_default().push(value);
                        }
                    }
                    other => anyhow::bail!("unexpected {other}: {:?}", put.json()),
                }
                n += 1;
            }
            anyhow::Ok((acknowledged, unknown))
        })
    };

    // RF is restored: no partition names the dead node, none has a move pending.
    let deadline = killed + DELAY + Duration::from_secs(40);
    loop {
        let state = metad.state().await?;
        let map = state.partition_map.expect("a map");
        let left = map
            .partitions
            .iter()
            .filter(|p| p.replicas.contains(&victim) || !p.pending.is_empty())
            .count();
        if left == 0 {
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "{left} partitions still name node {victim} or are moving"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let restored = killed.elapsed();
    stop.store(true, Ordering::Relaxed);
    let (during, unknown) = writer.await??;
    eprintln!(
        "{held_before} partitions replaced {restored:?} after the kill (delay {DELAY:?}); {} keys written meanwhile, {} writes with unknown outcome",
        during.len(),
        unknown.values().map(Vec::len).sum::<usize>()
    );
    assert!(
        restored < DELAY + Duration::from_secs(30),
        "RF restored {restored:?} after the kill"
    );

    // The controller reports what it did (each move is reported once its task ends).
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let view = client.get_json("/v1/cluster").await?;
        let finished = view["recoveries"].as_array().cloned().unwrap_or_default();
        let completed = finished
            .iter()
            .filter(|r| {
                r["completed"] == true && r["strategy"] == "state_transfer" && r["from"] == victim.0
            })
            .count();
        if completed == held_before && view["moves"].as_array().is_some_and(Vec::is_empty) {
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "{completed} of {held_before} reported: {view}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Every acknowledged write reads back at QUORUM and at ALL (three live
    // replicas per partition again, none of them the dead node): the last
    // acknowledged value, or one whose write's outcome was unknown.
    for (key, value) in acknowledged.iter().chain(&during) {
        let allowed: Vec<&[u8]> = std::iter::once(value.as_bytes())
            .chain(unknown.get(key).into_iter().flatten().map(String::as_bytes))
            .collect();
        for level in ["quorum", "all"] {
            let got = client.get(&format!("{key}?consistency={level}")).await?;
            assert_eq!(
                got.status,
                StatusCode::OK,
                "{key} at {level}: {:?}",
                got.json()
            );
            assert!(
                allowed.contains(&got.body.as_slice()),
                "{key} at {level}: {:?} is neither {value} nor an unknown write",
                String::from_utf8_lossy(&got.body)
            );
            assert!(!got.nodes("x-kvorum-replicas-asked").contains(&victim));
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_warm_standby_is_promoted_into_a_dead_nodes_place() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let spec = ClusterSpec {
        standbys: 1,
        replacement_delay: Some(DELAY),
        ..ClusterSpec::for_tests(dir.path())
    };
    let mut cluster = TestCluster::start_spec_in(dir, spec).await?;
    let metad = cluster.metad_client()?;
    let client = cluster.client.clone();
    let standby = NodeId(6);
    let state = metad.state().await?;
    assert_eq!(
        state.nodes[&standby].role,
        kvorum_protocol::cluster::NodeRole::Standby
    );
    let map = state.partition_map.expect("a map");
    assert!(
        map.partitions
            .iter()
            .all(|p| !p.replicas.contains(&standby)),
        "a standby holds nothing until it is promoted"
    );
    for i in 0..100 {
        let put = client
            .put(&format!("s-{i}"), format!("v{i}").as_bytes())
            .await?;
        anyhow::ensure!(put.status == StatusCode::NO_CONTENT, "{:?}", put.json());
    }
    let victim = NodeId(2);
    let held: Vec<u32> = map
        .partitions
        .iter()
        .filter(|p| p.replicas.contains(&victim))
        .map(|p| p.id.0)
        .collect();
    cluster.cluster.kill_storage(victim).await?;
    let killed = Instant::now();

    // The standby takes exactly the dead node's place in every partition.
    let deadline = killed + DELAY + Duration::from_secs(40);
    let state = loop {
        let state = metad.state().await?;
        let map = state.partition_map.clone().expect("a map");
        let done = map
            .partitions
            .iter()
            .all(|p| !p.replicas.contains(&victim) && p.pending.is_empty());
        if done {
            break state;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "node {victim} was not replaced in time"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    eprintln!(
        "standby promoted and filled {:?} after the kill",
        killed.elapsed()
    );
    assert_eq!(
        state.nodes[&standby].role,
        kvorum_protocol::cluster::NodeRole::Storage
    );
    let now_holds: Vec<u32> = state
        .partition_map
        .expect("a map")
        .partitions
        .iter()
        .filter(|p| p.replicas.contains(&standby))
        .map(|p| p.id.0)
        .collect();
    assert_eq!(
        now_holds, held,
        "the standby took the dead node's partitions, no others"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let view = client.get_json("/v1/cluster").await?;
        let promoted = view["recoveries"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|r| r["strategy"] == "standby_promotion" && r["completed"] == true)
            .count();
        if promoted == held.len() {
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "{promoted} of {} reported: {view}",
            held.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for i in 0..100 {
        let got = client.get(&format!("s-{i}?consistency=all")).await?;
        assert_eq!(got.status, StatusCode::OK, "s-{i}: {:?}", got.json());
        assert_eq!(got.body, format!("v{i}").as_bytes());
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_controller_takes_over_within_the_lease() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let spec = ClusterSpec {
        recovery: 2,
        ..ClusterSpec::for_tests(dir.path())
    };
    let mut cluster = TestCluster::start_spec_in(dir, spec).await?;
    let http = reqwest::Client::new();
    let controllers = cluster.cluster.recovery_addresses().to_vec();
    let active = |http: reqwest::Client, address: std::net::SocketAddr| async move {
        let report: serde_json::Value = http
            .get(format!("http://{address}/v1/moves"))
            .send()
            .await?
            .json()
            .await?;
        anyhow::Ok(report["active"] == true)
    };
    let deadline = Instant::now() + Duration::from_secs(15);
    let first = loop {
        let mut holders = Vec::new();
        for (index, address) in controllers.iter().enumerate() {
            if active(http.clone(), *address).await? {
                holders.push(index);
            }
        }
        if holders.len() == 1 {
            break holders[0];
        }
        anyhow::ensure!(Instant::now() < deadline, "active controllers: {holders:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    cluster.cluster.kill_recovery(first).await?;
    let killed = Instant::now();
    let other = controllers[1 - first];
    while !active(http.clone(), other).await? {
        anyhow::ensure!(killed.elapsed() < Duration::from_secs(15), "no takeover");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let takeover = killed.elapsed();
    eprintln!("the standby controller took over {takeover:?} after the active one was killed");
    // The lease is 5 s; the standby asks every 250 ms once it has lapsed.
    assert!(takeover <= Duration::from_millis(5_500), "{takeover:?}");
    Ok(())
}
