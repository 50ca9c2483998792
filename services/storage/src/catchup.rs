//! Catching up from peers after a checkpoint restore or a restart: every
//! partition this node replicates is streamed from each other replica in pages
//! and imported with keep-if-higher, so the node ends with at least every write
//! a quorum had acknowledged, whatever it missed while it was down or since its
//! checkpoint. It is a full-partition anti-entropy pass, run once per start;
//! records only a minority holds (writes whose outcome was unknown) spread as a
//! read repair would spread them.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use kvorum_http_client::HttpClient;
use kvorum_metad_client::Follower;
use kvorum_protocol::NodeId;
use kvorum_protocol::storage::{ExportQuery, PartitionExport};
use tokio_util::sync::CancellationToken;

use crate::store::WriteOp;
use crate::writer::Writer;

/// Records per page fetched from a peer.
const PAGE: usize = 512;

/// Whether the catch-up after a restore is done (true when none was needed).
#[derive(Debug, Clone)]
pub struct CatchUp(Arc<AtomicBool>);

impl CatchUp {
    /// Nothing to catch up.
    pub fn done() -> Self {
        Self(Arc::new(AtomicBool::new(true)))
    }

    /// Whether the node has caught up.
    pub fn is_done(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }

    /// Streams every partition this node replicates from its peers, retrying
    /// until every one has been copied from every peer that answers.
    pub fn start(
        node: NodeId,
        follower: Follower,
        writer: Writer,
        peers: HttpClient,
        shutdown: CancellationToken,
    ) -> Self {
        let done = Self(Arc::new(AtomicBool::new(false)));
        let flag = done.clone();
        // The task holds a writer handle: it must end with the node, or the
        // writer would never drain and stop.
        tokio::spawn(async move {
            loop {
                if shutdown.is_cancelled() {
                    return;
                }
                match catch_up(node, &follower, &writer, &peers).await {
                    Ok(imported) => {
                        tracing::info!(
                            imported,
                            "caught up from peers after the checkpoint restore"
                        );
                        flag.0.store(true, Ordering::Relaxed);
                        return;
                    }
                    Err(error) => {
                        tracing::warn!(%error, "catch-up incomplete; retrying");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
            }
        });
        done
    }
}

async fn catch_up(
    node: NodeId,
    follower: &Follower,
    writer: &Writer,
    peers: &HttpClient,
) -> Result<u64, String> {
    let state = follower
        .current()
        .filter(|s| s.partition_map.is_some())
        .ok_or("no partition map yet")?;
    let map = state.partition_map.as_ref().ok_or("no partition map yet")?;
    let mut imported = 0;
    // Partitions it holds, and those it is joining (a joining node that lost its
    // data mid-move must not be switched in with only the copy's tail).
    let mine = |p: &&kvorum_protocol::cluster::PartitionAssignment| {
        p.replicas.contains(&node) || p.pending.iter().any(|r| r.joining == node)
    };
    for assignment in map.partitions.iter().filter(mine) {
        let mut sources = 0;
        for peer in assignment.replicas.iter().filter(|p| **p != node) {
            let Some(address) = state.nodes.get(peer).map(|n| n.address.clone()) else {
                continue;
            };
            match copy_from(&address, assignment.id.0, writer, peers).await {
                Ok(count) => {
                    imported += count;
                    sources += 1;
                }
                Err(error) => tracing::info!(%peer, %error, "peer unavailable for catch-up"),
            }
        }
        // With this node, a quorum of the set: every acknowledged write is on one of them.
        let itself = usize::from(assignment.replicas.contains(&node));
        if sources + itself < kvorum_protocol::consistency::quorum(assignment.replicas.len()) {
            return Err(format!(
                "partition {}: too few peers answered",
                assignment.id
            ));
        }
    }
    Ok(imported)
}

async fn copy_from(
    address: &str,
    partition: u32,
    writer: &Writer,
    peers: &HttpClient,
) -> Result<u64, String> {
    let mut query = ExportQuery {
        limit: Some(PAGE),
        ..ExportQuery::default()
    };
    let mut imported = 0;
    loop {
        let encoded = serde_urlencoded::to_string(&query).map_err(|e| e.to_string())?;
        let page: PartitionExport = peers
            .get_json(
                address,
                &format!("/internal/v1/partitions/{partition}?{encoded}"),
            )
            .await
            .map_err(|e| e.to_string())?;
        let next = page.next.clone();
        let ops: Vec<WriteOp> = page
            .records
            .into_iter()
            .map(|r| WriteOp::import(page.partition, r))
            .collect();
        imported += ops.len() as u64;
        writer.submit(ops).await.map_err(|e| e.to_string())?;
        match next {
            Some(cursor) => {
                query.after_keyspace = Some(cursor.keyspace);
                query.after_key = Some(cursor.key);
            }
            None => return Ok(imported),
        }
    }
}
