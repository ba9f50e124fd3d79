#!/usr/bin/env python3
"""A telehub device and dashboard built on independent libraries: Python `websockets`
(asyncio API) for the transport and Google's `protobuf` for the envelopes.

tests/interop_clients.rs runs this script against a hub it started: a dashboard
connects and subscribes to one category, a device connects and sends the telemetry
envelopes of --telemetry (proto3 JSON, one Envelope a line), the dashboard receives
them, both close normally. It prints exactly one JSON line: what each connection
offered and negotiated, the Welcome and Subscribed it got, and the envelopes the
dashboard received (proto3 JSON), for the Rust test to check. Anything unexpected
raises and exits non-zero with a traceback on stderr.

The message classes are built at run time from the FileDescriptorSet the hub's build
writes (--descriptor): no protoc, no generated code in the repository.
"""

import argparse
import asyncio
import json
import ssl
import sys

try:
    from google.protobuf import descriptor_pb2, json_format, message_factory
    from websockets.asyncio.client import connect
    from websockets.extensions.permessage_deflate import ClientPerMessageDeflateFactory
except ImportError as e:
    sys.exit(f"py_client.py: {e}; the interop test dependencies are missing: run `bash .ci/run`")

PROTOCOL = "telehub.v1"
# Bound on every single wait; the Rust test bounds the whole run as well.
TIMEOUT = 10.0


def arguments():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--url", required=True, help="wss://127.0.0.1:PORT")
    p.add_argument("--ca", required=True, help="PEM of the hub's CA")
    p.add_argument("--descriptor", required=True, help="FileDescriptorSet of telehub.proto")
    p.add_argument("--device-token", required=True)
    p.add_argument("--dashboard-token", required=True)
    p.add_argument("--category", required=True, help="what the dashboard subscribes to")
    p.add_argument("--telemetry", required=True, help="file of Envelopes, proto3 JSON lines")
    p.add_argument("--no-compression", action="store_true", help="offer no extension")
    p.add_argument("--client-max-window-bits", type=int)
    p.add_argument("--client-no-context-takeover", action="store_true")
    p.add_argument("--server-no-context-takeover", action="store_true")
    return p.parse_args()


def load_envelope(descriptor_path):
    with open(descriptor_path, "rb") as f:
        files = descriptor_pb2.FileDescriptorSet.FromString(f.read()).file
    return message_factory.GetMessages(files)["telehub.v1.Envelope"]


def compression_options(args):
    """keyword arguments for `connect`: no offer, websockets' default offer, or a
    permessage-deflate offer with the parameters asked for."""
    if args.no_compression:
        return {"compression": None}
    custom = (
        args.client_max_window_bits is not None
        or args.client_no_context_takeover
        or args.server_no_context_takeover
    )
    if not custom:
        return {}
    factory = ClientPerMessageDeflateFactory(
        client_max_window_bits=args.client_max_window_bits or True,
        client_no_context_takeover=args.client_no_context_takeover,
        server_no_context_takeover=args.server_no_context_takeover,
        # What websockets' default factory uses.
        compress_settings={"memLevel": 5},
    )
    return {"extensions": [factory]}


async def next_envelope(ws, Envelope):
    msg = await asyncio.wait_for(ws.recv(), TIMEOUT)
    if not isinstance(msg, bytes):
        raise AssertionError(f"expected a binary frame, got text {msg!r}")
    return Envelope.FromString(msg)


async def expect(ws, Envelope, kind):
    """The next envelope of `kind`, skipping presence events (which may come first)."""
    while True:
        env = await next_envelope(ws, Envelope)
        got = env.WhichOneof("body")
        if got == kind:
            return env
        if got != "presence":
            raise AssertionError(f"expected {kind}, got {json_format.MessageToDict(env)}")


def handshake(ws):
    return {
        "offered": ws.request.headers.get("Sec-WebSocket-Extensions"),
        "extensions": ws.response.headers.get("Sec-WebSocket-Extensions"),
        "protocol": ws.subprotocol,
        # What websockets itself agreed to: it accepted the hub's answer.
        "agreed": ",".join(e.name for e in ws.protocol.extensions),
    }


async def run(args):
    Envelope = load_envelope(args.descriptor)
    with open(args.telemetry, encoding="utf-8") as f:
        outgoing = [json_format.ParseDict(json.loads(line), Envelope()) for line in f if line.strip()]
    tls = ssl.create_default_context(cafile=args.ca)
    options = dict(
        ssl=tls,
        subprotocols=[PROTOCOL],
        open_timeout=TIMEOUT,
        close_timeout=TIMEOUT,
        **compression_options(args),
    )
    report = {}

    async with connect(
        f"{args.url}/v1/dashboard",
        additional_headers={"Authorization": f"Bearer {args.dashboard_token}"},
        **options,
    ) as dashboard:
        report["dashboard"] = handshake(dashboard)
        welcome = await expect(dashboard, Envelope, "welcome")
        report["dashboard"]["welcome"] = json_format.MessageToDict(welcome.welcome)
        subscribe = Envelope()
        subscribe.subscribe.categories.append(args.category)
        await dashboard.send(subscribe.SerializeToString())
        subscribed = await expect(dashboard, Envelope, "subscribed")
        report["dashboard"]["subscribed"] = list(subscribed.subscribed.categories)

        async with connect(
            f"{args.url}/v1/device",
            additional_headers={"Authorization": f"Bearer {args.device_token}"},
            **options,
        ) as device:
            report["device"] = handshake(device)
            welcome = await expect(device, Envelope, "welcome")
            report["device"]["welcome"] = json_format.MessageToDict(welcome.welcome)
            for env in outgoing:
                await device.send(env.SerializeToString())

            received = []
            while len(received) < len(outgoing):
                env = await expect(dashboard, Envelope, "telemetry")
                received.append(json_format.MessageToDict(env))
            report["received"] = received
        # Leaving `async with` ran the closing handshake: this is the hub's answer.
        report["device"]["close_code"] = device.close_code
    report["dashboard"]["close_code"] = dashboard.close_code

    print(json.dumps(report), flush=True)


if __name__ == "__main__":
    asyncio.run(asyncio.wait_for(run(arguments()), 3 * TIMEOUT))
