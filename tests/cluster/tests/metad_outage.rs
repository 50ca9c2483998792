//! The data path outlives the metadata service: with two of three metad
//! replicas killed, the router keeps serving reads and writes by the map it
//! holds, and stays ready; the surviving metad replica, the old leader, steps
//! down (check-quorum) and says it is not ready while it stays live.

// Progress goes to stderr, which the harness shows on failure.
#![allow(clippy::print_stderr)]

use std::time::{Duration, Instant};

use kvorum_cluster_tests::TestCluster;
use reqwest::StatusCode;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_and_writes_go_on_for_a_minute_with_two_metad_replicas_down() -> anyhow::Result<()> {
    let mut cluster = TestCluster::start().await?;
    let client = cluster.client.clone();
    let put = client.put("outage/k", b"before").await?;
    assert_eq!(put.status, StatusCode::NO_CONTENT, "{:?}", put.json());
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()?;
    // Both followers go; the leader stays, alone: by check-quorum it steps
    // down, since it hears from no majority.
    let addresses = cluster.cluster.metad().addresses().clone();
    let mut leader = None;
    for (id, address) in &addresses {
        let status: serde_json::Value = http
            .get(format!("http://{address}/v1/status"))
            .send()
            .await?
            .json()
            .await?;
        if status["is_leader"] == true {
            leader = Some(*id);
        }
    }
    let leader = leader.ok_or_else(|| anyhow::anyhow!("no metad leader"))?;
    let survivor = leader;
    let survivor_address = addresses[&survivor];
    for id in addresses.keys().filter(|id| **id != survivor) {
        cluster.cluster.metad_mut().kill(*id).await?;
    }
    let router = cluster.cluster.router_url();
    let started = Instant::now();
    let mut rounds = 0;
    let mut survivor_unready = false;
    while started.elapsed() < Duration::from_secs(60) {
        let value = format!("during-{rounds}");
        let written = client.put("outage/k", value.as_bytes()).await?;
        assert_eq!(
            written.status,
            StatusCode::NO_CONTENT,
            "{:?} after {:?}",
            written.json(),
            started.elapsed()
        );
        let read = client.get("outage/k").await?;
        assert_eq!(
            (read.status, read.body.as_slice()),
            (StatusCode::OK, value.as_bytes()),
            "after {:?}",
            started.elapsed()
        );
        let ready = http.get(format!("{router}/readyz")).send().await?;
        assert_eq!(
            ready.status(),
            StatusCode::OK,
            "the router turned unready after {:?}",
            started.elapsed()
        );
        let live = http
            .get(format!("http://{survivor_address}/healthz"))
            .send()
            .await?;
        assert_eq!(live.status(), StatusCode::OK, "the survivor's loop runs");
        let survivor_ready = http
            .get(format!("http://{survivor_address}/readyz"))
            .send()
            .await?;
        survivor_unready |= survivor_ready.status() == StatusCode::SERVICE_UNAVAILABLE;
        rounds += 1;
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    eprintln!("{rounds} rounds of PUT and GET in 60 s without a metadata quorum");
    assert!(
        survivor_unready,
        "a metad replica that hears no leader says it is not ready"
    );
    Ok(())
}
