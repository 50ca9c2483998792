//! When faults happen: a periodic schedule, or a scripted scenario from a file.

use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

use crate::nemesis::FaultKind;

/// One fault of a schedule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Step {
    /// When it starts, from the beginning of the run.
    pub at: Duration,
    /// What it is.
    pub fault: FaultKind,
    /// How long until it is healed.
    pub hold: Duration,
}

/// A fault every `interval` from `quiet` on, cycling through `kinds`, while the run lasts.
pub fn periodic(
    kinds: &[FaultKind],
    quiet: Duration,
    interval: Duration,
    hold: Duration,
    duration: Duration,
) -> Vec<Step> {
    let mut steps = Vec::new();
    let mut at = quiet;
    for fault in kinds.iter().cycle() {
        // Leave the last fault time to heal before the clients stop.
        if at + hold >= duration || interval.is_zero() {
            break;
        }
        steps.push(Step {
            at,
            fault: *fault,
            hold,
        });
        at += interval;
    }
    steps
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ScenarioFile {
    faults: Vec<ScenarioStep>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ScenarioStep {
    at_s: f64,
    fault: FaultKind,
    #[serde(default = "default_hold")]
    hold_s: f64,
}

fn default_hold() -> f64 {
    3.0
}

/// Why a scenario file was refused.
#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    /// The file could not be read.
    #[error("cannot read scenario {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The file is not a scenario.
    #[error("scenario {path} is invalid: {reason}")]
    Invalid {
        /// The file.
        path: String,
        /// What is wrong.
        reason: String,
    },
}

/// Reads a scripted scenario; steps must not overlap, so one fault is healed before the next.
pub fn load(path: &Path) -> Result<Vec<Step>, ScenarioError> {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| ScenarioError::Read {
        path: shown.clone(),
        source,
    })?;
    parse(&text).map_err(|reason| ScenarioError::Invalid {
        path: shown,
        reason,
    })
}

/// Parses a scenario's JSON text.
pub fn parse(text: &str) -> Result<Vec<Step>, String> {
    let file: ScenarioFile = serde_json::from_str(text).map_err(|e| e.to_string())?;
    let mut steps = Vec::new();
    let mut free_from = 0.0;
    for (i, step) in file.faults.iter().enumerate() {
        if !(step.at_s.is_finite()
            && step.hold_s.is_finite()
            && step.at_s >= 0.0
            && step.hold_s >= 0.0)
        {
            return Err(format!(
                "fault {i}: at_s and hold_s must be finite and not negative"
            ));
        }
        if step.at_s < free_from {
            return Err(format!(
                "fault {i} starts at {} s, before the previous one is healed at {free_from} s",
                step.at_s
            ));
        }
        free_from = step.at_s + step.hold_s;
        steps.push(Step {
            at: Duration::from_secs_f64(step.at_s),
            fault: step.fault,
            hold: Duration::from_secs_f64(step.hold_s),
        });
    }
    Ok(steps)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_periodic_schedule_cycles_through_the_faults_and_ends_in_time() {
        let kinds = [FaultKind::KillStorage, FaultKind::KillMetadLeader];
        let steps = periodic(
            &kinds,
            Duration::from_secs(5),
            Duration::from_secs(7),
            Duration::from_secs(3),
            Duration::from_secs(30),
        );
        let at: Vec<u64> = steps.iter().map(|s| s.at.as_secs()).collect();
        assert_eq!(at, [5, 12, 19, 26]);
        assert_eq!(steps[1].fault, FaultKind::KillMetadLeader);
        assert_eq!(steps[2].fault, FaultKind::KillStorage);
    }

    #[test]
    fn scenarios_parse_and_bad_ones_are_refused_with_the_reason() {
        let steps = parse(
            r#"{"faults":[{"at_s":2,"fault":"kill-metad-leader","hold_s":1},{"at_s":4,"fault":"pause-storage"}]}"#,
        )
        .expect("valid");
        assert_eq!(steps.len(), 2);
        assert_eq!(steps[1].hold, Duration::from_secs(3));
        for (bad, reason) in [
            (
                r#"{"faults":[{"at_s":1,"fault":"nuke"}]}"#,
                "unknown variant",
            ),
            (
                r#"{"faults":[{"at_s":-1,"fault":"kill-storage"}]}"#,
                "not negative",
            ),
            (
                r#"{"faults":[{"at_s":1,"fault":"kill-storage","hold_s":5},{"at_s":2,"fault":"kill-storage"}]}"#,
                "before the previous one is healed",
            ),
            (r#"{"steps":[]}"#, "unknown field"),
        ] {
            let error = parse(bad).expect_err(bad);
            assert!(error.contains(reason), "{bad}: {error}");
        }
    }
}
