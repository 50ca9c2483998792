//! Catching up from peers: every partition this node replicates is streamed
//! from the other replicas in pages and imported with keep-if-higher (joined,
//! for causal states). It is a full-partition anti-entropy pass.
//!
//! - After a restart on its own data ([`Sources::WithItself`]) the node already
//!   counts, and a quorum of the set including itself is enough: what it missed
//!   while down is on the others, and records only a minority holds (writes
//!   whose outcome was unknown) spread as a read repair would spread them.
//! - A new incarnation ([`Sources::OthersOnly`]: new or restored data) holds
//!   nothing it may vouch for, so every partition must come from a read quorum
//!   of the *other* replicas, each of them counting (not catching up itself):
//!   every write a quorum acknowledged is on at least one of them.
//! - Either way, a source's last page carries its strong floors: values here
//!   at or below its watermark whose keys it no longer holds are dropped (their
//!   tombstones were collected while this data was away), then the floors are
//!   adopted.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use kvorum_http_client::HttpClient;
use kvorum_metad_client::Follower;
use kvorum_protocol::storage::{ExportFloors, ExportQuery, PartitionExport, StrongFloors};
use kvorum_protocol::{Key, KeyspaceName, NodeId, PartitionId};
use tokio_util::sync::CancellationToken;

use crate::store::{Store, WriteOp};
use crate::writer::Writer;

/// Records per page fetched from a peer.
const PAGE: usize = 512;

/// Which replicas a catch-up may count toward the quorum it copies from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sources {
    /// The node's own data counts: it restarted on it.
    WithItself,
    /// Only other replicas that count: the node is a new incarnation.
    OthersOnly,
}

/// Starts the background catch-up of a node that restarted on its own data:
/// retried until every partition has been copied from enough peers.
pub fn start_after_restart(
    node: NodeId,
    follower: Follower,
    store: Arc<Store>,
    writer: Writer,
    peers: HttpClient,
    shutdown: CancellationToken,
) {
    // The task holds a writer handle: it must end with the node, or the
    // writer would never drain and stop.
    tokio::spawn(async move {
        let mut copied = Copied::new();
        loop {
            if shutdown.is_cancelled() {
                return;
            }
            match catch_up(
                node,
                &follower,
                &store,
                &writer,
                &peers,
                Sources::WithItself,
                &mut copied,
            )
            .await
            {
                Ok(imported) => {
                    tracing::info!(imported, "caught up from peers after the restart");
                    return;
                }
                Err(error) => {
                    tracing::warn!(%error, "catch-up incomplete; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    });
}

/// Which partitions a catch-up has copied so far: a retry copies only the others.
pub type Copied = std::collections::BTreeSet<kvorum_protocol::PartitionId>;

/// One pass over every partition this node holds or is joining and has not
/// copied yet (`copied` records those done); fails, to be retried, when some
/// partition could not be copied from enough sources.
///
/// Enough means a read quorum of every prefix a keyspace uses (a keyspace with
/// RF r lives on the first r replicas): with this node counted only for
/// [`Sources::WithItself`]. A quorum of the whole set is not enough once a
/// keyspace's RF is below the cluster's.
pub async fn catch_up(
    node: NodeId,
    follower: &Follower,
    store: &Arc<Store>,
    writer: &Writer,
    peers: &HttpClient,
    sources_allowed: Sources,
    copied: &mut Copied,
) -> Result<u64, String> {
    let state = follower
        .current()
        .filter(|s| s.partition_map.is_some())
        .ok_or("no partition map yet")?;
    let map = state.partition_map.as_ref().ok_or("no partition map yet")?;
    let mut imported = 0;
    let mut missing = Vec::new();
    // Partitions it holds, and those it is joining (a joining node that lost its
    // data mid-move must not be switched in with only the copy's tail).
    let mine = |p: &&kvorum_protocol::cluster::PartitionAssignment| {
        p.places(node) && !copied.contains(&p.id)
    };
    let todo: Vec<_> = map.partitions.iter().filter(mine).cloned().collect();
    for assignment in todo {
        let mut sources = std::collections::BTreeSet::new();
        for peer in assignment.replicas.iter().filter(|p| **p != node) {
            let Some(peer_info) = state.nodes.get(peer) else {
                continue;
            };
            // A peer that is itself a new incarnation vouches for nothing.
            if sources_allowed == Sources::OthersOnly && peer_info.catching_up {
                continue;
            }
            let address = peer_info.address.clone();
            match copy_from(&address, assignment.id.0, store, writer, peers).await {
                Ok(count) => {
                    imported += count;
                    sources.insert(*peer);
                }
                Err(error) => tracing::info!(%peer, %error, "peer unavailable for catch-up"),
            }
        }
        let rfs =
            kvorum_protocol::consistency::replication_factors(&state, assignment.replicas.len());
        let counted = |n: &NodeId| {
            sources.contains(n) || (sources_allowed == Sources::WithItself && *n == node)
        };
        if kvorum_protocol::consistency::covers_every_prefix(&assignment.replicas, counted, &rfs) {
            copied.insert(assignment.id);
        } else {
            missing.push(assignment.id.0);
        }
    }
    if missing.is_empty() {
        Ok(imported)
    } else {
        Err(format!(
            "partitions {missing:?}: too few peers answered to hold a read quorum of every keyspace"
        ))
    }
}

async fn copy_from(
    address: &str,
    partition: u32,
    store: &Arc<Store>,
    writer: &Writer,
    peers: &HttpClient,
) -> Result<u64, String> {
    let mut query = ExportQuery {
        limit: Some(PAGE),
        max_bytes: Some(kvorum_protocol::storage::MAX_PAGE_BYTES),
        ..ExportQuery::default()
    };
    let mut imported = 0;
    // Every key the source holds: a value here at or below the source's
    // watermark whose key it lacks was deleted and collected since.
    let mut present = BTreeSet::new();
    // The floors as of the first page: every record at or below that
    // watermark is sent by some page, which a watermark sealed while the
    // pages were read does not promise, and which a source that dropped the
    // partition between two pages no longer keeps.
    let mut floors = ExportFloors::default();
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
        present.extend(
            page.records
                .iter()
                .map(|r| (r.keyspace.clone(), r.key.clone())),
        );
        let mut ops: Vec<WriteOp> = page
            .records
            .into_iter()
            .map(|r| WriteOp::import(page.partition, r))
            .collect();
        imported += ops.len() as u64;
        floors.observe(page.strong_floors)?;
        if next.is_none()
            && let Some(floors) = floors.at_start()
        {
            ops.extend(stale_values(store, page.partition, floors, &present).await?);
            // The floors last: a watermark taken first would refuse the older records.
            ops.push(WriteOp::AdoptStrongFloors {
                partition: page.partition,
                floors,
            });
        }
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

/// The values this node holds at or below the source's watermark for keys
/// the source does not hold, as ops that drop them. Every record at or below a
/// watermark was on every replica when it was sealed, and since then only
/// tombstones at or below it have gone; so such a value is one whose
/// tombstone was collected while this node was away, and it came back with a
/// restored disk (a checkpoint, an old volume).
async fn stale_values(
    store: &Arc<Store>,
    partition: PartitionId,
    floors: StrongFloors,
    present: &BTreeSet<(KeyspaceName, Key)>,
) -> Result<Vec<WriteOp>, String> {
    let Some(below) = floors.watermark else {
        return Ok(Vec::new());
    };
    let (store, present) = (store.clone(), present.clone());
    let stale = tokio::task::spawn_blocking(move || {
        store.strong_values_missing_from(partition, below, &present)
    })
    .await
    .map_err(|e| e.to_string())?
    .map_err(|e| e.to_string())?;
    if !stale.is_empty() {
        tracing::info!(%partition, count = stale.len(), %below, "dropping values whose tombstones were collected while this data was away");
    }
    Ok(stale
        .into_iter()
        .map(|(keyspace, key, version)| WriteOp::DropStaleStrongValue {
            partition,
            keyspace,
            key,
            version,
            below,
        })
        .collect())
}
