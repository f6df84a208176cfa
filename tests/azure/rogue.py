"""A module that tries to get in where it must not, with Azure's unmodified Python SDK.

Launched by the agent like any module (so it has its own IOTEDGE_* identity), it tries:
- `wrongKey`: its own identity with a key the hub never issued;
- `otherIdentity`: a token for the module named by ROGUE_VICTIM, signed through the workload
  API with its own identity (the signature cannot match the victim's key);
- `expiredToken`: its own identity with a correctly signed token whose expiry has passed.
  The SDK itself refuses to use such a token (`expiredTokenSdk`: ValueError), so the CONNECT
  is sent with paho, the SDK's own MQTT library, as paho would on a reconnect with a stale
  password; the result is the CONNACK code;
- `workloadOther`: asking the workload API to sign as the victim.
Each outcome (the exception's class name, or "connected") is reported in the reported property
`refusals` through its own, legitimate connection, so the test can read it with `edgectl twin`.
"""

import base64
import os
import ssl
import sys
import time
import urllib.parse

import paho.mqtt.client as mqtt
from azure.iot.device import IoTHubModuleClient
from azure.iot.device.iothub.edge_hsm import IoTEdgeHsm


def outcome(make_client):
    """Tries to connect once (no retries) and returns what happened."""
    client = None
    try:
        client = make_client()
        client.connect()
        return "connected"
    except Exception as e:  # the class name is the observable result
        return type(e).__name__
    finally:
        if client is not None:
            try:
                client.shutdown()
            except Exception:
                pass


def raw_connect(host, port, client_id, username, password, bundle):
    """One MQTT CONNECT over TLS 1.2 with paho, no reconnects; returns `rc=<CONNACK code>`."""
    result = {}
    client = mqtt.Client(client_id=client_id, clean_session=False, protocol=mqtt.MQTTv311)
    client.username_pw_set(username, password)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLSv1_2)
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.check_hostname = True
    ctx.load_verify_locations(cadata=bundle)
    client.tls_set_context(ctx)
    client.on_connect = lambda _c, _u, _f, rc: result.setdefault("rc", rc)
    client.connect(host, port)
    deadline = time.monotonic() + 30
    while "rc" not in result and time.monotonic() < deadline:
        client.loop(timeout=0.1)
    client.disconnect()
    return "rc=%s" % result.get("rc")


def main():
    env = os.environ
    hub_host = env["IOTEDGE_IOTHUBHOSTNAME"]
    gateway = env["IOTEDGE_GATEWAYHOSTNAME"]
    device = env["IOTEDGE_DEVICEID"]
    me = env["IOTEDGE_MODULEID"]
    victim = env["ROGUE_VICTIM"]
    workload = env["IOTEDGE_WORKLOADURI"]
    if workload.startswith("unix://"):
        workload = "http+unix://" + urllib.parse.quote(workload[len("unix://"):], safe="") + "/"
    else:
        workload = workload.rstrip("/") + "/"
    hsm = IoTEdgeHsm(me, env["IOTEDGE_MODULEGENERATIONID"], workload, env["IOTEDGE_APIVERSION"])
    bundle = hsm.get_certificate()
    options = {"connection_retry": False, "server_verification_cert": bundle}

    def token(module, expiry):
        sr = urllib.parse.quote(f"{hub_host}/devices/{device}/modules/{module}", safe="")
        sig = hsm.sign(f"{sr}\n{expiry}")
        return f"SharedAccessSignature sr={sr}&sig={sig}&se={expiry}"

    results = {}
    random_key = base64.b64encode(os.urandom(32)).decode()
    results["wrongKey"] = outcome(
        lambda: IoTHubModuleClient.create_from_connection_string(
            f"HostName={hub_host};DeviceId={device};ModuleId={me};"
            f"SharedAccessKey={random_key};GatewayHostName={gateway}",
            **options,
        )
    )
    results["otherIdentity"] = outcome(
        lambda: IoTHubModuleClient.create_from_sastoken(
            token(victim, int(time.time()) + 3600), gateway_hostname=gateway, **options
        )
    )
    expired = token(me, int(time.time()) - 60)
    results["expiredTokenSdk"] = outcome(
        lambda: IoTHubModuleClient.create_from_sastoken(expired, gateway_hostname=gateway, **options)
    )
    results["expiredToken"] = raw_connect(
        gateway,
        8883,
        f"{device}/{me}",
        f"{hub_host}/{device}/{me}/?api-version=2019-10-01",
        expired,
        bundle,
    )
    try:
        IoTEdgeHsm(victim, env["IOTEDGE_MODULEGENERATIONID"], workload, env["IOTEDGE_APIVERSION"]).sign("x")
        results["workloadOther"] = "signed"
    except Exception as e:
        results["workloadOther"] = type(e).__name__

    print("results:", results, flush=True)
    client = IoTHubModuleClient.create_from_edge_environment()
    client.connect()
    client.patch_twin_reported_properties({"refusals": results})
    client.shutdown()
    # Stay up (a module that exits would be restarted and try again).
    while True:
        time.sleep(3600)


if __name__ == "__main__":
    sys.exit(main())
