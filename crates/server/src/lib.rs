//! HTTP server plumbing every Kvorum service shares.
//!
//! - [`metrics`]: the Prometheus recorder, `GET /metrics` and per-request metrics.
//! - [`serve`]: run a router on a listener until a shutdown token fires, draining requests.
//! - [`with_standard_layers`]: request ids, request tracing, a deadline and panic catching,
//!   as tower layers so that no handler carries that code.
//! - [`JsonBody`], [`PathParam`], [`QueryParams`]: extractors whose rejections are Kvorum's JSON errors.
//! - [`shutdown_on_signal`]: the shutdown token `main` hands to `run`.
//! - [`error_response`]: the one way an [`ErrorDetail`] becomes a response.

pub mod metrics;

use std::time::Duration;

use axum::Router;
use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderName, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use kvorum_protocol::health::Health;
use kvorum_protocol::{ErrorBody, ErrorCode, ErrorDetail};
use serde::de::DeserializeOwned;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tower::ServiceBuilder;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::TraceLayer;

/// The header carrying a request's id, set when the caller sent none.
pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The JSON error response for `detail`, with the status its code maps to.
pub fn error_response(detail: ErrorDetail) -> Response {
    let status =
        StatusCode::from_u16(detail.code.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (status, axum::Json(ErrorBody::from(detail))).into_response()
}

/// Serves `app` on `listener` until `shutdown` is cancelled, then drains in-flight requests.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    axum::serve(listener, app)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
}

/// `GET /healthz`: the process is alive and serving HTTP.
pub async fn healthz() -> axum::Json<Health> {
    axum::Json(Health {
        status: "ok".to_owned(),
    })
}

/// A service's readiness check: `Ok` when it can do its job, or why not.
#[derive(Clone)]
pub struct Readiness(std::sync::Arc<dyn Fn() -> Result<(), String> + Send + Sync>);

impl Readiness {
    /// A check that runs `probe` on every `GET /readyz`.
    pub fn new(probe: impl Fn() -> Result<(), String> + Send + Sync + 'static) -> Self {
        Self(std::sync::Arc::new(probe))
    }

    /// A service that is ready as soon as it serves.
    pub fn always() -> Self {
        Self::new(|| Ok(()))
    }

    /// Runs the check.
    pub fn check(&self) -> Result<(), String> {
        (self.0)()
    }

    /// `GET /readyz`: 200 `{"status":"ready"}`, or 503 with the reason as a JSON error.
    pub fn route<S: Clone + Send + Sync + 'static>(&self) -> axum::routing::MethodRouter<S> {
        let readiness = self.clone();
        axum::routing::get(move || {
            let result = readiness.check();
            async move {
                match result {
                    Ok(()) => axum::Json(Health {
                        status: "ready".to_owned(),
                    })
                    .into_response(),
                    Err(reason) => error_response(ErrorDetail::new(
                        ErrorCode::Unavailable,
                        format!("not ready: {reason}"),
                    )),
                }
            }
        })
    }
}

impl std::fmt::Debug for Readiness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Readiness")
    }
}

/// `GET /readyz` for a service whose readiness is having started: it serves once bound.
pub async fn ready() -> axum::Json<Health> {
    axum::Json(Health {
        status: "ready".to_owned(),
    })
}

/// A token cancelled on the first SIGINT (Ctrl-C) or SIGTERM, for `main` to pass to `run`.
pub fn shutdown_on_signal() -> CancellationToken {
    let token = CancellationToken::new();
    let cancel = token.clone();
    tokio::spawn(async move {
        let interrupt = tokio::signal::ctrl_c();
        #[cfg(unix)]
        let terminate = async {
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(mut signal) => {
                    signal.recv().await;
                }
                Err(error) => {
                    tracing::warn!(%error, "cannot listen for SIGTERM");
                    std::future::pending::<()>().await;
                }
            }
        };
        #[cfg(not(unix))]
        let terminate = std::future::pending::<()>();
        tokio::select! {
            _ = interrupt => tracing::info!("SIGINT received, shutting down"),
            () = terminate => tracing::info!("SIGTERM received, shutting down"),
        }
        cancel.cancel();
    });
    token
}

/// Wraps `router` in the layers every service uses, and JSON answers for unknown routes.
pub fn with_standard_layers(router: Router, request_timeout: Duration) -> Router {
    metrics::handle();
    router
        .route("/metrics", axum::routing::get(metrics::render))
        .fallback(|| async {
            error_response(ErrorDetail::new(ErrorCode::NotFound, "no such route"))
        })
        .method_not_allowed_fallback(|| async {
            error_response(ErrorDetail::new(
                ErrorCode::MethodNotAllowed,
                "this route does not take that method",
            ))
        })
        .layer(
            ServiceBuilder::new()
                .layer(SetRequestIdLayer::new(REQUEST_ID, MakeRequestUuid))
                .layer(axum::middleware::from_fn(metrics::record))
                .layer(
                    TraceLayer::new_for_http()
                        .make_span_with(server_span)
                        .on_response(record_response)
                        // A 5xx is recorded on the span and, where it matters, logged by
                        // the handler; a not-ready probe is not an error worth a log line.
                        .on_failure(
                            tower_http::trace::DefaultOnFailure::new().level(tracing::Level::DEBUG),
                        ),
                )
                .layer(axum::middleware::from_fn(trace_id_header))
                .layer(PropagateRequestIdLayer::new(REQUEST_ID))
                .layer(CatchPanicLayer::custom(
                    |_panic: Box<dyn std::any::Any + Send>| {
                        error_response(ErrorDetail::new(
                            ErrorCode::Internal,
                            "the server hit a bug; see its log",
                        ))
                    },
                ))
                .layer(axum::middleware::from_fn_with_state(
                    request_timeout,
                    deadline,
                )),
        )
}

/// The server span of one request, named and attributed as the OpenTelemetry
/// HTTP conventions say, and a child of the caller's `traceparent` if it sent one.
fn server_span<B>(request: &axum::http::Request<B>) -> tracing::Span {
    let route = request
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map(|path| path.as_str().to_owned());
    let method = request.method().as_str();
    let name = match &route {
        Some(route) => format!("{method} {route}"),
        None => method.to_owned(),
    };
    let request_id = request
        .headers()
        .get(&REQUEST_ID)
        .and_then(|v| v.to_str().ok());
    macro_rules! span_at {
        ($level:expr) => {
            tracing::span!(
                $level,
                "http.server",
                otel.name = %name,
                otel.kind = "server",
                otel.status_code = tracing::field::Empty,
                http.request.method = %method,
                http.route = route.as_deref(),
                url.path = %request.uri().path(),
                http.response.status_code = tracing::field::Empty,
                request_id,
            )
        };
    }
    // Probes, scrapes, watches and Paxos peer traffic arrive many times a second
    // with no trace to join; at info level each would be a trace of its own.
    let housekeeping = matches!(
        route.as_deref(),
        Some(
            "/healthz" | "/readyz" | "/metrics" | "/v1/watch" | "/v1/status" | "/internal/v1/paxos"
        )
    ) && !request.headers().contains_key("traceparent");
    let span = if housekeeping {
        span_at!(tracing::Level::DEBUG)
    } else {
        span_at!(tracing::Level::INFO)
    };
    kvorum_telemetry::set_parent_from(&span, request.headers());
    span
}

fn record_response<B>(
    response: &axum::http::Response<B>,
    _latency: Duration,
    span: &tracing::Span,
) {
    let status = response.status();
    span.record("http.response.status_code", status.as_u16());
    // Server spans are errors for 5xx only: a 4xx is the client's mistake.
    if status.is_server_error() {
        span.record("otel.status_code", "ERROR");
    }
}

/// Tells the caller which trace its request is, so an error can be looked up in Jaeger.
async fn trace_id_header(request: Request, next: Next) -> Response {
    let trace_id = kvorum_telemetry::trace_id(&tracing::Span::current());
    let mut response = next.run(request).await;
    if let Some(value) = trace_id.and_then(|id| axum::http::HeaderValue::from_str(&id).ok()) {
        response.headers_mut().insert(
            HeaderName::from_static(kvorum_protocol::headers::TRACE_ID),
            value,
        );
    }
    response
}

/// Answers 504 with a JSON error when the inner service runs past `timeout`.
async fn deadline(State(timeout): State<Duration>, request: Request, next: Next) -> Response {
    match tokio::time::timeout(timeout, next.run(request)).await {
        Ok(response) => response,
        Err(_) => error_response(ErrorDetail::new(
            ErrorCode::Timeout,
            format!(
                "the request did not complete within {} ms",
                timeout.as_millis()
            ),
        )),
    }
}

/// A JSON request body; malformed input becomes a 400 (or 413, 415) Kvorum error.
#[derive(Debug, Clone, Copy, Default)]
pub struct JsonBody<T>(pub T);

impl<S, T> FromRequest<S> for JsonBody<T>
where
    axum::Json<T>: FromRequest<S, Rejection = JsonRejection>,
    S: Send + Sync,
{
    type Rejection = Response;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        match axum::Json::<T>::from_request(request, state).await {
            Ok(axum::Json(value)) => Ok(JsonBody(value)),
            Err(rejection) => {
                let code = match rejection.status() {
                    StatusCode::PAYLOAD_TOO_LARGE => ErrorCode::PayloadTooLarge,
                    _ => ErrorCode::BadRequest,
                };
                let mut response = error_response(ErrorDetail::new(code, rejection.body_text()));
                if rejection.status() == StatusCode::UNSUPPORTED_MEDIA_TYPE {
                    *response.status_mut() = StatusCode::UNSUPPORTED_MEDIA_TYPE;
                }
                Err(response)
            }
        }
    }
}

/// Wraps an axum extractor of request parts so that its rejection is a 400 Kvorum error.
macro_rules! rejecting_with_json {
    ($(#[$doc:meta])* $name:ident, $inner:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, Default)]
        pub struct $name<T>(pub T);

        impl<S, T> FromRequestParts<S> for $name<T>
        where
            T: DeserializeOwned + Send,
            S: Send + Sync,
        {
            type Rejection = Response;

            async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
                match axum::extract::$inner::<T>::from_request_parts(parts, state).await {
                    Ok(axum::extract::$inner(value)) => Ok($name(value)),
                    Err(rejection) => Err(error_response(ErrorDetail::new(ErrorCode::BadRequest, rejection.body_text()))),
                }
            }
        }
    };
}

rejecting_with_json!(
    /// A path parameter; one that does not parse becomes a 400 Kvorum error.
    PathParam,
    Path
);

rejecting_with_json!(
    /// Query parameters; ones that do not parse (or are unknown, with `deny_unknown_fields`) become a 400 Kvorum error.
    QueryParams,
    Query
);

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use axum::routing::post;
    use http_body_util::BodyExt;
    use serde::Deserialize;
    use tower::ServiceExt;

    use super::*;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Greeting {
        #[allow(dead_code)]
        name: String,
    }

    fn app() -> Router {
        let router = Router::new().route(
            "/greet",
            post(|JsonBody(_g): JsonBody<Greeting>| async { "hi" }),
        );
        with_standard_layers(router, Duration::from_secs(1))
    }

    async fn call(request: Request) -> (StatusCode, serde_json::Value) {
        call_app(app(), request).await
    }

    async fn call_app(app: Router, request: Request) -> (StatusCode, serde_json::Value) {
        let response = app.oneshot(request).await.expect("infallible");
        let status = response.status();
        let bytes = response
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes();
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null),
        )
    }

    fn post_json(body: &str) -> Request {
        Request::post("/greet")
            .header("content-type", "application/json")
            .body(Body::from(body.to_owned()))
            .expect("request")
    }

    #[tokio::test]
    async fn malformed_json_is_a_json_400() {
        for body in ["{", "{\"name\":1}", "{\"name\":\"a\",\"x\":1}", ""] {
            let (status, json) = call(post_json(body)).await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
            assert_eq!(json["error"]["code"], "bad_request", "{body}");
        }
    }

    #[tokio::test]
    async fn unknown_routes_and_methods_get_json_errors() {
        let (status, json) =
            call(Request::get("/nope").body(Body::empty()).expect("request")).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert_eq!(json["error"]["code"], "not_found");
        let (status, json) =
            call(Request::get("/greet").body(Body::empty()).expect("request")).await;
        assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(json["error"]["code"], "method_not_allowed");
    }

    #[tokio::test]
    async fn a_request_past_its_deadline_gets_a_json_504() {
        let slow = Router::new().route(
            "/slow",
            axum::routing::get(|| async {
                tokio::time::sleep(Duration::from_secs(30)).await;
                "late"
            }),
        );
        let app = with_standard_layers(slow, Duration::from_millis(50));
        let request = Request::get("/slow").body(Body::empty()).expect("request");
        let (status, json) = call_app(app, request).await;
        assert_eq!(status, StatusCode::GATEWAY_TIMEOUT);
        assert_eq!(json["error"]["code"], "timeout");
    }

    #[tokio::test]
    async fn requests_are_counted_by_route_template_and_status() {
        let response = app()
            .oneshot(post_json("{\"name\":\"a\"}"))
            .await
            .expect("infallible");
        assert_eq!(response.status(), StatusCode::OK);
        let _ = app()
            .oneshot(
                Request::get("/nope/42")
                    .body(Body::empty())
                    .expect("request"),
            )
            .await;
        let response = app()
            .oneshot(
                Request::get("/metrics")
                    .body(Body::empty())
                    .expect("request"),
            )
            .await
            .expect("infallible");
        assert_eq!(response.status(), StatusCode::OK);
        let bytes = response
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes();
        let text = String::from_utf8_lossy(&bytes);
        assert!(
            text.contains(
                r#"kvorum_http_requests_total{method="POST",route="/greet",status="200"}"#
            ),
            "{text}"
        );
        assert!(text.contains(r#"route="unmatched",status="404""#), "{text}");
        assert!(
            text.contains("kvorum_http_request_duration_seconds_bucket"),
            "{text}"
        );
    }

    #[tokio::test]
    async fn responses_carry_a_request_id() {
        let response = app()
            .oneshot(post_json("{\"name\":\"a\"}"))
            .await
            .expect("infallible");
        assert_eq!(response.status(), StatusCode::OK);
        assert!(response.headers().contains_key(REQUEST_ID));
    }
}
