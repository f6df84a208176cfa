//! Hot swap: which model scores, and when a candidate may replace it. Pure logic, generic over
//! the model type so it can be tested without ONNX Runtime.
//!
//! A verified candidate either replaces the live model at once (shadow of 0 samples) or first
//! scores the same inputs as the live model for `samples` samples; it is promoted when the
//! fraction of samples on which the two disagree about the alarm flag is at most
//! `max_disagreement`, otherwise refused. Every batch is scored by exactly one live model and
//! a promotion takes effect between batches, so a swap neither loses nor duplicates a message.

use serde::Serialize;
use std::time::SystemTime;

/// How a candidate is tried before promotion (twin `model.shadow`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ShadowPolicy {
    /// Samples the candidate shadows the live model for; 0 promotes at once.
    pub samples: u64,
    /// Largest fraction (0..=1) of shadowed samples whose alarm flags may differ.
    pub max_disagreement: f64,
}

impl ShadowPolicy {
    /// Promote at once, no shadowing.
    pub const IMMEDIATE: Self = Self {
        samples: 0,
        max_disagreement: 0.0,
    };
}

/// What happened to a candidate.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase", tag = "status")]
pub enum CandidateStatus {
    /// Running beside the live model.
    Shadowing {
        /// Candidate version.
        version: String,
        /// Samples compared so far.
        shadowed: u64,
        /// Samples whose alarm flags differed.
        disagreements: u64,
        /// Samples needed.
        required: u64,
    },
    /// Promoted; it is now the live model.
    Promoted {
        /// Its version.
        version: String,
        /// Why (e.g. the agreement reached).
        reason: String,
    },
    /// Refused; the live model keeps scoring.
    Refused {
        /// Its version.
        version: String,
        /// Why.
        reason: String,
    },
}

struct Candidate<M> {
    model: M,
    version: String,
    policy: ShadowPolicy,
    shadowed: u64,
    disagreements: u64,
}

/// The live model, an optional candidate in shadow, and the last candidate outcome.
///
/// # Invariants
/// There is always exactly one live model. A candidate exists only while shadowing; its
/// `shadowed >= disagreements`. `status` describes the latest candidate (shadowing, promoted or
/// refused) or is `None` when there never was one.
pub struct Swap<M> {
    live: M,
    live_version: String,
    live_since: SystemTime,
    live_reason: String,
    candidate: Option<Candidate<M>>,
    status: Option<CandidateStatus>,
}

impl<M> std::fmt::Debug for Swap<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Swap")
            .field("live_version", &self.live_version)
            .field("status", &self.status)
            .finish_non_exhaustive()
    }
}

impl<M> Swap<M> {
    /// Starts with a verified model.
    pub fn new(model: M, version: impl Into<String>, now: SystemTime) -> Self {
        Self {
            live: model,
            live_version: version.into(),
            live_since: now,
            live_reason: "initial model".into(),
            candidate: None,
            status: None,
        }
    }

    /// The model that scores.
    pub fn live_mut(&mut self) -> &mut M {
        &mut self.live
    }

    /// The model that scores.
    pub fn live(&self) -> &M {
        &self.live
    }

    /// Its version.
    #[must_use]
    pub fn live_version(&self) -> &str {
        &self.live_version
    }

    /// When it started scoring.
    #[must_use]
    pub fn live_since(&self) -> SystemTime {
        self.live_since
    }

    /// Why it scores (initial model, or how it was promoted).
    #[must_use]
    pub fn live_reason(&self) -> &str {
        &self.live_reason
    }

    /// The candidate in shadow, if any.
    pub fn candidate_mut(&mut self) -> Option<&mut M> {
        self.candidate.as_mut().map(|c| &mut c.model)
    }

    /// The candidate's version, if one is shadowing.
    #[must_use]
    pub fn candidate_version(&self) -> Option<&str> {
        self.candidate.as_ref().map(|c| c.version.as_str())
    }

    /// The latest candidate outcome.
    #[must_use]
    pub fn status(&self) -> Option<&CandidateStatus> {
        self.status.as_ref()
    }

    /// Offers a verified candidate. With a shadow policy of 0 samples it becomes live at once;
    /// otherwise it starts shadowing, replacing any candidate already shadowing (that one is
    /// refused as superseded). Returns the new status.
    pub fn offer(
        &mut self,
        model: M,
        version: impl Into<String>,
        policy: ShadowPolicy,
        now: SystemTime,
    ) -> CandidateStatus {
        let version = version.into();
        if let Some(old) = self.candidate.take() {
            tracing::info!(old = %old.version, new = %version, "Shadowing candidate superseded.");
        }
        if policy.samples == 0 {
            self.promote(
                model,
                version,
                "promoted without shadowing (shadow samples = 0)".into(),
                now,
            )
        } else {
            let status = CandidateStatus::Shadowing {
                version: version.clone(),
                shadowed: 0,
                disagreements: 0,
                required: policy.samples,
            };
            self.status = Some(status.clone());
            self.candidate = Some(Candidate {
                model,
                version,
                policy,
                shadowed: 0,
                disagreements: 0,
            });
            status
        }
    }

    /// Records that a candidate was refused before it could shadow (verification failed), or
    /// while shadowing (e.g. it failed to score): the candidate, if shadowing, is dropped.
    pub fn refuse(
        &mut self,
        version: impl Into<String>,
        reason: impl Into<String>,
    ) -> CandidateStatus {
        let version = version.into();
        if self
            .candidate
            .as_ref()
            .is_some_and(|c| c.version == version)
        {
            self.candidate = None;
        }
        let status = CandidateStatus::Refused {
            version,
            reason: reason.into(),
        };
        self.status = Some(status.clone());
        status
    }

    /// Compares the alarm flags of the live model and the candidate on the same samples. When
    /// the candidate has shadowed enough samples it is promoted or refused, and the new status
    /// is returned; otherwise `None`. Without a candidate this does nothing.
    pub fn observe(
        &mut self,
        live_alarms: &[bool],
        candidate_alarms: &[bool],
        now: SystemTime,
    ) -> Option<CandidateStatus> {
        let c = self.candidate.as_mut()?;
        if live_alarms.len() != candidate_alarms.len() {
            let version = c.version.clone();
            let reason = format!(
                "candidate returned {} results for {} samples",
                candidate_alarms.len(),
                live_alarms.len()
            );
            return Some(self.refuse(version, reason));
        }
        c.shadowed += live_alarms.len() as u64;
        c.disagreements += live_alarms
            .iter()
            .zip(candidate_alarms)
            .filter(|(a, b)| a != b)
            .count() as u64;
        if c.shadowed < c.policy.samples {
            self.status = Some(CandidateStatus::Shadowing {
                version: c.version.clone(),
                shadowed: c.shadowed,
                disagreements: c.disagreements,
                required: c.policy.samples,
            });
            return None;
        }
        #[allow(clippy::cast_precision_loss)]
        let rate = c.disagreements as f64 / c.shadowed as f64;
        let summary = format!(
            "alarm flags disagreed on {} of {} shadowed samples ({:.2} %, tolerance {:.2} %)",
            c.disagreements,
            c.shadowed,
            100.0 * rate,
            100.0 * c.policy.max_disagreement
        );
        let c = self.candidate.take()?;
        if rate <= c.policy.max_disagreement {
            Some(self.promote(
                c.model,
                c.version,
                format!("promoted after shadowing: {summary}"),
                now,
            ))
        } else {
            Some(self.refuse(c.version, format!("refused after shadowing: {summary}")))
        }
    }

    fn promote(
        &mut self,
        model: M,
        version: String,
        reason: String,
        now: SystemTime,
    ) -> CandidateStatus {
        tracing::info!(from = %self.live_version, to = %version, %reason, "Model promoted.");
        self.live = model;
        self.live_version = version.clone();
        self.live_since = now;
        self.live_reason = reason.clone();
        self.candidate = None;
        let status = CandidateStatus::Promoted { version, reason };
        self.status = Some(status.clone());
        status
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn t(s: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(s)
    }

    fn policy(samples: u64, max: f64) -> ShadowPolicy {
        ShadowPolicy {
            samples,
            max_disagreement: max,
        }
    }

    #[test]
    fn immediate_offer_promotes() {
        let mut s = Swap::new("a", "1", t(0));
        let st = s.offer("b", "2", ShadowPolicy::IMMEDIATE, t(5));
        assert!(matches!(st, CandidateStatus::Promoted { ref version, .. } if version == "2"));
        assert_eq!(*s.live(), "b");
        assert_eq!(s.live_version(), "2");
        assert_eq!(s.live_since(), t(5));
        assert!(s.candidate_version().is_none());
    }

    #[test]
    fn shadow_agreeing_is_promoted_only_after_n_samples() {
        let mut s = Swap::new("a", "1", t(0));
        s.offer("b", "2", policy(4, 0.25), t(1));
        assert_eq!(s.candidate_version(), Some("2"));
        assert!(s.observe(&[true, false], &[true, false], t(2)).is_none());
        assert_eq!(*s.live(), "a", "still shadowing");
        assert!(matches!(
            s.status(),
            Some(CandidateStatus::Shadowing {
                shadowed: 2,
                disagreements: 0,
                required: 4,
                ..
            })
        ));
        // One disagreement of 4 = 25 % <= 25 %: promoted.
        let st = s.observe(&[true, false], &[true, true], t(3));
        assert!(
            matches!(st, Some(CandidateStatus::Promoted { ref version, .. }) if version == "2"),
            "{st:?}"
        );
        assert_eq!(*s.live(), "b");
        assert_eq!(s.live_since(), t(3));
        assert!(s.live_reason().contains("1 of 4"), "{}", s.live_reason());
        assert!(s.candidate_mut().is_none());
    }

    #[test]
    fn shadow_disagreeing_is_refused_and_live_keeps_scoring() {
        let mut s = Swap::new("a", "1", t(0));
        s.offer("b", "2", policy(3, 0.1), t(1));
        let st = s.observe(&[true, false, false], &[false, false, true], t(2));
        match st {
            Some(CandidateStatus::Refused { version, reason }) => {
                assert_eq!(version, "2");
                assert!(reason.contains("2 of 3"), "{reason}");
            }
            other => panic!("expected refusal, got {other:?}"),
        }
        assert_eq!(*s.live(), "a");
        assert_eq!(s.live_version(), "1");
        assert_eq!(s.live_since(), t(0));
        assert!(s.candidate_version().is_none());
        // Further observations without a candidate do nothing.
        assert!(s.observe(&[true], &[false], t(3)).is_none());
    }

    #[test]
    fn verification_refusal_keeps_live_and_reports_reason() {
        let mut s = Swap::new("a", "1", t(0));
        let st = s.refuse("2", "sha256 mismatch");
        assert_eq!(
            st,
            CandidateStatus::Refused {
                version: "2".into(),
                reason: "sha256 mismatch".into()
            }
        );
        assert_eq!(*s.live(), "a");
    }

    #[test]
    fn new_candidate_supersedes_shadowing_one() {
        let mut s = Swap::new("a", "1", t(0));
        s.offer("b", "2", policy(10, 0.0), t(1));
        s.observe(&[true; 5], &[true; 5], t(2));
        s.offer("c", "3", policy(2, 0.0), t(3));
        assert_eq!(s.candidate_version(), Some("3"));
        assert!(
            s.observe(&[false], &[false], t(4)).is_none(),
            "count restarted for the new candidate"
        );
        let st = s.observe(&[false], &[false], t(5));
        assert!(
            matches!(st, Some(CandidateStatus::Promoted { ref version, .. }) if version == "3")
        );
        assert_eq!(*s.live(), "c");
    }

    #[test]
    fn mismatched_result_count_refuses_candidate() {
        let mut s = Swap::new("a", "1", t(0));
        s.offer("b", "2", policy(2, 1.0), t(1));
        let st = s.observe(&[true, true], &[true], t(2));
        assert!(matches!(st, Some(CandidateStatus::Refused { .. })));
        assert_eq!(*s.live(), "a");
    }

    #[test]
    fn status_serializes_with_tag() {
        let st = CandidateStatus::Refused {
            version: "2".into(),
            reason: "x".into(),
        };
        let v = serde_json::to_value(&st).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"status": "refused", "version": "2", "reason": "x"})
        );
    }
}
