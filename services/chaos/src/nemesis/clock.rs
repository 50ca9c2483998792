//! Clock faults, on any backend whose processes run under libfaketime: step a
//! process's wall clock, or make it drift, and put it back when healed.

use std::time::Duration;

use kvorum_launcher::FakeClocks;
use rand::Rng;
use rand::rngs::StdRng;

use super::{FaultKind, Heal};

/// Moves the clock of one of `names` (chosen at random) as `kind` says.
pub(super) fn move_clock(
    kind: FaultKind,
    clocks: &FakeClocks,
    names: &[String],
    rng: &mut StdRng,
) -> anyhow::Result<(String, Heal)> {
    anyhow::ensure!(
        !names.is_empty(),
        "no process runs on a fake clock for {}",
        kind.name()
    );
    let name = names[rng.random_range(0..names.len())].clone();
    match kind {
        FaultKind::ClockForward | FaultKind::ClockBack => {
            let step = rng.random_range(10.0..90.0_f64);
            let offset = if kind == FaultKind::ClockBack {
                -step
            } else {
                step
            };
            clocks.set_offset(&name, offset)?;
            Ok((
                format!("{name} clock {offset:+.0} s"),
                Heal::TrueClock { name, drift: None },
            ))
        }
        FaultKind::ClockDrift => {
            let rate =
                rng.random_range(0.5..1.0_f64) * if rng.random_bool(0.5) { 1.0 } else { -1.0 };
            let started = std::time::Instant::now();
            let (drifting, clocks) = (name.clone(), clocks.clone());
            let drift = tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_millis(500));
                loop {
                    tick.tick().await;
                    let offset = started.elapsed().as_secs_f64() * rate;
                    if let Err(error) = clocks.set_offset(&drifting, offset) {
                        tracing::warn!(%error, "cannot move a drifting clock");
                    }
                }
            });
            Ok((
                format!("{name} clock drifts {rate:+.2} s/s"),
                Heal::TrueClock {
                    name,
                    drift: Some(drift),
                },
            ))
        }
        other => anyhow::bail!("{} is not a clock fault", other.name()),
    }
}

/// Puts process `name`'s clock back to the true time, stopping its drift first.
pub(super) async fn true_clock(
    clocks: Option<&FakeClocks>,
    name: &str,
    drift: Option<tokio::task::JoinHandle<()>>,
) -> anyhow::Result<()> {
    if let Some(drift) = drift {
        drift.abort();
        let _ = drift.await;
    }
    let clocks = clocks.ok_or_else(|| anyhow::anyhow!("no fake clocks to put back"))?;
    clocks.set_offset(name, 0.0)?;
    Ok(())
}
