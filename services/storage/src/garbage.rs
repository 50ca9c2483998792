//! Dropping what this node no longer replicates: once the partition map neither
//! assigns a partition to this node nor is moving it here (after a move's
//! switch, an aborted move into it, a decommission), its records, tombstone
//! ages and the hints it holds for that partition are deleted.
//!
//! Safe because the map is authoritative and only moves forward: a partition
//! this node still leaves in a pending move is still in its replica set, so a
//! move never loses its source; routers on an older map are fenced off by the
//! epoch the drop records first; and a move that brings the partition back
//! fences this node at a newer epoch before it imports anything, which makes
//! the drop a no-op (`WriteOp::DropUnassigned`).

use std::sync::Arc;
use std::time::Duration;

use kvorum_metad_client::Follower;
use kvorum_protocol::NodeId;
use kvorum_protocol::metadata::MetadataState;
use tokio_util::sync::CancellationToken;

use crate::store::{Store, WriteOp, WriteOutcome};
use crate::writer::Writer;

/// How often the node looks again even when the map did not change.
const RECHECK_EVERY: Duration = Duration::from_secs(30);

/// Drops unassigned partitions whenever the followed map changes, and periodically, until shutdown.
pub async fn drop_unassigned(
    node: NodeId,
    store: Arc<Store>,
    writer: Writer,
    follower: Follower,
    shutdown: CancellationToken,
) {
    let mut states = follower.subscribe();
    loop {
        let state = states.borrow_and_update().clone();
        if let Some(state) = state
            && let Err(error) = drop_once(node, &store, &writer, &state).await
        {
            tracing::warn!(%error, "cannot drop unassigned partitions yet");
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            changed = states.changed() => if changed.is_err() { return },
            () = tokio::time::sleep(RECHECK_EVERY) => {}
        }
    }
}

/// The partitions `state`'s map neither assigns to `node` nor moves to it, with their epochs.
pub fn unassigned(
    node: NodeId,
    state: &MetadataState,
    held: &[kvorum_protocol::PartitionId],
) -> Vec<WriteOp> {
    let Some(map) = &state.partition_map else {
        return Vec::new();
    };
    held.iter()
        .filter_map(|partition| map.assignment(*partition))
        .filter(|a| !a.places(node))
        .map(|a| WriteOp::DropUnassigned {
            partition: a.id,
            epoch: a.epoch,
        })
        .collect()
}

async fn drop_once(
    node: NodeId,
    store: &Arc<Store>,
    writer: &Writer,
    state: &MetadataState,
) -> Result<(), String> {
    let Some(count) = state.partition_map.as_ref().map(|m| m.partition_count()) else {
        return Ok(());
    };
    let reader = store.clone();
    let held = tokio::task::spawn_blocking(move || reader.partitions_held(count))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
    let ops = unassigned(node, state, &held);
    if ops.is_empty() {
        return Ok(());
    }
    let partitions: Vec<u32> = ops
        .iter()
        .filter_map(|op| match op {
            WriteOp::DropUnassigned { partition, .. } => Some(partition.0),
            _ => None,
        })
        .collect();
    let outcomes = writer.submit(ops).await.map_err(|e| e.to_string())?;
    let removed: usize = outcomes
        .iter()
        .map(|o| match o {
            WriteOutcome::Dropped(n) => *n,
            _ => 0,
        })
        .sum();
    metrics::counter!("kvorum_partitions_dropped_total").increment(partitions.len() as u64);
    tracing::info!(
        ?partitions,
        removed,
        "dropped partitions the map no longer assigns here"
    );
    Ok(())
}
