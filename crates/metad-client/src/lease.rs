//! Holding a named lease in the metadata service: how one of several instances
//! of a service (failure detectors, recovery controllers) becomes the active one.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kvorum_protocol::metadata::{LeaseFence, MetadataOp};

use crate::{MetadClient, MetadClientError};

/// Whether this instance holds the lease, as of its last renewal, and the
/// fencing token its commands carry.
#[derive(Debug, Clone, Default)]
pub struct Lease {
    held: Arc<Mutex<Option<Held>>>,
}

#[derive(Debug, Clone)]
struct Held {
    until: Instant,
    fence: LeaseFence,
}

impl Lease {
    /// Whether the lease is held now (it lapses on this instance's own
    /// monotonic clock, a safety margin before the metadata service lets
    /// another instance take it).
    pub fn is_held(&self) -> bool {
        self.fence().is_some()
    }

    /// The fencing token for a command made as the holder, while the lease is held.
    pub fn fence(&self) -> Option<LeaseFence> {
        self.held
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .filter(|held| Instant::now() < held.until)
            .map(|held| held.fence.clone())
    }

    fn set(&self, held: Option<Held>) {
        *self.held.lock().unwrap_or_else(|p| p.into_inner()) = held;
    }
}

/// How long until lease `name` lapses as one metadata replica records it (zero
/// when it cannot tell).
async fn until_lapse(client: &MetadClient, name: &str, now_ms: u64) -> Duration {
    match client.watch(0, Duration::ZERO).await {
        Ok(state) => state.leases.get(name).map_or(Duration::ZERO, |held| {
            Duration::from_millis(held.expires_at_ms.saturating_sub(now_ms))
        }),
        Err(_) => Duration::ZERO,
    }
}

/// Takes and renews lease `name` for `holder` every third of `duration`, for
/// ever; while another instance holds it, asks again only when it is due to
/// lapse (by the expiry the metadata service records), so that a standby does
/// not fill the log with refused attempts.
///
/// A renewal that the metadata service refuses (someone else holds it) drops
/// the lease at once; one that gets no answer leaves it to lapse on this
/// instance's clock, counted from when the renewal was asked, so the holder
/// stops acting no later than the metadata service lets another one start
/// (metad stamps the request with its leader's clock when it proposes it, and
/// that is after this instance asked).
pub async fn hold(
    client: MetadClient,
    name: &str,
    holder: String,
    duration: Duration,
    lease: Lease,
) {
    let client = client.with_deadline(duration / 3);
    let renew_every = duration / 3;
    // A standby asks often, so that it takes over soon after the lease lapses.
    let try_every = renew_every.min(Duration::from_millis(250));
    let duration_ms = u64::try_from(duration.as_millis()).unwrap_or(u64::MAX);
    let margin = (duration / 10)
        .max(Duration::from_millis(50))
        .min(duration / 2);
    let mut first = true;
    loop {
        if !first {
            let pause = if lease.is_held() {
                renew_every
            } else {
                try_every
            };
            tokio::time::sleep(pause).await;
        }
        first = false;
        let asked_at = Instant::now();
        let now_ms = kvorum_protocol::wall_clock_ms();
        let answer = client
            .submit(MetadataOp::AcquireLease {
                name: name.to_owned(),
                holder: holder.clone(),
                now_ms,
                duration_ms,
            })
            .await;
        let was_held = lease.is_held();
        match answer {
            Ok(outcome) => match outcome.lease {
                Some(granted) => lease.set(Some(Held {
                    // Counted from when the renewal was asked, less a margin:
                    // the holder stops acting before anyone else may start.
                    until: asked_at + duration - margin,
                    fence: LeaseFence {
                        lease: name.to_owned(),
                        epoch: granted.epoch,
                    },
                })),
                None => lease.set(None),
            },
            Err(MetadClientError::Refused(_)) => {
                lease.set(None);
                // Someone else holds it: wait for its recorded expiry (read from
                // one replica, no log entry) before asking again.
                let wait = until_lapse(&client, name, now_ms).await;
                tokio::time::sleep(wait.clamp(try_every, duration)).await;
            }
            Err(MetadClientError::Unavailable { .. }) => {}
        }
        let held = lease.is_held();
        if held != was_held {
            tracing::info!(
                lease = name,
                held,
                "lease {}",
                if held { "taken" } else { "lost" }
            );
        }
    }
}
