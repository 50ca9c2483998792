//! The run's end-of-run waits against fake routers and storage nodes: the
//! recovery wait, the final strong reads and the convergence check each say
//! yes only when the cluster's answers say so, and give up at their deadline.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use kvorum_protocol::storage::CausalReadResponse;
use tokio::net::TcpListener;

use clap::Parser;

use super::*;

/// Serves `app` on a free loopback port; returns `host:port`.
async fn serve(app: axum::Router) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = listener.local_addr().expect("address").to_string();
    tokio::spawn(async move {
        axum::serve(listener, app).await.expect("serve");
    });
    address
}

/// A cluster view of one partition on storage nodes `nodes` (id, address, state).
fn view(nodes: &[(u64, String, &str)]) -> serde_json::Value {
    serde_json::json!({
        "metad": {"leader": 1, "replicas": []},
        "nodes": nodes.iter().map(|(id, address, state)| serde_json::json!({
            "id": id, "address": address, "role": "storage", "state": state, "phi": null
        })).collect::<Vec<_>>(),
        "partitions": [{"id": 0, "epoch": 1, "replicas": nodes.iter().map(|n| n.0).collect::<Vec<_>>()}],
        "moves": [],
    })
}

/// A router whose `GET /v1/cluster` always answers `cluster_view`; returns its base URL.
async fn fake_router(cluster_view: serde_json::Value) -> String {
    let app = axum::Router::new().route(
        "/v1/cluster",
        get(move || {
            let body = cluster_view.clone();
            async move { Json(body) }
        }),
    );
    format!("http://{}", serve(app).await)
}

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()
        .expect("client")
}

#[tokio::test]
async fn the_recovery_wait_ends_when_every_node_is_up_and_not_before() {
    // The node is down for the first answers, then up.
    let calls = Arc::new(AtomicUsize::new(0));
    let app = axum::Router::new()
        .route(
            "/v1/cluster",
            get(|State(calls): State<Arc<AtomicUsize>>| async move {
                let n = calls.fetch_add(1, Ordering::SeqCst);
                let state = if n < 3 { "down" } else { "up" };
                Json(view(&[
                    (1, "a:1".into(), "up"),
                    (2, "b:1".into(), "up"),
                    (3, "c:1".into(), state),
                ]))
            }),
        )
        .with_state(calls.clone());
    let router = format!("http://{}", serve(app).await);
    assert!(wait_recovery(&http(), &router, Duration::from_secs(20)).await);
    assert!(calls.load(Ordering::SeqCst) >= 4, "it waited for the node");

    let never = axum::Router::new().route(
        "/v1/cluster",
        get(|| async {
            Json(view(&[
                (1, "a:1".into(), "up"),
                (2, "b:1".into(), "down"),
                (3, "c:1".into(), "up"),
            ]))
        }),
    );
    let router = format!("http://{}", serve(never).await);
    assert!(!wait_recovery(&http(), &router, Duration::from_secs(1)).await);
}

#[tokio::test]
async fn final_reads_record_values_and_absences_and_leave_unanswered_keys_unread() {
    let app = axum::Router::new().route(
        "/v1/kv/{key}",
        get(|Path(key): Path<String>| async move {
            match key.as_str() {
                "k0" => (StatusCode::OK, crate::workload::encode_value("c1-7", 4096)),
                "k1" => (StatusCode::NOT_FOUND, Vec::new()),
                _ => (StatusCode::SERVICE_UNAVAILABLE, Vec::new()),
            }
        }),
    );
    let router = format!("http://{}", serve(app).await);
    let keys = ["k0", "k1", "k2"].map(str::to_owned);
    let (finals, ops) = final_strong_reads(
        &http(),
        &router,
        &keys,
        Instant::now(),
        9,
        Duration::from_secs(2),
    )
    .await;
    let key = |k: &str| (STRONG.to_owned(), k.to_owned());
    assert_eq!(finals.get(&key("k0")), Some(&Some("c1-7".to_owned())));
    assert_eq!(finals.get(&key("k1")), Some(&None));
    assert!(
        !finals.contains_key(&key("k2")),
        "never answered: left unread"
    );
    assert_eq!(ops.len(), 2, "one recorded read per answered key");
    assert!(ops.iter().all(|o| o.client == 9 && o.status == Status::Ok));
}

#[tokio::test]
async fn convergence_needs_every_replica_to_answer_the_same() {
    // Replica 3 fails its first reads, then answers like the others.
    let failures = Arc::new(AtomicUsize::new(2));
    let replica = |flaky: bool, failures: Arc<AtomicUsize>| {
        axum::Router::new()
            .route(
                "/internal/v1/causal/read",
                post(move |State(failures): State<Arc<AtomicUsize>>| async move {
                    if flaky && failures.load(Ordering::SeqCst) > 0 {
                        failures.fetch_sub(1, Ordering::SeqCst);
                        return Err(StatusCode::SERVICE_UNAVAILABLE);
                    }
                    Ok(Json(CausalReadResponse {
                        state: kvorum_protocol::CausalState::empty(),
                        deleted_for_ms: None,
                    }))
                }),
            )
            .with_state(failures)
    };
    let a = serve(replica(false, failures.clone())).await;
    let b = serve(replica(false, failures.clone())).await;
    let c = serve(replica(true, failures.clone())).await;
    let nodes = vec![(1, a, "up"), (2, b, "up"), (3, c, "up")];
    let router = fake_router(view(&nodes)).await;
    let config =
        ChaosConfig::try_parse_from(["kvorum-chaos", "--eventual-keys", "4"]).expect("config");
    let (finals, unconverged) = converge(&http(), &router, &config, Duration::from_secs(20))
        .await
        .expect("converge");
    assert!(unconverged.is_empty(), "{unconverged:?}");
    assert_eq!(finals.len(), 4, "every key's final state");
    assert_eq!(
        failures.load(Ordering::SeqCst),
        0,
        "the flaky replica was asked again"
    );

    // A replica that never answers leaves every key unconverged at the deadline.
    let dead = axum::Router::new().route(
        "/internal/v1/causal/read",
        post(|| async { StatusCode::SERVICE_UNAVAILABLE }),
    );
    let mut nodes = nodes;
    nodes[2].1 = serve(dead).await;
    let router = fake_router(view(&nodes)).await;
    let (finals, unconverged) = converge(&http(), &router, &config, Duration::from_secs(1))
        .await
        .expect("converge");
    assert!(finals.is_empty());
    assert_eq!(unconverged.len(), 4, "{unconverged:?}");
}

/// A metad replica whose `GET /v1/status` answers these fields.
async fn fake_metad(id: u64, member: bool, decided_upto: u64, digest: u64) -> String {
    let status = serde_json::json!({
        "id": id, "leader": 1, "is_leader": id == 1, "decided_upto": decided_upto,
        "version": 3, "state_digest": digest, "snapshot_bytes": 100 * id,
        "hears_leader": true, "peers": {}, "ballot_round": 2 + id,
        "incarnation": id, "member": member,
    });
    let app = axum::Router::new().route(
        "/v1/status",
        get(move || {
            let body = status.clone();
            async move { Json(body) }
        }),
    );
    serve(app).await
}

#[tokio::test]
async fn the_metad_check_passes_only_when_every_replica_is_a_member_with_one_state() {
    let agreeing = vec![
        fake_metad(1, true, 40, 7).await,
        fake_metad(2, true, 40, 7).await,
        fake_metad(3, true, 40, 7).await,
    ];
    let end = metad_end(&http(), &agreeing, 20.0, Duration::from_secs(5)).await;
    assert!(end.converged, "{end:?}");
    assert_eq!(
        (
            end.replicas,
            end.members,
            end.decided_upto,
            end.ballot_round,
            end.snapshot_bytes
        ),
        (3, 3, 40, 5, 300)
    );
    assert!((end.entries_per_second - 2.0).abs() < 1e-9);

    let short = Duration::from_millis(500);
    let diverged = vec![
        fake_metad(1, true, 40, 7).await,
        fake_metad(2, true, 40, 8).await,
    ];
    let end = metad_end(&http(), &diverged, 20.0, short).await;
    assert!(!end.converged && end.disagreement.is_some(), "{end:?}");
    let outsider = vec![
        fake_metad(1, true, 40, 7).await,
        fake_metad(2, false, 40, 7).await,
    ];
    assert!(!metad_end(&http(), &outsider, 20.0, short).await.converged);
    let unreachable = vec![fake_metad(1, true, 40, 7).await, "127.0.0.1:1".to_owned()];
    assert!(
        !metad_end(&http(), &unreachable, 20.0, short)
            .await
            .converged
    );
}

#[test]
fn a_counter_is_read_from_the_metrics_text_with_or_without_labels() {
    let text = "# HELP kvorum_strong_tombstones_collected_total x\n# TYPE kvorum_strong_tombstones_collected_total counter\nkvorum_strong_tombstones_collected_total 12\nkvorum_strong_tombstones_collected_totally 99\nkvorum_other 5\n";
    assert_eq!(
        metric_value(text, "kvorum_strong_tombstones_collected_total"),
        12
    );
    let labelled = "m{node=\"1\"} 3\nm{node=\"2\"} 4\n";
    assert_eq!(metric_value(labelled, "m"), 7);
    assert_eq!(metric_value(text, "absent"), 0);
}
