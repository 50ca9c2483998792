//! A hybrid logical clock: physical milliseconds with a logical counter below them.
//!
//! Timestamps are `wall_ms << 16 | logical`. A timestamp is never below the
//! wall clock, never below one the clock has observed, and strictly above the
//! previous one it issued, so a write stamped after a replica has seen another
//! write gets a higher timestamp even when the wall clocks disagree
//! (Kulkarni et al., "Logical Physical Clocks", 2014).

/// Bits of a timestamp below the milliseconds.
const LOGICAL_BITS: u32 = 16;

/// The clock's state: the highest timestamp issued or observed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HybridClock {
    last: u64,
}

impl HybridClock {
    /// A clock that has issued and seen nothing.
    pub fn new() -> Self {
        Self::default()
    }

    /// The timestamp of milliseconds `wall_ms` with logical part zero.
    pub fn from_wall(wall_ms: u64) -> u64 {
        wall_ms.saturating_mul(1 << LOGICAL_BITS)
    }

    /// The milliseconds part of a timestamp.
    pub fn wall_ms(timestamp: u64) -> u64 {
        timestamp >> LOGICAL_BITS
    }

    /// Issues a timestamp above everything seen, at least the wall clock `wall_ms`.
    pub fn tick(&mut self, wall_ms: u64) -> u64 {
        self.last = Self::from_wall(wall_ms).max(self.last.saturating_add(1));
        self.last
    }

    /// Takes note of a timestamp another node issued.
    pub fn observe(&mut self, timestamp: u64) {
        self.last = self.last.max(timestamp);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_follow_the_wall_clock_and_never_repeat() {
        let mut clock = HybridClock::new();
        let a = clock.tick(1000);
        assert_eq!(a, HybridClock::from_wall(1000));
        let b = clock.tick(1000);
        assert_eq!(b, a + 1);
        // The wall clock stepped back: still strictly increasing.
        let c = clock.tick(900);
        assert!(c > b);
        assert_eq!(HybridClock::wall_ms(c), 1000);
        assert_eq!(clock.tick(2000), HybridClock::from_wall(2000));
    }

    #[test]
    fn a_timestamp_issued_after_observing_one_is_higher_even_with_a_slow_wall_clock() {
        let mut ahead = HybridClock::new();
        let seen = ahead.tick(5000);
        let mut behind = HybridClock::new();
        behind.observe(seen);
        assert!(behind.tick(1000) > seen);
    }
}
