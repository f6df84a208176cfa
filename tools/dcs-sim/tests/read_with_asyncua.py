"""Independent OPC UA client check of dcs-sim (Python asyncua).

Usage: read_with_asyncua.py ENDPOINT [--write ID=VALUE] ID...
Connects with security None, finds the namespace index of urn:edge-runtime:dcs-sim, browses
the DCS folder, optionally writes a Double, and prints one JSON object:
{"ns": N, "browse": [names under DCS], "values": {ID: value}}.
"""
import asyncio
import json
import sys

from asyncua import Client, ua


async def main(argv):
    url = argv[0]
    writes = []
    ids = []
    it = iter(argv[1:])
    for a in it:
        if a == "--write":
            k, v = next(it).split("=", 1)
            writes.append((k, float(v)))
        else:
            ids.append(a)
    async with Client(url=url, timeout=10) as client:
        ns = await client.get_namespace_index("urn:edge-runtime:dcs-sim")
        dcs = client.get_node(ua.NodeId("DCS", ns))
        names = sorted([(await c.read_browse_name()).Name for c in await dcs.get_children()])
        for k, v in writes:
            await client.get_node(ua.NodeId(k, ns)).write_value(ua.DataValue(ua.Variant(v, ua.VariantType.Double)))
        values = {}
        for i in ids:
            v = await client.get_node(ua.NodeId(i, ns)).read_value()
            values[i] = v.isoformat() if hasattr(v, "isoformat") else v
        print(json.dumps({"ns": ns, "browse": names, "values": values}))


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1:]))
