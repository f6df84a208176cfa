//! Scoring statistics reported in the twin (`scoring`), so that an operator (and the demo's
//! live view) sees what the model says without subscribing to the stream: totals, the latest
//! score, and per run the first alarm and the first sustained alarm (the first of
//! [`SUSTAINED`] consecutive alarmed samples, the usual detection rule on TEP data).

use crate::scorer::SampleScore;
use serde_json::{Map, Value, json};
use std::collections::BTreeMap;

/// Consecutive alarmed samples that make a sustained alarm.
pub const SUSTAINED: u32 = 3;
/// Runs kept in the report (the oldest are dropped).
pub const MAX_RUNS: usize = 64;
/// Starts of sustained alarm episodes kept per run (the first ones).
pub const MAX_EPISODES: usize = 16;

#[derive(Debug, Default, Clone)]
struct RunStats {
    samples: u64,
    alarms: u64,
    first_alarm: Option<u64>,
    first_sustained: Option<u64>,
    streak: u32,
    streak_start: u64,
    episodes: Vec<u64>,
    order: u64,
}

/// The latest scored sample, kept as plain fields (JSON is built only for a report).
#[derive(Debug, Default, Clone)]
struct Last {
    run: String,
    sample: Option<u64>,
    t2: f32,
    q: f32,
    t2_limit: f64,
    q_limit: f64,
    alarm: bool,
}

/// Running totals.
#[derive(Debug, Default)]
pub struct ScoringStats {
    samples: u64,
    alarms: u64,
    last: Option<Last>,
    runs: BTreeMap<String, RunStats>,
    next_order: u64,
    dirty: bool,
}

impl ScoringStats {
    /// Records one scored sample; `identity` is the carried body (`runId`, `sample`, …).
    /// Allocates only for a run it has not seen.
    pub fn record(&mut self, identity: &Map<String, Value>, s: &SampleScore<'_>) {
        self.samples += 1;
        self.dirty = true;
        if s.alarm {
            self.alarms += 1;
        }
        let run = identity.get("runId").and_then(Value::as_str).unwrap_or("-");
        let sample = identity.get("sample").and_then(Value::as_u64);
        let last = self.last.get_or_insert_with(Last::default);
        if last.run != run {
            run.clone_into(&mut last.run);
        }
        last.sample = sample;
        last.t2 = s.t2;
        last.q = s.q;
        last.t2_limit = s.t2_limit;
        last.q_limit = s.q_limit;
        last.alarm = s.alarm;
        if !self.runs.contains_key(run) {
            if self.runs.len() >= MAX_RUNS
                && let Some(oldest) = self
                    .runs
                    .iter()
                    .min_by_key(|(_, r)| r.order)
                    .map(|(k, _)| k.clone())
            {
                self.runs.remove(&oldest);
            }
            self.next_order += 1;
            self.runs.insert(
                run.to_owned(),
                RunStats {
                    order: self.next_order,
                    ..RunStats::default()
                },
            );
        }
        if let Some(r) = self.runs.get_mut(run) {
            r.samples += 1;
            let idx = sample.unwrap_or(r.samples);
            if s.alarm {
                r.alarms += 1;
                r.first_alarm.get_or_insert(idx);
                if r.streak == 0 {
                    r.streak_start = idx;
                }
                r.streak += 1;
                if r.streak == SUSTAINED {
                    r.first_sustained.get_or_insert(r.streak_start);
                    if r.episodes.len() < MAX_EPISODES {
                        r.episodes.push(r.streak_start);
                    }
                }
            } else {
                r.streak = 0;
            }
        }
    }

    /// The `scoring` report, or `None` when nothing changed since the last call.
    pub fn take_report(&mut self) -> Option<Value> {
        if !self.dirty {
            return None;
        }
        self.dirty = false;
        let runs: Map<String, Value> = self
            .runs
            .iter()
            .map(|(k, r)| {
                (
                    k.clone(),
                    json!({"samples": r.samples, "alarms": r.alarms,
                           "firstAlarmSample": r.first_alarm,
                           "firstSustainedAlarmSample": r.first_sustained,
                           "sustainedAlarmStarts": r.episodes}),
                )
            })
            .collect();
        Some(json!({"scoring": {
            "samples": self.samples, "alarms": self.alarms,
            "last": self.last.as_ref().map(|l| json!({
                "runId": l.run, "sample": l.sample, "t2": l.t2, "q": l.q,
                "t2Limit": l.t2_limit, "qLimit": l.q_limit, "alarm": l.alarm,
            })),
            "runs": runs, "sustainedRule": SUSTAINED,
        }}))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scorer::Top;

    fn score(alarm: bool) -> SampleScore<'static> {
        SampleScore {
            t2: 1.0,
            q: 2.0,
            t2_limit: 3.0,
            q_limit: 4.0,
            t2_alarm: alarm,
            q_alarm: false,
            alarm,
            top: Top::EMPTY,
        }
    }

    fn id(run: &str, sample: u64) -> Map<String, Value> {
        let mut m = Map::new();
        m.insert("runId".into(), json!(run));
        m.insert("sample".into(), json!(sample));
        m
    }

    #[test]
    fn first_alarm_and_first_sustained_alarm_per_run() {
        let mut s = ScoringStats::default();
        let alarms = [false, true, false, true, true, true, false];
        for (i, a) in alarms.iter().enumerate() {
            s.record(&id("r1", i as u64 + 1), &score(*a));
        }
        let r = s.take_report().unwrap();
        let run = &r["scoring"]["runs"]["r1"];
        assert_eq!(run["samples"], 7);
        assert_eq!(run["alarms"], 4);
        assert_eq!(run["firstAlarmSample"], 2);
        assert_eq!(run["firstSustainedAlarmSample"], 4);
        assert_eq!(run["sustainedAlarmStarts"], json!([4]));
        assert_eq!(r["scoring"]["last"]["sample"], 7);
        assert!(s.take_report().is_none(), "no change, no report");
    }

    #[test]
    fn keeps_a_bounded_number_of_runs() {
        let mut s = ScoringStats::default();
        for i in 0..(MAX_RUNS as u64 + 5) {
            s.record(&id(&format!("run{i:03}"), 1), &score(false));
        }
        let r = s.take_report().unwrap();
        let runs = r["scoring"]["runs"].as_object().unwrap();
        assert_eq!(runs.len(), MAX_RUNS);
        assert!(!runs.contains_key("run000"));
    }
}
