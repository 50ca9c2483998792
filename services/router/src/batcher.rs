//! Coalescing replica calls: concurrent requests to one storage node go out as
//! one `/batch` call instead of one HTTP call each.
//!
//! Each (node, kind of call) has a queue and a task. The task takes whatever
//! queued up while its earlier calls were in flight (up to [`MAX_BATCH`]) and
//! sends it as one call: a lone request goes out on its own route, under its
//! own span, so an idle router adds no latency and keeps whole traces; under
//! load, requests that arrive during a round trip share the next one, and the
//! storage node applies a batch of commits in one group commit. At most
//! [`MAX_IN_FLIGHT`] calls per queue are in flight; a request that waited in
//! the queue longer than the replica timeout fails without being sent, so a
//! stalled node costs no more than one timeout per request and the failure is
//! known to have reached nobody.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kvorum_http_client::{CallError, HttpClient, Idempotency, Retried};
use kvorum_protocol::ErrorCode;
use kvorum_protocol::storage::{
    Batch, CausalMergeRequest, CommitRequest, ItemOutcome, MAX_PAGE_BYTES, ReplicaKey,
    causal_value_bytes,
};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::{Semaphore, mpsc, oneshot};
use tracing::Instrument;

use crate::transport::ReplicaError;

/// Requests one call carries at most.
pub const MAX_BATCH: usize = 256;

/// A request's size on the wire, roughly: a batch stops growing at
/// [`MAX_PAGE_BYTES`], so a batch of 1 MiB values stays far below a storage
/// node's request limit.
pub trait WireBytes {
    /// About how many bytes the request carries (values before base64).
    fn wire_bytes(&self) -> usize;
}

impl WireBytes for ReplicaKey {
    fn wire_bytes(&self) -> usize {
        self.key.as_str().len() + 64
    }
}

impl WireBytes for CommitRequest {
    fn wire_bytes(&self) -> usize {
        self.target.wire_bytes() + self.record.value.as_ref().map_or(0, Vec::len)
    }
}

impl WireBytes for CausalMergeRequest {
    fn wire_bytes(&self) -> usize {
        self.target.wire_bytes() + causal_value_bytes(&self.state)
    }
}

/// Calls per (node, kind) in flight at once.
pub const MAX_IN_FLIGHT: usize = 4;

struct Item<Req, Resp> {
    request: Req,
    span: tracing::Span,
    queued: Instant,
    reply: oneshot::Sender<Result<Resp, ReplicaError>>,
}

/// Where a node's requests wait for the next call.
type Queue<Req, Resp> = mpsc::UnboundedSender<Item<Req, Resp>>;

/// The queues of one kind of call, one per storage node.
pub struct Batcher<Req, Resp> {
    single: &'static str,
    batch: &'static str,
    client: HttpClient,
    timeout: Duration,
    queues: Mutex<HashMap<Arc<str>, Queue<Req, Resp>>>,
}

impl<Req, Resp> std::fmt::Debug for Batcher<Req, Resp> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Batcher")
            .field("single", &self.single)
            .finish()
    }
}

/// A failed call, for each request it carried.
pub fn replica_error(error: &CallError) -> ReplicaError {
    let stale_epoch = match error {
        CallError::Status {
            detail: Some(detail),
            ..
        } if detail.code == ErrorCode::StaleEpoch => detail.current_epoch,
        _ => None,
    };
    let detail = match error {
        CallError::Status { detail, .. } => detail.clone().map(Box::new),
        _ => None,
    };
    ReplicaError {
        maybe_delivered: error.maybe_delivered(),
        stale_epoch,
        detail,
        message: error.to_string(),
    }
}

impl<Req, Resp> Batcher<Req, Resp>
where
    Req: Serialize + WireBytes + Send + Sync + 'static,
    Resp: DeserializeOwned + Send + 'static,
{
    /// Queues for calls to `single` (one request) and `batch` (a [`Batch`] of them).
    pub fn new(
        client: HttpClient,
        timeout: Duration,
        single: &'static str,
        batch: &'static str,
    ) -> Self {
        Self {
            single,
            batch,
            client,
            timeout,
            queues: Mutex::new(HashMap::new()),
        }
    }

    /// Sends `request` to the node at `address`, alone or with others queued for it.
    pub fn call(
        &self,
        address: &Arc<str>,
        request: Req,
    ) -> impl std::future::Future<Output = Result<Resp, ReplicaError>> + Send + 'static + use<Req, Resp>
    {
        let (reply, answer) = oneshot::channel();
        let item = Item {
            request,
            span: tracing::Span::current(),
            queued: Instant::now(),
            reply,
        };
        let sent = {
            let mut queues = self.queues.lock().unwrap_or_else(|p| p.into_inner());
            let queue = queues
                .entry(address.clone())
                .or_insert_with(|| self.spawn(address.clone()));
            queue.send(item)
        };
        async move {
            if sent.is_err() {
                return Err(ReplicaError {
                    maybe_delivered: false,
                    stale_epoch: None,
                    detail: None,
                    message: "the router is shutting down".to_owned(),
                });
            }
            answer.await.unwrap_or_else(|_| {
                Err(ReplicaError {
                    maybe_delivered: true,
                    stale_epoch: None,
                    detail: None,
                    message: "the call was dropped".to_owned(),
                })
            })
        }
    }

    fn spawn(&self, address: Arc<str>) -> Queue<Req, Resp> {
        let (queue, mut items) = mpsc::unbounded_channel::<Item<Req, Resp>>();
        let (client, timeout, single, batch) =
            (self.client.clone(), self.timeout, self.single, self.batch);
        let permits = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
        tokio::spawn(async move {
            while let Some(first) = items.recv().await {
                let Ok(permit) = permits.clone().acquire_owned().await else {
                    return;
                };
                let mut bytes = first.request.wire_bytes();
                let mut taken = vec![first];
                while taken.len() < MAX_BATCH && bytes < MAX_PAGE_BYTES {
                    match items.try_recv() {
                        Ok(item) => {
                            bytes += item.request.wire_bytes();
                            taken.push(item);
                        }
                        Err(_) => break,
                    }
                }
                let live: Vec<Item<Req, Resp>> = taken
                    .into_iter()
                    .filter_map(|item| {
                        if item.queued.elapsed() < timeout {
                            return Some(item);
                        }
                        let _ = item.reply.send(Err(ReplicaError {
                            maybe_delivered: false,
                            stale_epoch: None,
                    detail: None,
                            message: format!(
                                "not sent to {address}: queued behind slower calls for longer than {timeout:?}"
                            ),
                        }));
                        None
                    })
                    .collect();
                let (client, address) = (client.clone(), address.clone());
                tokio::spawn(async move {
                    send(&client, &address, single, batch, live).await;
                    drop(permit);
                });
            }
        });
        queue
    }
}

async fn send<Req, Resp>(
    client: &HttpClient,
    address: &str,
    single: &str,
    batch: &str,
    mut items: Vec<Item<Req, Resp>>,
) where
    Req: Serialize + Send + Sync + 'static,
    Resp: DeserializeOwned + Send + 'static,
{
    match items.len() {
        0 => {}
        1 => {
            let item = items.remove(0);
            let result = client
                .post_json::<Req, Resp>(address, single, &item.request, Idempotency::Idempotent)
                .instrument(item.span)
                .await
                .map_err(|e| replica_error(&e));
            let _ = item.reply.send(result);
        }
        count => {
            // The batch is traced under the first request it carries.
            let span = items[0].span.clone();
            let (requests, replies): (Vec<Req>, Vec<_>) =
                items.into_iter().map(|i| (i.request, i.reply)).unzip();
            let answer = client
                .post_json_retried::<Batch<Req>, Batch<ItemOutcome<Resp>>>(
                    address,
                    batch,
                    &Batch { items: requests },
                    Idempotency::Idempotent,
                )
                .instrument(tracing::info_span!(parent: &span, "replica.batch", items = count))
                .await;
            match answer {
                Ok(Retried {
                    value: answer,
                    earlier_attempt_maybe_delivered: earlier,
                }) if answer.items.len() == replies.len() => {
                    for (reply, outcome) in replies.into_iter().zip(answer.items) {
                        let _ = reply.send(match outcome {
                            ItemOutcome::Ok(response) => Ok(response),
                            ItemOutcome::Error(detail) => Err(ReplicaError {
                                // Refusals (fenced, malformed, catching up) took effect
                                // nowhere, unless an earlier attempt of this very call
                                // may have applied the item before the refusal.
                                maybe_delivered: earlier
                                    || !matches!(
                                        detail.code,
                                        ErrorCode::StaleEpoch
                                            | ErrorCode::BadRequest
                                            | ErrorCode::CatchingUp
                                    ),
                                stale_epoch: (detail.code == ErrorCode::StaleEpoch)
                                    .then_some(detail.current_epoch)
                                    .flatten(),
                                message: detail.message.clone(),
                                detail: Some(Box::new(detail)),
                            }),
                        });
                    }
                }
                Ok(Retried { value: answer, .. }) => {
                    let error = ReplicaError {
                        maybe_delivered: true,
                        stale_epoch: None,
                        detail: None,
                        message: format!(
                            "{address} answered {} items to a batch of {count}",
                            answer.items.len()
                        ),
                    };
                    for reply in replies {
                        let _ = reply.send(Err(error.clone()));
                    }
                }
                Err(error) => {
                    let error = replica_error(&error);
                    for reply in replies {
                        let _ = reply.send(Err(error.clone()));
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use axum::Json;
    use axum::routing::post;
    use kvorum_http_client::ClientConfig;

    use super::*;

    impl WireBytes for u64 {
        fn wire_bytes(&self) -> usize {
            8
        }
    }

    /// A node that doubles numbers, one at a time or in batches, and counts its calls.
    async fn doubler() -> (Arc<str>, Arc<AtomicUsize>) {
        let calls = Arc::new(AtomicUsize::new(0));
        let (one, many) = (calls.clone(), calls.clone());
        let app = axum::Router::new()
            .route(
                "/double",
                post(move |Json(n): Json<u64>| {
                    one.fetch_add(1, Ordering::SeqCst);
                    async move { Json(n * 2) }
                }),
            )
            .route(
                "/double/batch",
                post(move |Json(batch): Json<Batch<u64>>| {
                    many.fetch_add(1, Ordering::SeqCst);
                    async move {
                        Json(Batch {
                            items: batch
                                .items
                                .into_iter()
                                .map(|n| {
                                    if n == 13 {
                                        ItemOutcome::Error(kvorum_protocol::ErrorDetail::new(
                                            ErrorCode::StaleEpoch,
                                            "fenced",
                                        ))
                                    } else {
                                        ItemOutcome::Ok(n * 2)
                                    }
                                })
                                .collect(),
                        })
                    }
                }),
            );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let address = listener.local_addr().expect("address");
        tokio::spawn(async move { axum::serve(listener, app).await });
        (Arc::from(address.to_string()), calls)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_calls_share_batches_and_each_gets_its_own_answer() {
        let (address, calls) = doubler().await;
        let client = HttpClient::new(ClientConfig::new("test")).expect("client");
        let batcher = Arc::new(Batcher::<u64, u64>::new(
            client,
            Duration::from_secs(5),
            "/double",
            "/double/batch",
        ));
        // A lone call goes out on its own route.
        assert_eq!(batcher.call(&address, 4).await, Ok(8));
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        let answers: Vec<_> = (0..400u64)
            .map(|n| tokio::spawn(batcher.call(&address, n)))
            .collect();
        for (n, answer) in answers.into_iter().enumerate() {
            let answer = answer.await.expect("join");
            if n == 13 {
                let error = answer.expect_err("fenced item");
                assert!(!error.maybe_delivered);
            } else {
                assert_eq!(answer, Ok(n as u64 * 2));
            }
        }
        let made = calls.load(Ordering::SeqCst) - 1;
        assert!(made < 100, "400 concurrent requests took {made} calls");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_batch_refused_on_a_retry_after_a_maybe_delivered_attempt_is_reported_maybe_delivered()
     {
        // The first attempt fails with a 503 (it may have applied the items);
        // the retry finds every item fenced, as a node that applied them and then
        // saw a newer epoch would answer.
        let attempts = Arc::new(AtomicUsize::new(0));
        let seen = attempts.clone();
        let app = axum::Router::new().route(
            "/x/batch",
            post(move |Json(batch): Json<Batch<u64>>| {
                let attempt = seen.fetch_add(1, Ordering::SeqCst);
                async move {
                    if attempt == 0 {
                        return Err(axum::http::StatusCode::SERVICE_UNAVAILABLE);
                    }
                    Ok(Json(Batch {
                        items: batch
                            .items
                            .iter()
                            .map(|_| {
                                ItemOutcome::<u64>::Error(kvorum_protocol::ErrorDetail::new(
                                    ErrorCode::StaleEpoch,
                                    "fenced",
                                ))
                            })
                            .collect(),
                    }))
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let address: Arc<str> = Arc::from(listener.local_addr().expect("address").to_string());
        tokio::spawn(async move { axum::serve(listener, app).await });
        let client = HttpClient::new(ClientConfig::new("test")).expect("client");
        let (items, answers): (Vec<Item<u64, u64>>, Vec<_>) = (0..3u64)
            .map(|request| {
                let (reply, answer) = oneshot::channel();
                let item = Item {
                    request,
                    span: tracing::Span::none(),
                    queued: Instant::now(),
                    reply,
                };
                (item, answer)
            })
            .unzip();
        send(&client, &address, "/x", "/x/batch", items).await;
        assert_eq!(attempts.load(Ordering::SeqCst), 2, "the 503 was retried");
        for answer in answers {
            let error = answer.await.expect("answered").expect_err("fenced");
            assert!(
                error.maybe_delivered,
                "the first attempt may have applied it: {error:?}"
            );
        }
    }

    #[tokio::test]
    async fn a_node_that_cannot_be_reached_fails_every_request_as_not_delivered() {
        let client = HttpClient::new(ClientConfig::new("test")).expect("client");
        let batcher = Batcher::<u64, u64>::new(client, Duration::from_secs(5), "/x", "/x/batch");
        let port = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            listener.local_addr().expect("address").port()
        };
        let address: Arc<str> = Arc::from(format!("127.0.0.1:{port}"));
        let answers: Vec<_> = (0..20u64).map(|n| batcher.call(&address, n)).collect();
        for answer in answers {
            assert!(!answer.await.expect_err("unreachable").maybe_delivered);
        }
    }
}
