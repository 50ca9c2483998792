//! The workload: concurrent clients on a strong and an eventual keyspace, every
//! operation recorded with its invocation, completion and outcome.

use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use reqwest::StatusCode;

use crate::history::{Op, OpKind, Status};

/// What the clients do.
#[derive(Debug, Clone)]
pub struct Workload {
    /// The routers, `http://host:port` each; client i calls router i mod their number.
    pub routers: Vec<String>,
    /// Concurrent clients.
    pub clients: u64,
    /// The strong keyspace and how many keys it uses.
    pub strong: (String, usize),
    /// The eventual (`siblings`) keyspace and how many keys it uses.
    pub eventual: (String, usize),
    /// The share of operations that go to the eventual keyspace.
    pub eventual_share: f64,
    /// The share of strong operations that write a key of their own
    /// (`r{client}-{n}`), then delete it and never touch it again.
    pub retired_share: f64,
    /// Operations per second, over all clients.
    pub rate: f64,
    /// How long the clients run.
    pub duration: Duration,
    /// Seeds every client's choices.
    pub seed: u64,
    /// Deadline of one request.
    pub request_timeout: Duration,
    /// The share of writes whose value is large (1 KiB up to `max_value_bytes`).
    pub large_share: f64,
    /// The largest value written, in bytes.
    pub max_value_bytes: usize,
}

/// What separates a value's identity from its padding on the wire.
const PADDING_MARK: u8 = b'|';

/// The bytes written for value `id` padded to `size` bytes: the id, a mark,
/// and filler, so that the history keeps only the id however large the value.
pub fn encode_value(id: &str, size: usize) -> Vec<u8> {
    let mut bytes = id.as_bytes().to_vec();
    if size > bytes.len() + 1 {
        bytes.push(PADDING_MARK);
        bytes.resize(size, b'.');
    }
    bytes
}

/// The identity of a value read back: the id before the mark. Padding that is
/// not all filler (a value torn or mixed with another) is kept whole, marked
/// as corrupt, so that it matches no write and the checkers flag it.
pub fn decode_value(bytes: &[u8]) -> String {
    match bytes.iter().position(|b| *b == PADDING_MARK) {
        None => String::from_utf8_lossy(bytes).into_owned(),
        Some(at) if bytes[at + 1..].iter().all(|b| *b == b'.') => {
            String::from_utf8_lossy(&bytes[..at]).into_owned()
        }
        Some(at) => format!(
            "corrupt value {} ({} bytes)",
            String::from_utf8_lossy(&bytes[..at]),
            bytes.len()
        ),
    }
}

/// Milliseconds since `clock`.
pub fn millis(clock: Instant) -> f64 {
    clock.elapsed().as_secs_f64() * 1000.0
}

impl Workload {
    /// Runs every client until the duration ends; returns their operations.
    pub async fn run(&self, clock: Instant) -> anyhow::Result<Vec<Op>> {
        let http = reqwest::Client::builder()
            .timeout(self.request_timeout)
            .build()?;
        let mut clients = Vec::new();
        for client in 0..self.clients {
            let (workload, http) = (self.clone(), http.clone());
            clients.push(tokio::spawn(async move {
                workload.client(client, http, clock).await
            }));
        }
        let mut ops = Vec::new();
        for client in clients {
            ops.extend(client.await?);
        }
        ops.sort_by(|a, b| a.invoke_ms.total_cmp(&b.invoke_ms));
        Ok(ops)
    }

    async fn client(&self, client: u64, http: reqwest::Client, clock: Instant) -> Vec<Op> {
        let mut rng = StdRng::seed_from_u64(self.seed ^ client.wrapping_mul(0x9e37_79b9_7f4a_7c15));
        let period = Duration::from_secs_f64(self.clients as f64 / self.rate.max(0.001));
        let started = Instant::now();
        let mut ops = Vec::new();
        let mut due = started;
        loop {
            // Paced, not synchronised: each client keeps its share of the rate,
            // and one that fell behind (its last call took longer than its
            // period) skips the slots it missed rather than firing them in a
            // burst, so the workload ends when the run does.
            if due.duration_since(started) >= self.duration {
                break;
            }
            tokio::time::sleep_until(due.into()).await;
            let n = ops.len();
            due = (due + period).max(Instant::now());
            let eventual = rng.random_bool(self.eventual_share.clamp(0.0, 1.0));
            let (keyspace, keys) = if eventual {
                &self.eventual
            } else {
                &self.strong
            };
            if !eventual && rng.random_bool(self.retired_share.clamp(0.0, 1.0)) {
                // Its tombstone is left alone, so the storage nodes collect it
                // under the faults; the final reads check it stays deleted.
                let key = format!("r{client}-{n}");
                for (kind, value) in [
                    (OpKind::Write, Some(format!("c{client}-{n}"))),
                    (OpKind::Delete, None),
                ] {
                    let call = Call {
                        keyspace,
                        key: key.clone(),
                        kind,
                        value,
                        size: 0,
                        context: None,
                    };
                    ops.push(self.call(&http, clock, client, call).await.0);
                }
                continue;
            }
            let key = format!("k{}", rng.random_range(0..(*keys).max(1)));
            let roll = rng.random_range(0..100);
            let kind = match (eventual, roll) {
                (true, 0..=69) | (false, 50..=89) => OpKind::Write,
                (false, 90..) => OpKind::Delete,
                _ => OpKind::Read,
            };
            let value = (kind == OpKind::Write).then(|| format!("c{client}-{n}"));
            // Large values go to the strong keyspace only: megabytes of
            // eventual siblings would measure sibling bookkeeping rather than
            // the faults.
            let size = if !eventual && rng.random_bool(self.large_share.clamp(0.0, 1.0)) {
                rng.random_range(1024..=self.max_value_bytes.max(1024))
            } else {
                0
            };
            // Half of the eventual writes resolve the key's siblings as a real
            // client does: read, then write with the read's context. Blind
            // writes alone pile up siblings until the key reaches its cap and
            // refuses every write, which a long run would spend its time on.
            let mut resolves = None;
            if eventual && kind == OpKind::Write && roll < 35 {
                let call = Call {
                    keyspace,
                    key: key.clone(),
                    kind: OpKind::Read,
                    value: None,
                    size: 0,
                    context: None,
                };
                let (read, context) = self.call(&http, clock, client, call).await;
                resolves = (read.status == Status::Ok)
                    .then_some(context)
                    .flatten()
                    .map(|context| (context, read.observed.clone().unwrap_or_default()));
                ops.push(read);
            }
            let (context, supersedes) = resolves.unzip();
            let call = Call {
                keyspace,
                key,
                kind,
                value,
                size,
                context,
            };
            let (mut op, _) = self.call(&http, clock, client, call).await;
            op.supersedes = supersedes.unwrap_or_default();
            ops.push(op);
        }
        ops
    }

    /// Makes one call and records it; a read also returns the causal context it was given.
    async fn call(
        &self,
        http: &reqwest::Client,
        clock: Instant,
        client: u64,
        call: Call<'_>,
    ) -> (Op, Option<String>) {
        let Call {
            keyspace,
            key,
            kind,
            value,
            size,
            context,
        } = call;
        let router =
            &self.routers[usize::try_from(client).unwrap_or(0) % self.routers.len().max(1)];
        let url = format!("{router}/v1/kv/{key}?keyspace={keyspace}");
        // Every operation starts its own trace, so the report can link any
        // operation to the router's and storage nodes' spans (when they export them).
        let trace_id = format!("{:032x}", rand::random::<u128>() | 1);
        let traceparent = format!("00-{trace_id}-{:016x}-01", rand::random::<u64>() | 1);
        let request = match kind {
            OpKind::Read => http.get(&url),
            OpKind::Write => http
                .put(&url)
                .body(encode_value(value.as_deref().unwrap_or_default(), size)),
            OpKind::Delete => http.delete(&url),
        }
        .header("traceparent", traceparent);
        let request = match &context {
            Some(context) => request.header(kvorum_protocol::headers::CONTEXT, context),
            None => request,
        };
        let invoke_ms = millis(clock);
        let mut op = Op {
            client,
            keyspace: keyspace.to_owned(),
            key,
            kind,
            value,
            observed: None,
            found: false,
            invoke_ms,
            complete_ms: invoke_ms,
            status: Status::Unknown,
            error: None,
            trace_id: Some(trace_id),
            supersedes: Vec::new(),
        };
        let response = request.send().await;
        op.complete_ms = millis(clock);
        let response = match response {
            Ok(response) => response,
            Err(error) => {
                // No answer: a write may have landed; a read changed nothing.
                op.status = if kind == OpKind::Read {
                    Status::Fail
                } else {
                    Status::Unknown
                };
                op.error = Some(error.to_string());
                return (op, None);
            }
        };
        let status = response.status();
        if let Some(recorded) = response
            .headers()
            .get(kvorum_protocol::headers::TRACE_ID)
            .and_then(|v| v.to_str().ok())
        {
            op.trace_id = Some(recorded.to_owned());
        }
        let mut context = response
            .headers()
            .get(kvorum_protocol::headers::CONTEXT)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let body = response.bytes().await.unwrap_or_default();
        op.complete_ms = millis(clock);
        match (kind, status) {
            (OpKind::Read, StatusCode::OK) => {
                op.status = Status::Ok;
                op.found = true;
                op.observed = Some(vec![decode_value(&body)]);
            }
            (OpKind::Read, StatusCode::MULTIPLE_CHOICES) => {
                op.status = Status::Ok;
                op.found = true;
                let siblings: Option<kvorum_protocol::conflict::SiblingsResponse> =
                    serde_json::from_slice(&body).ok();
                if let Some(siblings) = &siblings {
                    context.get_or_insert_with(|| siblings.context.clone());
                }
                op.observed = siblings.map(|s| {
                    s.siblings
                        .iter()
                        .filter_map(|v| v.value.as_ref())
                        .map(|v| decode_value(v))
                        .collect()
                });
            }
            (OpKind::Read, StatusCode::NOT_FOUND) => op.status = Status::Ok,
            (_, StatusCode::NO_CONTENT) => op.status = Status::Ok,
            (_, _) => {
                let error: serde_json::Value =
                    serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
                let known_nowhere =
                    error["error"]["outcome_unknown"] == false || status.is_client_error();
                op.status = if kind == OpKind::Read || known_nowhere {
                    Status::Fail
                } else {
                    Status::Unknown
                };
                op.error = Some(format!("{status}: {}", error["error"]["message"]));
            }
        }
        (op, context.filter(|_| kind == OpKind::Read))
    }
}

/// One request a client makes.
struct Call<'a> {
    keyspace: &'a str,
    key: String,
    kind: OpKind,
    value: Option<String>,
    size: usize,
    /// The causal context sent with an eventual write that resolves what a read saw.
    context: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn padded_values_read_back_as_their_id_and_torn_ones_as_corrupt() {
        assert_eq!(encode_value("c1-2", 0), b"c1-2");
        let large = encode_value("c1-2", 1 << 20);
        assert_eq!(large.len(), 1 << 20);
        assert_eq!(decode_value(&large), "c1-2");
        assert_eq!(decode_value(b"c1-2"), "c1-2");
        let mut torn = large.clone();
        torn[1000] = b'x';
        assert!(decode_value(&torn).starts_with("corrupt value c1-2"));
    }
}
