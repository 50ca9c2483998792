//! A storage node killed with SIGKILL: QUORUM carries on, ALL fails with 503, and the node's data comes back with it.

use kvorum_cluster_tests::TestCluster;
use reqwest::StatusCode;

#[tokio::test]
async fn quorum_survives_a_killed_replica_and_all_reports_it() -> anyhow::Result<()> {
    let mut cluster = TestCluster::start().await?;
    let before = cluster.client.put("survivor", b"v1").await?;
    assert_eq!(before.status, StatusCode::NO_CONTENT);
    // Make sure every replica holds v1 before one of them dies.
    assert_eq!(
        cluster.client.get("survivor?consistency=all").await?.status,
        StatusCode::OK
    );
    let replicas = before.nodes("x-kvorum-replicas-asked");
    let (partition, epoch) = before.route();
    let victim = replicas[0];

    cluster.cluster.kill_storage(victim).await?;

    let read = cluster.client.get("survivor").await?;
    assert_eq!(
        (read.status, read.body.as_slice()),
        (StatusCode::OK, b"v1".as_slice())
    );
    assert!(!read.nodes("x-kvorum-replicas-acked").contains(&victim));
    let write = cluster.client.put("survivor", b"v2").await?;
    assert_eq!(write.status, StatusCode::NO_CONTENT, "{:?}", write.json());
    assert_eq!(write.nodes("x-kvorum-replicas-acked").len(), 2);

    let all_write = cluster
        .client
        .put("survivor?consistency=all", b"v3")
        .await?;
    assert_eq!(all_write.status, StatusCode::SERVICE_UNAVAILABLE);
    let error = all_write.json();
    assert_eq!(error["error"]["code"], "quorum_not_reached");
    assert_eq!(error["error"]["replicas_answered"], 2);
    assert_eq!(error["error"]["replicas_required"], 3);
    // Two live replicas took v3: the client must hear that the outcome is unknown.
    assert_eq!(error["error"]["outcome_unknown"], true);
    let all_read = cluster.client.get("survivor?consistency=all").await?;
    assert_eq!(all_read.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(all_read.json()["error"].get("outcome_unknown").is_none());

    cluster.cluster.restart_storage(victim).await?;

    // The restarted node serves what it had on disk when it was killed...
    let own = cluster
        .read_replica(victim, "survivor", partition, epoch)
        .await?;
    assert_eq!(
        own.record.and_then(|r| r.value),
        Some(b"v1".to_vec()),
        "the node's data survived kill -9"
    );
    // ...and an ALL read brings it up to date before answering.
    let healed = cluster.client.get("survivor?consistency=all").await?;
    assert_eq!(healed.status, StatusCode::OK, "{:?}", healed.json());
    assert_eq!(
        healed.body, b"v3",
        "v3 reached a quorum and the newest version wins"
    );
    assert_eq!(healed.header("x-kvorum-read-repair"), "true");
    let repaired = cluster
        .read_replica(victim, "survivor", partition, epoch)
        .await?;
    assert_eq!(repaired.record.and_then(|r| r.value), Some(b"v3".to_vec()));
    Ok(())
}
