//! Replay pacing as pure functions.

use std::time::Duration;

/// How long after the first sample of a run a sample is due, given the simulated offsets of
/// the first sample and of this one and the speed-up factor. `None` when `speed` is 0 (or not
/// a positive finite number): send as fast as the hub accepts. A sample whose offset is
/// before the first one is due at once.
#[must_use]
pub fn due_after(first_offset: Duration, offset: Duration, speed: f64) -> Option<Duration> {
    if !(speed.is_finite() && speed > 0.0) {
        return None;
    }
    let sim = offset.saturating_sub(first_offset);
    Some(Duration::try_from_secs_f64(sim.as_secs_f64() / speed).unwrap_or(Duration::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn speed_zero_means_unpaced() {
        assert_eq!(
            due_after(Duration::ZERO, Duration::from_secs(180), 0.0),
            None
        );
        assert_eq!(
            due_after(Duration::ZERO, Duration::from_secs(180), f64::NAN),
            None
        );
        assert_eq!(
            due_after(Duration::ZERO, Duration::from_secs(180), -1.0),
            None
        );
    }

    #[test]
    fn speed_divides_simulated_time() {
        let p = Duration::from_secs(180);
        // Real time: sample 3 is two periods after sample 1.
        assert_eq!(due_after(p, p * 3, 1.0), Some(Duration::from_secs(360)));
        // 60× faster: a 3-minute period becomes 3 seconds.
        assert_eq!(due_after(p, p * 3, 60.0), Some(Duration::from_secs(6)));
        // Slower than real time works too.
        assert_eq!(
            due_after(Duration::ZERO, p, 0.5),
            Some(Duration::from_secs(360))
        );
        // The first sample is due at once; time going backwards is due at once.
        assert_eq!(due_after(p, p, 60.0), Some(Duration::ZERO));
        assert_eq!(due_after(p * 2, p, 60.0), Some(Duration::ZERO));
    }
}
