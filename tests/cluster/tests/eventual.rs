//! Eventual keyspaces on real processes: siblings and their resolution, hinted
//! handoff, anti-entropy, convergence of every replica, and tombstone collection
//! that never lets deleted data come back.

// The measured timings are printed for the closing notes and CI logs.
#![allow(clippy::print_stderr)]

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use kvorum_cluster_tests::{Answer, TestCluster};
use kvorum_launcher::ClusterSpec;
use kvorum_protocol::{CausalState, Epoch, NodeId, PartitionId};
use reqwest::StatusCode;

/// Starts the test cluster with extra environment for every process.
async fn start(env: &[(&str, &str)]) -> anyhow::Result<TestCluster> {
    let dir = tempfile::tempdir()?;
    let spec = ClusterSpec {
        env: env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
        ..ClusterSpec::for_tests(dir.path())
    };
    TestCluster::start_spec_in(dir, spec).await
}

/// Where a key lives, from a write's receipt.
#[derive(Debug, Clone)]
struct Placement {
    partition: PartitionId,
    epoch: Epoch,
    replicas: Vec<NodeId>,
}

fn placement(answer: &Answer) -> Placement {
    let (partition, epoch) = answer.route();
    Placement {
        partition,
        epoch,
        replicas: answer.nodes("x-kvorum-replicas-asked"),
    }
}

/// Polls until every replica of every key holds the same non-empty state (or, with
/// `purged`, no state at all); returns how long it took.
async fn converged(
    cluster: &TestCluster,
    keyspace: &str,
    keys: &BTreeMap<String, Placement>,
    purged: bool,
    within: Duration,
) -> anyhow::Result<Duration> {
    let started = Instant::now();
    loop {
        let mut diverged = Vec::new();
        for (key, place) in keys {
            let mut states: Vec<CausalState> = Vec::new();
            for node in &place.replicas {
                states.push(
                    cluster
                        .read_causal(*node, keyspace, key, place.partition, place.epoch)
                        .await?,
                );
            }
            let agreed = states.windows(2).all(|w| w[0] == w[1]);
            let wanted = if purged {
                states.iter().all(CausalState::is_empty)
            } else {
                agreed && !states[0].is_empty()
            };
            if !wanted {
                diverged.push(key.clone());
            }
        }
        if diverged.is_empty() {
            return Ok(started.elapsed());
        }
        anyhow::ensure!(
            started.elapsed() < within,
            "{} keys never converged, such as {:?}",
            diverged.len(),
            &diverged[..diverged.len().min(5)]
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Polls the router's cluster view until `node` has `state`.
async fn node_state(cluster: &TestCluster, node: NodeId, state: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let view = cluster.client.get_json("/v1/cluster").await?;
        let current = view["nodes"]
            .as_array()
            .and_then(|nodes| nodes.iter().find(|n| n["id"] == node.0))
            .map(|n| n["state"].clone());
        if current.as_ref().and_then(|s| s.as_str()) == Some(state) {
            return Ok(());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "node {node} never became {state}: {current:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writers_make_siblings_that_a_write_with_their_context_resolves()
-> anyhow::Result<()> {
    let cluster = start(&[]).await?;
    cluster
        .create_keyspace("carts", r#"{"mode":"eventual","conflict":"siblings"}"#)
        .await?;
    let client = &cluster.client;

    let first = client.put("cart-1?keyspace=carts", b"apple").await?;
    assert_eq!(first.status, StatusCode::NO_CONTENT, "{:?}", first.json());
    let read = client.get("cart-1?keyspace=carts").await?;
    assert_eq!(read.status, StatusCode::OK);
    assert_eq!(read.body, b"apple");
    let seen = read.header("x-kvorum-context").to_owned();
    assert!(seen.starts_with("c1."), "{seen}");

    // Two clients read the same version and write concurrently.
    for value in ["apple,banana", "apple,cherry"] {
        let written = client
            .put_with_context("cart-1?keyspace=carts", value.as_bytes(), &seen)
            .await?;
        assert_eq!(
            written.status,
            StatusCode::NO_CONTENT,
            "{:?}",
            written.json()
        );
    }
    let conflict = client.get("cart-1?keyspace=carts&consistency=all").await?;
    assert_eq!(conflict.status, StatusCode::MULTIPLE_CHOICES);
    let body = conflict.json();
    let mut texts: Vec<&str> = body["siblings"]
        .as_array()
        .expect("siblings")
        .iter()
        .map(|s| s["text"].as_str().expect("text"))
        .collect();
    texts.sort_unstable();
    assert_eq!(texts, ["apple,banana", "apple,cherry"], "{body}");
    let context = body["context"].as_str().expect("context");
    assert_eq!(context, conflict.header("x-kvorum-context"));

    // The client merges them and writes back with the context it was given.
    let resolved = client
        .put_with_context("cart-1?keyspace=carts", b"apple,banana,cherry", context)
        .await?;
    assert_eq!(resolved.status, StatusCode::NO_CONTENT);
    // QUORUM and ALL overlap the write's quorum; ONE may answer from the
    // replica the write has not reached yet, and sees it eventually.
    for level in ["quorum", "all"] {
        let after = client
            .get(&format!("cart-1?keyspace=carts&consistency={level}"))
            .await?;
        assert_eq!(after.status, StatusCode::OK, "{level}: {:?}", after.json());
        assert_eq!(after.body, b"apple,banana,cherry");
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let after = client.get("cart-1?keyspace=carts&consistency=one").await?;
        if after.status == StatusCode::OK && after.body == b"apple,banana,cherry" {
            break;
        }
        assert!(Instant::now() < deadline, "one: {:?}", after.json());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // A write without a context in a siblings keyspace supersedes nothing.
    client.put("cart-1?keyspace=carts", b"blind").await?;
    let blind = client.get("cart-1?keyspace=carts&consistency=all").await?;
    assert_eq!(blind.status, StatusCode::MULTIPLE_CHOICES);

    // A garbled or strong-keyspace context is refused and changes nothing.
    for bad in [
        "v1.1.1",
        "c1.zz",
        "nonsense",
        "c1.63:1",
        "c1.1:ffffffffffffffff",
    ] {
        let refused = client
            .put_with_context("cart-1?keyspace=carts", b"x", bad)
            .await?;
        assert_eq!(refused.status, StatusCode::BAD_REQUEST, "{bad}");
    }
    let unchanged = client.get("cart-1?keyspace=carts&consistency=all").await?;
    assert_eq!(unchanged.json()["siblings"], blind.json()["siblings"]);

    // lww and merge keyspaces answer one value.
    cluster
        .create_keyspace("prefs", r#"{"mode":"eventual","conflict":"merge"}"#)
        .await?;
    client
        .put("p?keyspace=prefs", br#"{"theme":"dark"}"#)
        .await?;
    let p = client.get("p?keyspace=prefs").await?;
    let empty = "c1.";
    client
        .put_with_context("p?keyspace=prefs", br#"{"lang":"en"}"#, empty)
        .await?;
    let merged = client.get("p?keyspace=prefs&consistency=all").await?;
    assert_eq!(merged.status, StatusCode::OK, "{:?}", p.json());
    assert_eq!(merged.body, br#"{"lang":"en","theme":"dark"}"#);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_was_down_receives_its_writes_by_hinted_handoff() -> anyhow::Result<()> {
    // Anti-entropy off: only hints can bring the missed writes.
    let cluster = start(&[("KVORUM_ANTI_ENTROPY_INTERVAL_MS", "0")]).await?;
    cluster
        .create_keyspace("events", r#"{"mode":"eventual"}"#)
        .await?;
    let absent = NodeId(2);
    cluster.cluster.pause_storage(absent)?;
    node_state(&cluster, absent, "down").await?;

    let mut keys = BTreeMap::new();
    let mut hinted = 0;
    for i in 0..60 {
        let key = format!("e-{i}");
        let answer = cluster
            .client
            .put(
                &format!("{key}?keyspace=events"),
                format!("v{i}").as_bytes(),
            )
            .await?;
        assert_eq!(answer.status, StatusCode::NO_CONTENT, "{:?}", answer.json());
        let place = placement(&answer);
        if place.replicas.contains(&absent) {
            assert_eq!(answer.header("x-kvorum-hinted"), "true", "{key}");
            hinted += 1;
            keys.insert(key, place);
        }
    }
    assert!(hinted > 10, "only {hinted} keys live on node {absent}");

    cluster.cluster.resume_storage(absent)?;
    let resumed = Instant::now();
    let took = converged(&cluster, "events", &keys, false, Duration::from_secs(30)).await?;
    eprintln!(
        "{hinted} hinted keys handed to node {absent} {:?} after it resumed",
        resumed.elapsed().min(took)
    );
    // The nodes that coordinated the writes say they handed the hints off.
    let http = reqwest::Client::new();
    let mut replayed = 0.0;
    for (_, address) in cluster.cluster.storage_nodes() {
        let text = http
            .get(format!("http://{address}/metrics"))
            .send()
            .await?
            .text()
            .await?;
        replayed += text
            .lines()
            .filter(|l| l.starts_with("kvorum_hints_replayed_total"))
            .filter_map(|l| l.split_whitespace().last()?.parse::<f64>().ok())
            .sum::<f64>();
    }
    assert!(
        replayed >= hinted as f64,
        "{replayed} hints replayed for {hinted} keys"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_whose_hints_were_lost_converges_by_anti_entropy() -> anyhow::Result<()> {
    // No hints at all (as if the node holding them lost them): anti-entropy alone repairs.
    let cluster = start(&[
        ("KVORUM_HINTED_HANDOFF", "false"),
        ("KVORUM_ANTI_ENTROPY_INTERVAL_MS", "500"),
    ])
    .await?;
    cluster
        .create_keyspace("events", r#"{"mode":"eventual","write_consistency":"one"}"#)
        .await?;
    let absent = NodeId(3);
    cluster.cluster.pause_storage(absent)?;
    node_state(&cluster, absent, "down").await?;
    let mut keys = BTreeMap::new();
    for i in 0..80 {
        let key = format!("a-{i}");
        let answer = cluster
            .client
            .put(
                &format!("{key}?keyspace=events"),
                format!("v{i}").as_bytes(),
            )
            .await?;
        assert_eq!(answer.status, StatusCode::NO_CONTENT, "{:?}", answer.json());
        assert_eq!(answer.header("x-kvorum-hinted"), "false");
        keys.insert(key, placement(&answer));
    }
    cluster.cluster.resume_storage(absent)?;
    let took = converged(&cluster, "events", &keys, false, Duration::from_secs(30)).await?;
    eprintln!(
        "anti-entropy converged {} keys {took:?} after node {absent} resumed",
        keys.len()
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tombstones_are_collected_only_once_every_replica_holds_them() -> anyhow::Result<()> {
    let cluster = start(&[
        ("KVORUM_HINTED_HANDOFF", "false"),
        ("KVORUM_ANTI_ENTROPY_INTERVAL_MS", "500"),
        ("KVORUM_TOMBSTONE_GRACE_MS", "0"),
        ("KVORUM_CHECKPOINT_INTERVAL_MS", "0"),
    ])
    .await?;
    cluster
        .create_keyspace("sessions", r#"{"mode":"eventual"}"#)
        .await?;
    let mut keys = BTreeMap::new();
    for i in 0..30 {
        let key = format!("s-{i}");
        let answer = cluster
            .client
            .put(&format!("{key}?keyspace=sessions&consistency=all"), b"live")
            .await?;
        assert_eq!(answer.status, StatusCode::NO_CONTENT, "{:?}", answer.json());
        keys.insert(key, placement(&answer));
    }
    // One replica misses the deletes: it still holds the values.
    let absent = NodeId(4);
    cluster.cluster.pause_storage(absent)?;
    for key in keys.keys() {
        let answer = cluster
            .client
            .delete(&format!("{key}?keyspace=sessions"))
            .await?;
        assert_eq!(answer.status, StatusCode::NO_CONTENT, "{:?}", answer.json());
    }
    // While it is away nothing may be collected: every key on it must still be
    // deleted (a tombstone, not nothing) on the replicas that saw the delete.
    tokio::time::sleep(Duration::from_secs(2)).await;
    for (key, place) in &keys {
        if place.replicas.contains(&absent) {
            for node in place.replicas.iter().filter(|n| **n != absent) {
                let state = cluster
                    .read_causal(*node, "sessions", key, place.partition, place.epoch)
                    .await?;
                assert!(state.is_deleted(), "{key} on node {node}: {state:?}");
            }
        }
    }
    cluster.cluster.resume_storage(absent)?;
    let took = converged(&cluster, "sessions", &keys, true, Duration::from_secs(40)).await?;
    eprintln!(
        "{} tombstones collected on every replica {took:?} after node {absent} resumed",
        keys.len()
    );
    for key in keys.keys() {
        let answer = cluster
            .client
            .get(&format!("{key}?keyspace=sessions&consistency=all"))
            .await?;
        assert_eq!(answer.status, StatusCode::NOT_FOUND, "{key} came back");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tombstone_grace_holds_on_every_replica_not_only_the_collector() -> anyhow::Result<()> {
    let grace = Duration::from_secs(4);
    let grace_ms = grace.as_millis().to_string();
    let cluster = start(&[
        ("KVORUM_HINTED_HANDOFF", "false"),
        ("KVORUM_ANTI_ENTROPY_INTERVAL_MS", "300"),
        ("KVORUM_TOMBSTONE_GRACE_MS", grace_ms.as_str()),
        ("KVORUM_CHECKPOINT_INTERVAL_MS", "0"),
    ])
    .await?;
    cluster
        .create_keyspace("grace", r#"{"mode":"eventual"}"#)
        .await?;
    let key = "late";
    let written = cluster
        .client
        .put(&format!("{key}?keyspace=grace&consistency=all"), b"live")
        .await?;
    assert_eq!(
        written.status,
        StatusCode::NO_CONTENT,
        "{:?}",
        written.json()
    );
    let place = placement(&written);
    // The partition's first replica collects; the last one misses the delete.
    let (collector, late) = (place.replicas[0], place.replicas[2]);
    cluster.cluster.pause_storage(late)?;
    let deleted = cluster
        .client
        .delete(&format!("{key}?keyspace=grace"))
        .await?;
    assert_eq!(
        deleted.status,
        StatusCode::NO_CONTENT,
        "{:?}",
        deleted.json()
    );
    let held_since = Instant::now();
    // The collector has held the tombstone for the whole grace before the late
    // replica even hears of the delete.
    while held_since.elapsed() < grace + Duration::from_millis(500) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    cluster.cluster.resume_storage(late)?;
    let deadline = Instant::now() + Duration::from_secs(30);
    let late_has_it = loop {
        let state = cluster
            .read_causal(late, "grace", key, place.partition, place.epoch)
            .await;
        if state.is_ok_and(|s| s.is_deleted()) {
            break Instant::now();
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "node {late} never got the tombstone"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let purged_at = loop {
        let state = cluster
            .read_causal(collector, "grace", key, place.partition, place.epoch)
            .await?;
        if state.is_empty() {
            break Instant::now();
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the tombstone was never collected"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let waited = purged_at - late_has_it;
    eprintln!("collected {waited:?} after node {late} got the tombstone (grace {grace:?})");
    // Polling sees the late replica's receipt up to one poll late.
    assert!(
        waited + Duration::from_millis(300) >= grace,
        "collected {waited:?} after the late replica got the tombstone, inside its grace of {grace:?}"
    );
    let answer = cluster
        .client
        .get(&format!("{key}?keyspace=grace&consistency=all"))
        .await?;
    assert_eq!(answer.status, StatusCode::NOT_FOUND, "{key} came back");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_contexts_a_router_gave_out_for_the_key_are_taken() -> anyhow::Result<()> {
    let cluster = start(&[]).await?;
    cluster
        .create_keyspace("signed", r#"{"mode":"eventual","conflict":"siblings"}"#)
        .await?;
    let client = &cluster.client;
    for key in ["a", "b"] {
        let put = client
            .put(&format!("{key}?keyspace=signed"), b"one")
            .await?;
        assert_eq!(put.status, StatusCode::NO_CONTENT, "{:?}", put.json());
    }
    let read = client.get("a?keyspace=signed&consistency=all").await?;
    let token = read.header("x-kvorum-context").to_owned();
    let (body, tag) = token.rsplit_once('.').expect("a signed token");
    // A counter pushed up under the old tag, a token without its tag, and the
    // context of another key: each refused with 400, nothing written.
    let (counters, _) = body.split_at(body.len());
    let pushed = format!("{}9.{tag}", counters);
    for (what, key, bad) in [
        ("a pushed counter", "a", pushed.as_str()),
        ("no tag", "a", body),
        ("another key's context", "b", token.as_str()),
    ] {
        let answer = client
            .put_with_context(&format!("{key}?keyspace=signed"), b"two", bad)
            .await?;
        assert_eq!(
            answer.status,
            StatusCode::BAD_REQUEST,
            "{what}: {:?}",
            answer.json()
        );
    }
    for key in ["a", "b"] {
        let after = client
            .get(&format!("{key}?keyspace=signed&consistency=all"))
            .await?;
        assert_eq!(
            (after.status, after.body.as_slice()),
            (StatusCode::OK, b"one".as_slice()),
            "{key}"
        );
    }
    // The token the router gave out is taken.
    let resolved = client
        .put_with_context("a?keyspace=signed", b"two", &token)
        .await?;
    assert_eq!(
        resolved.status,
        StatusCode::NO_CONTENT,
        "{:?}",
        resolved.json()
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_refuses_blind_writes_past_its_sibling_bound_until_resolved() -> anyhow::Result<()> {
    let cluster = start(&[]).await?;
    cluster
        .create_keyspace("piles", r#"{"mode":"eventual","conflict":"siblings"}"#)
        .await?;
    let client = &cluster.client;
    let bound = kvorum_protocol::storage::MAX_KEY_SIBLINGS;
    // In a siblings keyspace a write without a context supersedes nothing.
    for i in 0..bound {
        let answer = client
            .put("pile?keyspace=piles", format!("v{i}").as_bytes())
            .await?;
        assert_eq!(
            answer.status,
            StatusCode::NO_CONTENT,
            "{i}: {:?}",
            answer.json()
        );
    }
    let refused = client.put("pile?keyspace=piles", b"one too many").await?;
    assert_eq!(refused.status, StatusCode::CONFLICT, "{:?}", refused.json());
    assert_eq!(refused.json()["error"]["code"], "sibling_limit");
    let read = client.get("pile?keyspace=piles&consistency=all").await?;
    assert_eq!(read.status, StatusCode::MULTIPLE_CHOICES);
    let siblings = read.json()["siblings"].as_array().map_or(0, Vec::len);
    assert_eq!(siblings, bound, "the refused write changed nothing");
    let context = read.header("x-kvorum-context").to_owned();
    let resolved = client
        .put_with_context("pile?keyspace=piles", b"resolved", &context)
        .await?;
    assert_eq!(
        resolved.status,
        StatusCode::NO_CONTENT,
        "{:?}",
        resolved.json()
    );
    let after = client.get("pile?keyspace=piles&consistency=all").await?;
    assert_eq!(
        (after.status, after.body.as_slice()),
        (StatusCode::OK, b"resolved".as_slice())
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_converge_after_concurrent_writers_and_a_crashed_node() -> anyhow::Result<()> {
    let mut cluster = start(&[("KVORUM_ANTI_ENTROPY_INTERVAL_MS", "500")]).await?;
    cluster.create_keyspace("tallies",
        r#"{"mode":"eventual","conflict":"siblings","write_consistency":"one","read_consistency":"one"}"#,
    )
    .await?;
    let keys: Vec<String> = (0..6).map(|i| format!("t-{i}")).collect();
    let placements = std::sync::Arc::new(tokio::sync::Mutex::new(BTreeMap::new()));
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut writers = Vec::new();
    for writer in 0..4 {
        let (client, keys, placements, stop) = (
            cluster.client.clone(),
            keys.clone(),
            placements.clone(),
            stop.clone(),
        );
        writers.push(tokio::spawn(async move {
            let mut acked = 0u32;
            let mut i = 0usize;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let key = &keys[(i * 7 + writer) % keys.len()];
                i += 1;
                // Read-modify-write with the context half the time, blind otherwise.
                let read = client.get(&format!("{key}?keyspace=tallies")).await?;
                let value = format!("w{writer}-{i}");
                let path = format!("{key}?keyspace=tallies");
                let context = read.header("x-kvorum-context").to_owned();
                let answer = if i.is_multiple_of(2) && !context.is_empty() {
                    client
                        .put_with_context(&path, value.as_bytes(), &context)
                        .await?
                } else {
                    client.put(&path, value.as_bytes()).await?
                };
                if answer.status == StatusCode::NO_CONTENT {
                    acked += 1;
                    placements
                        .lock()
                        .await
                        .insert(key.clone(), placement(&answer));
                }
            }
            anyhow::Ok(acked)
        }));
    }
    let victim = NodeId(1);
    tokio::time::sleep(Duration::from_secs(1)).await;
    cluster.cluster.kill_storage(victim).await?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    cluster.cluster.restart_storage(victim).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut acked = 0;
    for writer in writers {
        acked += writer.await??;
    }
    assert!(acked > 50, "only {acked} writes were acknowledged");
    let placements = placements.lock().await.clone();
    assert_eq!(placements.len(), keys.len());
    let took = converged(
        &cluster,
        "tallies",
        &placements,
        false,
        Duration::from_secs(30),
    )
    .await?;
    eprintln!(
        "{acked} writes by 4 writers with node {victim} crashed and restarted; every replica of every key agreed {took:?} after the writers stopped"
    );
    Ok(())
}
