"""Notifications from the REST API to a Device through a real hub: delivered once,
acknowledged (automatically or explicitly), redeliveries kept from the application."""

from __future__ import annotations

import asyncio
import base64
import time
from typing import Any, Callable, List

import telehub
from conftest import Hub, device_state, free_port, notify, run


async def nothing_more(it: Any, seconds: float) -> None:
    try:
        extra = await asyncio.wait_for(it.__anext__(), seconds)
    except asyncio.TimeoutError:
        return
    raise AssertionError(f"delivered again: {extra}")


def test_a_critical_notification_is_received_once_and_acknowledged(hub: Hub) -> None:
    async def scenario() -> None:
        async with hub.device("notify-dev") as dev:
            await dev.wait_connected(10)
            payload = bytes(range(256))
            nid = await notify(
                hub, "notify-dev", body="Stop and acknowledge", payload=base64.b64encode(payload).decode()
            )
            notes = dev.notifications()
            note = await asyncio.wait_for(notes.__anext__(), 10)
            assert (note.id, note.severity, note.critical) == (nid, telehub.Severity.CRITICAL, True)
            assert (note.title, note.body, note.payload, note.redelivery) == (
                "Firmware recall",
                "Stop and acknowledge",
                payload,
                False,
            )
            assert note.expires_ms > note.created_ms > 0
            # auto_ack: acknowledged as the iterator handed it over.
            status = await device_state(hub, nid, "notify-dev", "acknowledged")
            assert status["counts"]["acknowledged"] == 1, status
            await nothing_more(notes, 0.5)
            s = dev.stats
            assert (s.notifications, s.acks_sent) == (1, 1), s

    run(scenario())


def test_explicit_acks_through_a_callback(hub: Hub) -> None:
    async def scenario() -> None:
        got: List[telehub.Notification] = []
        arrived = asyncio.Event()

        async def on_notification(note: telehub.Notification) -> None:
            got.append(note)
            arrived.set()

        dev = hub.device("callback-dev", auto_ack=False, on_notification=on_notification)
        async with dev:
            await dev.wait_connected(10)
            info = await notify(hub, "callback-dev", severity="info", title="Maintenance tonight")
            nid = await notify(hub, "callback-dev")
            while len(got) < 2:
                arrived.clear()
                await asyncio.wait_for(arrived.wait(), 10)
            assert [n.id for n in got] == [info, nid]
            assert got[0].severity == telehub.Severity.INFO and got[0].title == "Maintenance tonight"
            # Not acknowledged until the application says so.
            await device_state(hub, nid, "callback-dev", "delivered")
            dev.ack(got[1])
            await device_state(hub, nid, "callback-dev", "acknowledged")

    run(scenario())


def test_redeliveries_reach_the_application_once(make_hub: Callable[..., Hub]) -> None:
    """Unacknowledged, a CRITICAL notification comes again every ack_timeout (and
    after a reconnect); the application sees it once, and the ack ends it."""
    h = make_hub(config='[notify]\nack_timeout = "200ms"\nmax_retry_interval = "200ms"\n')

    async def scenario() -> None:
        async with h.device("redeliver-dev", auto_ack=False) as dev:
            await dev.wait_connected(10)
            nid = await notify(h, "redeliver-dev")
            notes = dev.notifications()
            note = await asyncio.wait_for(notes.__anext__(), 10)
            assert note.id == nid
            deadline = time.monotonic() + 10
            while dev.stats.duplicate_notifications < 2:
                assert time.monotonic() < deadline, dev.stats
                await asyncio.sleep(0.05)
            await nothing_more(notes, 0.3)
            # A reconnect (the hub restarts) resends it too.
            before = dev.stats.duplicate_notifications
            await asyncio.get_running_loop().run_in_executor(None, h.restart)
            deadline = time.monotonic() + 10
            while dev.stats.connections < 2 or dev.stats.duplicate_notifications <= before:
                assert time.monotonic() < deadline, dev.stats
                await asyncio.sleep(0.05)
            await nothing_more(notes, 0.3)
            dev.ack(note)
            status = await device_state(h, nid, "redeliver-dev", "acknowledged")
            assert status["devices"][0]["attempts"] >= 3, status
            assert dev.stats.notifications == 1

    run(scenario())


def test_the_spool_keeps_telemetry_and_acks_across_a_process_restart(hub: Hub, tmp_path) -> None:
    """A device with a spool: what it could not send survives `close` (a process
    restart), keeps its boot and seqs, and is sent once by the next process."""
    spool = str(tmp_path / "spool.db")

    async def scenario() -> None:
        async with hub.dashboard() as dash:
            await dash.subscribe(["spool.*"])
            token = hub.token("device", "spool-dev")
            # First run: the hub is out of reach (a port nobody listens on).
            first = telehub.Device(f"wss://127.0.0.1:{free_port()}", token, ca_file=hub.ca, spool=spool)
            async with first:
                for i in range(1, 6):
                    first.send("spool.t", {"i": i})
                boot = first.boot_id
            # Second run: same spool, the real hub. Sends a part and stops at once.
            second = telehub.Device(hub.url, token, ca_file=hub.ca, spool=spool)
            async with second:
                assert second.boot_id == boot and second.stats.buffered == 5
                assert second.send("spool.t", {"i": 6}) == 6
                await second.wait_connected(10)
            # Third run: whatever the second left unconfirmed is confirmed now,
            # and what the hub already had is not published twice.
            third = telehub.Device(hub.url, token, ca_file=hub.ca, spool=spool)
            async with third:
                assert third.boot_id == boot
                await third.wait_connected(10)
                third.send("spool.t", {"i": 7})
                await third.flush(10)
                assert third.stats.confirmed_through == 7 and third.stats.buffered == 0
            seen: List[int] = []
            deadline = time.monotonic() + 10
            while sorted(set(seen)) != list(range(1, 8)):
                assert time.monotonic() < deadline, seen
                try:
                    event = await dash.next(1)
                except asyncio.TimeoutError:
                    continue
                if isinstance(event, telehub.Telemetry):
                    assert event.values["i"] == event.seq
                    seen.append(event.seq)
            try:
                while True:
                    event = await dash.next(0.3)
                    if isinstance(event, telehub.Telemetry):
                        seen.append(event.seq)
            except asyncio.TimeoutError:
                pass
            assert sorted(seen) == list(range(1, 8)), "each message published once"

    run(scenario())
