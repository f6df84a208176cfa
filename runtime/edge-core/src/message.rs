//! The message model shared by the hub, the route engine, the store and the SDK.
//!
//! A [`Message`] is body bytes, application properties (ordered key/value pairs, as IoT Hub
//! keeps them) and [`SystemProperties`] (a fixed set addressed by [`SysProp`]). The route
//! engine resolves a `$name` to a [`SysProp`] once at compile time, so reading a system
//! property while routing is an array index, never a string comparison.
//!
//! Property keys and values are [`PropStr`]s, which keep strings of up to 24 bytes inline:
//! nearly every property a message carries (`runId`, `$.ct`, a module id, a timestamp) then
//! costs no heap allocation when a message is decoded, which the hub does at every hop.
//!
//! [`Message::encode`] / [`Message::decode`] are the compact binary form the durable store
//! keeps. Layout (little endian): `u8 version=1`, `u32 body_len`, body, `u16 n_props`,
//! n × (`u16 klen`, key, `u32 vlen`, value), `u32 sys_mask`, one (`u16 len`, value) per set bit.

use bytes::{Buf, BufMut, Bytes, BytesMut};
pub use compact_str::{CompactString as PropStr, ToCompactString};

/// A system property of a message (Azure IoT Edge `SystemProperties`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum SysProp {
    /// `$messageId` (`$.mid`).
    MessageId = 0,
    /// `$correlationId` (`$.cid`).
    CorrelationId,
    /// `$userId` (`$.uid`).
    UserId,
    /// `$contentType` (`$.ct`).
    ContentType,
    /// `$contentEncoding` (`$.ce`).
    ContentEncoding,
    /// `$creationTime` (`$.ctime`), ISO-8601.
    CreationTime,
    /// `$absolute-expiry-time` (`$.exp`).
    AbsoluteExpiryTime,
    /// `$to` (`$.to`).
    To,
    /// `$connectionDeviceId` (`$.cdid`), set by the hub from the authenticated identity.
    ConnectionDeviceId,
    /// `$connectionModuleId` (`$.cmid`), set by the hub from the authenticated identity.
    ConnectionModuleId,
    /// `$outputName` (`$.on`).
    OutputName,
    /// `$inputName`, set by the hub on delivery.
    InputName,
    /// `$messageSchema` (`$.schema`).
    MessageSchema,
    /// `$enqueuedTime`, set by the hub when it accepts the message (ISO-8601).
    EnqueuedTime,
    /// `$iothub-interface-id` (`$.ifid`).
    InterfaceId,
    /// `$dt-subject` / component name (`$.sub`).
    ComponentName,
    /// `$connectionAuthMethod`.
    ConnectionAuthMethod,
    /// `$connectionDeviceGenerationId`.
    ConnectionDeviceGenerationId,
}

impl SysProp {
    /// Number of system properties.
    pub const COUNT: usize = 18;
    /// Every system property, in index order.
    pub const ALL: [SysProp; Self::COUNT] = [
        SysProp::MessageId,
        SysProp::CorrelationId,
        SysProp::UserId,
        SysProp::ContentType,
        SysProp::ContentEncoding,
        SysProp::CreationTime,
        SysProp::AbsoluteExpiryTime,
        SysProp::To,
        SysProp::ConnectionDeviceId,
        SysProp::ConnectionModuleId,
        SysProp::OutputName,
        SysProp::InputName,
        SysProp::MessageSchema,
        SysProp::EnqueuedTime,
        SysProp::InterfaceId,
        SysProp::ComponentName,
        SysProp::ConnectionAuthMethod,
        SysProp::ConnectionDeviceGenerationId,
    ];

    /// The name used after `$` in route conditions (`$connectionModuleId` → `connectionModuleId`).
    #[must_use]
    pub fn route_name(self) -> &'static str {
        match self {
            SysProp::MessageId => "messageId",
            SysProp::CorrelationId => "correlationId",
            SysProp::UserId => "userId",
            SysProp::ContentType => "contentType",
            SysProp::ContentEncoding => "contentEncoding",
            SysProp::CreationTime => "creationTime",
            SysProp::AbsoluteExpiryTime => "absolute-expiry-time",
            SysProp::To => "to",
            SysProp::ConnectionDeviceId => "connectionDeviceId",
            SysProp::ConnectionModuleId => "connectionModuleId",
            SysProp::OutputName => "outputName",
            SysProp::InputName => "inputName",
            SysProp::MessageSchema => "messageSchema",
            SysProp::EnqueuedTime => "enqueuedTime",
            SysProp::InterfaceId => "iothub-interface-id",
            SysProp::ComponentName => "dt-subject",
            SysProp::ConnectionAuthMethod => "connectionAuthMethod",
            SysProp::ConnectionDeviceGenerationId => "connectionDeviceGenerationId",
        }
    }

    /// Resolves a route-language system property name (without the `$`). Matching is
    /// case-sensitive except for the first letter, as Azure's names are camelCase; `cid` is an
    /// alias of `correlationId` and `componentName` of `dt-subject`.
    #[must_use]
    pub fn from_route_name(name: &str) -> Option<SysProp> {
        match name {
            "cid" => return Some(SysProp::CorrelationId),
            "componentName" => return Some(SysProp::ComponentName),
            _ => {}
        }
        SysProp::ALL
            .into_iter()
            .find(|p| p.route_name().eq_ignore_ascii_case(name))
    }

    /// The key in an IoT Hub topic property bag (`$.mid`), where the profile defines one.
    #[must_use]
    pub fn bag_key(self) -> Option<&'static str> {
        Some(match self {
            SysProp::MessageId => "$.mid",
            SysProp::CorrelationId => "$.cid",
            SysProp::UserId => "$.uid",
            SysProp::ContentType => "$.ct",
            SysProp::ContentEncoding => "$.ce",
            SysProp::CreationTime => "$.ctime",
            SysProp::AbsoluteExpiryTime => "$.exp",
            SysProp::To => "$.to",
            SysProp::ConnectionDeviceId => "$.cdid",
            SysProp::ConnectionModuleId => "$.cmid",
            SysProp::OutputName => "$.on",
            SysProp::MessageSchema => "$.schema",
            SysProp::InterfaceId => "$.ifid",
            SysProp::ComponentName => "$.sub",
            SysProp::InputName
            | SysProp::EnqueuedTime
            | SysProp::ConnectionAuthMethod
            | SysProp::ConnectionDeviceGenerationId => return None,
        })
    }

    /// Resolves a property-bag key (`$.mid`).
    #[must_use]
    pub fn from_bag_key(key: &str) -> Option<SysProp> {
        // Every bag key of a system property starts with `$`; application keys rarely do.
        if !key.starts_with('$') {
            return None;
        }
        SysProp::ALL.into_iter().find(|p| p.bag_key() == Some(key))
    }
}

/// The system properties of a message, indexed by [`SysProp`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SystemProperties {
    values: [Option<PropStr>; SysProp::COUNT],
}

impl SystemProperties {
    /// The value of a system property, if set.
    #[must_use]
    pub fn get(&self, p: SysProp) -> Option<&str> {
        self.values[p as usize].as_deref()
    }

    /// Sets (or with `None` clears) a system property.
    pub fn set(&mut self, p: SysProp, value: Option<impl Into<PropStr>>) {
        self.values[p as usize] = value.map(Into::into);
    }

    /// The set properties, in [`SysProp`] order.
    pub fn iter(&self) -> impl Iterator<Item = (SysProp, &str)> {
        SysProp::ALL
            .into_iter()
            .filter_map(|p| self.get(p).map(|v| (p, v)))
    }
}

/// A message: body, application properties and system properties.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Message {
    /// The body, opaque bytes (JSON when `$contentType` says so).
    pub body: Bytes,
    /// Application properties in the order they were given. Keys are unique.
    pub properties: Vec<(PropStr, PropStr)>,
    /// System properties.
    pub system: SystemProperties,
}

/// Why bytes did not decode to a [`Message`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The record ended early.
    #[error("message record truncated")]
    Truncated,
    /// The version byte is unknown.
    #[error("unknown message record version {0}")]
    Version(u8),
    /// A string field is not UTF-8.
    #[error("message record holds a string that is not UTF-8")]
    Utf8,
}

impl Message {
    /// A message with a body and nothing else.
    #[must_use]
    pub fn new(body: impl Into<Bytes>) -> Self {
        Self {
            body: body.into(),
            ..Self::default()
        }
    }

    /// The value of an application property (exact key match, as IoT Hub property names are
    /// case-sensitive).
    #[must_use]
    pub fn property(&self, key: &str) -> Option<&str> {
        self.properties
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// Sets an application property, replacing an existing value for the same key.
    pub fn set_property(&mut self, key: impl Into<PropStr>, value: impl Into<PropStr>) {
        let key = key.into();
        let value = value.into();
        if let Some(slot) = self.properties.iter_mut().find(|(k, _)| *k == key) {
            slot.1 = value;
        } else {
            self.properties.push((key, value));
        }
    }

    /// Builder form of [`SystemProperties::set`].
    #[must_use]
    pub fn with_system(mut self, p: SysProp, value: impl Into<PropStr>) -> Self {
        self.system.set(p, Some(value));
        self
    }

    /// Builder form of [`Message::set_property`].
    #[must_use]
    pub fn with_property(mut self, key: impl Into<PropStr>, value: impl Into<PropStr>) -> Self {
        self.set_property(key, value);
        self
    }

    /// Size of [`Message::encode`]'s output.
    #[must_use]
    pub fn encoded_len(&self) -> usize {
        let props: usize = self
            .properties
            .iter()
            .map(|(k, v)| 2 + k.len() + 4 + v.len())
            .sum();
        let sys: usize = self.system.iter().map(|(_, v)| 2 + v.len()).sum();
        1 + 4 + self.body.len() + 2 + props + 4 + sys
    }

    /// Appends the binary form to `out`.
    pub fn encode(&self, out: &mut BytesMut) {
        out.reserve(self.encoded_len());
        out.put_u8(1);
        put_len32(out, self.body.len());
        out.put_slice(&self.body);
        put_len16(out, self.properties.len());
        for (k, v) in &self.properties {
            put_len16(out, k.len());
            out.put_slice(k.as_bytes());
            put_len32(out, v.len());
            out.put_slice(v.as_bytes());
        }
        let mut mask = 0u32;
        for (p, _) in self.system.iter() {
            mask |= 1 << (p as u32);
        }
        out.put_u32_le(mask);
        for (_, v) in self.system.iter() {
            put_len16(out, v.len());
            out.put_slice(v.as_bytes());
        }
    }

    /// Decodes the binary form.
    ///
    /// # Errors
    /// [`DecodeError`] when the bytes are truncated, of an unknown version or not UTF-8.
    pub fn decode(mut buf: Bytes) -> Result<Self, DecodeError> {
        let version = get_u8(&mut buf)?;
        if version != 1 {
            return Err(DecodeError::Version(version));
        }
        let body_len = get_u32(&mut buf)? as usize;
        let body = take(&mut buf, body_len)?;
        let n = get_u16(&mut buf)? as usize;
        let mut properties = Vec::with_capacity(n);
        for _ in 0..n {
            let kl = get_u16(&mut buf)? as usize;
            let k = take_str(&mut buf, kl)?;
            let vl = get_u32(&mut buf)? as usize;
            let v = take_str(&mut buf, vl)?;
            properties.push((k, v));
        }
        let mask = get_u32(&mut buf)?;
        let mut system = SystemProperties::default();
        for p in SysProp::ALL {
            if mask & (1 << (p as u32)) != 0 {
                let l = get_u16(&mut buf)? as usize;
                let v = take_str(&mut buf, l)?;
                system.set(p, Some(v));
            }
        }
        Ok(Self {
            body,
            properties,
            system,
        })
    }
}

fn put_len32(out: &mut BytesMut, n: usize) {
    // Bodies are bounded by the MQTT maximum packet size (256 MiB), far below u32::MAX.
    out.put_u32_le(u32::try_from(n).unwrap_or(u32::MAX));
}

fn put_len16(out: &mut BytesMut, n: usize) {
    // Keys, property counts and system values are bounded by the topic length (u16).
    out.put_u16_le(u16::try_from(n).unwrap_or(u16::MAX));
}

fn get_u8(b: &mut Bytes) -> Result<u8, DecodeError> {
    if b.remaining() < 1 {
        return Err(DecodeError::Truncated);
    }
    Ok(b.get_u8())
}
fn get_u16(b: &mut Bytes) -> Result<u16, DecodeError> {
    if b.remaining() < 2 {
        return Err(DecodeError::Truncated);
    }
    Ok(b.get_u16_le())
}
fn get_u32(b: &mut Bytes) -> Result<u32, DecodeError> {
    if b.remaining() < 4 {
        return Err(DecodeError::Truncated);
    }
    Ok(b.get_u32_le())
}
fn take(b: &mut Bytes, n: usize) -> Result<Bytes, DecodeError> {
    if b.remaining() < n {
        return Err(DecodeError::Truncated);
    }
    Ok(b.split_to(n))
}
fn take_str(b: &mut Bytes, n: usize) -> Result<PropStr, DecodeError> {
    let raw = take(b, n)?;
    std::str::from_utf8(&raw)
        .map(PropStr::new)
        .map_err(|_| DecodeError::Utf8)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encode_decode_round_trip() {
        let m = Message::new(&b"{\"t\":1}"[..])
            .with_property("alert level", "high/very")
            .with_property("b", "")
            .with_system(SysProp::ContentType, "application/json")
            .with_system(SysProp::ConnectionModuleId, "sender");
        let mut buf = BytesMut::new();
        m.encode(&mut buf);
        assert_eq!(buf.len(), m.encoded_len());
        let back = Message::decode(buf.freeze()).unwrap();
        assert_eq!(back, m);
    }

    #[test]
    fn truncated_record_is_an_error_not_a_panic() {
        let m = Message::new(&b"hello"[..]).with_property("k", "v");
        let mut buf = BytesMut::new();
        m.encode(&mut buf);
        let full = buf.freeze();
        for cut in 0..full.len() {
            assert!(Message::decode(full.slice(..cut)).is_err(), "cut at {cut}");
        }
    }

    #[test]
    fn sys_prop_names_resolve() {
        for p in SysProp::ALL {
            assert_eq!(SysProp::from_route_name(p.route_name()), Some(p));
            if let Some(k) = p.bag_key() {
                assert_eq!(SysProp::from_bag_key(k), Some(p));
            }
        }
        assert_eq!(
            SysProp::from_route_name("cid"),
            Some(SysProp::CorrelationId)
        );
        assert_eq!(SysProp::from_route_name("nope"), None);
    }
}
