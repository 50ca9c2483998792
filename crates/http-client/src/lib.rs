//! The one HTTP client for service-to-service calls.
//!
//! It keeps connections alive and reuses them, bounds every call by a connect
//! timeout and a request timeout, retries only calls the caller marks
//! idempotent, and is the one place where outgoing headers (user agent, and the
//! trace context once span export lands) are added. Errors say whether the
//! request may have reached the peer, because a write coordinator must report
//! an unknown outcome when it might have.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use bytes::Bytes;
use kvorum_protocol::{ErrorBody, ErrorDetail};
use reqwest::header::{CONTENT_TYPE, HeaderValue};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tracing::Instrument;

/// Timeouts and retry policy of a [`HttpClient`].
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// The caller's name, sent in the user agent.
    pub service: &'static str,
    /// How long to wait for a TCP connection.
    pub connect_timeout: Duration,
    /// How long one attempt may take, end to end.
    pub request_timeout: Duration,
    /// How many extra attempts an idempotent call gets after a failure that allows one.
    pub retries: u32,
    /// The pause before the first retry; doubled for each further one.
    pub retry_backoff: Duration,
    /// The local address calls go out from (the kernel's choice when `None`).
    pub source: Option<IpAddr>,
}

impl ClientConfig {
    /// Defaults suited to calls between services on one network.
    pub fn new(service: &'static str) -> Self {
        Self {
            service,
            connect_timeout: Duration::from_millis(500),
            request_timeout: Duration::from_secs(2),
            retries: 2,
            retry_backoff: Duration::from_millis(20),
            source: None,
        }
    }

    /// Calls go out from the address the service listens on, when that is one
    /// address rather than a wildcard: on a host with several addresses (a
    /// chaos run gives each process its own loopback address) peers then see
    /// a call come from the address they know the caller by.
    pub fn speaking_from(mut self, listen: SocketAddr) -> Self {
        self.source = (!listen.ip().is_unspecified()).then_some(listen.ip());
        self
    }
}

/// Whether a call may safely be sent twice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Idempotency {
    /// Repeating the call has the effect of making it once; it may be retried.
    Idempotent,
    /// The call must be made at most once.
    NotIdempotent,
}

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// No connection could be made: the peer never saw the request.
    #[error("cannot connect to {url}: {source}")]
    Connect {
        /// The URL called.
        url: String,
        /// The transport error.
        source: reqwest::Error,
    },
    /// No answer in time: the peer may or may not have acted on the request.
    #[error("no answer from {url} within {timeout:?}")]
    Timeout {
        /// The URL called.
        url: String,
        /// The timeout that expired.
        timeout: Duration,
    },
    /// The connection broke mid-call: the peer may or may not have acted on it.
    #[error("call to {url} failed: {source}")]
    Transport {
        /// The URL called.
        url: String,
        /// The transport error.
        source: reqwest::Error,
    },
    /// The peer answered with an error status.
    #[error("{url} answered {status}: {}", detail.as_ref().map_or("(no error body)", |d| d.message.as_str()))]
    Status {
        /// The URL called.
        url: String,
        /// The HTTP status.
        status: u16,
        /// The peer's JSON error, when it sent one.
        detail: Option<ErrorDetail>,
    },
    /// The peer's answer was not the JSON expected.
    #[error("cannot decode the answer of {url}: {source}")]
    Decode {
        /// The URL called.
        url: String,
        /// The decoding error.
        source: serde_json::Error,
    },
    /// The request could not be encoded (a bug of the caller).
    #[error("cannot encode the request: {0}")]
    Encode(#[from] serde_json::Error),
}

impl CallError {
    /// Whether the peer may have received and acted on the request.
    pub fn maybe_delivered(&self) -> bool {
        match self {
            CallError::Connect { .. } | CallError::Encode(_) => false,
            CallError::Timeout { .. } | CallError::Transport { .. } | CallError::Decode { .. } => {
                true
            }
            // A 4xx is a refusal before anything took effect; a 5xx (a deadline that
            // fired after a write was queued, say) promises nothing.
            CallError::Status { status, .. } => *status >= 500,
        }
    }

    /// A short name of the failure, for the `error.type` span attribute.
    fn kind(&self) -> &'static str {
        match self {
            CallError::Connect { .. } => "connect",
            CallError::Timeout { .. } => "timeout",
            CallError::Transport { .. } => "transport",
            CallError::Status { .. } => "status",
            CallError::Decode { .. } => "decode",
            CallError::Encode(_) => "encode",
        }
    }

    /// Whether another attempt might succeed.
    fn retryable(&self) -> bool {
        match self {
            CallError::Connect { .. } | CallError::Transport { .. } => true,
            CallError::Status { status, .. } => *status == 503,
            CallError::Timeout { .. } | CallError::Decode { .. } | CallError::Encode(_) => false,
        }
    }
}

/// A successful answer, and whether an earlier attempt of the same call may
/// have reached the peer as well.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Retried<T> {
    /// The decoded answer (of the last attempt).
    pub value: T,
    /// Whether an attempt before the one answered may have been delivered.
    pub earlier_attempt_maybe_delivered: bool,
}

/// A pooled HTTP/JSON client; cheap to clone, share one per process.
#[derive(Debug, Clone)]
pub struct HttpClient {
    inner: reqwest::Client,
    config: ClientConfig,
}

impl HttpClient {
    /// Builds a client with the given timeouts and retry policy.
    pub fn new(config: ClientConfig) -> Result<Self, reqwest::Error> {
        let user_agent = format!("kvorum-{}/{}", config.service, env!("CARGO_PKG_VERSION"));
        let inner = reqwest::Client::builder()
            .connect_timeout(config.connect_timeout)
            .timeout(config.request_timeout)
            .pool_idle_timeout(Duration::from_secs(90))
            .pool_max_idle_per_host(1024)
            .tcp_nodelay(true)
            .local_address(config.source)
            .user_agent(user_agent)
            .build()?;
        Ok(Self { inner, config })
    }

    /// `POST http://{address}{path}` with a JSON body, decoding a JSON answer.
    pub async fn post_json<Req, Resp>(
        &self,
        address: &str,
        path: &str,
        body: &Req,
        idempotency: Idempotency,
    ) -> Result<Resp, CallError>
    where
        Req: Serialize + ?Sized,
        Resp: DeserializeOwned,
    {
        self.send_json(reqwest::Method::POST, address, path, body, idempotency)
            .await
    }

    /// Like [`Self::post_json`], and says whether an earlier attempt of the call
    /// may have been delivered too (the answer came from a retry): a caller that
    /// reads per-item refusals out of the answer must not take them as "took
    /// effect nowhere" when the first attempt may have applied the items.
    pub async fn post_json_retried<Req, Resp>(
        &self,
        address: &str,
        path: &str,
        body: &Req,
        idempotency: Idempotency,
    ) -> Result<Retried<Resp>, CallError>
    where
        Req: Serialize + ?Sized,
        Resp: DeserializeOwned,
    {
        self.send_json_tracking(reqwest::Method::POST, address, path, body, idempotency)
            .await
    }

    /// `PUT http://{address}{path}` with a JSON body, decoding a JSON answer.
    pub async fn put_json<Req, Resp>(
        &self,
        address: &str,
        path: &str,
        body: &Req,
        idempotency: Idempotency,
    ) -> Result<Resp, CallError>
    where
        Req: Serialize + ?Sized,
        Resp: DeserializeOwned,
    {
        self.send_json(reqwest::Method::PUT, address, path, body, idempotency)
            .await
    }

    async fn send_json<Req, Resp>(
        &self,
        method: reqwest::Method,
        address: &str,
        path: &str,
        body: &Req,
        idempotency: Idempotency,
    ) -> Result<Resp, CallError>
    where
        Req: Serialize + ?Sized,
        Resp: DeserializeOwned,
    {
        self.send_json_tracking(method, address, path, body, idempotency)
            .await
            .map(|answer| answer.value)
    }

    async fn send_json_tracking<Req, Resp>(
        &self,
        method: reqwest::Method,
        address: &str,
        path: &str,
        body: &Req,
        idempotency: Idempotency,
    ) -> Result<Retried<Resp>, CallError>
    where
        Req: Serialize + ?Sized,
        Resp: DeserializeOwned,
    {
        let body = Bytes::from(serde_json::to_vec(body)?);
        self.call_tracking(method, address, path, Some(body), idempotency)
            .await
    }

    /// `GET http://{address}{path}`, decoding a JSON answer; GETs are always idempotent.
    pub async fn get_json<Resp: DeserializeOwned>(
        &self,
        address: &str,
        path: &str,
    ) -> Result<Resp, CallError> {
        self.call(
            reqwest::Method::GET,
            address,
            path,
            None,
            Idempotency::Idempotent,
        )
        .await
    }

    async fn call<Resp: DeserializeOwned>(
        &self,
        method: reqwest::Method,
        address: &str,
        path: &str,
        body: Option<Bytes>,
        idempotency: Idempotency,
    ) -> Result<Resp, CallError> {
        self.call_tracking(method, address, path, body, idempotency)
            .await
            .map(|answer| answer.value)
    }

    async fn call_tracking<Resp: DeserializeOwned>(
        &self,
        method: reqwest::Method,
        address: &str,
        path: &str,
        body: Option<Bytes>,
        idempotency: Idempotency,
    ) -> Result<Retried<Resp>, CallError> {
        let url = format!("http://{address}{path}");
        let attempts = match idempotency {
            Idempotency::Idempotent => self.config.retries + 1,
            Idempotency::NotIdempotent => 1,
        };
        let mut backoff = self.config.retry_backoff;
        let mut attempt = 1;
        // If any attempt may have reached the peer, the caller must hear so, even
        // when a later attempt failed in a way that reached nobody.
        let mut maybe_delivered_earlier: Option<CallError> = None;
        loop {
            match self.attempt(&method, &url, body.clone()).await {
                Err(error) if attempt < attempts && error.retryable() => {
                    tracing::debug!(%url, attempt, %error, "retrying idempotent call");
                    if error.maybe_delivered() && maybe_delivered_earlier.is_none() {
                        maybe_delivered_earlier = Some(error);
                    }
                    tokio::time::sleep(backoff).await;
                    backoff *= 2;
                    attempt += 1;
                }
                Err(error) if !error.maybe_delivered() => {
                    return Err(maybe_delivered_earlier.unwrap_or(error));
                }
                Err(error) => return Err(error),
                Ok(value) => {
                    return Ok(Retried {
                        value,
                        earlier_attempt_maybe_delivered: maybe_delivered_earlier.is_some(),
                    });
                }
            }
        }
    }

    /// One attempt, as a client span whose context travels in `traceparent`.
    ///
    /// Calls made outside any span (peer heartbeats, metadata watches) are
    /// housekeeping with no cause to link to, and are not traced: as roots they
    /// would flood the trace store with one-span traces.
    async fn attempt<Resp: DeserializeOwned>(
        &self,
        method: &reqwest::Method,
        url: &str,
        body: Option<Bytes>,
    ) -> Result<Resp, CallError> {
        if tracing::Span::current().is_none() {
            return self.send(method, url, body).await;
        }
        let target = url
            .strip_prefix("http://")
            .and_then(|rest| rest.split('/').next())
            .unwrap_or_default();
        let (host, port) = target.rsplit_once(':').unwrap_or((target, "80"));
        let span = tracing::info_span!(
            "http.client",
            otel.name = %method,
            otel.kind = "client",
            otel.status_code = tracing::field::Empty,
            http.request.method = %method,
            server.address = host,
            server.port = port.parse::<u16>().unwrap_or(80),
            url.full = url,
            http.response.status_code = tracing::field::Empty,
            error.type = tracing::field::Empty,
        );
        let result = self.send(method, url, body).instrument(span.clone()).await;
        match &result {
            Ok(_) => {}
            Err(CallError::Status { status, .. }) => {
                span.record("http.response.status_code", status);
                span.record("error.type", status.to_string());
                span.record("otel.status_code", "ERROR");
            }
            Err(error) => {
                span.record("error.type", error.kind());
                span.record("otel.status_code", "ERROR");
            }
        }
        if result.is_ok() {
            span.record("http.response.status_code", 200u16);
        }
        result
    }

    async fn send<Resp: DeserializeOwned>(
        &self,
        method: &reqwest::Method,
        url: &str,
        body: Option<Bytes>,
    ) -> Result<Resp, CallError> {
        let mut headers = reqwest::header::HeaderMap::new();
        kvorum_telemetry::inject_context(&mut headers);
        let mut request = self.inner.request(method.clone(), url).headers(headers);
        if let Some(body) = body {
            request = request
                .header(CONTENT_TYPE, HeaderValue::from_static("application/json"))
                .body(body);
        }
        let response = request
            .send()
            .await
            .map_err(|e| self.transport_error(url, e))?;
        let status = response.status();
        let bytes = response
            .bytes()
            .await
            .map_err(|e| self.transport_error(url, e))?;
        if !status.is_success() {
            let detail = serde_json::from_slice::<ErrorBody>(&bytes)
                .ok()
                .map(|b| b.error);
            return Err(CallError::Status {
                url: url.to_owned(),
                status: status.as_u16(),
                detail,
            });
        }
        serde_json::from_slice(&bytes).map_err(|source| CallError::Decode {
            url: url.to_owned(),
            source,
        })
    }

    fn transport_error(&self, url: &str, source: reqwest::Error) -> CallError {
        let url = url.to_owned();
        if source.is_timeout() {
            CallError::Timeout {
                url,
                timeout: self.config.request_timeout,
            }
        } else if source.is_connect() {
            CallError::Connect { url, source }
        } else {
            CallError::Transport { url, source }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU32, Ordering};

    use axum::Json;
    use axum::http::StatusCode;
    use axum::routing::post;

    use super::*;

    async fn serve(app: axum::Router) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let address = listener.local_addr().expect("address").to_string();
        tokio::spawn(async move { axum::serve(listener, app).await });
        address
    }

    fn flaky_server(calls: Arc<AtomicU32>, failures: u32) -> axum::Router {
        axum::Router::new().route(
            "/echo",
            post(move |Json(v): Json<serde_json::Value>| {
                let calls = calls.clone();
                async move {
                    if calls.fetch_add(1, Ordering::SeqCst) < failures {
                        Err((StatusCode::SERVICE_UNAVAILABLE, "busy"))
                    } else {
                        Ok(Json(v))
                    }
                }
            }),
        )
    }

    #[tokio::test]
    async fn idempotent_calls_are_retried_and_others_are_not() {
        let calls = Arc::new(AtomicU32::new(0));
        let address = serve(flaky_server(calls.clone(), 2)).await;
        let client = HttpClient::new(ClientConfig::new("test")).expect("client");

        let once: Result<serde_json::Value, _> = client
            .post_json(
                &address,
                "/echo",
                &serde_json::json!(1),
                Idempotency::NotIdempotent,
            )
            .await;
        assert!(
            matches!(once, Err(CallError::Status { status: 503, .. })),
            "{once:?}"
        );
        assert_eq!(calls.load(Ordering::SeqCst), 1);

        let retried: serde_json::Value = client
            .post_json(
                &address,
                "/echo",
                &serde_json::json!(7),
                Idempotency::Idempotent,
            )
            .await
            .expect("second and third attempts");
        assert_eq!(retried, serde_json::json!(7));
        assert_eq!(calls.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn refusals_are_known_undelivered_and_server_errors_are_not() {
        let app = axum::Router::new()
            .route(
                "/refuse",
                post(|| async { (StatusCode::BAD_REQUEST, "no") }),
            )
            .route(
                "/fail",
                post(|| async { (StatusCode::INTERNAL_SERVER_ERROR, "oops") }),
            );
        let address = serve(app).await;
        let client = HttpClient::new(ClientConfig::new("test")).expect("client");
        let refused = client
            .post_json::<_, serde_json::Value>(&address, "/refuse", &1, Idempotency::Idempotent)
            .await
            .expect_err("400");
        assert!(!refused.maybe_delivered());
        let failed = client
            .post_json::<_, serde_json::Value>(&address, "/fail", &1, Idempotency::Idempotent)
            .await
            .expect_err("500");
        assert!(failed.maybe_delivered());
    }

    #[tokio::test]
    async fn a_refused_connection_is_known_undelivered() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let address = listener.local_addr().expect("address").to_string();
        drop(listener);
        let client = HttpClient::new(ClientConfig::new("test")).expect("client");
        let error = client
            .post_json::<_, serde_json::Value>(&address, "/x", &1, Idempotency::Idempotent)
            .await
            .expect_err("nobody listens");
        assert!(matches!(error, CallError::Connect { .. }), "{error:?}");
        assert!(!error.maybe_delivered());
    }

    #[tokio::test]
    async fn a_slow_peer_times_out_as_maybe_delivered() {
        let app = axum::Router::new().route(
            "/slow",
            post(|| async {
                tokio::time::sleep(Duration::from_secs(5)).await;
                "late"
            }),
        );
        let address = serve(app).await;
        let mut config = ClientConfig::new("test");
        config.request_timeout = Duration::from_millis(100);
        let client = HttpClient::new(config).expect("client");
        let error = client
            .post_json::<_, serde_json::Value>(&address, "/slow", &1, Idempotency::Idempotent)
            .await
            .expect_err("too slow");
        assert!(matches!(error, CallError::Timeout { .. }), "{error:?}");
        assert!(error.maybe_delivered());
    }
}
