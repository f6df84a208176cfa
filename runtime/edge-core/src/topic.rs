//! The IoT Hub module topic profile, as the hub and the SDK speak it (spec: `docs/TOPICS.md`).
//!
//! Module → hub: `devices/{d}/modules/{m}/messages/events/{bag}` (output name in `$.on`),
//! `$iothub/twin/GET/?$rid=R`, `$iothub/twin/PATCH/properties/reported/?$rid=R`,
//! `$iothub/methods/res/{status}/?$rid=R`.
//! Hub → module: `devices/{d}/modules/{m}/inputs/{input}/{bag}`, `$iothub/twin/res/{status}/?$rid=R`,
//! `$iothub/twin/PATCH/properties/desired/?$version=V`, `$iothub/methods/POST/{name}/?$rid=R`.
//!
//! Property bags are `k=v&k=v` with keys and values percent-encoded as Python's
//! `quote(safe="")` does (only `A-Za-z0-9_.-~` left alone), system properties first as `$.xx`.

use crate::message::{Message, SysProp};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, percent_decode_str, utf8_percent_encode};

/// `quote(safe="")`: everything but `A-Za-z0-9_.-~` is escaped.
const QUOTE: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'_')
    .remove(b'.')
    .remove(b'-')
    .remove(b'~');

/// A topic a module published to, classified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Inbound<'a> {
    /// Telemetry / an output message: `devices/{device}/modules/{module}/messages/events/{bag}`.
    Events {
        /// Device id in the topic.
        device: &'a str,
        /// Module id in the topic.
        module: &'a str,
        /// The raw (still encoded) property bag, empty when none.
        bag: &'a str,
    },
    /// `$iothub/twin/GET/?$rid=R`.
    TwinGet {
        /// Request id.
        rid: String,
    },
    /// `$iothub/twin/PATCH/properties/reported/?$rid=R`.
    TwinPatchReported {
        /// Request id.
        rid: String,
    },
    /// `$iothub/methods/res/{status}/?$rid=R`.
    MethodResponse {
        /// The method's status code.
        status: i32,
        /// Request id of the call it answers.
        rid: String,
    },
}

/// Why a topic is not part of the module profile.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TopicError {
    /// The topic matches no template a module may publish to.
    #[error("topic `{0}` is not a module topic of the IoT Hub profile")]
    Unknown(String),
    /// The topic matches a template but a required part is missing or malformed.
    #[error("topic `{topic}`: {reason}")]
    Malformed {
        /// The topic.
        topic: String,
        /// What is wrong.
        reason: &'static str,
    },
}

/// Classifies a topic a module published to.
///
/// # Errors
/// [`TopicError`] when it is not a topic of the module profile.
pub fn parse_inbound(topic: &str) -> Result<Inbound<'_>, TopicError> {
    if let Some(rest) = topic.strip_prefix("$iothub/") {
        if let Some(q) = rest.strip_prefix("twin/GET/") {
            return Ok(Inbound::TwinGet {
                rid: rid_of(topic, q)?,
            });
        }
        if let Some(q) = rest.strip_prefix("twin/PATCH/properties/reported/") {
            return Ok(Inbound::TwinPatchReported {
                rid: rid_of(topic, q)?,
            });
        }
        if let Some(r) = rest.strip_prefix("methods/res/") {
            let (status, q) = r.split_once('/').ok_or(TopicError::Malformed {
                topic: topic.to_owned(),
                reason: "missing status",
            })?;
            let status = decode(status).parse().map_err(|_| TopicError::Malformed {
                topic: topic.to_owned(),
                reason: "status is not an integer",
            })?;
            return Ok(Inbound::MethodResponse {
                status,
                rid: rid_of(topic, q)?,
            });
        }
        return Err(TopicError::Unknown(topic.to_owned()));
    }
    let mut parts = topic.splitn(6, '/');
    match (
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
    ) {
        (
            Some("devices"),
            Some(device),
            Some("modules"),
            Some(module),
            Some("messages"),
            Some(rest),
        ) if !device.is_empty() && !module.is_empty() => {
            let bag = if rest == "events" {
                ""
            } else if let Some(bag) = rest.strip_prefix("events/") {
                bag.strip_suffix('/').unwrap_or(bag)
            } else {
                return Err(TopicError::Unknown(topic.to_owned()));
            };
            Ok(Inbound::Events {
                device,
                module,
                bag,
            })
        }
        _ => Err(TopicError::Unknown(topic.to_owned())),
    }
}

fn rid_of(topic: &str, query: &str) -> Result<String, TopicError> {
    let query = query.strip_prefix('?').unwrap_or(query);
    for pair in query.split('&') {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        if decode(k) == "$rid" {
            return Ok(decode(v));
        }
    }
    Err(TopicError::Malformed {
        topic: topic.to_owned(),
        reason: "missing $rid",
    })
}

fn decode(s: &str) -> String {
    percent_decode_str(s).decode_utf8_lossy().into_owned()
}

/// [`decode`] into a property string. Nearly every bag key and value is short, so the bytes
/// are decoded on the stack and the result is kept inline: no allocation, where the generic
/// decoder grows a `Vec` byte by byte for every escaped key (`%24.ct`).
fn decode_prop(s: &str) -> crate::PropStr {
    const STACK: usize = 64;
    if !s.as_bytes().contains(&b'%') {
        return crate::PropStr::new(s);
    }
    let src = s.as_bytes();
    let mut stack = [0u8; STACK];
    let mut heap = Vec::new();
    let out: &mut [u8] = if src.len() <= STACK {
        &mut stack
    } else {
        heap.resize(src.len(), 0);
        &mut heap
    };
    // A decoded string is never longer than its source, so `out` has room.
    let mut n = 0;
    let mut i = 0;
    while let Some(&b) = src.get(i) {
        let escaped = (b == b'%')
            .then(|| Some((hex(*src.get(i + 1)?)?, hex(*src.get(i + 2)?)?)))
            .flatten();
        let (byte, used) = match escaped {
            Some((hi, lo)) => ((hi << 4) | lo, 3),
            None => (b, 1),
        };
        if let Some(slot) = out.get_mut(n) {
            *slot = byte;
        }
        n += 1;
        i += used;
    }
    crate::PropStr::from(String::from_utf8_lossy(out.get(..n).unwrap_or_default()))
}

fn hex(b: u8) -> Option<u8> {
    char::from(b)
        .to_digit(16)
        .and_then(|d| u8::try_from(d).ok())
}

fn encode(s: &str) -> impl std::fmt::Display + '_ {
    utf8_percent_encode(s, QUOTE)
}

/// Whether `quote(safe="")` leaves the byte alone (`A-Za-z0-9_.-~`; see [`QUOTE`]).
const fn unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-' | b'~')
}

/// Appends `s` percent-encoded as [`encode`] writes it, without the formatting machinery: runs
/// of unreserved bytes are copied as they are, every other byte becomes `%XX`.
fn encode_into(out: &mut String, s: &str) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let bytes = s.as_bytes();
    let mut run = 0;
    for (i, &b) in bytes.iter().enumerate() {
        if unreserved(b) {
            continue;
        }
        // `run..i` holds only ASCII, so both ends are character boundaries.
        if run < i {
            out.push_str(s.get(run..i).unwrap_or_default());
        }
        out.push('%');
        out.push(char::from(HEX[usize::from(b >> 4)]));
        out.push(char::from(HEX[usize::from(b & 0x0F)]));
        run = i + 1;
    }
    if run < bytes.len() {
        out.push_str(s.get(run..).unwrap_or_default());
    }
}

/// Splits `s` at the first `sep` byte (an ASCII separator, so both halves are `str`s).
fn split_ascii(s: &str, sep: u8) -> Option<(&str, &str)> {
    let at = s.bytes().position(|b| b == sep)?;
    Some((s.get(..at)?, s.get(at + 1..)?))
}

/// Decodes a property bag into `msg`: `$.xx` keys set system properties, other keys set
/// application properties. A key without `=` is an application property with an empty value.
/// The hub calls this on messages from modules and then overwrites the connection properties
/// from the authenticated identity, so a module cannot forge `$.cdid`/`$.cmid`.
pub fn decode_bag_into(bag: &str, msg: &mut Message) {
    msg.properties
        .reserve(bag.bytes().filter(|&b| b == b'&').count() + 1);
    let mut rest = bag;
    while !rest.is_empty() {
        let (pair, next) = split_ascii(rest, b'&').unwrap_or((rest, ""));
        rest = next;
        if pair.is_empty() {
            continue;
        }
        let (k, v) = split_ascii(pair, b'=').unwrap_or((pair, ""));
        let k = decode_prop(k);
        let v = decode_prop(v);
        match SysProp::from_bag_key(&k) {
            Some(p) => msg.system.set(p, Some(v)),
            None => msg.set_property(k, v),
        }
    }
}

/// Encodes a message's properties as a bag. `sys` lists which system properties to include,
/// in order; application properties follow in their own order.
#[must_use]
pub fn encode_bag(msg: &Message, sys: &[SysProp]) -> String {
    let mut out = String::with_capacity(bag_capacity(msg));
    encode_bag_into(&mut out, msg, sys);
    out
}

/// Room for a message's bag in the usual case (escapes make it longer now and then).
fn bag_capacity(msg: &Message) -> usize {
    let props: usize = msg
        .properties
        .iter()
        .map(|(k, v)| k.len() + v.len() + 2)
        .sum();
    let sys_len: usize = msg.system.iter().map(|(_, v)| v.len() + 8).sum();
    props + sys_len + 16
}

/// [`encode_bag`] appended to `out`.
fn encode_bag_into(out: &mut String, msg: &Message, sys: &[SysProp]) {
    let start = out.len();
    let pair = |out: &mut String, k: &str, v: &str| {
        if out.len() > start {
            out.push('&');
        }
        encode_into(out, k);
        out.push('=');
        encode_into(out, v);
    };
    for p in sys {
        if let (Some(v), Some(k)) = (msg.system.get(*p), p.bag_key()) {
            pair(out, k, v);
        }
    }
    for (k, v) in &msg.properties {
        pair(out, k, v);
    }
}

/// System properties the hub puts on a message it delivers to a module input (edgeHub's
/// outgoing map, in its order).
pub const TO_MODULE_SYS: &[SysProp] = &[
    SysProp::AbsoluteExpiryTime,
    SysProp::CorrelationId,
    SysProp::MessageId,
    SysProp::To,
    SysProp::UserId,
    SysProp::ContentType,
    SysProp::ContentEncoding,
    SysProp::MessageSchema,
    SysProp::CreationTime,
    SysProp::ConnectionDeviceId,
    SysProp::ConnectionModuleId,
    SysProp::ComponentName,
];

/// System properties a module puts on a message it sends (the SDK's order).
pub const FROM_MODULE_SYS: &[SysProp] = &[
    SysProp::OutputName,
    SysProp::MessageId,
    SysProp::CorrelationId,
    SysProp::UserId,
    SysProp::ContentType,
    SysProp::ContentEncoding,
    SysProp::InterfaceId,
    SysProp::AbsoluteExpiryTime,
    SysProp::CreationTime,
];

/// `devices/{d}/modules/{m}/inputs/{input}/{bag}`: a message the hub delivers to a module.
#[must_use]
pub fn input_topic(device: &str, module: &str, input: &str, msg: &Message) -> String {
    let head = ["devices/", device, "/modules/", module, "/inputs/"];
    let mut out = String::with_capacity(
        head.iter().map(|p| p.len()).sum::<usize>() + input.len() + 1 + bag_capacity(msg),
    );
    head.iter().for_each(|p| out.push_str(p));
    encode_into(&mut out, input);
    out.push('/');
    encode_bag_into(&mut out, msg, TO_MODULE_SYS);
    out
}

/// `devices/{d}/modules/{m}/messages/events/{bag}`: what a module publishes for an output.
#[must_use]
pub fn events_topic(device: &str, module: &str, msg: &Message) -> String {
    let head = ["devices/", device, "/modules/", module, "/messages/events/"];
    let mut out =
        String::with_capacity(head.iter().map(|p| p.len()).sum::<usize>() + bag_capacity(msg));
    head.iter().for_each(|p| out.push_str(p));
    encode_bag_into(&mut out, msg, FROM_MODULE_SYS);
    out
}

/// `$iothub/twin/res/{status}/?$rid=R[&$version=V]`.
#[must_use]
pub fn twin_response_topic(status: u16, rid: &str, version: Option<u64>) -> String {
    match version {
        Some(v) => format!(
            "$iothub/twin/res/{status}/?$rid={}&$version={v}",
            encode(rid)
        ),
        None => format!("$iothub/twin/res/{status}/?$rid={}", encode(rid)),
    }
}

/// `$iothub/twin/PATCH/properties/desired/?$version=V`.
#[must_use]
pub fn desired_patch_topic(version: u64) -> String {
    format!("$iothub/twin/PATCH/properties/desired/?$version={version}")
}

/// `$iothub/methods/POST/{name}/?$rid=R`.
#[must_use]
pub fn method_request_topic(name: &str, rid: &str) -> String {
    format!(
        "$iothub/methods/POST/{}/?$rid={}",
        encode(name),
        encode(rid)
    )
}

/// `$iothub/methods/res/{status}/?$rid=R`.
#[must_use]
pub fn method_response_topic(status: i32, rid: &str) -> String {
    format!("$iothub/methods/res/{status}/?$rid={}", encode(rid))
}

/// `$iothub/twin/GET/?$rid=R`.
#[must_use]
pub fn twin_get_topic(rid: &str) -> String {
    format!("$iothub/twin/GET/?$rid={}", encode(rid))
}

/// `$iothub/twin/PATCH/properties/reported/?$rid=R`.
#[must_use]
pub fn reported_patch_topic(rid: &str) -> String {
    format!(
        "$iothub/twin/PATCH/properties/reported/?$rid={}",
        encode(rid)
    )
}

/// A topic the hub publishes to a module, classified (the SDK side of the profile).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outbound {
    /// A routed message on an input; `msg` carries the decoded bag.
    Input {
        /// Input name.
        input: String,
        /// Properties (body left empty; the caller sets it).
        msg: Box<Message>,
    },
    /// A twin response.
    TwinResponse {
        /// Status code.
        status: u16,
        /// Request id.
        rid: String,
        /// `$version` in the query, when present.
        version: Option<u64>,
    },
    /// A desired properties patch.
    DesiredPatch,
    /// A direct method request.
    MethodRequest {
        /// Method name.
        name: String,
        /// Request id.
        rid: String,
    },
}

/// Classifies a topic the hub published to module `device/module`.
///
/// # Errors
/// [`TopicError`] when the topic is not one the hub sends.
pub fn parse_outbound(topic: &str, device: &str, module: &str) -> Result<Outbound, TopicError> {
    let prefix = format!("devices/{device}/modules/{module}/inputs/");
    if let Some(rest) = topic.strip_prefix(&prefix) {
        let (input, bag) = rest.split_once('/').unwrap_or((rest, ""));
        let mut msg = Message::default();
        decode_bag_into(bag, &mut msg);
        return Ok(Outbound::Input {
            input: decode(input),
            msg: Box::new(msg),
        });
    }
    if topic.starts_with("$iothub/twin/PATCH/properties/desired") {
        return Ok(Outbound::DesiredPatch);
    }
    if let Some(rest) = topic.strip_prefix("$iothub/twin/res/") {
        let (status, q) = rest.split_once('/').unwrap_or((rest, ""));
        let status = status.parse().map_err(|_| TopicError::Malformed {
            topic: topic.to_owned(),
            reason: "status is not an integer",
        })?;
        let rid = rid_of(topic, q)?;
        let version = q
            .trim_start_matches('?')
            .split('&')
            .find_map(|p| p.strip_prefix("$version="))
            .and_then(|v| v.parse().ok());
        return Ok(Outbound::TwinResponse {
            status,
            rid,
            version,
        });
    }
    if let Some(rest) = topic.strip_prefix("$iothub/methods/POST/") {
        let (name, q) = rest.split_once('/').unwrap_or((rest, ""));
        return Ok(Outbound::MethodRequest {
            name: decode(name),
            rid: rid_of(topic, q)?,
        });
    }
    Err(TopicError::Unknown(topic.to_owned()))
}

/// What a subscription filter from module `device/module` asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Subscription {
    /// `devices/{d}/modules/{m}/inputs/#` (or `devices/{d}/modules/{m}/#`).
    Inputs,
    /// `$iothub/methods/POST/#`.
    Methods,
    /// `$iothub/twin/PATCH/properties/desired/#`.
    DesiredPatches,
    /// `$iothub/twin/res/#`.
    TwinResponses,
}

/// Classifies a subscription filter; `None` means it is outside the module's own topics and
/// must be refused (topic ACL).
#[must_use]
pub fn classify_subscription(filter: &str, device: &str, module: &str) -> Option<Subscription> {
    match filter {
        "$iothub/methods/POST/#" => Some(Subscription::Methods),
        "$iothub/twin/PATCH/properties/desired/#" => Some(Subscription::DesiredPatches),
        "$iothub/twin/res/#" => Some(Subscription::TwinResponses),
        f => {
            let rest = f
                .strip_prefix("devices/")?
                .strip_prefix(device)?
                .strip_prefix("/modules/")?
                .strip_prefix(module)?;
            matches!(rest, "/inputs/#" | "/#").then_some(Subscription::Inputs)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_property_encoder_agrees_with_the_generic_one() {
        for s in [
            "",
            "plain",
            "A-Za-z0-9_.~",
            "$.mid",
            "a b&c=d/e?f#g+h%i",
            "\u{e9}t\u{e9} \u{20ac} \u{1f600}",
            "%%",
            "trailing&",
            "&leading",
        ] {
            let mut out = String::from("x");
            encode_into(&mut out, s);
            assert_eq!(out, format!("x{}", encode(s)), "{s:?}");
        }
    }

    #[test]
    fn the_property_decoder_agrees_with_the_generic_one() {
        let long = format!("{}%24{}", "a".repeat(70), "%2F".repeat(30));
        let cases = [
            "",
            "plain",
            "%24.ct",
            "application%2Fjson",
            "%",
            "%2",
            "%zz",
            "a%2",
            "%%24",
            "%E2%82%AC",
            "%FF",
            "%e2%82",
            "100%25",
            "+%20+",
            long.as_str(),
        ];
        for c in cases {
            assert_eq!(decode_prop(c), decode(c), "{c:?}");
        }
    }

    #[test]
    fn parses_sdk_output_topic() {
        let t = "devices/dev1/modules/mod1/messages/events/%24.on=output1&%24.mid=m-1&%24.cid=corr-1&%24.ct=application%2Fjson&%24.ce=utf-8&alert%20level=high%2Fvery&b=2";
        let Inbound::Events {
            device,
            module,
            bag,
        } = parse_inbound(t).unwrap()
        else {
            panic!("not events")
        };
        assert_eq!((device, module), ("dev1", "mod1"));
        let mut m = Message::default();
        decode_bag_into(bag, &mut m);
        assert_eq!(m.system.get(SysProp::OutputName), Some("output1"));
        assert_eq!(m.system.get(SysProp::MessageId), Some("m-1"));
        assert_eq!(m.system.get(SysProp::ContentType), Some("application/json"));
        assert_eq!(m.property("alert level"), Some("high/very"));
        assert_eq!(m.property("b"), Some("2"));
    }

    #[test]
    fn accepts_every_events_variant() {
        for t in [
            "devices/d/modules/m/messages/events",
            "devices/d/modules/m/messages/events/",
            "devices/d/modules/m/messages/events/a=1",
            "devices/d/modules/m/messages/events/a=1/",
        ] {
            assert!(
                matches!(parse_inbound(t), Ok(Inbound::Events { .. })),
                "{t}"
            );
        }
        assert!(parse_inbound("devices/d/modules/m/inputs/x").is_err());
        assert!(parse_inbound("foo/bar").is_err());
    }

    #[test]
    fn twin_and_method_topics() {
        assert_eq!(
            parse_inbound("$iothub/twin/GET/?$rid=6f2c8").unwrap(),
            Inbound::TwinGet {
                rid: "6f2c8".into()
            }
        );
        assert_eq!(
            parse_inbound("$iothub/twin/PATCH/properties/reported/?$rid=1&$version=3").unwrap(),
            Inbound::TwinPatchReported { rid: "1".into() }
        );
        assert_eq!(
            parse_inbound("$iothub/methods/res/200/?$rid=42").unwrap(),
            Inbound::MethodResponse {
                status: 200,
                rid: "42".into()
            }
        );
        assert!(parse_inbound("$iothub/twin/GET/").is_err());
    }

    #[test]
    fn input_topic_escapes_what_the_sdk_splits_on() {
        let m = Message::default()
            .with_system(SysProp::ConnectionDeviceId, "dev1")
            .with_system(SysProp::ConnectionModuleId, "sender")
            .with_system(SysProp::MessageId, "abc")
            .with_property("prop 1", "value/1&x=y");
        let t = input_topic("dev1", "mod1", "input1", &m);
        assert_eq!(
            t,
            "devices/dev1/modules/mod1/inputs/input1/%24.mid=abc&%24.cdid=dev1&%24.cmid=sender&prop%201=value%2F1%26x%3Dy"
        );
        let Outbound::Input { input, msg } = parse_outbound(&t, "dev1", "mod1").unwrap() else {
            panic!()
        };
        assert_eq!(input, "input1");
        assert_eq!(msg.property("prop 1"), Some("value/1&x=y"));
        assert_eq!(msg.system.get(SysProp::ConnectionModuleId), Some("sender"));
    }

    #[test]
    fn events_round_trip_through_the_hub_parser() {
        let m = Message::default()
            .with_system(SysProp::OutputName, "scores")
            .with_system(SysProp::ContentType, "application/json")
            .with_property("run", "d01_te");
        let t = events_topic("dev", "onnx-scoring", &m);
        let Inbound::Events { bag, .. } = parse_inbound(&t).unwrap() else {
            panic!()
        };
        let mut back = Message::default();
        decode_bag_into(bag, &mut back);
        assert_eq!(back, m);
    }

    #[test]
    fn subscription_acl() {
        assert_eq!(
            classify_subscription("devices/d/modules/m/inputs/#", "d", "m"),
            Some(Subscription::Inputs)
        );
        assert_eq!(
            classify_subscription("devices/d/modules/m/#", "d", "m"),
            Some(Subscription::Inputs)
        );
        assert_eq!(
            classify_subscription("devices/d/modules/other/#", "d", "m"),
            None
        );
        assert_eq!(classify_subscription("#", "d", "m"), None);
        assert_eq!(
            classify_subscription("$iothub/twin/res/#", "d", "m"),
            Some(Subscription::TwinResponses)
        );
    }

    #[test]
    fn outbound_twin_and_method() {
        assert_eq!(
            parse_outbound(&twin_response_topic(204, "r1", Some(7)), "d", "m").unwrap(),
            Outbound::TwinResponse {
                status: 204,
                rid: "r1".into(),
                version: Some(7)
            }
        );
        assert_eq!(
            parse_outbound(&method_request_topic("audit", "9"), "d", "m").unwrap(),
            Outbound::MethodRequest {
                name: "audit".into(),
                rid: "9".into()
            }
        );
        assert_eq!(
            parse_outbound(&desired_patch_topic(3), "d", "m").unwrap(),
            Outbound::DesiredPatch
        );
    }
}
