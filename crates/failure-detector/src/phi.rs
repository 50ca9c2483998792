//! The phi accrual suspicion level.
//!
//! The detector keeps a sliding window of the intervals between heartbeat
//! arrivals and models them as a normal distribution. Given the time since the
//! last arrival, Δ, the suspicion is φ = −log₁₀ P(an interval lasts longer
//! than Δ): φ = 1 means a 10 % chance that the process is still fine and its
//! heartbeat just late, φ = 8 one in a hundred million. The tail probability
//! uses the logistic approximation of the normal CDF that Akka and Cassandra
//! use, which stays finite where `erfc` would underflow to a φ of infinity.

use std::collections::VecDeque;

/// Settings of a [`PhiAccrual`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PhiConfig {
    /// How many recent intervals are kept.
    pub window: usize,
    /// The expected interval before any has been measured, in milliseconds.
    pub first_interval_ms: f64,
    /// The standard deviation never goes below this, in milliseconds: a
    /// perfectly regular history must not make one slightly late heartbeat
    /// look like certain death.
    pub min_std_dev_ms: f64,
}

impl PhiConfig {
    /// Defaults for heartbeats every `interval_ms`: a window of 100, and a
    /// minimum deviation of a fifth of the interval.
    pub fn for_interval(interval_ms: u64) -> Self {
        let interval = interval_ms as f64;
        Self {
            window: 100,
            first_interval_ms: interval,
            min_std_dev_ms: interval / 5.0,
        }
    }
}

/// The arrival history of one monitored process.
#[derive(Debug, Clone)]
pub struct PhiAccrual {
    config: PhiConfig,
    intervals: VecDeque<f64>,
    last_arrival_ms: Option<u64>,
}

impl PhiAccrual {
    /// A detector with no arrivals yet.
    pub fn new(config: PhiConfig) -> Self {
        // Seeded as Akka does: two intervals around the expected one, so that the
        // first real interval is judged against a sensible distribution.
        let estimate = config.first_interval_ms;
        let intervals = VecDeque::from([estimate - estimate / 4.0, estimate + estimate / 4.0]);
        Self {
            config,
            intervals,
            last_arrival_ms: None,
        }
    }

    /// Records a heartbeat that arrived at `now_ms`.
    pub fn heartbeat(&mut self, now_ms: u64) {
        if let Some(last) = self.last_arrival_ms {
            // Arrivals out of order (a late reply to an earlier probe) carry no interval.
            if now_ms <= last {
                return;
            }
            if self.intervals.len() == self.config.window.max(1) {
                self.intervals.pop_front();
            }
            self.intervals.push_back((now_ms - last) as f64);
        }
        self.last_arrival_ms = Some(now_ms);
    }

    /// When the last heartbeat arrived, if any has.
    pub fn last_arrival_ms(&self) -> Option<u64> {
        self.last_arrival_ms
    }

    /// The mean and (floored) standard deviation of the intervals, in milliseconds.
    pub fn distribution(&self) -> (f64, f64) {
        let n = self.intervals.len() as f64;
        let mean = self.intervals.iter().sum::<f64>() / n;
        let variance = self
            .intervals
            .iter()
            .map(|i| (i - mean) * (i - mean))
            .sum::<f64>()
            / n;
        (mean, variance.sqrt().max(self.config.min_std_dev_ms))
    }

    /// The suspicion level at `now_ms`; 0 before the first heartbeat.
    pub fn phi(&self, now_ms: u64) -> f64 {
        let Some(last) = self.last_arrival_ms else {
            return 0.0;
        };
        let (mean, std_dev) = self.distribution();
        phi(now_ms.saturating_sub(last) as f64, mean, std_dev)
    }
}

/// φ for `elapsed` ms since the last heartbeat, with intervals of `mean` ± `std_dev` ms.
pub fn phi(elapsed: f64, mean: f64, std_dev: f64) -> f64 {
    let y = (elapsed - mean) / std_dev;
    let e = (-y * (1.5976 + 0.070566 * y * y)).exp();
    let later = if elapsed > mean {
        e / (1.0 + e)
    } else {
        1.0 - 1.0 / (1.0 + e)
    };
    // The probability can round to 0 only far past any threshold; cap φ there.
    if later <= f64::MIN_POSITIVE {
        return f64::MAX.log10();
    }
    -later.log10()
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-3
    }

    #[test]
    fn phi_matches_values_worked_out_by_hand() {
        // Δ = μ: y = 0, e = 1, P = 1/2, φ = log₁₀ 2.
        assert!(close(phi(1000.0, 1000.0, 100.0), std::f64::consts::LOG10_2));
        // Δ = μ + σ: y = 1, e = exp(−(1.5976 + 0.070566)) = exp(−1.668166) = 0.188590,
        // P = e/(1+e) = 0.158664, φ = 0.799508.
        assert!(close(phi(1100.0, 1000.0, 100.0), 0.799508));
        // Δ = μ + 2σ: y = 2, e = exp(−2(1.5976 + 0.282264)) = exp(−3.759728) = 0.023291,
        // P = 0.022761, φ = 1.642828 (the exact normal tail gives 1.6430).
        assert!(close(phi(1200.0, 1000.0, 100.0), 1.642828));
        // Δ = μ + 5σ: y = 5, e = exp(−5(1.5976 + 1.76415)) = exp(−16.80875) = 5.0119e−8,
        // φ = −log₁₀ 5.0119e−8 = 7.29995.
        assert!(close(phi(1500.0, 1000.0, 100.0), 7.299947));
        // Δ = μ − 2σ: y = −2, e = exp(3.759728) = 42.9353, P = 1 − 1/43.9353 = 0.977239,
        // φ = 0.009999.
        assert!(close(phi(800.0, 1000.0, 100.0), 0.009999));
    }

    #[test]
    fn regular_heartbeats_keep_phi_low_and_silence_raises_it() {
        let mut detector = PhiAccrual::new(PhiConfig::for_interval(500));
        assert_eq!(
            detector.phi(10_000),
            0.0,
            "nothing to judge before the first heartbeat"
        );
        for beat in 0..20 {
            detector.heartbeat(beat * 500);
        }
        let last = 19 * 500;
        assert!(detector.phi(last + 500) < 1.0);
        // With every interval 500 ms the deviation is the floor, 100 ms: φ passes
        // 8 a little after μ + 5.6σ = 1060 ms of silence.
        assert!(detector.phi(last + 1000) < 8.0);
        assert!(detector.phi(last + 1100) > 8.0);
        assert!(detector.phi(last + 5000) > 100.0);
    }

    #[test]
    fn irregular_heartbeats_widen_the_distribution() {
        let mut steady = PhiAccrual::new(PhiConfig::for_interval(500));
        let mut jittery = PhiAccrual::new(PhiConfig::for_interval(500));
        let mut t_steady = 0;
        let mut t_jittery = 0;
        for beat in 0..50 {
            t_steady += 500;
            t_jittery += if beat % 2 == 0 { 200 } else { 800 };
            steady.heartbeat(t_steady);
            jittery.heartbeat(t_jittery);
        }
        assert!(jittery.phi(t_jittery + 1200) < steady.phi(t_steady + 1200));
    }

    #[test]
    fn the_window_forgets_old_intervals() {
        let config = PhiConfig {
            window: 4,
            ..PhiConfig::for_interval(100)
        };
        let mut detector = PhiAccrual::new(config);
        let mut now = 0;
        for _ in 0..10 {
            now += 1000;
            detector.heartbeat(now);
        }
        assert!(
            close(detector.distribution().0, 1000.0),
            "the seed intervals are gone"
        );
    }

    proptest! {
        #[test]
        fn phi_never_falls_while_silence_grows(
            intervals in proptest::collection::vec(1u64..2000, 1..50),
            a in 0u64..20_000,
            b in 0u64..20_000,
        ) {
            let mut detector = PhiAccrual::new(PhiConfig::for_interval(500));
            let mut now = 0;
            for interval in intervals {
                now += interval;
                detector.heartbeat(now);
            }
            let (early, late) = (a.min(b), a.max(b));
            let (phi_early, phi_late) = (detector.phi(now + early), detector.phi(now + late));
            prop_assert!(phi_early <= phi_late + 1e-9, "{phi_early} > {phi_late}");
            prop_assert!(phi_early.is_finite() && phi_early >= 0.0);
        }
    }
}
