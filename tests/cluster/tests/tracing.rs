//! One client request is one trace: a QUORUM PUT's spans, exported by OTLP/HTTP
//! from the router and the storage nodes to a receiver inside this test, form
//! one tree under the caller's `traceparent`.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::routing::post;
use kvorum_cluster_tests::TestCluster;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use prost::Message;
use reqwest::StatusCode;

/// A span as the receiver keeps it.
#[derive(Debug, Clone)]
struct Collected {
    service: String,
    instance: String,
    trace_id: Vec<u8>,
    span_id: Vec<u8>,
    parent: Vec<u8>,
    name: String,
    kind: i32,
    attributes: HashMap<String, String>,
}

type Spans = Arc<Mutex<Vec<Collected>>>;

fn text(attributes: &[KeyValue]) -> HashMap<String, String> {
    attributes
        .iter()
        .filter_map(|kv| {
            let value = match kv.value.as_ref()?.value.as_ref()? {
                Value::StringValue(s) => s.clone(),
                Value::IntValue(i) => i.to_string(),
                Value::BoolValue(b) => b.to_string(),
                Value::DoubleValue(d) => d.to_string(),
                _ => return None,
            };
            Some((kv.key.clone(), value))
        })
        .collect()
}

/// `POST /v1/traces`: decodes an OTLP/HTTP protobuf export and keeps its spans.
async fn receive(State(spans): State<Spans>, body: Bytes) -> (StatusCode, Vec<u8>) {
    let Ok(request) = ExportTraceServiceRequest::decode(body) else {
        return (StatusCode::BAD_REQUEST, Vec::new());
    };
    let mut kept = spans.lock().unwrap_or_else(|p| p.into_inner());
    for resource_spans in request.resource_spans {
        let resource = text(
            &resource_spans
                .resource
                .map(|r| r.attributes)
                .unwrap_or_default(),
        );
        for scope in resource_spans.scope_spans {
            for span in scope.spans {
                kept.push(Collected {
                    service: resource.get("service.name").cloned().unwrap_or_default(),
                    instance: resource
                        .get("service.instance.id")
                        .cloned()
                        .unwrap_or_default(),
                    trace_id: span.trace_id,
                    span_id: span.span_id,
                    parent: span.parent_span_id,
                    name: span.name,
                    kind: span.kind,
                    attributes: text(&span.attributes),
                });
            }
        }
    }
    // An empty ExportTraceServiceResponse encodes to no bytes.
    (StatusCode::OK, Vec::new())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quorum_put_is_one_trace_across_router_and_storage_nodes() -> anyhow::Result<()> {
    let spans: Spans = Arc::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let collector = listener.local_addr()?;
    let app = axum::Router::new()
        .route("/v1/traces", post(receive))
        .with_state(spans.clone());
    let receiver = tokio::spawn(async move { axum::serve(listener, app).await });

    let env = BTreeMap::from([
        (
            "OTEL_EXPORTER_OTLP_ENDPOINT".to_owned(),
            format!("http://{collector}"),
        ),
        ("OTEL_BSP_SCHEDULE_DELAY".to_owned(), "100".to_owned()),
    ]);
    let cluster = TestCluster::start_with_env(env).await?;

    // The caller's own trace context: the router must continue it.
    let trace_id: [u8; 16] = rand::random();
    let caller_span: [u8; 8] = rand::random();
    let traceparent = format!("00-{}-{}-01", hex(&trace_id), hex(&caller_span));
    let url = format!(
        "{}/v1/kv/traced?consistency=quorum",
        cluster.cluster.router_url()
    );
    let answer = reqwest::Client::new()
        .put(&url)
        .header("traceparent", &traceparent)
        .body("v")
        .send()
        .await?;
    assert_eq!(answer.status(), StatusCode::NO_CONTENT);
    assert_eq!(
        answer.headers()["x-kvorum-trace-id"].to_str()?,
        hex(&trace_id),
        "the answer names its trace"
    );
    let partition = answer.headers()["x-kvorum-partition"].to_str()?.to_owned();

    // Every replica gets a prepare and a commit; wait for a quorum of each.
    let deadline = Instant::now() + Duration::from_secs(20);
    let trace = loop {
        let trace: Vec<Collected> = spans
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter(|s| s.trace_id == trace_id)
            .cloned()
            .collect();
        let instances = |route: &str| -> BTreeSet<String> {
            trace
                .iter()
                .filter(|s| s.service == "kvorum-storage" && s.name == format!("POST {route}"))
                .map(|s| s.instance.clone())
                .collect()
        };
        let router_done = trace
            .iter()
            .any(|s| s.service == "kvorum-router" && s.kind == SpanKind::Server as i32);
        if router_done
            && instances("/internal/v1/prepare").len() >= 2
            && instances("/internal/v1/commit").len() >= 2
        {
            break trace;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the trace did not arrive complete; spans of it so far: {:#?}",
            trace
                .iter()
                .map(|s| (&s.service, &s.name))
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };

    let by_id: HashMap<&[u8], &Collected> =
        trace.iter().map(|s| (s.span_id.as_slice(), s)).collect();
    let ancestors = |span: &Collected| -> Vec<&Collected> {
        let mut chain = Vec::new();
        let mut parent = span.parent.as_slice();
        while let Some(next) = by_id.get(parent) {
            chain.push(*next);
            parent = next.parent.as_slice();
        }
        chain
    };

    // The router's server span is named by its route and is the caller's child.
    let server = trace
        .iter()
        .find(|s| s.service == "kvorum-router" && s.kind == SpanKind::Server as i32)
        .expect("the router's server span");
    assert_eq!(server.name, "PUT /v1/kv/{*key}");
    assert_eq!(
        server.parent, caller_span,
        "the router continues the caller's trace"
    );
    assert_eq!(server.attributes["http.request.method"], "PUT");
    assert_eq!(server.attributes["http.route"], "/v1/kv/{*key}");
    assert_eq!(server.attributes["http.response.status_code"], "204");

    // The coordinator's span carries the Kvorum attributes.
    let write = trace
        .iter()
        .find(|s| s.name == "strong_write")
        .expect("the coordinator's span");
    assert_eq!(write.attributes["kvorum.keyspace"], "default");
    assert_eq!(write.attributes["kvorum.consistency"], "quorum");
    assert_eq!(write.attributes["kvorum.partition"], partition);
    assert!(write.attributes["kvorum.replicas_acked"].parse::<usize>()? >= 2);
    assert!(ancestors(write).iter().any(|a| a.span_id == server.span_id));

    // Each storage node's server span is the child of a router client span,
    // which descends from the router's server span.
    let storage: Vec<&Collected> = trace
        .iter()
        .filter(|s| s.service == "kvorum-storage")
        .collect();
    assert!(storage.len() >= 4, "{storage:#?}");
    for span in storage {
        assert_eq!(span.kind, SpanKind::Server as i32, "{span:?}");
        let parent = by_id
            .get(span.parent.as_slice())
            .unwrap_or_else(|| panic!("the parent of {span:?} is in the trace"));
        assert_eq!(parent.service, "kvorum-router");
        assert_eq!(parent.kind, SpanKind::Client as i32, "{parent:?}");
        assert_eq!(parent.attributes["http.request.method"], "POST");
        assert!(
            ancestors(span).iter().any(|a| a.span_id == server.span_id),
            "{span:?} descends from the router's server span"
        );
    }
    receiver.abort();
    Ok(())
}
