//! The safety rules, as pure functions over plain values (no I/O, time passed in).
//!
//! - [`gate`]: whether anything may be written for a message at all (interlock, staleness,
//!   model version) and whether setpoints may be written (advisory-only mode).
//! - [`SetpointGuard::decide`]: what to write to one setpoint: engineering limits (clamp or
//!   refuse), deadband, maximum change per write, maximum change per minute (sliding window).

use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use std::time::{Duration, Instant, SystemTime};

/// What to do with a requested setpoint outside its engineering limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub enum OnViolation {
    /// Write the nearest limit instead.
    #[default]
    Clamp,
    /// Write nothing.
    Refuse,
}

/// The limits of one setpoint, from the twin.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SetpointLimits {
    /// Lowest value that may be written.
    pub low: f64,
    /// Highest value that may be written.
    pub high: f64,
    /// Clamp or refuse a value outside `[low, high]`.
    #[serde(default)]
    pub on_violation: OnViolation,
    /// Largest change of one write (absolute); none = unlimited.
    #[serde(default)]
    pub max_step: Option<f64>,
    /// Largest total change within any 60 s window (sum of absolute changes); none = unlimited.
    #[serde(default)]
    pub max_change_per_minute: Option<f64>,
    /// Requests closer than this to the current value are not written.
    #[serde(default)]
    pub deadband: f64,
}

impl SetpointLimits {
    /// Checks the limits are usable.
    ///
    /// # Errors
    /// A message naming the bad field.
    pub fn validate(&self) -> Result<(), String> {
        if !(self.low.is_finite() && self.high.is_finite() && self.low <= self.high) {
            return Err("low/high: must be finite with low <= high".into());
        }
        if self.max_step.is_some_and(|s| !(s.is_finite() && s > 0.0)) {
            return Err("maxStep: must be > 0".into());
        }
        if self
            .max_change_per_minute
            .is_some_and(|s| !(s.is_finite() && s > 0.0))
        {
            return Err("maxChangePerMinute: must be > 0".into());
        }
        if !(self.deadband.is_finite() && self.deadband >= 0.0) {
            return Err("deadband: must be >= 0".into());
        }
        Ok(())
    }
}

/// Why nothing (or no setpoint) may be written for a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Block {
    /// The DCS's remote-enable interlock is off (or unknown).
    InterlockOff,
    /// The result is older than the bound (or from the future by more than the bound).
    Stale {
        /// How old it is.
        age: Duration,
    },
    /// The model version is not allowed for closed loop.
    ModelVersion(String),
}

impl std::fmt::Display for Block {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::InterlockOff => f.write_str("interlock off"),
            Self::Stale { age } => {
                write!(f, "stale input (age {})", humantime::format_duration(*age))
            }
            Self::ModelVersion(v) => write!(f, "model version {v:?} not allowed for closed loop"),
        }
    }
}

/// What the gate needs to know about a message and the plant.
#[derive(Debug, Clone)]
pub struct GateInput<'a> {
    /// The interlock as last seen by subscription; `None` = unknown (treated as off).
    pub interlock: Option<bool>,
    /// When the result was produced.
    pub produced: SystemTime,
    /// Now.
    pub now: SystemTime,
    /// The staleness bound.
    pub max_age: Duration,
    /// The model version of the result.
    pub model_version: &'a str,
    /// Versions allowed (`"*"` allows any).
    pub allowed_versions: &'a [String],
}

/// Whether anything may be written for this message.
///
/// # Errors
/// The first [`Block`] that applies, in the order staleness, model version, interlock.
pub fn gate(g: &GateInput<'_>) -> Result<(), Block> {
    let age = match g.now.duration_since(g.produced) {
        Ok(a) => a,
        Err(e) => e.duration(),
    };
    if age > g.max_age {
        return Err(Block::Stale { age });
    }
    if !g
        .allowed_versions
        .iter()
        .any(|v| v == "*" || v == g.model_version)
    {
        return Err(Block::ModelVersion(g.model_version.to_owned()));
    }
    if g.interlock != Some(true) {
        return Err(Block::InterlockOff);
    }
    Ok(())
}

/// The outcome for one setpoint request.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Write `value`; `notes` says what was changed on the way (clamped, step-limited, ...).
    Write {
        /// The value to write.
        value: f64,
        /// What the rules changed; empty when the request is written as is.
        notes: Vec<String>,
    },
    /// Write nothing.
    Skip {
        /// Why.
        reason: String,
        /// Whether this is a limit refusal (reported as a violation).
        refused: bool,
    },
}

/// Per-setpoint memory of the changes written, for the per-minute rate limit.
///
/// # Invariants
/// `window` holds (time, |change|) of writes within the last 60 s of the last call, oldest
/// first; their sum never exceeds `max_change_per_minute`.
#[derive(Debug, Clone, Default)]
pub struct SetpointGuard {
    window: VecDeque<(Instant, f64)>,
}

const MINUTE: Duration = Duration::from_secs(60);
const EPS: f64 = 1e-9;

impl SetpointGuard {
    /// A guard with no history.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    fn expire(&mut self, now: Instant) {
        while let Some((t, _)) = self.window.front() {
            if now.saturating_duration_since(*t) >= MINUTE {
                self.window.pop_front();
            } else {
                break;
            }
        }
    }

    /// The change still allowed within the current 60 s window.
    #[must_use]
    pub fn budget(&mut self, limits: &SetpointLimits, now: Instant) -> f64 {
        self.expire(now);
        match limits.max_change_per_minute {
            None => f64::INFINITY,
            Some(max) => (max - self.window.iter().map(|(_, c)| c).sum::<f64>()).max(0.0),
        }
    }

    /// Decides what to write for `requested`, given the DCS's `current` value. Does not
    /// record anything: call [`SetpointGuard::record`] once the write succeeded.
    pub fn decide(
        &mut self,
        limits: &SetpointLimits,
        current: f64,
        requested: f64,
        now: Instant,
    ) -> Decision {
        let mut notes = Vec::new();
        if !requested.is_finite() {
            return Decision::Skip {
                reason: "requested value is not a finite number".into(),
                refused: true,
            };
        }
        let mut target = requested;
        if !(limits.low..=limits.high).contains(&requested) {
            match limits.on_violation {
                OnViolation::Refuse => {
                    return Decision::Skip {
                        reason: format!(
                            "refused: {requested} outside [{}, {}]",
                            limits.low, limits.high
                        ),
                        refused: true,
                    };
                }
                OnViolation::Clamp => {
                    target = requested.clamp(limits.low, limits.high);
                    notes.push(format!(
                        "clamped to {target} (limits [{}, {}])",
                        limits.low, limits.high
                    ));
                }
            }
        }
        let delta = target - current;
        if delta.abs() <= limits.deadband.max(EPS) {
            return Decision::Skip {
                reason: format!("within deadband ({} from current)", delta.abs()),
                refused: false,
            };
        }
        let mut allowed = delta.abs();
        if let Some(step) = limits.max_step
            && allowed > step
        {
            allowed = step;
            notes.push(format!("step limited to {step}"));
        }
        let budget = self.budget(limits, now);
        if allowed > budget {
            allowed = budget;
            notes.push(format!("rate limited (budget {budget} per minute left)"));
        }
        if allowed <= EPS {
            return Decision::Skip {
                reason: "rate limit: no change left in the last minute".into(),
                refused: false,
            };
        }
        let value = (current + allowed.copysign(delta)).clamp(limits.low, limits.high);
        Decision::Write { value, notes }
    }

    /// Records a change that was written.
    pub fn record(&mut self, change: f64, now: Instant) {
        self.expire(now);
        self.window.push_back((now, change.abs()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> SetpointLimits {
        SetpointLimits {
            low: 0.0,
            high: 100.0,
            on_violation: OnViolation::Clamp,
            max_step: Some(5.0),
            max_change_per_minute: Some(12.0),
            deadband: 0.1,
        }
    }

    fn write_value(d: &Decision) -> f64 {
        match d {
            Decision::Write { value, .. } => *value,
            Decision::Skip { reason, .. } => panic!("expected a write, got skip: {reason}"),
        }
    }

    #[test]
    fn clamp_or_refuse_outside_limits() {
        let mut g = SetpointGuard::new();
        let mut l = limits();
        l.max_step = None;
        l.max_change_per_minute = None;
        let now = Instant::now();
        let d = g.decide(&l, 90.0, 150.0, now);
        assert_eq!(write_value(&d), 100.0);
        l.on_violation = OnViolation::Refuse;
        assert!(matches!(
            g.decide(&l, 90.0, 150.0, now),
            Decision::Skip { refused: true, .. }
        ));
        assert!(matches!(
            g.decide(&l, 90.0, -1.0, now),
            Decision::Skip { refused: true, .. }
        ));
        assert!(matches!(
            g.decide(&l, 90.0, f64::NAN, now),
            Decision::Skip { refused: true, .. }
        ));
    }

    #[test]
    fn deadband_skips_small_changes() {
        let mut g = SetpointGuard::new();
        let d = g.decide(&limits(), 50.0, 50.05, Instant::now());
        assert!(matches!(d, Decision::Skip { refused: false, .. }));
        assert_eq!(
            write_value(&g.decide(&limits(), 50.0, 50.5, Instant::now())),
            50.5
        );
    }

    #[test]
    fn step_limit_moves_toward_target() {
        let mut g = SetpointGuard::new();
        assert_eq!(
            write_value(&g.decide(&limits(), 50.0, 80.0, Instant::now())),
            55.0
        );
        assert_eq!(
            write_value(&g.decide(&limits(), 50.0, 20.0, Instant::now())),
            45.0
        );
    }

    #[test]
    fn per_minute_budget_is_never_exceeded_and_recovers() {
        let mut g = SetpointGuard::new();
        let l = limits();
        let t0 = Instant::now();
        let mut current = 50.0;
        let mut total = 0.0;
        for i in 0..10 {
            let now = t0 + Duration::from_secs(i);
            if let Decision::Write { value, .. } = g.decide(&l, current, 90.0, now) {
                g.record(value - current, now);
                total += (value - current).abs();
                current = value;
            }
        }
        assert!((total - 12.0).abs() < 1e-9, "total {total}");
        // A minute after the first writes the budget is back.
        let later = t0 + Duration::from_secs(61);
        assert!(g.budget(&l, later) > 0.0);
        assert!(matches!(
            g.decide(&l, current, 90.0, later),
            Decision::Write { .. }
        ));
    }

    #[test]
    fn gate_checks_staleness_version_and_interlock() {
        let now = SystemTime::now();
        let allowed = vec!["v1".to_string()];
        let mut g = GateInput {
            interlock: Some(true),
            produced: now - Duration::from_secs(1),
            now,
            max_age: Duration::from_secs(10),
            model_version: "v1",
            allowed_versions: &allowed,
        };
        assert_eq!(gate(&g), Ok(()));
        g.interlock = None;
        assert_eq!(gate(&g), Err(Block::InterlockOff));
        g.interlock = Some(false);
        assert_eq!(gate(&g), Err(Block::InterlockOff));
        g.interlock = Some(true);
        g.model_version = "v2";
        assert!(matches!(gate(&g), Err(Block::ModelVersion(_))));
        g.model_version = "v1";
        g.produced = now - Duration::from_secs(11);
        assert!(matches!(gate(&g), Err(Block::Stale { .. })));
        g.produced = now + Duration::from_secs(60);
        assert!(matches!(gate(&g), Err(Block::Stale { .. })));
        let any = vec!["*".to_string()];
        g.produced = now;
        g.allowed_versions = &any;
        g.model_version = "whatever";
        assert_eq!(gate(&g), Ok(()));
    }

    #[test]
    fn limits_validation() {
        assert!(limits().validate().is_ok());
        let mut l = limits();
        l.low = 200.0;
        assert!(l.validate().is_err());
        let mut l = limits();
        l.max_step = Some(0.0);
        assert!(l.validate().is_err());
    }
}
