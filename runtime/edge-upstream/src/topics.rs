//! The topic scheme between a device and a backend on a plain MQTT broker (docs/UPSTREAM.md).
//!
//! Telemetry keeps the IoT Hub device profile (`devices/{d}/messages/events/{bag}`). IoT Hub's
//! `$iothub/...` twin and method topics carry no device id (the hub knows it from the
//! connection) and no module id, so on a broker shared by a fleet they live under a per-device,
//! per-identity prefix `edge/{d}/{identity}/` followed by the IoT Hub suffix.

use edge_core::Message;
use edge_core::topic::encode_bag;

/// Prefix of everything a device and its backend exchange besides telemetry.
pub const ROOT: &str = "edge";

/// `devices/{d}/messages/events/{bag}`: telemetry, with every system property the message
/// carries (`$.cdid`, `$.cmid`, `$.on`, …) and its application properties in the bag.
#[must_use]
pub fn telemetry(device: &str, msg: &Message) -> String {
    let sys: Vec<_> = msg.system.iter().map(|(p, _)| p).collect();
    format!("devices/{device}/messages/events/{}", encode_bag(msg, &sys))
}

/// `devices/{d}/messages/events/#`: what a backend subscribes to for a device's telemetry.
#[must_use]
pub fn telemetry_filter(device: &str) -> String {
    format!("devices/{device}/messages/events/#")
}

/// `edge/{d}/deployment`: the retained desired deployment `{"version": n, "manifest": {…}}`.
#[must_use]
pub fn deployment(device: &str) -> String {
    format!("{ROOT}/{device}/deployment")
}

/// `edge/{d}/{id}/twin/PATCH/properties/reported/?$rid={rid}&$version={v}`: a reported patch.
#[must_use]
pub fn reported_patch(device: &str, identity: &str, rid: u64, version: u64) -> String {
    format!(
        "{ROOT}/{device}/{identity}/twin/PATCH/properties/reported/?$rid={rid}&$version={version}"
    )
}

/// `edge/{d}/{id}/twin/reported`: the retained whole reported document (with `$version`).
#[must_use]
pub fn reported_doc(device: &str, identity: &str) -> String {
    format!("{ROOT}/{device}/{identity}/twin/reported")
}

/// `edge/{d}/+/twin/reported`: every retained reported document of a device.
#[must_use]
pub fn reported_doc_filter(device: &str) -> String {
    format!("{ROOT}/{device}/+/twin/reported")
}

/// `edge/{d}/{id}/twin/PATCH/properties/desired/?$version={v}`: a desired patch for a module.
#[must_use]
pub fn desired_patch(device: &str, identity: &str, version: u64) -> String {
    format!("{ROOT}/{device}/{identity}/twin/PATCH/properties/desired/?$version={version}")
}

/// `edge/{d}/{id}/methods/POST/{name}/?$rid={rid}`: a direct-method request.
#[must_use]
pub fn method_request(device: &str, identity: &str, name: &str, rid: &str) -> String {
    format!("{ROOT}/{device}/{identity}/methods/POST/{name}/?$rid={rid}")
}

/// `edge/{d}/{id}/methods/res/{status}/?$rid={rid}`: a direct-method answer.
#[must_use]
pub fn method_response(device: &str, identity: &str, status: i32, rid: &str) -> String {
    format!("{ROOT}/{device}/{identity}/methods/res/{status}/?$rid={rid}")
}

/// What the device subscribes to.
#[must_use]
pub fn device_filters(device: &str) -> Vec<String> {
    vec![
        deployment(device),
        format!("{ROOT}/{device}/+/twin/PATCH/properties/desired/#"),
        format!("{ROOT}/{device}/+/methods/POST/#"),
    ]
}

/// A topic a device receives, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ToDevice<'a> {
    /// The retained desired deployment.
    Deployment,
    /// A desired patch for `identity`.
    DesiredPatch {
        /// The module (or `$edgeAgent` / `$edgeHub`).
        identity: &'a str,
    },
    /// A method call.
    Method {
        /// The module.
        identity: &'a str,
        /// The method name.
        name: &'a str,
        /// The request id to answer with.
        rid: &'a str,
    },
}

/// Parses a topic the device received; `None` for anything outside the scheme.
#[must_use]
pub fn parse_to_device<'a>(device: &str, topic: &'a str) -> Option<ToDevice<'a>> {
    let rest = topic.strip_prefix(ROOT)?.strip_prefix('/')?;
    let rest = rest.strip_prefix(device)?.strip_prefix('/')?;
    if rest == "deployment" {
        return Some(ToDevice::Deployment);
    }
    let (identity, rest) = rest.split_once('/')?;
    if rest.starts_with("twin/PATCH/properties/desired/") {
        return Some(ToDevice::DesiredPatch { identity });
    }
    let rest = rest.strip_prefix("methods/POST/")?;
    let (name, query) = rest.split_once('/')?;
    let rid = query_param(query, "$rid")?;
    Some(ToDevice::Method {
        identity,
        name,
        rid,
    })
}

/// A topic the backend receives from a device, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FromDevice<'a> {
    /// The whole reported document of `identity`.
    ReportedDoc {
        /// The device.
        device: &'a str,
        /// The module or system identity.
        identity: &'a str,
    },
    /// A method answer.
    MethodResponse {
        /// The device.
        device: &'a str,
        /// The module.
        identity: &'a str,
        /// The status.
        status: i32,
        /// The request id.
        rid: &'a str,
    },
}

/// Parses a topic a backend received from a device.
#[must_use]
pub fn parse_from_device(topic: &str) -> Option<FromDevice<'_>> {
    let rest = topic.strip_prefix(ROOT)?.strip_prefix('/')?;
    let (device, rest) = rest.split_once('/')?;
    let (identity, rest) = rest.split_once('/')?;
    if rest == "twin/reported" {
        return Some(FromDevice::ReportedDoc { device, identity });
    }
    let rest = rest.strip_prefix("methods/res/")?;
    let (status, query) = rest.split_once('/')?;
    Some(FromDevice::MethodResponse {
        device,
        identity,
        status: status.parse().ok()?,
        rid: query_param(query, "$rid")?,
    })
}

fn query_param<'a>(query: &'a str, key: &str) -> Option<&'a str> {
    query
        .strip_prefix('?')?
        .split('&')
        .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
}

#[cfg(test)]
mod tests {
    use super::*;
    use edge_core::message::SysProp;

    #[test]
    fn telemetry_carries_connection_module() {
        let m = Message::new("x")
            .with_system(SysProp::ConnectionModuleId, "scoring")
            .with_property("k", "a b");
        assert_eq!(
            telemetry("dev1", &m),
            "devices/dev1/messages/events/%24.cmid=scoring&k=a%20b"
        );
    }

    #[test]
    fn device_topics_round_trip() {
        assert_eq!(
            parse_to_device("d1", &deployment("d1")),
            Some(ToDevice::Deployment)
        );
        assert_eq!(parse_to_device("d2", &deployment("d1")), None);
        assert_eq!(
            parse_to_device("d1", &desired_patch("d1", "m1", 3)),
            Some(ToDevice::DesiredPatch { identity: "m1" })
        );
        assert_eq!(
            parse_to_device("d1", &method_request("d1", "m1", "reset", "42")),
            Some(ToDevice::Method {
                identity: "m1",
                name: "reset",
                rid: "42"
            })
        );
        assert_eq!(parse_to_device("d1", "edge/d1/m1/other"), None);
    }

    #[test]
    fn backend_topics_round_trip() {
        assert_eq!(
            parse_from_device(&reported_doc("d1", "$edgeAgent")),
            Some(FromDevice::ReportedDoc {
                device: "d1",
                identity: "$edgeAgent"
            })
        );
        assert_eq!(
            parse_from_device(&method_response("d1", "m1", 200, "7")),
            Some(FromDevice::MethodResponse {
                device: "d1",
                identity: "m1",
                status: 200,
                rid: "7"
            })
        );
        assert_eq!(parse_from_device(&reported_patch("d1", "m1", 1, 2)), None);
    }
}
