//! A node's incarnation: whether what it holds may be counted.
//!
//! A node that starts on a new or restored data directory while the cluster
//! may still list it as a replica is a *new incarnation* (SYSTEM.md,
//! invariant 6): it lost writes it once acknowledged, so until it has caught up
//! from a read quorum of its peers it must count toward no quorum. It goes
//! through three phases:
//!
//! 1. **Admitting**: it registers with the metadata service saying so, learns
//!    its incarnation number, raises (and persists) every partition's fence to
//!    the map's epoch and its dot counter to its incarnation's floor. It answers
//!    no routed request at all.
//! 2. **Catching up**: it takes commits and merges (so writes made meanwhile
//!    reach it) but answers no read, prepare, coordinated write or export, and
//!    its acknowledgements say they do not count. It streams every partition
//!    from a read quorum of the other replicas.
//! 3. **Serving**: it told the metadata service it caught up; it counts again.
//!
//! The phase is persisted (`catching_up` in the `meta` table) until the metadata
//! service has applied the catch-up, so a crash at any point resumes it.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

use kvorum_http_client::HttpClient;
use kvorum_protocol::NodeId;
use tokio_util::sync::CancellationToken;

use crate::catchup::{Copied, Sources, catch_up};
use crate::fence::EpochFence;
use crate::membership::Membership;
use crate::store::WriteOp;
use crate::writer::Writer;

const ADMITTING: u8 = 0;
const CATCHING_UP: u8 = 1;
const SERVING: u8 = 2;

/// Where the node's incarnation stands; shared by every handler.
#[derive(Debug, Clone)]
pub struct Incarnation(Arc<AtomicU8>);

impl Incarnation {
    /// A node on its own data: it counts from the start.
    pub fn serving() -> Self {
        Self(Arc::new(AtomicU8::new(SERVING)))
    }

    /// A new incarnation that has not been admitted yet.
    pub fn admitting() -> Self {
        Self(Arc::new(AtomicU8::new(ADMITTING)))
    }

    /// Whether its data counts: it answers reads, prepares, coordinated
    /// writes and exports, and its acknowledgements count.
    pub fn counts(&self) -> bool {
        self.0.load(Ordering::Acquire) == SERVING
    }

    /// Whether the node takes commits, merges and imports.
    pub fn takes_writes(&self) -> bool {
        self.0.load(Ordering::Acquire) != ADMITTING
    }

    /// An admitted incarnation still catching up: it takes writes, answers no reads.
    pub fn catching_up() -> Self {
        Self(Arc::new(AtomicU8::new(CATCHING_UP)))
    }

    /// Stops counting this node's data: it is a new incarnation after all.
    pub fn restart_admission(&self) {
        self.enter(ADMITTING);
    }

    fn enter(&self, phase: u8) {
        self.0.store(phase, Ordering::Release);
    }
}

/// The file that says "this data directory is a new incarnation" until the
/// `catching_up` flag is in the database: created (and fsync'd) before a
/// checkpoint is restored or a database created, so a crash in between can
/// never leave a new directory that looks like the node's own old data.
pub const MARKER_FILE: &str = "new-incarnation";

/// Marks `dir` as holding a new incarnation's data, durably.
pub fn mark_new(dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    std::fs::File::create(dir.join(MARKER_FILE))?.sync_all()?;
    std::fs::File::open(dir)?.sync_all()
}

/// Whether `dir` was marked by [`mark_new`] and not yet unmarked.
pub fn is_marked(dir: &Path) -> bool {
    dir.join(MARKER_FILE).exists()
}

/// Removes the mark once the database itself says it is catching up.
pub fn unmark(dir: &Path) -> std::io::Result<()> {
    match std::fs::remove_file(dir.join(MARKER_FILE)) {
        Err(error) if error.kind() != std::io::ErrorKind::NotFound => return Err(error),
        _ => {}
    }
    std::fs::File::open(dir)?.sync_all()
}

/// How a new incarnation registers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Registration {
    /// The node's registration at start said `catching_up`.
    AtStart,
    /// It registered as serving its own data, and the metadata service
    /// disagreed: it registers again, as catching up.
    Again,
}

/// What the admission of a new incarnation needs.
#[derive(Debug)]
pub struct NewIncarnation {
    /// How it registers.
    pub registration: Registration,
    /// This node.
    pub node: NodeId,
    /// Its registration (made with `catching_up`) and the map it follows.
    pub membership: Membership,
    /// The group-commit writer.
    pub writer: Writer,
    /// The database, to find what a restored disk brought back that its peers collected.
    pub store: Arc<crate::store::Store>,
    /// The in-memory epoch fence.
    pub fence: Arc<EpochFence>,
    /// The client for peers' exports.
    pub peers: HttpClient,
    /// The phase handlers look at.
    pub incarnation: Incarnation,
}

impl NewIncarnation {
    /// Admits the incarnation, catches it up and reports it, retrying each step until it succeeds or `shutdown`.
    pub async fn run(self, shutdown: CancellationToken) {
        tokio::select! {
            () = shutdown.cancelled() => {}
            () = self.admit_and_catch_up() => {}
        }
    }

    async fn admit_and_catch_up(&self) {
        let registered = match self.registration {
            Registration::AtStart => self.membership.registered().await,
            Registration::Again => self.membership.register_catching_up().await,
        };
        let Some(version) = registered else {
            tracing::error!(node = %self.node, "registration refused; this incarnation is never admitted");
            return;
        };
        let follower = self.membership.follower();
        // A linearizable read, at once: it holds the registration, and a new
        // node should not keep refusing requests while a watch catches up.
        let state = self
            .retry("read the metadata state holding the registration", || {
                self.membership.read_state()
            })
            .await;
        debug_assert!(
            state.version >= version,
            "a linearizable read after the registration"
        );
        let Some(me) = state.nodes.get(&self.node).cloned() else {
            tracing::error!(node = %self.node, "the metadata state does not list this node after its registration");
            return;
        };
        let mut ops = vec![WriteOp::Incarnation {
            catching_up: me.catching_up,
            incarnation: Some(me.incarnation),
        }];
        // Fences first, persisted: a restored epoch table is older than the map.
        if let Some(map) = &state.partition_map {
            for assignment in &map.partitions {
                self.fence.raise(assignment.id, assignment.epoch);
                ops.push(WriteOp::RaiseEpoch {
                    partition: assignment.id,
                    epoch: assignment.epoch,
                });
            }
        }
        self.retry("record the incarnation", || self.writer.submit(ops.clone()))
            .await;
        if !me.catching_up {
            // The cluster never knew this node: it holds nothing anybody wrote.
            tracing::info!(node = %self.node, "a node the cluster did not know: serving at once");
            self.incarnation.enter(SERVING);
            return;
        }
        self.incarnation.enter(CATCHING_UP);
        let started = std::time::Instant::now();
        tracing::warn!(node = %self.node, incarnation = me.incarnation, "a new incarnation (new or restored data): counted by no quorum until it has caught up from its peers");
        // Partitions already copied are not copied again when others lack sources.
        let mut copied = Copied::new();
        let mut imported = 0;
        let mut pause = Duration::from_millis(200);
        loop {
            match catch_up(
                self.node,
                &follower,
                &self.store,
                &self.writer,
                &self.peers,
                Sources::OthersOnly,
                &mut copied,
            )
            .await
            {
                Ok(count) => {
                    imported += count;
                    break;
                }
                Err(error) => {
                    tracing::warn!(node = %self.node, copied = copied.len(), %error, "catch-up incomplete; retrying");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_secs(5));
                }
            }
        }
        self.retry("report the catch-up to the metadata service", || {
            self.membership.report_caught_up(self.node, me.incarnation)
        })
        .await;
        self.retry("record the catch-up", || {
            self.writer.submit(vec![WriteOp::Incarnation {
                catching_up: false,
                incarnation: Some(me.incarnation),
            }])
        })
        .await;
        self.incarnation.enter(SERVING);
        metrics::histogram!("kvorum_incarnation_catch_up_seconds")
            .record(started.elapsed().as_secs_f64());
        tracing::info!(node = %self.node, incarnation = me.incarnation, imported, elapsed_ms = started.elapsed().as_millis() as u64, "caught up: this incarnation counts again");
    }

    /// Runs `step` until it succeeds, pausing between attempts.
    async fn retry<T, E, F, Fut>(&self, what: &str, step: F) -> T
    where
        E: std::fmt::Display,
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Result<T, E>>,
    {
        loop {
            match step().await {
                Ok(value) => return value,
                Err(error) => {
                    tracing::warn!(node = %self.node, %error, "cannot {what} yet; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    }
}

/// For a node that started on its own data: if the metadata service says its
/// data is not this incarnation's (the node is catching up there, or at another
/// incarnation: an old volume put back, a rollback), the node becomes a new
/// incarnation after all, registering again as catching up.
pub async fn verify_own_data(
    admission: NewIncarnation,
    persisted: u64,
    shutdown: CancellationToken,
) {
    let Some(version) = admission.membership.registered().await else {
        return;
    };
    let follower = admission.membership.follower();
    let state = tokio::select! {
        () = shutdown.cancelled() => return,
        state = async {
            while !follower.wait_for_version(version, Duration::from_secs(5)).await {}
            follower.current()
        } => state,
    };
    let Some(me) = state.and_then(|s| s.nodes.get(&admission.node).cloned()) else {
        return;
    };
    if !me.catching_up && me.incarnation == persisted {
        return;
    }
    tracing::warn!(
        node = %admission.node,
        persisted,
        recorded = me.incarnation,
        recorded_catching_up = me.catching_up,
        "the metadata service does not vouch for this node's data: becoming a new incarnation"
    );
    admission.incarnation.restart_admission();
    let marked = admission
        .writer
        .submit(vec![WriteOp::Incarnation {
            catching_up: true,
            incarnation: None,
        }])
        .await;
    if let Err(error) = marked {
        tracing::error!(%error, "cannot record the new incarnation; not serving");
        return;
    }
    admission.run(shutdown).await;
}
