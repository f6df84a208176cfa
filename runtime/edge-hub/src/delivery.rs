//! Delivery: from a module's input queues to its connection, at least once.
//!
//! Each connection of a module that subscribed to its inputs runs one delivery task. It reads
//! the module's queues (`module/<m>/inputs/*`) through the store thread, highest priority
//! first and in sequence order within a queue, publishes each entry as QoS 1 on
//! `devices/{d}/modules/{m}/inputs/{input}/{bag}`, and keeps at most `max_inflight` of them
//! unacknowledged. An entry that was published at QoS 0 (flagged in its record) is delivered
//! at QoS 0, as MQTT does, and acknowledged in the store once handed to the connection; it
//! takes no room in the window. A PUBACK acknowledges the entry in the store, in queue order, so an entry
//! leaves the store only after the module took it. A new connection starts reading from the
//! oldest unacknowledged entry again, so a module that comes back gets its backlog in order
//! (and may see a message twice: at least once).
//!
//! The task sleeps until woken: by ingest when a batch added to the module's queues, by the
//! connection when the inputs subscription arrives, or by a PUBACK freeing the window.
//!
//! # Invariants
//! - Per queue, entries are published in increasing sequence order, and store acks are issued
//!   in that same order (an entry is acked only after every earlier in-flight one was).
//! - At most `max_inflight` publishes are unacknowledged on one connection.

use crate::Inner;
use crate::metrics::DeadLetter;
use crate::registry::Conn;
use crate::store::{QEntry, QKey};
use edge_core::message::SysProp;
use edge_core::{Message, topic};
use rumqttc::mqttbytes::QoS;
use rumqttc::mqttbytes::v4::{Packet, Publish};
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use tokio::sync::mpsc;

/// The in-flight window of one connection.
#[derive(Debug)]
pub(crate) struct Window {
    max: usize,
    inflight: HashMap<u16, (QKey, u64)>,
    /// Per queue, sequence numbers sent and not yet acked in the store, with an "acked by the
    /// module" flag.
    order: HashMap<QKey, VecDeque<(u64, bool)>>,
    cursors: HashMap<QKey, u64>,
    next_pkid: u16,
}

impl Window {
    pub(crate) fn new(max: usize) -> Self {
        Self {
            max: max.clamp(1, usize::from(u16::MAX) - 1),
            inflight: HashMap::new(),
            order: HashMap::new(),
            cursors: HashMap::new(),
            next_pkid: 0,
        }
    }

    /// Publishes in flight.
    pub(crate) fn inflight(&self) -> usize {
        self.inflight.len()
    }

    /// Room left in the window.
    pub(crate) fn free(&self) -> usize {
        self.max - self.inflight.len()
    }

    /// Whether the window is at most half full (time to read more).
    pub(crate) fn low(&self) -> bool {
        self.inflight.len() <= self.max / 2
    }

    /// Where each queue's next read starts.
    pub(crate) fn cursors(&self) -> Vec<(QKey, u64)> {
        self.cursors.iter().map(|(k, s)| (k.clone(), *s)).collect()
    }

    /// Records a publish of `seq` of `key` and returns its packet id.
    pub(crate) fn track(&mut self, key: QKey, seq: u64) -> u16 {
        loop {
            self.next_pkid = self.next_pkid.wrapping_add(1);
            if self.next_pkid != 0 && !self.inflight.contains_key(&self.next_pkid) {
                break;
            }
        }
        self.cursors.insert(key.clone(), seq);
        self.order
            .entry(key.clone())
            .or_default()
            .push_back((seq, false));
        self.inflight.insert(self.next_pkid, (key, seq));
        self.next_pkid
    }

    /// Records an entry that is skipped (undecodable): it is acked like a delivered one.
    pub(crate) fn skip(&mut self, key: QKey, seq: u64, ready: &mut Vec<(QKey, u64)>) {
        self.cursors.insert(key.clone(), seq);
        self.order
            .entry(key.clone())
            .or_default()
            .push_back((seq, true));
        self.drain_ready(&key, ready);
    }

    /// Handles a PUBACK; store acks that became ready are appended to `ready`.
    pub(crate) fn on_puback(&mut self, pkid: u16, ready: &mut Vec<(QKey, u64)>) {
        let Some((key, seq)) = self.inflight.remove(&pkid) else {
            return;
        };
        if let Some(slot) = self
            .order
            .get_mut(&key)
            .and_then(|q| q.iter_mut().find(|(s, _)| *s == seq))
        {
            slot.1 = true;
        }
        self.drain_ready(&key, ready);
    }

    fn drain_ready(&mut self, key: &QKey, ready: &mut Vec<(QKey, u64)>) {
        if let Some(q) = self.order.get_mut(key) {
            while let Some(&(seq, true)) = q.front() {
                q.pop_front();
                ready.push((key.clone(), seq));
            }
        }
    }
}

/// The delivery task of one connection of `module`.
pub(crate) async fn run(
    hub: Arc<Inner>,
    module: Arc<str>,
    conn: Conn,
    mut pubacks: mpsc::UnboundedReceiver<u16>,
) {
    let prefix = format!("module/{module}/inputs/");
    let mut win = Window::new(hub.config.max_inflight);
    let mut ready: Vec<(QKey, u64)> = Vec::new();
    let mut woken = true;
    loop {
        while let Ok(pkid) = pubacks.try_recv() {
            win.on_puback(pkid, &mut ready);
        }
        if !ready.is_empty() {
            let acks = std::mem::take(&mut ready);
            count_sent(&hub, &acks);
            if hub.store.ack(acks).await.is_err() {
                break;
            }
        }
        if (woken || win.low()) && win.free() > 0 {
            woken = false;
            match hub.registry.subs_of(&module, conn.id) {
                None => break,
                Some(subs) if !subs.inputs => {}
                Some(_) => {
                    if fill(&hub, &module, &prefix, &conn, &mut win, &mut ready)
                        .await
                        .is_err()
                    {
                        break;
                    }
                    if !ready.is_empty() {
                        continue;
                    }
                }
            }
        }
        tokio::select! {
            () = conn.cancel.cancelled() => break,
            () = conn.wake.notified() => woken = true,
            p = pubacks.recv() => match p {
                Some(pkid) => win.on_puback(pkid, &mut ready),
                None => break,
            },
        }
    }
    tracing::trace!(module = %module, inflight = win.inflight(), "Delivery stopped.");
}

fn count_sent(hub: &Inner, acks: &[(QKey, u64)]) {
    let mut i = 0;
    while i < acks.len() {
        let endpoint = &acks[i].0.endpoint;
        let n = acks[i..]
            .iter()
            .take_while(|(k, _)| &k.endpoint == endpoint)
            .count();
        hub.metrics.sent(endpoint, n as u64);
        i += n;
    }
}

/// Reads what fits in the window and publishes it. `Err` means the connection or the store
/// is gone.
async fn fill(
    hub: &Inner,
    module: &str,
    prefix: &str,
    conn: &Conn,
    win: &mut Window,
    ready: &mut Vec<(QKey, u64)>,
) -> Result<(), ()> {
    let read = hub
        .store
        .read(
            prefix.to_owned(),
            win.cursors(),
            win.free(),
            crate::now_ms(),
        )
        .await
        .map_err(|_| ())?;
    let entries: Vec<QEntry> = match read {
        Ok(r) => {
            for _ in 0..r.corrupt {
                hub.metrics.dead_letter(DeadLetter::Corrupt);
            }
            r.entries
        }
        Err(error) => {
            tracing::error!(module = %module, %error, "Reading the module's queues failed.");
            return Ok(());
        }
    };
    let device = hub.config.device_id.as_str();
    for entry in entries {
        let input = entry.key.endpoint.strip_prefix(prefix).unwrap_or_default();
        let (flags, encoded) = crate::store::split_record(entry.payload);
        let mut msg = match Message::decode(encoded) {
            Ok(m) => m,
            Err(error) => {
                hub.metrics.dead_letter(DeadLetter::Corrupt);
                tracing::error!(module = %module, endpoint = %entry.key.endpoint, seq = entry.seq, %error, "Stored message does not decode; skipping it.");
                win.skip(entry.key, entry.seq, ready);
                continue;
            }
        };
        msg.system.set(SysProp::InputName, Some(input));
        let topic = topic::input_topic(device, module, input, &msg);
        if topic.len() > usize::from(u16::MAX) {
            hub.metrics.dead_letter(DeadLetter::TooLarge);
            tracing::error!(module = %module, endpoint = %entry.key.endpoint, seq = entry.seq, "Properties do not fit in an MQTT topic; skipping the message.");
            win.skip(entry.key, entry.seq, ready);
            continue;
        }
        let publish = if flags & crate::store::AT_MOST_ONCE != 0 {
            // Published at QoS 0: delivered at QoS 0, and done once handed to the connection.
            win.skip(entry.key, entry.seq, ready);
            Publish::from_bytes(topic, QoS::AtMostOnce, msg.body)
        } else {
            let mut p = Publish::from_bytes(topic, QoS::AtLeastOnce, msg.body);
            p.pkid = win.track(entry.key, entry.seq);
            p
        };
        tokio::select! {
            () = conn.cancel.cancelled() => return Err(()),
            r = conn.out.send(Packet::Publish(publish)) => r.map_err(|_| ())?,
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(e: &str) -> QKey {
        QKey {
            endpoint: e.into(),
            priority: 0,
        }
    }

    #[test]
    fn acks_reach_the_store_in_queue_order() {
        let mut w = Window::new(4);
        let p1 = w.track(key("a"), 1);
        let p2 = w.track(key("a"), 2);
        let p3 = w.track(key("b"), 7);
        assert_eq!(w.free(), 1);
        let mut ready = Vec::new();
        w.on_puback(p2, &mut ready);
        assert!(ready.is_empty(), "seq 2 waits for seq 1");
        w.on_puback(p3, &mut ready);
        assert_eq!(ready, vec![(key("b"), 7)]);
        ready.clear();
        w.on_puback(p1, &mut ready);
        assert_eq!(ready, vec![(key("a"), 1), (key("a"), 2)]);
        assert_eq!(w.inflight(), 0);
        // Unknown and repeated packet ids are ignored.
        ready.clear();
        w.on_puback(p1, &mut ready);
        w.on_puback(999, &mut ready);
        assert!(ready.is_empty());
        let mut cursors = w.cursors();
        cursors.sort();
        assert_eq!(cursors, vec![(key("a"), 2), (key("b"), 7)]);
    }

    #[test]
    fn packet_ids_skip_zero_and_ids_in_use() {
        let mut w = Window::new(3);
        w.next_pkid = u16::MAX - 1;
        let a = w.track(key("a"), 1);
        let b = w.track(key("a"), 2);
        assert_eq!((a, b), (u16::MAX, 1));
        w.next_pkid = 0;
        let c = w.track(key("a"), 3);
        assert_eq!(c, 2, "1 is still in flight");
    }

    #[test]
    fn skipped_entries_are_acked_in_order() {
        let mut w = Window::new(4);
        let mut ready = Vec::new();
        let p1 = w.track(key("a"), 1);
        w.skip(key("a"), 2, &mut ready);
        assert!(ready.is_empty());
        w.on_puback(p1, &mut ready);
        assert_eq!(ready, vec![(key("a"), 1), (key("a"), 2)]);
    }
}
