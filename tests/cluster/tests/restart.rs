//! Every acknowledged write survives the whole cluster being killed and started again.

use kvorum_cluster_tests::TestCluster;
use reqwest::StatusCode;

#[tokio::test]
async fn acknowledged_writes_survive_a_whole_cluster_restart() -> anyhow::Result<()> {
    let cluster = TestCluster::start().await?;
    let keys: Vec<String> = (0..200).map(|i| format!("durable/{i}")).collect();
    let writes = keys.iter().map(|key| {
        let client = cluster.client.clone();
        async move { (key.clone(), client.put(key, key.as_bytes()).await) }
    });
    let mut acknowledged = Vec::new();
    for (key, answer) in futures::future::join_all(writes).await {
        if answer?.status == StatusCode::NO_CONTENT {
            acknowledged.push(key);
        }
    }
    assert_eq!(
        acknowledged.len(),
        keys.len(),
        "a healthy cluster acknowledges every write"
    );
    let deleted = cluster.client.delete("durable/0").await?;
    assert_eq!(deleted.status, StatusCode::NO_CONTENT);

    // SIGKILL every process: nothing gets a chance to flush on the way out.
    let cluster = cluster.crash_and_restart().await?;

    for key in &acknowledged[1..] {
        let got = cluster.client.get(key).await?;
        assert_eq!(
            (got.status, got.body.as_slice()),
            (StatusCode::OK, key.as_bytes()),
            "{key}"
        );
    }
    assert_eq!(
        cluster.client.get("durable/0").await?.status,
        StatusCode::NOT_FOUND,
        "the delete survived too"
    );

    // And a clean stop and start keeps everything as well.
    let cluster = cluster.stop_and_restart().await?;
    for key in &acknowledged[1..] {
        assert_eq!(cluster.client.get(key).await?.body, key.as_bytes(), "{key}");
    }
    Ok(())
}
