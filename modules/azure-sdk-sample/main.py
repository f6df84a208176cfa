"""A module written for Azure IoT Edge, on Azure's own Python SDK, unchanged.

It uses nothing of this project: `IoTHubModuleClient.create_from_edge_environment()` reads
the IOTEDGE_* variables the agent sets, fetches the trust bundle and token signatures from
edged's workload API and connects over TLS to the hub on port 8883, exactly as it would under
Azure's edgeAgent/edgeHub.

What it does, so that an operator (or a test) can see every feature working:
- every message on any input is counted and described in the reported property
  `inputs.<input>` (count, body, message id, content type, properties); messages on the input
  `forward` are sent on again to the output `forwarded` with their properties;
- direct methods: `echo` answers with its payload; `send` sends
  `{"output", "body", "properties", "messageId", "contentType"}` to an output; others get 404;
- desired property patches are acknowledged in the reported property `desired`;
- at start it reads its twin and reports `sample.status = "running"`.

Environment (optional): `SAMPLE_SASTOKEN_TTL` (seconds, default 3600) shortens the token
lifetime; the SDK renews the token (a new signature and a reconnect) 120 s before it expires.
"""

import json
import logging
import os
import queue
import signal
import sys
import threading

from azure.iot.device import IoTHubModuleClient, Message, MethodResponse

log = logging.getLogger("azure-sdk-sample")


def describe(msg, input_name):
    """A JSON-friendly view of a received message."""
    data = msg.data
    if isinstance(data, bytes):
        data = data.decode("utf-8", errors="replace")
    return {
        "input": input_name,
        "body": data,
        "messageId": msg.message_id,
        "correlationId": msg.correlation_id,
        "contentType": msg.content_type,
        "contentEncoding": msg.content_encoding,
        # A list, so that a merge patch replaces it as a whole.
        "properties": sorted([k, v] for k, v in (msg.custom_properties or {}).items()),
    }


def build_message(spec):
    """A Message from a `send` method payload."""
    body = spec.get("body", "")
    if not isinstance(body, str):
        body = json.dumps(body)
    msg = Message(body)
    msg.message_id = spec.get("messageId")
    msg.correlation_id = spec.get("correlationId")
    msg.content_type = spec.get("contentType")
    msg.content_encoding = spec.get("contentEncoding")
    for k, v in (spec.get("properties") or {}).items():
        msg.custom_properties[k] = v
    return msg


def main():
    logging.basicConfig(
        level=logging.INFO, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s"
    )
    ttl = int(os.environ.get("SAMPLE_SASTOKEN_TTL", "3600"))
    client = IoTHubModuleClient.create_from_edge_environment(sastoken_ttl=ttl)
    events = queue.Queue()
    stop = threading.Event()

    def on_term(_signum, _frame):
        stop.set()
        events.put(("stop", None))

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)

    # Handlers run on the SDK's threads; they only queue work for the main loop.
    client.on_message_received = lambda m: events.put(("message", m))
    client.on_method_request_received = lambda r: events.put(("method", r))
    client.on_twin_desired_properties_patch_received = lambda p: events.put(("desired", p))
    client.connect()

    twin = client.get_twin()
    client.patch_twin_reported_properties(
        {"sample": {"status": "running", "desiredVersionAtStart": twin["desired"]["$version"]}}
    )
    log.info("running, desired version %s", twin["desired"]["$version"])

    counts = {}
    while not stop.is_set():
        try:
            kind, item = events.get(timeout=1.0)
        except queue.Empty:
            continue
        try:
            if kind == "message":
                name = item.input_name
                counts[name] = counts.get(name, 0) + 1
                view = describe(item, name)
                log.info("input %s #%d: %s", name, counts[name], view["body"])
                client.patch_twin_reported_properties(
                    {"inputs": {name: {"count": counts[name], "last": view}}}
                )
                if name == "forward":
                    out = Message(item.data)
                    out.message_id = item.message_id
                    out.content_type = item.content_type
                    out.content_encoding = item.content_encoding
                    for k, v in (item.custom_properties or {}).items():
                        if not k.startswith("$."):
                            out.custom_properties[k] = v
                    client.send_message_to_output(out, "forwarded")
            elif kind == "method":
                log.info("method %s", item.name)
                if item.name == "echo":
                    status, payload = 200, item.payload
                elif item.name == "send":
                    spec = item.payload or {}
                    client.send_message_to_output(build_message(spec), spec.get("output", "out"))
                    status, payload = 200, {"sent": True}
                else:
                    status, payload = 404, {"message": "no method " + item.name}
                client.send_method_response(MethodResponse.create_from_method_request(item, status, payload))
            elif kind == "desired":
                version = item.get("$version")
                patch = {k: v for k, v in item.items() if k != "$version"}
                log.info("desired patch version %s", version)
                client.patch_twin_reported_properties(
                    {"desired": {"lastVersion": version, "last": json.dumps(patch, sort_keys=True)}}
                )
        except Exception:  # keep serving; the SDK retries transient failures itself
            log.exception("handling %s failed", kind)

    log.info("stopping")
    client.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
