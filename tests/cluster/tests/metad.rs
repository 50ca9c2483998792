//! Three metadata replicas as real processes: commands survive the leader's
//! death, a restarted replica catches up to identical state, a minority answers
//! with a clear 503, and the state survives killing all three.

// Measured commit latencies go to stderr, which the test harness captures.
#![allow(clippy::print_stderr)]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use kvorum_launcher::{MetadGroup, default_bin_dir};
use kvorum_protocol::metadata::{MetadStatus, MetadataCommand, MetadataOp, RequestId};
use kvorum_protocol::{NodeId, NodeInfo};
use reqwest::StatusCode;

fn register(request: &str, node: u64) -> MetadataCommand {
    let info = NodeInfo::registering(
        NodeId(node),
        format!("127.0.0.1:{}", 7000 + node),
        Default::default(),
        false,
    );
    MetadataCommand {
        request_id: RequestId(request.to_owned()),
        expected_version: None,
        fence: None,
        op: MetadataOp::RegisterNode { node: info },
    }
}

struct Client {
    http: reqwest::Client,
}

impl Client {
    fn new() -> anyhow::Result<Self> {
        // Followers redirect commands to the leader; reqwest follows 307 with the body.
        Ok(Self {
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()?,
        })
    }

    async fn metrics(&self, address: SocketAddr) -> anyhow::Result<String> {
        Ok(self
            .http
            .get(format!("http://{address}/metrics"))
            .send()
            .await?
            .text()
            .await?)
    }

    async fn status(&self, address: SocketAddr) -> Option<MetadStatus> {
        let response = self
            .http
            .get(format!("http://{address}/v1/status"))
            .send()
            .await
            .ok()?;
        response.json().await.ok()
    }

    async fn submit(
        &self,
        address: SocketAddr,
        command: &MetadataCommand,
    ) -> anyhow::Result<(StatusCode, serde_json::Value)> {
        self.members(
            address,
            reqwest::Method::POST,
            "/v1/commands",
            Some(serde_json::to_value(command)?),
        )
        .await
    }

    /// Submits through any live replica until one answers 200, or fails at the deadline.
    async fn submit_until_applied(
        &self,
        addresses: &[SocketAddr],
        command: &MetadataCommand,
        within: Duration,
    ) -> anyhow::Result<serde_json::Value> {
        let deadline = Instant::now() + within;
        loop {
            for address in addresses {
                if let Ok((StatusCode::OK, body)) = self.submit(*address, command).await {
                    return Ok(body);
                }
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "{command:?} not applied within {within:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Polls until one replica leads, and returns it.
    async fn leader(&self, group: &MetadGroup, among: &[u64]) -> anyhow::Result<u64> {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            for id in among {
                if self
                    .status(group.addresses()[id])
                    .await
                    .is_some_and(|s| s.is_leader)
                {
                    return Ok(*id);
                }
            }
            anyhow::ensure!(Instant::now() < deadline, "no leader among {among:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Polls until the replicas report one version and one state digest.
    async fn converged(&self, group: &MetadGroup, ids: &[u64], version: u64) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let mut statuses = Vec::new();
            for id in ids {
                statuses.push(self.status(group.addresses()[id]).await);
            }
            let all_there = statuses
                .iter()
                .all(|s| s.as_ref().is_some_and(|s| s.version >= version));
            let digests: std::collections::BTreeSet<_> = statuses
                .iter()
                .flatten()
                .map(|s| (s.version, s.state_digest))
                .collect();
            if all_there && digests.len() == 1 {
                return Ok(());
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "replicas did not converge: {statuses:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

fn percentile(sorted: &[Duration], fraction: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * fraction).round() as usize]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metadata_replicas_survive_leader_loss_minorities_and_total_restarts() -> anyhow::Result<()>
{
    let dir = tempfile::tempdir()?;
    let mut group = MetadGroup::start(dir.path(), 3, &default_bin_dir()).await?;
    let client = Client::new()?;
    let all: Vec<SocketAddr> = group.addresses().values().copied().collect();
    let leader = client.leader(&group, &[1, 2, 3]).await?;
    // The first leader initialises the cluster's shape (version 1) before anything else here.
    client.converged(&group, &[1, 2, 3], 1).await?;

    // A steady stream of commands, through a follower (redirected) as well as the leader.
    let mut latencies = Vec::new();
    for n in 0..100 {
        let started = Instant::now();
        let target = group.addresses()[&(n % 3 + 1)];
        let (status, body) = client
            .submit(target, &register(&format!("steady-{n}"), n + 1))
            .await?;
        assert_eq!(status, StatusCode::OK, "{body}");
        latencies.push(started.elapsed());
    }
    latencies.sort();
    eprintln!(
        "commit latency over 100 commands: p50 {:?}, p99 {:?}",
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.99)
    );

    let metrics = client.metrics(group.addresses()[&leader]).await?;
    assert!(
        metrics.contains("kvorum_paxos_decided_entries_total"),
        "{metrics}"
    );
    assert!(metrics.contains("kvorum_paxos_is_leader 1"), "{metrics}");

    // A retry with the same request id applies nothing twice.
    let (_, retried) = client.submit(all[0], &register("steady-7", 8)).await?;
    assert_eq!(
        retried["version"], 9,
        "the retry returns the outcome of the original, the 8th command after the init"
    );
    let leader_status = client.status(group.addresses()[&leader]).await;
    assert_eq!(
        leader_status.map(|s| s.version),
        Some(101),
        "the retry applied nothing"
    );

    // A watcher long-polls past the current version and wakes on the next command.
    let watcher = {
        let http = client.http.clone();
        let address = all[1];
        tokio::spawn(async move {
            let response = http
                .get(format!("http://{address}/v1/watch?after=101&wait_ms=5000"))
                .send()
                .await?;
            anyhow::Ok(response.json::<serde_json::Value>().await?)
        })
    };
    let (status, _) = client
        .submit(all[0], &register("wakes-the-watcher", 300))
        .await?;
    assert_eq!(status, StatusCode::OK);
    let woken = watcher.await??;
    assert_eq!(woken["version"], 102, "the watcher saw the new command");
    let bad_watch = client
        .http
        .get(format!("http://{}/v1/watch?after=x", all[0]))
        .send()
        .await?;
    assert_eq!(bad_watch.status(), StatusCode::BAD_REQUEST);

    // Kill -9 the leader: a new one commits within a few seconds, nothing acknowledged is lost.
    group.kill(leader).await?;
    let survivors: Vec<u64> = [1, 2, 3].into_iter().filter(|id| *id != leader).collect();
    let survivor_addresses: Vec<SocketAddr> =
        survivors.iter().map(|id| group.addresses()[id]).collect();
    let killed = Instant::now();
    let after = client
        .submit_until_applied(
            &survivor_addresses,
            &register("after-failover", 500),
            Duration::from_secs(10),
        )
        .await?;
    eprintln!(
        "first commit {:?} after the leader was killed",
        killed.elapsed()
    );
    assert!(
        killed.elapsed() < Duration::from_secs(5),
        "failover took {:?}",
        killed.elapsed()
    );
    assert_eq!(
        after["version"], 103,
        "every acknowledged command is still there"
    );

    // The old leader comes back and catches up to identical state.
    group.restart(leader).await?;
    client.converged(&group, &[1, 2, 3], 103).await?;

    // Two down: the survivor answers status, and commands fail with a clear 503.
    let (down_a, down_b) = (survivors[0], survivors[1]);
    group.kill(down_a).await?;
    group.kill(down_b).await?;
    let lonely = group.addresses()[&leader];
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, body) = client
            .submit(lonely, &register("minority", 600))
            .await
            .unwrap_or((StatusCode::BAD_GATEWAY, serde_json::Value::Null));
        if status == StatusCode::SERVICE_UNAVAILABLE {
            assert_eq!(body["error"]["code"], "unavailable");
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "a minority replica answered {status} {body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        client.status(lonely).await.is_some(),
        "the survivor still answers what it can"
    );

    // Back to a majority: progress resumes.
    group.restart(down_a).await?;
    group.restart(down_b).await?;
    client
        .submit_until_applied(&all, &register("resumed", 700), Duration::from_secs(10))
        .await?;

    // Kill all three and start them again: the state survives.
    let version_before = client
        .submit_until_applied(&all, &register("last", 800), Duration::from_secs(10))
        .await?["version"]
        .as_u64();
    for id in [1, 2, 3] {
        group.kill(id).await?;
    }
    for id in [1, 2, 3] {
        group.restart(id).await?;
    }
    let deadline = Instant::now() + Duration::from_secs(15);
    let state: serde_json::Value = loop {
        let mut read = None;
        for address in &all {
            if let Ok(response) = client
                .http
                .get(format!("http://{address}/v1/state"))
                .send()
                .await
                && response.status() == StatusCode::OK
            {
                read = response.json().await.ok();
                break;
            }
        }
        if let Some(state) = read {
            break state;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "no linearizable read after a full restart"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(
        state["version"].as_u64(),
        version_before,
        "the state survived killing every replica"
    );
    assert!(state["nodes"]["800"].is_object());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_back_after_many_compactions_catches_up_through_a_chunked_snapshot()
-> anyhow::Result<()> {
    // Scaled down by flags, the same code paths: a compaction every 50 entries
    // and an 8 KiB message limit, so the snapshot the returning replica needs
    // is many times one message and must come in chunks.
    let dir = tempfile::tempdir()?;
    let addresses = (1..=3)
        .map(|id| {
            kvorum_launcher::free_port().map(|port| (id, SocketAddr::from(([127, 0, 0, 1], port))))
        })
        .collect::<Result<_, _>>()?;
    let env = [
        ("KVORUM_METAD_COMPACT_EVERY", "50"),
        ("KVORUM_METAD_MAX_MESSAGE_BYTES", "8192"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    let mut group = MetadGroup::start_at(
        dir.path(),
        addresses,
        None,
        &default_bin_dir(),
        "info",
        &env,
        None,
    )
    .await?;
    let client = Client::new()?;
    let leader = client.leader(&group, &[1, 2, 3]).await?;
    let away = (1..=3).find(|id| *id != leader).expect("a follower");
    group.kill(away).await?;
    let live: Vec<SocketAddr> = group
        .addresses()
        .iter()
        .filter(|(id, _)| **id != away)
        .map(|(_, a)| *a)
        .collect();
    let mut version = 0;
    for n in 0..300 {
        let applied = client
            .submit_until_applied(
                &live,
                &register(&format!("many-{n}"), n + 1),
                Duration::from_secs(20),
            )
            .await?;
        version = applied["version"].as_u64().unwrap_or(version);
    }
    let snapshot_bytes = client
        .status(group.addresses()[&leader])
        .await
        .map_or(0, |s| s.snapshot_bytes);
    assert!(
        snapshot_bytes > 16 * 1024,
        "the snapshot ({snapshot_bytes} bytes) is many messages long"
    );
    let restarted = Instant::now();
    group.restart(away).await?;
    client.converged(&group, &[1, 2, 3], version).await?;
    eprintln!(
        "replica {away} caught up {:?} after its restart, 300 commands behind, through a snapshot of {snapshot_bytes} bytes",
        restarted.elapsed()
    );
    let metrics = client.metrics(group.addresses()[&leader]).await?;
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("kvorum_paxos_chunked_batches_total") && !l.ends_with(" 0")),
        "the snapshot went in chunks: {metrics}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_from_a_lease_holder_that_lost_its_lease_is_refused() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let group = MetadGroup::start(dir.path(), 3, &default_bin_dir()).await?;
    let client = Client::new()?;
    client.leader(&group, &[1, 2, 3]).await?;
    let all: Vec<SocketAddr> = group.addresses().values().copied().collect();
    let acquire = |request: &str, holder: &str, now_ms: u64| MetadataCommand {
        request_id: RequestId(request.to_owned()),
        expected_version: None,
        fence: None,
        op: MetadataOp::AcquireLease {
            name: "test-lease".into(),
            holder: holder.into(),
            now_ms,
            duration_ms: 1_000,
        },
    };
    let first = client
        .submit_until_applied(&all, &acquire("take-a", "a", 0), Duration::from_secs(10))
        .await?;
    let epoch_a = first["lease"]["epoch"].as_u64().expect("an epoch");
    // b is refused until a's lease lapses (a second later by the leader's
    // clock; the requesters' clocks are ignored), then takes it.
    let second = client
        .submit_until_applied(
            &all,
            &acquire("take-b", "b", 5_000),
            Duration::from_secs(10),
        )
        .await?;
    let epoch_b = second["lease"]["epoch"].as_u64().expect("an epoch");
    assert!(epoch_b > epoch_a, "{first} then {second}");
    let fenced = |request: &str, epoch: u64| MetadataCommand {
        fence: Some(kvorum_protocol::metadata::LeaseFence {
            lease: "test-lease".into(),
            epoch,
        }),
        ..register(request, 42)
    };
    let leader = client.leader(&group, &[1, 2, 3]).await?;
    let address = group.addresses()[&leader];
    let (status, body) = client.submit(address, &fenced("stale", epoch_a)).await?;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    let (status, body) = client.submit(address, &fenced("current", epoch_b)).await?;
    assert_eq!(status, StatusCode::OK, "{body}");
    Ok(())
}

impl Client {
    /// Calls `path` at `address` with a JSON body, following redirects to
    /// the leader; the status and the JSON answer.
    async fn members(
        &self,
        address: SocketAddr,
        method: reqwest::Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> anyhow::Result<(StatusCode, serde_json::Value)> {
        let mut request = self.http.request(method, format!("http://{address}{path}"));
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await?;
        let status = response.status();
        Ok((
            status,
            response.json().await.unwrap_or(serde_json::Value::Null),
        ))
    }

    /// `POST /v1/members` at `address`.
    async fn add_member(
        &self,
        address: SocketAddr,
        body: serde_json::Value,
    ) -> anyhow::Result<(StatusCode, serde_json::Value)> {
        self.members(address, reqwest::Method::POST, "/v1/members", Some(body))
            .await
    }

    /// `DELETE /v1/members/{id}` at `address`.
    async fn remove_member(
        &self,
        address: SocketAddr,
        id: u64,
    ) -> anyhow::Result<(StatusCode, serde_json::Value)> {
        self.members(
            address,
            reqwest::Method::DELETE,
            &format!("/v1/members/{id}"),
            None,
        )
        .await
    }

    /// Polls until `check` holds for the status of the replica at `address`.
    async fn status_until(
        &self,
        address: SocketAddr,
        what: &str,
        check: impl Fn(&MetadStatus) -> bool,
    ) -> anyhow::Result<MetadStatus> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let status = self.status(address).await;
            if let Some(status) = status.as_ref().filter(|s| check(s)) {
                return Ok(status.clone());
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "{address}: not {what} within 30 s: {status:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_that_lost_its_disk_is_refused_a_vote_until_metad_replace_brings_it_back()
-> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut group = MetadGroup::start(dir.path(), 3, &default_bin_dir()).await?;
    let client = Client::new()?;
    let leader = client.leader(&group, &[1, 2, 3]).await?;
    client.converged(&group, &[1, 2, 3], 1).await?;
    let [wiped, bystander] = [1, 2, 3]
        .into_iter()
        .filter(|id| *id != leader)
        .collect::<Vec<u64>>()[..]
    else {
        anyhow::bail!("three replicas")
    };
    let addresses = group.addresses().clone();
    let address = |id: u64| addresses[&id];
    let before = client
        .status(address(wiped))
        .await
        .ok_or_else(|| anyhow::anyhow!("no status"))?;
    assert!(before.member, "{before:?}");

    group.wipe(wiped).await?;
    group.restart(wiped).await?;
    let fresh = client
        .status_until(address(wiped), "back, empty", |s| {
            s.incarnation != before.incarnation
        })
        .await?;
    assert!(!fresh.member, "the new life is not a member: {fresh:?}");
    assert_eq!(fresh.decided_upto, 0, "it learned nothing: {fresh:?}");
    let ready = client
        .http
        .get(format!("http://{}/readyz", address(wiped)))
        .send()
        .await?;
    assert_eq!(ready.status(), StatusCode::SERVICE_UNAVAILABLE);
    let reason = ready.text().await?;
    assert!(reason.contains("metad replace"), "{reason}");

    // The leader and the wiped replica are no majority: its votes do not count.
    group.kill(bystander).await?;
    let (status, body) = client
        .submit(address(leader), &register("while-wiped", 1))
        .await?;
    assert_eq!(
        status,
        StatusCode::SERVICE_UNAVAILABLE,
        "decided with a replica that forgot its promises: {body}"
    );
    group.restart(bystander).await?;
    let leader = client.leader(&group, &[leader, bystander]).await?;
    client
        .submit_until_applied(
            &[address(leader)],
            &register("while-wiped", 1),
            Duration::from_secs(30),
        )
        .await?;

    // `metad replace` (through a follower, redirected to the leader).
    let (status, body) = client
        .members(
            address(bystander),
            reqwest::Method::POST,
            &format!("/v1/members/{wiped}/replace"),
            None,
        )
        .await?;
    assert_eq!(status, StatusCode::OK, "{body}");
    let replaced = body["members"]
        .as_array()
        .and_then(|m| m.iter().find(|m| m["id"] == wiped))
        .cloned();
    assert_eq!(
        replaced.map(|m| m["incarnation"].clone()),
        Some(serde_json::json!(fresh.incarnation)),
        "{body}"
    );
    client
        .status_until(address(wiped), "a member again", |s| {
            s.member && s.hears_leader
        })
        .await?;
    client.converged(&group, &[1, 2, 3], 2).await?;

    // In its new life it votes: with the third replica down, a command is decided.
    let third = [1, 2, 3]
        .into_iter()
        .find(|id| *id != wiped && *id != leader)
        .unwrap_or(bystander);
    group.kill(third).await?;
    let alive: Vec<SocketAddr> = [leader, wiped].into_iter().map(address).collect();
    client
        .submit_until_applied(
            &alive,
            &register("after-replace", 2),
            Duration::from_secs(30),
        )
        .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_is_added_and_another_removed_through_the_log() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut group = MetadGroup::start(dir.path(), 3, &default_bin_dir()).await?;
    let client = Client::new()?;
    let leader = client.leader(&group, &[1, 2, 3]).await?;
    client.converged(&group, &[1, 2, 3], 1).await?;
    let address = group
        .start_new(4, std::net::IpAddr::from([127, 0, 0, 1]))
        .await?;
    let newcomer = client
        .status_until(address, "settled", |s| s.incarnation != 0)
        .await?;
    assert!(!newcomer.member, "not a member before it is added");

    let (status, body) = client
        .add_member(
            group.addresses()[&leader],
            serde_json::json!({"id": 4, "address": address.to_string()}),
        )
        .await?;
    assert_eq!(status, StatusCode::OK, "{body}");
    client
        .status_until(address, "a member", |s| s.member && s.hears_leader)
        .await?;
    client.converged(&group, &[1, 2, 3, 4], 1).await?;

    // A second add of the same replica changes nothing; a bad one changes nothing either.
    let (status, _) = client
        .add_member(
            group.addresses()[&leader],
            serde_json::json!({"id": 4, "address": address.to_string()}),
        )
        .await?;
    assert_eq!(status, StatusCode::OK);
    let (status, body) = client
        .add_member(
            group.addresses()[&leader],
            serde_json::json!({"id": 9, "address": "not an address"}),
        )
        .await?;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");

    let removed = [1, 2, 3].into_iter().find(|id| *id != leader).unwrap_or(1);
    let (status, body) = client
        .remove_member(group.addresses()[&leader], removed)
        .await?;
    assert_eq!(status, StatusCode::OK, "{body}");
    let members: Vec<u64> = body["members"]
        .as_array()
        .map(|m| m.iter().filter_map(|m| m["id"].as_u64()).collect())
        .unwrap_or_default();
    assert_eq!(members.len(), 3, "{body}");
    assert!(!members.contains(&removed), "{body}");
    client
        .status_until(group.addresses()[&removed], "out of the group", |s| {
            !s.member
        })
        .await?;
    let (status, _) = client
        .remove_member(group.addresses()[&leader], removed)
        .await?;
    assert_eq!(
        status,
        StatusCode::NOT_FOUND,
        "a second removal names no member"
    );

    // The three members left decide without the removed replica.
    group.kill(removed).await?;
    let remaining: Vec<SocketAddr> = members.iter().map(|id| group.addresses()[id]).collect();
    client
        .submit_until_applied(
            &remaining,
            &register("after-remove", 3),
            Duration::from_secs(30),
        )
        .await?;
    Ok(())
}
