//! Wall-clock seam: the store stamps each record with its append time and reclaims expired
//! entries when the quota is reached, both in unix milliseconds.

use std::time::{SystemTime, UNIX_EPOCH};

/// Source of the current unix time in milliseconds.
pub trait Clock: Send {
    /// Milliseconds since the unix epoch.
    fn now_ms(&self) -> u64;
}

/// The system's wall clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }
}
