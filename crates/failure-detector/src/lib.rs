//! Failure detection as pure logic: no clock, no I/O; time comes in as milliseconds.
//!
//! - [`phi`]: the phi accrual suspicion level of one monitored process
//!   (Hayashibara et al., "The φ Accrual Failure Detector", 2004).
//! - [`judge`]: turning suspicion levels into node states (up, suspect, down)
//!   with a threshold and a grace period.

pub mod judge;
pub mod phi;

pub use judge::{Judge, JudgeConfig, Transition};
pub use phi::{PhiAccrual, PhiConfig};
