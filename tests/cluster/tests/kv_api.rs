//! PUT, GET and DELETE through a real router to real storage nodes.

use kvorum_cluster_tests::TestCluster;
use reqwest::StatusCode;

#[tokio::test]
async fn put_get_delete_round_trip() -> anyhow::Result<()> {
    let cluster = TestCluster::start().await?;
    let client = &cluster.client;

    let put = client.put("hello", b"world").await?;
    assert_eq!(put.status, StatusCode::NO_CONTENT, "{:?}", put.json());
    assert_eq!(put.header("x-kvorum-consistency"), "quorum");
    assert_eq!(put.nodes("x-kvorum-replicas-asked").len(), 3);
    assert!(put.nodes("x-kvorum-replicas-acked").len() >= 2);

    let got = client.get("hello").await?;
    assert_eq!(got.status, StatusCode::OK);
    assert_eq!(got.body, b"world");
    assert_eq!(
        got.header("x-kvorum-version"),
        put.header("x-kvorum-version")
    );
    // The third replica's commit may still be in flight, so a repair may or may not fire.
    assert!(matches!(
        got.header("x-kvorum-read-repair"),
        "true" | "false"
    ));

    // Overwrites win, at every read level.
    client.put("hello", b"again").await?;
    for level in ["one", "quorum", "all"] {
        let got = client.get(&format!("hello?consistency={level}")).await?;
        // ONE may be stale by contract, but here every replica acknowledged or will shortly;
        // only QUORUM and ALL are held to the newest value.
        if level != "one" {
            assert_eq!(got.body, b"again", "at {level}");
        }
        assert_eq!(got.status, StatusCode::OK, "at {level}");
    }

    let deleted = client.delete("hello").await?;
    assert_eq!(deleted.status, StatusCode::NO_CONTENT);
    let gone = client.get("hello").await?;
    assert_eq!(gone.status, StatusCode::NOT_FOUND);
    assert_eq!(gone.json()["error"]["code"], "key_not_found");
    assert_eq!(
        gone.json()["error"]["message"],
        r#"no value for key "hello" in keyspace "default""#
    );

    // Keys may hold slashes, percent-encoded bytes and any non-control Unicode; values any bytes.
    let binary: Vec<u8> = (0..=255).collect();
    for key in [
        "a/b/c",
        "with%20space",
        "%D0%BA%D0%BB%D1%8E%D1%87",
        "trailing/",
    ] {
        assert_eq!(
            client.put(key, &binary).await?.status,
            StatusCode::NO_CONTENT,
            "{key}"
        );
        let got = client.get(key).await?;
        assert_eq!(
            (got.status, got.body.as_slice()),
            (StatusCode::OK, binary.as_slice()),
            "{key}"
        );
    }
    // Every service exports Prometheus metrics, per route template and domain.
    let router_metrics = client
        .send(reqwest::Method::GET, "/metrics", Vec::new())
        .await?;
    let text = String::from_utf8_lossy(&router_metrics.body);
    assert!(
        text.contains(
            r#"kvorum_http_requests_total{method="PUT",route="/v1/kv/{*key}",status="204"}"#
        ),
        "{text}"
    );
    assert!(
        text.contains(r#"route="/v1/kv/{*key}",status="404""#),
        "{text}"
    );
    // A replica that acknowledged the first write has surely committed something.
    let acked = put.nodes("x-kvorum-replicas-acked")[0];
    let node = cluster.cluster.storage_address(acked)?;
    let storage_metrics = reqwest::get(format!("http://{node}/metrics"))
        .await?
        .text()
        .await?;
    assert!(
        storage_metrics.contains("kvorum_group_commit_transactions_total"),
        "{storage_metrics}"
    );
    assert!(
        storage_metrics.contains(r#"route="/internal/v1/commit""#),
        "{storage_metrics}"
    );

    // An empty value is a value, not a delete.
    client.put("empty", b"").await?;
    let got = client.get("empty").await?;
    assert_eq!((got.status, got.body.len()), (StatusCode::OK, 0));
    Ok(())
}

#[tokio::test]
async fn bad_input_is_refused_and_changes_nothing() -> anyhow::Result<()> {
    let cluster = TestCluster::start().await?;
    let client = &cluster.client;
    client.put("kept", b"original").await?;

    let too_large = vec![b'x'; (1 << 20) + 1];
    let refused = [
        (
            client.put("kept", &too_large).await?,
            StatusCode::PAYLOAD_TOO_LARGE,
        ),
        (
            client.put("kept?consistency=one", b"changed").await?,
            StatusCode::BAD_REQUEST,
        ),
        (
            client.put("kept?consistency=most", b"changed").await?,
            StatusCode::BAD_REQUEST,
        ),
        (
            client.put("kept?keyspace=elsewhere", b"changed").await?,
            StatusCode::NOT_FOUND,
        ),
        (
            client.put("kept?flavour=x", b"changed").await?,
            StatusCode::BAD_REQUEST,
        ),
        (
            client.delete("kept?consistency=one").await?,
            StatusCode::BAD_REQUEST,
        ),
        (
            client.put("%FF", b"changed").await?,
            StatusCode::BAD_REQUEST,
        ),
        (
            client.put(&"k".repeat(1025), b"changed").await?,
            StatusCode::BAD_REQUEST,
        ),
        (client.put("", b"changed").await?, StatusCode::BAD_REQUEST),
    ];
    for (answer, status) in refused {
        assert_eq!(answer.status, status, "{:?}", answer.json());
        assert!(
            answer.json()["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty())
        );
    }
    let got = client.get("kept?consistency=all").await?;
    assert_eq!(
        got.body, b"original",
        "a refused request changed the stored value"
    );
    // A value of exactly the limit is accepted.
    let at_limit = vec![b'y'; 1 << 20];
    assert_eq!(
        client.put("big", &at_limit).await?.status,
        StatusCode::NO_CONTENT
    );
    assert_eq!(client.get("big").await?.body.len(), 1 << 20);
    Ok(())
}

#[tokio::test]
async fn concurrent_writers_to_one_key_leave_one_agreed_value() -> anyhow::Result<()> {
    let cluster = TestCluster::start().await?;
    let client = &cluster.client;
    let writes = (0..32).map(|i| {
        let client = client.clone();
        async move {
            client
                .put("contended", format!("writer-{i}").as_bytes())
                .await
        }
    });
    for answer in futures::future::join_all(writes).await {
        assert_eq!(answer?.status, StatusCode::NO_CONTENT);
    }
    let first = client.get("contended?consistency=all").await?;
    assert!(String::from_utf8_lossy(&first.body).starts_with("writer-"));
    for _ in 0..5 {
        let again = client.get("contended").await?;
        assert_eq!(
            (again.body.as_slice(), again.header("x-kvorum-version")),
            (first.body.as_slice(), first.header("x-kvorum-version"))
        );
    }
    Ok(())
}
