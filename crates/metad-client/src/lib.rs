//! The client every Kvorum service uses to reach the metadata service.
//!
//! - [`MetadClient`]: commands (each with a fresh request id, retried across
//!   replicas under that same id, so it applies at most once), linearizable
//!   reads, long-poll watches and the replicas' own status.
//! - [`follower`]: a background task that keeps the latest state in a
//!   `tokio::sync::watch` channel, for routers and storage nodes.
//! - [`lease`]: holding a named lease, so that one of several instances acts.
//!
//! A follower replica answers commands with a redirect to the leader, which the
//! HTTP client follows with the body; a replica that is down or has no leader is
//! skipped for the next one, round robin, until the caller's deadline.

pub mod follower;
pub mod lease;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use kvorum_http_client::{CallError, ClientConfig, HttpClient, Idempotency};
use kvorum_protocol::cluster::is_host_port;
use kvorum_protocol::metadata::{
    MetadStatus, MetadataCommand, MetadataError, MetadataOp, MetadataOutcome, MetadataState,
    RequestId,
};

pub use follower::{Follower, follow};
pub use lease::Lease;

/// How long [`MetadClient::submit`] and [`MetadClient::state`] keep trying by default.
pub const DEFAULT_DEADLINE: Duration = Duration::from_secs(10);

/// The pause between two rounds over every replica.
const ROUND_PAUSE: Duration = Duration::from_millis(100);

/// Why a call to the metadata service failed.
#[derive(Debug, thiserror::Error)]
pub enum MetadClientError {
    /// The state machine refused the command; it changed nothing.
    #[error(transparent)]
    Refused(MetadataError),
    /// No replica gave an answer before the deadline.
    #[error("the metadata service did not answer within {deadline:?}: {last}")]
    Unavailable {
        /// How long we tried.
        deadline: Duration,
        /// The last failure seen.
        last: String,
    },
}

/// The metadata replicas' addresses, as a `--metad` flag gives them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetadAddresses(pub Vec<String>);

/// Parses a comma-separated list of `host:port` addresses, as the `--metad` flags take it.
pub fn parse_addresses(text: &str) -> Result<MetadAddresses, String> {
    let addresses: Vec<String> = text
        .split(',')
        .map(str::trim)
        .filter(|a| !a.is_empty())
        .map(str::to_owned)
        .collect();
    if addresses.is_empty() {
        return Err("name at least one metadata replica as host:port".to_owned());
    }
    if let Some(bad) = addresses.iter().find(|a| !is_host_port(a)) {
        return Err(format!("{bad:?} is not host:port"));
    }
    Ok(MetadAddresses(addresses))
}

/// A client of the metadata service; cheap to clone.
#[derive(Debug, Clone)]
pub struct MetadClient {
    http: HttpClient,
    service: &'static str,
    replicas: Arc<[String]>,
    /// The replica that answered last, tried first next time.
    preferred: Arc<AtomicUsize>,
    deadline: Duration,
}

impl MetadClient {
    /// A client of the replicas at `replicas` (`host:port` each); `config`
    /// names the caller and where it calls from, the timeouts are this client's own.
    pub fn new(mut config: ClientConfig, replicas: MetadAddresses) -> Result<Self, String> {
        let replicas = replicas.0;
        if replicas.is_empty() {
            return Err("no metadata replicas given".to_owned());
        }
        let service = config.service;
        // Past a watch's wait and a command's decision (the service caps both
        // at its own request timeout, 5 s by default), short of the deadline.
        config.request_timeout = Duration::from_secs(8);
        config.retries = 0;
        let http = HttpClient::new(config).map_err(|e| e.to_string())?;
        Ok(Self {
            http,
            service,
            replicas: replicas.into(),
            preferred: Arc::new(AtomicUsize::new(0)),
            deadline: DEFAULT_DEADLINE,
        })
    }

    /// The same client with another deadline for commands and reads.
    pub fn with_deadline(mut self, deadline: Duration) -> Self {
        self.deadline = deadline;
        self
    }

    /// The replicas' addresses.
    pub fn replicas(&self) -> &[String] {
        &self.replicas
    }

    /// A request id no other client will choose.
    pub fn new_request_id(&self) -> RequestId {
        RequestId(format!("{}-{:032x}", self.service, rand::random::<u128>()))
    }

    /// Submits `op` under a fresh request id and waits for its outcome.
    pub async fn submit(&self, op: MetadataOp) -> Result<MetadataOutcome, MetadClientError> {
        self.submit_command(&MetadataCommand {
            request_id: self.new_request_id(),
            expected_version: None,
            fence: None,
            op,
        })
        .await
    }

    /// Submits `op` as the holder of `lease`, carrying its fencing token, so
    /// that the metadata service refuses it if the lease changed hands; refused
    /// here, without a call, while the lease is not held.
    pub async fn submit_as_holder(
        &self,
        op: MetadataOp,
        lease: &crate::Lease,
    ) -> Result<MetadataOutcome, MetadClientError> {
        let fence = lease.fence().ok_or_else(|| {
            MetadClientError::Refused(MetadataError::Conflict {
                message: "this instance does not hold the lease".to_owned(),
            })
        })?;
        self.submit_command(&MetadataCommand {
            request_id: self.new_request_id(),
            expected_version: None,
            fence: Some(fence),
            op,
        })
        .await
    }

    /// Submits `command`, retrying under its request id (so it applies at most once) until the deadline.
    pub async fn submit_command(
        &self,
        command: &MetadataCommand,
    ) -> Result<MetadataOutcome, MetadClientError> {
        self.with_replicas(|http, address| async move {
            http.post_json(&address, "/v1/commands", command, Idempotency::Idempotent)
                .await
        })
        .await
    }

    /// The state, read linearizably (it holds every command decided before the read began).
    pub async fn state(&self) -> Result<MetadataState, MetadClientError> {
        self.with_replicas(
            |http, address| async move { http.get_json(&address, "/v1/state").await },
        )
        .await
    }

    /// One replica's state once its version passes `after`, or after `wait` with whatever it has.
    pub async fn watch(
        &self,
        after: u64,
        wait: Duration,
    ) -> Result<MetadataState, MetadClientError> {
        let index = self.preferred.load(Ordering::Relaxed) % self.replicas.len();
        let address = &self.replicas[index];
        let path = format!("/v1/watch?after={after}&wait_ms={}", wait.as_millis());
        self.http.get_json(address, &path).await.map_err(|error| {
            // Try the next replica on the next call.
            self.preferred.store(index + 1, Ordering::Relaxed);
            MetadClientError::Unavailable {
                deadline: wait,
                last: error.to_string(),
            }
        })
    }

    /// Every replica's own status, or `None` for a replica that did not answer within `timeout`.
    pub async fn statuses(&self, timeout: Duration) -> Vec<(String, Option<MetadStatus>)> {
        let calls = self.replicas.iter().map(|address| async move {
            let status = tokio::time::timeout(
                timeout,
                self.http.get_json::<MetadStatus>(address, "/v1/status"),
            )
            .await
            .ok()
            .and_then(Result::ok);
            (address.clone(), status)
        });
        futures::future::join_all(calls).await
    }

    /// Runs `call` against the replicas in turn until one answers, or the state machine refuses, or the deadline passes.
    async fn with_replicas<T, F, Fut>(&self, call: F) -> Result<T, MetadClientError>
    where
        F: Fn(HttpClient, String) -> Fut,
        Fut: Future<Output = Result<T, CallError>>,
    {
        let started = Instant::now();
        let count = self.replicas.len();
        let mut index = self.preferred.load(Ordering::Relaxed) % count;
        let mut tried_this_round = 0;
        loop {
            let address = self.replicas[index].clone();
            match call(self.http.clone(), address).await {
                Ok(value) => {
                    self.preferred.store(index, Ordering::Relaxed);
                    return Ok(value);
                }
                Err(error) => {
                    if let Some(refused) = refusal(&error) {
                        return Err(MetadClientError::Refused(refused));
                    }
                    tracing::debug!(%error, "metadata replica did not answer; trying the next");
                    if started.elapsed() >= self.deadline {
                        return Err(MetadClientError::Unavailable {
                            deadline: self.deadline,
                            last: error.to_string(),
                        });
                    }
                    index = (index + 1) % count;
                    tried_this_round += 1;
                    if tried_this_round == count {
                        tried_this_round = 0;
                        tokio::time::sleep(ROUND_PAUSE).await;
                    }
                }
            }
        }
    }
}

/// The state machine's refusal behind a 4xx, which no retry can change.
fn refusal(error: &CallError) -> Option<MetadataError> {
    let CallError::Status { status, detail, .. } = error else {
        return None;
    };
    let message = detail
        .as_ref()
        .map_or_else(|| error.to_string(), |d| d.message.clone());
    match status {
        400 => Some(MetadataError::Invalid { message }),
        404 => Some(MetadataError::NotFound { message }),
        409 => Some(MetadataError::Conflict { message }),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn address_lists_are_checked() {
        assert_eq!(
            parse_addresses("127.0.0.1:1, metad-1.kvorum:9001,"),
            Ok(MetadAddresses(vec![
                "127.0.0.1:1".to_owned(),
                "metad-1.kvorum:9001".to_owned()
            ]))
        );
        assert!(parse_addresses("").is_err());
        assert!(parse_addresses("127.0.0.1").is_err());
        assert!(parse_addresses("a:1,b").is_err());
    }
}
