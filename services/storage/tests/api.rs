//! The storage node's internal API, driven through `router(state)` without a socket.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use kvorum_protocol::NodeId;
use kvorum_storage::api::{AppState, router};
use kvorum_storage::checkpoint::Checkpoints;
use kvorum_storage::fence::EpochFence;
use kvorum_storage::incarnation::Incarnation;
use kvorum_storage::store::Store;
use kvorum_storage::writer::Writer;
use serde_json::{Value, json};
use tower::ServiceExt;

struct Node {
    app: Router,
    _dir: tempfile::TempDir,
}

fn node() -> Node {
    node_in(Incarnation::serving())
}

fn node_in(incarnation: Incarnation) -> Node {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Arc::new(Store::open(dir.path(), NodeId(1)).expect("open"));
    let (writer, _task) = Writer::start(store.clone(), 64);
    let state = Arc::new(AppState {
        store,
        writer,
        fence: Arc::new(EpochFence::default()),
        readiness: kvorum_server::Readiness::always(),
        incarnation,
        checkpoints: Checkpoints::new(dir.path().join("checkpoints"), 2),
    });
    Node {
        app: router(state, Duration::from_secs(5), 1 << 20),
        _dir: dir,
    }
}

impl Node {
    async fn call(&self, method: &str, uri: &str, body: Value) -> (StatusCode, Value) {
        self.call_raw(method, uri, body.to_string()).await
    }

    async fn call_raw(&self, method: &str, uri: &str, body: String) -> (StatusCode, Value) {
        let request = Request::builder()
            .method(method)
            .uri(uri)
            .header("content-type", "application/json")
            .body(Body::from(body))
            .expect("request");
        let response = self.app.clone().oneshot(request).await.expect("infallible");
        let status = response.status();
        let bytes = response
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes();
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    }
}

fn target(key: &str, epoch: u64) -> Value {
    json!({"partition": 3, "epoch": epoch, "keyspace": "default", "key": key})
}

fn commit_at_counter(counter: u64) -> Value {
    json!({"target": target("k", 1), "record": {"version": {"counter": counter, "writer": 1}, "value": "YQ=="}})
}

fn commit(key: &str, epoch: u64, counter: u64, value: &str) -> Value {
    json!({"target": target(key, epoch), "record": {"version": {"counter": counter, "writer": 1}, "value": value}})
}

#[tokio::test]
async fn prepare_commit_and_read_follow_the_keep_if_higher_rule() {
    let node = node();
    let (status, body) = node
        .call("POST", "/internal/v1/prepare", target("k", 1))
        .await;
    assert_eq!((status, body), (StatusCode::OK, json!({"version": null})));

    let (status, body) = node
        .call("POST", "/internal/v1/commit", commit("k", 1, 2, "dHdv"))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        body,
        json!({"applied": true, "current": {"counter": 2, "writer": 1}})
    );
    let (_, body) = node
        .call("POST", "/internal/v1/commit", commit("k", 1, 1, "b25l"))
        .await;
    assert_eq!(
        body,
        json!({"applied": false, "current": {"counter": 2, "writer": 1}})
    );

    let (_, body) = node.call("POST", "/internal/v1/read", target("k", 1)).await;
    assert_eq!(body["record"]["value"], "dHdv");
    let (_, body) = node
        .call("POST", "/internal/v1/prepare", target("k", 1))
        .await;
    assert_eq!(body["version"]["counter"], 2);
}

#[tokio::test]
async fn batches_answer_item_by_item_in_order() {
    let node = node();
    let (status, body) = node
        .call(
            "POST",
            "/internal/v1/commit/batch",
            json!({"items": [commit("a", 1, 1, "YQ=="), commit("b", 1, 1, "Yg==")]}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["items"][0]["ok"]["applied"], true);
    assert_eq!(body["items"][1]["ok"]["applied"], true);
    let (_, body) = node
        .call(
            "POST",
            "/internal/v1/read/batch",
            json!({"items": [target("b", 1), target("none", 1)]}),
        )
        .await;
    assert_eq!(body["items"][0]["ok"]["record"]["value"], "Yg==");
    assert_eq!(body["items"][1]["ok"]["record"], Value::Null);
    let (_, body) = node
        .call(
            "POST",
            "/internal/v1/prepare/batch",
            json!({"items": [target("a", 1)]}),
        )
        .await;
    assert_eq!(body["items"][0]["ok"]["version"]["counter"], 1);
}

#[tokio::test]
async fn requests_from_an_older_epoch_are_fenced_off() {
    let node = node();
    node.call("POST", "/internal/v1/read", target("k", 5)).await;
    let (status, body) = node
        .call("POST", "/internal/v1/commit", commit("k", 4, 1, "YQ=="))
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(body["error"]["code"], "stale_epoch");
    assert_eq!(body["error"]["current_epoch"], 5);
    // The fenced write changed nothing.
    let (_, body) = node.call("POST", "/internal/v1/read", target("k", 5)).await;
    assert_eq!(body["record"], Value::Null);
    // In a batch only the stale item fails.
    let (_, body) = node
        .call(
            "POST",
            "/internal/v1/commit/batch",
            json!({"items": [commit("k", 4, 1, "YQ=="), commit("k", 5, 1, "Yg==")]}),
        )
        .await;
    assert_eq!(body["items"][0]["error"]["code"], "stale_epoch");
    assert_eq!(body["items"][1]["ok"]["applied"], true);
}

#[tokio::test]
async fn malformed_internal_requests_get_400_and_change_nothing() {
    let node = node();
    let bad = [
        ("POST", "/internal/v1/read", "{".to_owned()),
        ("POST", "/internal/v1/read", json!({"partition": 3, "epoch": 1, "keyspace": "default"}).to_string()),
        ("POST", "/internal/v1/read", json!({"partition": 3, "epoch": 1, "keyspace": "default", "key": ""}).to_string()),
        ("POST", "/internal/v1/read", json!({"partition": -1, "epoch": 1, "keyspace": "default", "key": "k"}).to_string()),
        ("POST", "/internal/v1/prepare", json!({"partition": 3, "epoch": 1, "keyspace": "no spaces", "key": "k"}).to_string()),
        ("POST", "/internal/v1/commit", json!({"target": target("k", 1), "record": {"version": {"counter": 1, "writer": 1}, "value": "not base64!"}}).to_string()),
        ("POST", "/internal/v1/commit", json!({"target": target("k", 1), "record": {"version": {"counter": 1}, "value": "YQ=="}}).to_string()),
        ("POST", "/internal/v1/commit", json!({"target": target("k", 1), "record": {"version": {"counter": 1, "writer": 1}, "value": "YQ=="}, "extra": 1}).to_string()),
        ("POST", "/internal/v1/commit/batch", json!({"items": [{"target": target("k", 1)}]}).to_string()),
        ("POST", "/internal/v1/commit", commit_at_counter(u64::MAX).to_string()),
        ("PUT", "/internal/v1/partitions/3", json!({"partition": 4, "records": []}).to_string()),
        ("GET", "/internal/v1/partitions/minus-one", String::new()),
    ];
    for (method, uri, body) in bad {
        let (status, answer) = node.call_raw(method, uri, body.clone()).await;
        assert_eq!(
            status,
            StatusCode::BAD_REQUEST,
            "{method} {uri} {body}: {answer}"
        );
        assert!(
            answer["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "{answer}"
        );
    }
    let (_, export) = node
        .call("GET", "/internal/v1/partitions/3", Value::Null)
        .await;
    assert_eq!(
        export["records"],
        json!([]),
        "a refused request stored something"
    );
}

#[tokio::test]
async fn a_partition_exports_imports_and_drops_as_a_unit() {
    let source = node();
    source
        .call(
            "POST",
            "/internal/v1/commit/batch",
            json!({"items": [commit("a", 1, 3, "YQ=="), commit("b/c", 1, 1, "Yg==")]}),
        )
        .await;
    let (status, export) = source
        .call("GET", "/internal/v1/partitions/3", Value::Null)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(export["records"].as_array().map(Vec::len), Some(2));

    let destination = node();
    destination
        .call("POST", "/internal/v1/commit", commit("a", 1, 9, "bmV3ZXI="))
        .await;
    let (status, imported) = destination
        .call("PUT", "/internal/v1/partitions/3", export.clone())
        .await;
    assert_eq!(status, StatusCode::OK, "{imported}");
    // The destination's newer "a" is kept; only "b/c" is taken.
    assert_eq!(imported, json!({"applied": 1, "skipped": 1}));

    let (status, dropped) = source
        .call("DELETE", "/internal/v1/partitions/3", Value::Null)
        .await;
    assert_eq!((status, dropped), (StatusCode::OK, json!({"removed": 2})));
    let (_, export) = source
        .call("GET", "/internal/v1/partitions/3", Value::Null)
        .await;
    assert_eq!(export["records"], json!([]));
}

#[tokio::test]
async fn health_endpoints_answer_json() {
    let node = node();
    let (status, body) = node.call_raw("GET", "/healthz", String::new()).await;
    assert_eq!((status, body), (StatusCode::OK, json!({"status": "ok"})));
    let (status, body) = node.call_raw("GET", "/readyz", String::new()).await;
    assert_eq!((status, body), (StatusCode::OK, json!({"status": "ready"})));
}

#[tokio::test]
async fn a_partition_exports_in_pages_that_resume_where_the_last_ended() {
    let node = node();
    let items: Vec<Value> = (0..5)
        .map(|i| commit(&format!("k{i}"), 1, 1, "dg=="))
        .collect();
    node.call(
        "POST",
        "/internal/v1/commit/batch",
        json!({ "items": items }),
    )
    .await;
    let mut uri = "/internal/v1/partitions/3?limit=2".to_owned();
    let mut keys = Vec::new();
    let mut pages = 0;
    loop {
        let (status, page) = node.call("GET", &uri, Value::Null).await;
        assert_eq!(status, StatusCode::OK, "{page}");
        pages += 1;
        for record in page["records"].as_array().cloned().unwrap_or_default() {
            keys.push(record["key"].as_str().unwrap_or_default().to_owned());
        }
        match page.get("next") {
            Some(next) => {
                uri = format!(
                    "/internal/v1/partitions/3?limit=2&after_keyspace={}&after_key={}",
                    next["keyspace"].as_str().unwrap_or_default(),
                    next["key"].as_str().unwrap_or_default()
                );
            }
            None => break,
        }
    }
    assert_eq!(keys, ["k0", "k1", "k2", "k3", "k4"]);
    assert_eq!(pages, 3);
    let (status, body) = node
        .call("GET", "/internal/v1/partitions/3?after_key=k1", Value::Null)
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
}

#[tokio::test]
async fn a_fence_refuses_older_epochs_from_then_on() {
    let node = node();
    let (status, fenced) = node
        .call(
            "POST",
            "/internal/v1/partitions/3/fence",
            json!({"epoch": 4}),
        )
        .await;
    assert_eq!((status, fenced), (StatusCode::OK, json!({"epoch": 4})));
    let (status, body) = node
        .call("POST", "/internal/v1/commit", commit("late", 3, 1, "dg=="))
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(body["error"]["code"], "stale_epoch");
    // A fence never lowers the epoch.
    let (_, fenced) = node
        .call(
            "POST",
            "/internal/v1/partitions/3/fence",
            json!({"epoch": 2}),
        )
        .await;
    assert_eq!(fenced, json!({"epoch": 4}));
    let (status, _) = node
        .call(
            "POST",
            "/internal/v1/commit",
            commit("on-time", 4, 1, "dg=="),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn checkpoints_are_taken_listed_and_restored_into_the_live_node() {
    let node = node();
    node.call("POST", "/internal/v1/commit", commit("kept", 1, 1, "dg=="))
        .await;
    let (status, taken) = node
        .call("POST", "/internal/v1/checkpoints", Value::Null)
        .await;
    assert_eq!(status, StatusCode::OK, "{taken}");
    let (_, listed) = node
        .call("GET", "/internal/v1/checkpoints", Value::Null)
        .await;
    assert_eq!(listed[0]["name"], taken["name"]);
    // The live partition is lost (dropped), then restored from the checkpoint.
    node.call("DELETE", "/internal/v1/partitions/3", Value::Null)
        .await;
    let name = taken["name"].as_str().unwrap_or_default();
    let (status, restored) = node
        .call(
            "POST",
            &format!("/internal/v1/checkpoints/{name}/restore"),
            Value::Null,
        )
        .await;
    assert_eq!(
        (status, restored),
        (StatusCode::OK, json!({"applied": 1, "skipped": 0}))
    );
    let (_, read) = node
        .call("POST", "/internal/v1/read", target("kept", 1))
        .await;
    assert_eq!(read["record"]["value"], "dg==");
    let (status, body) = node
        .call("POST", "/internal/v1/checkpoints/nope/restore", Value::Null)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
}

#[tokio::test]
async fn a_catching_up_incarnation_takes_writes_but_answers_no_reads_and_its_acks_do_not_count() {
    let node = node_in(Incarnation::catching_up());
    for (uri, body) in [
        ("/internal/v1/read", target("k", 1)),
        ("/internal/v1/prepare", target("k", 1)),
        ("/internal/v1/causal/read", target("k", 1)),
    ] {
        let (status, body) = node.call("POST", uri, body).await;
        assert_eq!(status, StatusCode::CONFLICT, "{uri}: {body}");
        assert_eq!(body["error"]["code"], "catching_up", "{uri}");
    }
    let (status, body) = node
        .call("GET", "/internal/v1/partitions/1", Value::Null)
        .await;
    assert_eq!(
        (status, &body["error"]["code"]),
        (StatusCode::CONFLICT, &json!("catching_up")),
        "a catching-up node is nobody's export source"
    );
    let (status, body) = node
        .call("POST", "/internal/v1/commit", commit("k", 1, 2, "dHdv"))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        body,
        json!({"applied": true, "current": {"counter": 2, "writer": 1}, "catching_up": true})
    );
    let (_, body) = node
        .call(
            "POST",
            "/internal/v1/commit/batch",
            json!({"items": [commit("a", 1, 1, "YQ==")]}),
        )
        .await;
    assert_eq!(body["items"][0]["ok"]["catching_up"], true, "{body}");
}

#[tokio::test]
async fn an_incarnation_not_yet_admitted_answers_nothing_routed() {
    let node = node_in(Incarnation::admitting());
    for (uri, body) in [
        ("/internal/v1/read", target("k", 1)),
        ("/internal/v1/commit", commit("k", 1, 2, "dHdv")),
    ] {
        let (status, body) = node.call("POST", uri, body).await;
        assert_eq!(status, StatusCode::CONFLICT, "{uri}: {body}");
        assert_eq!(body["error"]["code"], "catching_up", "{uri}");
    }
}
