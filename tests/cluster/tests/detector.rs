//! The failure detector on real processes: a killed node is down within 3 s, a
//! paused one is suspected and comes back without any partition moving, two
//! detectors never make a state flap, and a loaded cluster sees no false suspicion.

// The measured timings are printed for the closing notes and CI logs.
#![allow(clippy::print_stderr)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use kvorum_cluster_tests::TestCluster;
use kvorum_launcher::ClusterSpec;
use kvorum_metad_client::MetadClient;
use kvorum_protocol::NodeId;
use kvorum_protocol::cluster::NodeState;
use kvorum_protocol::detector::SuspicionReport;
use reqwest::StatusCode;

/// Every state the metadata service recorded for `node`, in order, as seen by polling.
#[derive(Debug, Clone, Default)]
struct History(Vec<(Duration, NodeState)>);

impl History {
    fn states(&self) -> Vec<NodeState> {
        self.0.iter().map(|(_, s)| *s).collect()
    }

    fn first(&self, state: NodeState) -> Option<Duration> {
        self.0.iter().find(|(_, s)| *s == state).map(|(at, _)| *at)
    }
}

/// Polls the metadata service (linearizable reads) every 50 ms and records each
/// node's state changes, until `until` is set; its last read begins after that,
/// so it holds everything the caller saw before setting it.
fn record_states(
    metad: MetadClient,
    started: Instant,
    until: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<BTreeMap<NodeId, History>> {
    tokio::spawn(async move {
        let mut histories: BTreeMap<NodeId, History> = BTreeMap::new();
        loop {
            let last = until.load(Ordering::Relaxed);
            if let Ok(state) = metad.state().await {
                for node in state.nodes.values() {
                    let history = histories.entry(node.id).or_default();
                    if history.0.last().map(|(_, s)| *s) != Some(node.state) {
                        history.0.push((started.elapsed(), node.state));
                    }
                }
            }
            if last {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        histories
    })
}

async fn report(
    http: &reqwest::Client,
    detector: std::net::SocketAddr,
) -> anyhow::Result<SuspicionReport> {
    Ok(http
        .get(format!("http://{detector}/v1/suspicion"))
        .send()
        .await?
        .json()
        .await?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_node_is_down_within_3s_and_two_detectors_never_flap() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let spec = ClusterSpec {
        detectors: 2,
        ..ClusterSpec::for_tests(dir.path())
    };
    let mut cluster = TestCluster::start_spec_in(dir, spec).await?;
    let metad = cluster.metad_client()?;
    let http = reqwest::Client::new();
    let detectors = cluster.cluster.detector_addresses().to_vec();

    // Exactly one detector is active, and every node is up with a low phi.
    let deadline = Instant::now() + Duration::from_secs(10);
    let active = loop {
        let mut active = Vec::new();
        for (index, address) in detectors.iter().enumerate() {
            if report(&http, *address).await?.active {
                active.push(index);
            }
        }
        if active.len() == 1 {
            break active[0];
        }
        anyhow::ensure!(Instant::now() < deadline, "active detectors: {active:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    // The router shows the active detector's phi once its copy of the metadata names the lease holder.
    let deadline = Instant::now() + Duration::from_secs(10);
    let view = loop {
        let view = cluster.client.get_json("/v1/cluster").await?;
        let nodes = view["nodes"].as_array().cloned().unwrap_or_default();
        if nodes.len() == 5 && nodes.iter().all(|n| n["phi"].is_f64()) {
            break view;
        }
        anyhow::ensure!(Instant::now() < deadline, "no phi in {view}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    for node in view["nodes"].as_array().cloned().unwrap_or_default() {
        assert_eq!(node["state"], "up", "{node}");
        assert!(node["phi"].as_f64().is_some_and(|phi| phi < 8.0), "{node}");
    }
    assert!(
        view["metad"]["replicas"][0]["phi"].as_f64().is_some(),
        "metad replicas are heartbeated too: {view}"
    );

    // kill -9 a node: down within 3 s at the default settings.
    let started = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let recorder = record_states(metad.clone(), started, stop.clone());
    let victim = NodeId(2);
    cluster.cluster.kill_storage(victim).await?;
    let killed = started.elapsed();
    let deadline = Instant::now() + Duration::from_secs(10);
    while metad.state().await?.nodes[&victim].state != NodeState::Down {
        anyhow::ensure!(Instant::now() < deadline, "node {victim} never went down");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // The active detector dies; the standby takes over within the lease and keeps the verdicts.
    cluster.cluster.kill_detector(active).await?;
    let standby = detectors[1 - active];
    let deadline = Instant::now() + Duration::from_secs(10);
    while !report(&http, standby).await?.active {
        anyhow::ensure!(Instant::now() < deadline, "the standby never took over");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The node comes back, and the new active detector records it up.
    cluster.cluster.restart_storage(victim).await?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while metad.state().await?.nodes[&victim].state != NodeState::Up {
        anyhow::ensure!(
            Instant::now() < deadline,
            "node {victim} never came back up"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.store(true, Ordering::Relaxed);
    let histories = recorder.await?;

    let victim_history = &histories[&victim];
    let down_at = victim_history
        .first(NodeState::Down)
        .expect("recorded down");
    eprintln!(
        "node {victim} killed at {killed:?}, states {:?}",
        victim_history.0
    );
    assert!(
        down_at - killed < Duration::from_secs(3),
        "down {:?} after the kill",
        down_at - killed
    );
    // No flapping: up, (suspect,) down, up — each once, in that order.
    let states = victim_history.states();
    assert!(
        states
            == [
                NodeState::Up,
                NodeState::Suspect,
                NodeState::Down,
                NodeState::Up
            ]
            || states == [NodeState::Up, NodeState::Down, NodeState::Up],
        "{states:?}"
    );
    for (node, history) in &histories {
        if *node != victim {
            assert_eq!(history.states(), [NodeState::Up], "node {node}");
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_node_is_suspected_and_returns_without_any_move() -> anyhow::Result<()> {
    let cluster = TestCluster::start().await?;
    let metad = cluster.metad_client()?;
    let map_before = metad.state().await?.partition_map;
    let started = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let recorder = record_states(metad.clone(), started, stop.clone());

    let paused = NodeId(4);
    cluster.cluster.pause_storage(paused)?;
    tokio::time::sleep(Duration::from_secs(5)).await;
    cluster.cluster.resume_storage(paused)?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while metad.state().await?.nodes[&paused].state != NodeState::Up {
        anyhow::ensure!(
            Instant::now() < deadline,
            "node {paused} never came back up"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.store(true, Ordering::Relaxed);
    let histories = recorder.await?;
    let states = histories[&paused].states();
    eprintln!("paused node {paused}: {:?}", histories[&paused].0);
    assert_eq!(states.first(), Some(&NodeState::Up));
    assert_eq!(states.last(), Some(&NodeState::Up));
    assert!(
        states.contains(&NodeState::Suspect) || states.contains(&NodeState::Down),
        "a 5 s pause is noticed: {states:?}"
    );
    assert_eq!(
        metad.state().await?.partition_map,
        map_before,
        "a pause shorter than the replacement delay moves nothing"
    );
    // And the node serves again.
    let put = cluster.client.put("after-pause", b"v").await?;
    assert_eq!(put.status, StatusCode::NO_CONTENT);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_loaded_cluster_sees_no_false_suspicion_for_60s() -> anyhow::Result<()> {
    let cluster = TestCluster::start().await?;
    let metad = cluster.metad_client()?;
    let started = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let recorder = record_states(metad.clone(), started, stop.clone());
    let operations = Arc::new(AtomicU64::new(0));
    let mut writers = Vec::new();
    for writer in 0..4 {
        let (client, stop, operations) = (cluster.client.clone(), stop.clone(), operations.clone());
        writers.push(tokio::spawn(async move {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let key = format!("load-{writer}-{}", n % 50);
                let put = client.put(&key, format!("{n}").as_bytes()).await?;
                anyhow::ensure!(put.status == StatusCode::NO_CONTENT, "{:?}", put.json());
                let got = client.get(&key).await?;
                anyhow::ensure!(got.status == StatusCode::OK);
                operations.fetch_add(2, Ordering::Relaxed);
                n += 1;
            }
            anyhow::Ok(())
        }));
    }
    tokio::time::sleep(Duration::from_secs(60)).await;
    stop.store(true, Ordering::Relaxed);
    for writer in writers {
        writer.await??;
    }
    let histories = recorder.await?;
    let detector = cluster.cluster.detector_addresses()[0];
    let report = report(&reqwest::Client::new(), detector).await?;
    eprintln!(
        "{} operations in 60 s; detector transitions: {}",
        operations.load(Ordering::Relaxed),
        report.transitions
    );
    for (node, history) in histories {
        assert_eq!(
            history.states(),
            [NodeState::Up],
            "node {node}: {:?}",
            history.0
        );
    }
    assert_eq!(report.transitions, 0, "{report:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_detector_that_loses_most_nodes_at_once_marks_only_a_minority_down() -> anyhow::Result<()>
{
    let cluster = TestCluster::start().await?;
    let metad = cluster.metad_client()?;
    let started = Instant::now();
    let until = Arc::new(AtomicBool::new(false));
    let recorder = record_states(metad.clone(), started, until.clone());
    // Three of five nodes go silent together, as they would to a detector whose
    // own network failed.
    let silent = [NodeId(1), NodeId(2), NodeId(3)];
    for node in silent {
        cluster.cluster.pause_storage(node)?;
    }
    let outcome = async {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let state = metad.state().await?;
            let down = silent
                .iter()
                .filter(|n| state.nodes[n].state == NodeState::Down)
                .count();
            if down == 2 {
                break;
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "{down} of the silent nodes recorded down"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // Long past the down grace: the third stays suspect.
        tokio::time::sleep(Duration::from_secs(3)).await;
        anyhow::Ok(())
    }
    .await;
    for node in silent {
        cluster.cluster.resume_storage(node)?;
    }
    outcome?;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let state = metad.state().await?;
        if silent.iter().all(|n| state.nodes[n].state == NodeState::Up) {
            break;
        }
        anyhow::ensure!(Instant::now() < deadline, "the nodes never came back up");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    until.store(true, Ordering::Relaxed);
    let histories = recorder.await?;
    for node in silent {
        let states = histories
            .get(&node)
            .map(History::states)
            .unwrap_or_default();
        eprintln!("node {node}: {states:?}");
    }
    // At no moment were more than two of five recorded down.
    let mut moments: Vec<Duration> = histories
        .values()
        .flat_map(|h| h.0.iter().map(|(at, _)| *at))
        .collect();
    moments.sort();
    let down_at = |moment: Duration| {
        histories
            .values()
            .filter(|h| {
                h.0.iter()
                    .take_while(|(at, _)| *at <= moment)
                    .last()
                    .is_some_and(|(_, state)| *state == NodeState::Down)
            })
            .count()
    };
    let most = moments.iter().map(|m| down_at(*m)).max().unwrap_or(0);
    assert_eq!(
        most, 2,
        "a minority of five, and no more, may be down at once: {histories:?}"
    );
    Ok(())
}
