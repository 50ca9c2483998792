//! Group commit: one writer task batches concurrent writes into one fsync'd transaction.
//!
//! While a transaction is being fsync'd, new writes queue in the channel; the
//! next transaction takes all of them (up to `max_batch` ops). Under load the
//! cost of an fsync is shared by every request that arrived during the last one,
//! instead of throughput collapsing to one fsync per request.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::store::{Store, StoreError, WriteOp, WriteOutcome};

/// Why a submitted write did not complete.
#[derive(Debug, Clone, thiserror::Error)]
pub enum WriteError {
    /// The transaction holding the write failed; nothing of it was stored.
    #[error("the write transaction failed: {0}")]
    Store(Arc<StoreError>),
    /// The writer has stopped (the node is shutting down).
    #[error("the node is shutting down")]
    Stopped,
}

#[derive(Debug)]
struct Job {
    ops: Vec<WriteOp>,
    reply: oneshot::Sender<Result<Vec<WriteOutcome>, WriteError>>,
}

/// Counters of the writer's work, for metrics and for tests of batching.
#[derive(Debug, Default)]
pub struct WriterStats {
    /// Requests (submissions) written.
    pub requests: AtomicU64,
    /// Transactions committed (one fsync each).
    pub transactions: AtomicU64,
}

/// The handle through which requests submit writes; clone it freely.
#[derive(Debug, Clone)]
pub struct Writer {
    jobs: mpsc::Sender<Job>,
    stats: Arc<WriterStats>,
}

impl Writer {
    /// Starts the writer task; it ends once every handle is dropped and the queue is drained.
    pub fn start(store: Arc<Store>, max_batch: usize) -> (Writer, JoinHandle<()>) {
        let (jobs, queue) = mpsc::channel(max_batch.max(1) * 4);
        let stats = Arc::new(WriterStats::default());
        let task = tokio::spawn(run(store, queue, max_batch.max(1), stats.clone()));
        (Writer { jobs, stats }, task)
    }

    /// What the writer has done so far.
    pub fn stats(&self) -> &WriterStats {
        &self.stats
    }

    /// Applies `ops` in order, durably, sharing the fsync with concurrent submitters.
    pub async fn submit(&self, ops: Vec<WriteOp>) -> Result<Vec<WriteOutcome>, WriteError> {
        let (reply, outcome) = oneshot::channel();
        self.jobs
            .send(Job { ops, reply })
            .await
            .map_err(|_| WriteError::Stopped)?;
        outcome.await.map_err(|_| WriteError::Stopped)?
    }
}

async fn run(
    store: Arc<Store>,
    mut queue: mpsc::Receiver<Job>,
    max_batch: usize,
    stats: Arc<WriterStats>,
) {
    while let Some(first) = queue.recv().await {
        let mut op_count = first.ops.len();
        let mut jobs = vec![first];
        while op_count < max_batch {
            match queue.try_recv() {
                Ok(job) => {
                    op_count += job.ops.len();
                    jobs.push(job);
                }
                Err(_) => break,
            }
        }
        let mut ops = Vec::with_capacity(op_count);
        let mut replies = Vec::with_capacity(jobs.len());
        for job in jobs {
            replies.push((job.ops.len(), job.reply));
            ops.extend(job.ops);
        }
        let store = store.clone();
        let started = std::time::Instant::now();
        let result = tokio::task::spawn_blocking(move || store.apply(&ops)).await;
        metrics::histogram!("kvorum_group_commit_duration_seconds")
            .record(started.elapsed().as_secs_f64());
        metrics::histogram!("kvorum_group_commit_ops").record(op_count as f64);
        tracing::trace!(ops = op_count, requests = replies.len(), "group commit");
        match result {
            Ok(Ok(outcomes)) => {
                stats.transactions.fetch_add(1, Ordering::Relaxed);
                metrics::counter!("kvorum_group_commit_transactions_total").increment(1);
                metrics::counter!("kvorum_group_commit_requests_total")
                    .increment(replies.len() as u64);
                stats
                    .requests
                    .fetch_add(replies.len() as u64, Ordering::Relaxed);
                let mut outcomes = outcomes.into_iter();
                for (count, reply) in replies {
                    // A requester that gave up (timeout) no longer listens; its write stands.
                    let _ = reply.send(Ok(outcomes.by_ref().take(count).collect()));
                }
            }
            Ok(Err(error)) => {
                tracing::error!(%error, ops = op_count, "group commit failed");
                let error = WriteError::Store(Arc::new(error));
                for (_, reply) in replies {
                    let _ = reply.send(Err(error.clone()));
                }
            }
            Err(join_error) => {
                tracing::error!(%join_error, "group commit task died");
                for (_, reply) in replies {
                    let _ = reply.send(Err(WriteError::Stopped));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use kvorum_protocol::{Epoch, Key, KeyspaceName, NodeId, PartitionId, Record, Version};

    use super::*;

    fn commit(k: &str, counter: u64) -> WriteOp {
        WriteOp::Commit {
            partition: PartitionId(0),
            epoch: Some(Epoch(1)),
            keyspace: KeyspaceName::default_keyspace(),
            key: Key::parse(k).expect("key"),
            record: Record {
                version: Version { counter, writer: 0 },
                value: Some(vec![1]),
            },
        }
    }

    #[tokio::test]
    async fn concurrent_submitters_each_get_their_own_outcomes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Arc::new(Store::open(dir.path(), NodeId(1)).expect("open"));
        let (writer, task) = Writer::start(store.clone(), 64);
        let mut handles = Vec::new();
        for i in 0..200u64 {
            let writer = writer.clone();
            handles.push(tokio::spawn(async move {
                writer
                    .submit(vec![
                        commit(&format!("k{i}"), i + 1),
                        commit(&format!("k{i}"), i),
                    ])
                    .await
            }));
        }
        for (i, handle) in handles.into_iter().enumerate() {
            let outcomes = handle.await.expect("join").expect("write");
            let current = Version {
                counter: i as u64 + 1,
                writer: 0,
            };
            assert_eq!(
                outcomes,
                vec![
                    WriteOutcome::Committed {
                        applied: true,
                        current
                    },
                    WriteOutcome::Committed {
                        applied: false,
                        current
                    }
                ]
            );
        }
        // Every request arrived while earlier ones were being fsync'd, so they
        // must have shared transactions; one transaction each means no group commit.
        let transactions = writer.stats().transactions.load(Ordering::Relaxed);
        assert_eq!(writer.stats().requests.load(Ordering::Relaxed), 200);
        assert!(
            transactions <= 100,
            "200 concurrent requests took {transactions} transactions"
        );
        drop(writer);
        task.await.expect("writer drains and stops");
        assert_eq!(
            store
                .export_partition(PartitionId(0))
                .expect("export")
                .records
                .len(),
            200
        );
    }
}
