//! Delivery of the consensus loop's messages to the peers: one worker and one
//! bounded queue per peer.
//!
//! A worker sends one HTTP call at a time, and everything queued for its peer
//! while a call was out goes in the next. A peer that is slow or gone fills
//! only its own queue: batches that find it full are dropped and counted
//! (Paxos retransmits what still matters), and no other peer waits for it. A
//! batch longer than the message limit goes in chunks that resume where the
//! receiver's copy ends; one worker per peer also means one chunked transfer
//! per peer at a time, as the receiver's one partial copy per sender needs.

use std::collections::BTreeMap;
use std::sync::Arc;

use kvorum_consensus::{Envelope, Member};
use kvorum_http_client::{HttpClient, Idempotency};
use kvorum_protocol::paxos::PeerBatch;
use tokio::sync::mpsc;

/// Batches that may wait for one peer's worker before new ones are dropped.
pub const PEER_QUEUE: usize = 64;

/// The least time between two warnings about one peer's failed deliveries.
const LOG_FAILURES_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

/// Where each replica is reached: the members' addresses as the log has
/// them, else `--peers` (a replica not, or not yet, a member).
#[derive(Debug, Clone)]
pub struct Addresses {
    /// The members, as the consensus loop applied them.
    pub members: tokio::sync::watch::Receiver<Vec<Member>>,
    /// `--peers`.
    pub peers: BTreeMap<u64, String>,
}

impl Addresses {
    /// Where replica `id` is reached.
    pub fn of(&self, id: u64) -> Option<String> {
        self.members
            .borrow()
            .iter()
            .find(|m| m.id == id)
            .map(|m| m.address.clone())
            .or_else(|| self.peers.get(&id).cloned())
    }
}

/// What every worker shares.
#[derive(Debug, Clone)]
pub struct Sending {
    /// The client for peer calls (short timeout, no retries).
    pub client: HttpClient,
    /// Where peers are.
    pub addresses: Addresses,
    /// This replica and its group.
    pub me: u64,
    /// The group's id, on every batch.
    pub cluster: u64,
    /// The peer route's body limit.
    pub max_message_bytes: usize,
    /// The last delivery failure, for the status.
    pub last_error: Arc<std::sync::Mutex<Option<String>>>,
}

/// Splits each batch of the loop's messages by peer onto the peers' queues.
pub async fn send_messages(sending: Sending, mut batches: mpsc::UnboundedReceiver<Vec<Envelope>>) {
    let mut queues: BTreeMap<u64, mpsc::Sender<Vec<Envelope>>> = BTreeMap::new();
    while let Some(batch) = batches.recv().await {
        let mut by_peer: BTreeMap<u64, Vec<Envelope>> = BTreeMap::new();
        for envelope in batch {
            by_peer.entry(envelope.to).or_default().push(envelope);
        }
        for (peer, envelopes) in by_peer {
            let queue = queues.entry(peer).or_insert_with(|| {
                let (queue, work) = mpsc::channel(PEER_QUEUE);
                tokio::spawn(deliver_to(sending.clone(), peer, work));
                queue
            });
            if let Err(mpsc::error::TrySendError::Full(_)) = queue.try_send(envelopes) {
                metrics::counter!("kvorum_paxos_peer_queue_dropped_total").increment(1);
                tracing::debug!(peer, "the peer's send queue is full; batch dropped");
            }
        }
    }
}

/// One peer's worker: one call at a time, with whatever queued meanwhile.
async fn deliver_to(sending: Sending, peer: u64, mut work: mpsc::Receiver<Vec<Envelope>>) {
    let mut failures: (std::time::Instant, u64) =
        (std::time::Instant::now() - LOG_FAILURES_EVERY, 0);
    while let Some(mut envelopes) = work.recv().await {
        while let Ok(more) = work.try_recv() {
            envelopes.extend(more);
        }
        let Some(address) = sending.addresses.of(peer) else {
            continue;
        };
        let batch = PeerBatch {
            cluster: sending.cluster,
            envelopes,
        };
        let sent = send_batch(
            &sending.client,
            &address,
            sending.me,
            &batch,
            sending.max_message_bytes,
        )
        .await;
        metrics::counter!(
            "kvorum_paxos_peer_sends_total",
            "outcome" => if sent.is_ok() { "ok" } else { "failed" }
        )
        .increment(1);
        if let Err(error) = sent {
            *sending.last_error.lock().unwrap_or_else(|p| p.into_inner()) =
                Some(format!("replica {peer}: {error}"));
            let (last, suppressed) = &mut failures;
            if last.elapsed() >= LOG_FAILURES_EVERY {
                tracing::warn!(peer, %error, suppressed = *suppressed, "paxos messages not delivered to a peer");
                *last = std::time::Instant::now();
                *suppressed = 0;
            } else {
                *suppressed += 1;
            }
        }
    }
}

/// Sends one peer's envelopes, in one message or in chunks.
async fn send_batch(
    client: &HttpClient,
    address: &str,
    me: u64,
    batch: &PeerBatch,
    max_message_bytes: usize,
) -> Result<(), String> {
    let body = serde_json::to_vec(batch).map_err(|e| e.to_string())?;
    // A chunk's raw bytes, base64 in JSON, stay well within the limit.
    let piece = (max_message_bytes / 2).max(1024);
    if body.len() <= piece {
        return client
            .post_json::<_, serde_json::Value>(
                address,
                "/internal/v1/paxos",
                batch,
                Idempotency::NotIdempotent,
            )
            .await
            .map(drop)
            .map_err(|e| e.to_string());
    }
    send_chunks(client, address, me, &body, piece).await
}

/// Sends `body` in pieces of `piece` bytes, from where the receiver's copy ends.
async fn send_chunks(
    client: &HttpClient,
    address: &str,
    me: u64,
    body: &[u8],
    piece: usize,
) -> Result<(), String> {
    let digest = xxhash_rust::xxh3::xxh3_64(body);
    let total = body.len() as u64;
    // Every piece, plus the first question and a few retries, and no more.
    let mut calls_left = body.len() / piece + 4;
    // Ask first how much the receiver already holds: a transfer cut short resumes.
    let mut offset = 0u64;
    let mut data = Vec::new();
    loop {
        if calls_left == 0 {
            return Err(format!(
                "the receiver made no progress past {offset} of {total}"
            ));
        }
        calls_left -= 1;
        let chunk = kvorum_protocol::paxos::MessageChunk {
            from: me,
            digest,
            total,
            offset,
            data: std::mem::take(&mut data),
        };
        let receipt: kvorum_protocol::paxos::ChunkReceipt = client
            .post_json(
                address,
                "/internal/v1/paxos/chunks",
                &chunk,
                Idempotency::NotIdempotent,
            )
            .await
            .map_err(|e| format!("chunk at {offset} of {total}: {e}"))?;
        if receipt.received >= total {
            metrics::counter!("kvorum_paxos_chunked_batches_total").increment(1);
            return Ok(());
        }
        offset = receipt.received;
        let start = usize::try_from(offset)
            .unwrap_or(usize::MAX)
            .min(body.len());
        let end = (start + piece).min(body.len());
        data = body[start..end].to_vec();
    }
}
