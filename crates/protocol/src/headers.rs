//! Names of Kvorum's HTTP headers: the consistency receipt and the causal context.

/// The causal context of a read, to send back with the write that supersedes it.
pub const CONTEXT: &str = "x-kvorum-context";
/// The version a response's record carries.
pub const VERSION: &str = "x-kvorum-version";
/// The consistency level the request was served at.
pub const CONSISTENCY: &str = "x-kvorum-consistency";
/// The partition the key hashed into.
pub const PARTITION: &str = "x-kvorum-partition";
/// The epoch of the partition map the router routed by.
pub const EPOCH: &str = "x-kvorum-epoch";
/// Comma-separated ids of the replicas the router asked.
pub const REPLICAS_ASKED: &str = "x-kvorum-replicas-asked";
/// Comma-separated ids of the replicas that acknowledged before the answer.
pub const REPLICAS_ACKED: &str = "x-kvorum-replicas-acked";
/// `true` when a read wrote the newest version back to stale replicas.
pub const READ_REPAIR: &str = "x-kvorum-read-repair";
/// `true` when a write left a hint for a replica that was down.
pub const HINTED: &str = "x-kvorum-hinted";
/// The id of the trace a request's spans belong to, when spans are exported.
pub const TRACE_ID: &str = "x-kvorum-trace-id";
