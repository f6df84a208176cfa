//! [`HubStats`]: a point-in-time view of queues, connections and counters.

use serde::Serialize;
use std::collections::BTreeMap;
use std::time::Duration;

/// One durable queue (endpoint and priority).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct QueueStats {
    /// `module/<m>/inputs/<i>` or `$upstream`.
    pub endpoint: String,
    /// 0 (highest) to 9.
    pub priority: u8,
    /// Entries not yet acknowledged (may include expired ones until the next sweep).
    pub len: u64,
    /// Age of the oldest entry.
    #[serde(with = "humantime_serde")]
    pub oldest_age: Option<Duration>,
}

/// What [`crate::Hub::stats`] returns.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
pub struct HubStats {
    /// Non-empty queues, sorted by endpoint then priority.
    pub queues: Vec<QueueStats>,
    /// Bytes held by the durable store.
    pub store_bytes: u64,
    /// Modules connected now, sorted.
    pub connected_modules: Vec<String>,
    /// Telemetry messages received from modules (routed or not).
    pub messages_received: u64,
    /// Messages delivered to module inputs and acknowledged by them.
    pub messages_sent: u64,
    /// Connections refused at CONNECT.
    pub auth_refused: u64,
    /// Publishes and subscriptions refused by the topic ACL.
    pub acl_refused: u64,
    /// Publishes acknowledged but not routable (bad topic, too large) and corrupt records.
    pub dead_letters: u64,
    /// Messages no route matched.
    pub unmatched: u64,
    /// Messages dropped from queues when their time to live ran out.
    pub ttl_expired: u64,
    /// Messages not acknowledged because the store was full or failed.
    pub store_refused: u64,
    /// Messages queued per route name.
    pub routed: BTreeMap<String, u64>,
}

impl HubStats {
    /// The total length of the queues of `endpoint` over all priorities.
    #[must_use]
    pub fn queue_len(&self, endpoint: &str) -> u64 {
        self.queues
            .iter()
            .filter(|q| q.endpoint == endpoint)
            .map(|q| q.len)
            .sum()
    }
}
