#!/usr/bin/env python3
"""A Raspberry-Pi-style sensor loop on the telehub device library.

Every --interval seconds it reads a sensor (simulated here: swap `read_sensor` for
your driver, e.g. a BME280 over I2C), sends the readings, and prints each
notification the hub pushes; a CRITICAL one "stops the pump" before it is
acknowledged. Readings taken while the hub is unreachable wait in a spool file
(--spool) that also survives a reboot; Ctrl-C or SIGTERM (what systemd sends) stops
the loop after waiting a few seconds for the last readings to be confirmed.

    python sensor_loop.py --url wss://hub.lan:8443 --ca ca.pem --token-file device.jwt \\
        --interval 5 --spool /var/lib/sensor/spool.db
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import math
import random
import signal
import time
from typing import Dict, Tuple, Union

import telehub


def read_sensor(started: float) -> Dict[str, Union[float, bool, Tuple[float, str]]]:
    """A simulated climate sensor: a slow daily-like wave plus noise."""
    t = time.monotonic() - started
    temperature = 21.0 + 2.0 * math.sin(t / 60.0) + random.gauss(0, 0.05)
    humidity = 45.0 + 5.0 * math.cos(t / 90.0) + random.gauss(0, 0.2)
    return {
        "temperature": (round(temperature, 2), "Cel"),
        "humidity": (round(humidity, 1), "%"),
        "fan_on": temperature > 22.5,
    }


def on_notification(note: telehub.Notification) -> None:
    """Runs for each notification once; it is acknowledged when this returns."""
    print(f"notification {note.id} [{note.severity.name}] {note.title}: {note.body}", flush=True)
    if note.critical:
        # Act before acknowledging: the ack tells the operator it was done.
        print("critical: pump stopped", flush=True)


async def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--url", required=True, help="the hub, wss://HOST:PORT")
    p.add_argument("--ca", help="PEM of the CA the hub's certificate chains to (default: system roots)")
    p.add_argument("--token-file", required=True, help="file holding the device token (JWT)")
    p.add_argument("--category", default="env.climate")
    p.add_argument("--interval", type=float, default=5.0, help="seconds between readings")
    p.add_argument("--count", type=int, default=0, help="stop after this many readings (0: run until stopped)")
    p.add_argument("--spool", help="SQLite file keeping unconfirmed readings across restarts")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    with open(args.token_file, encoding="utf-8") as f:
        token = f.read().strip()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)

    device = telehub.Device(args.url, token, ca_file=args.ca, spool=args.spool, on_notification=on_notification)
    started = time.monotonic()
    sent = 0
    async with device:
        while not stop.is_set():
            seq = device.send(args.category, read_sensor(started))
            sent += 1
            print(f"reading {seq} queued ({device.stats.buffered} unconfirmed)", flush=True)
            if args.count and sent >= args.count:
                break
            try:
                await asyncio.wait_for(stop.wait(), args.interval)
            except asyncio.TimeoutError:
                pass
        # What is still unconfirmed after this stays in the spool, if there is one.
        await device.close(flush_timeout=5)
    s = device.stats
    print(f"done: {s.queued} readings, confirmed through seq {s.confirmed_through}, {s.buffered} unconfirmed", flush=True)


if __name__ == "__main__":
    asyncio.run(main())
