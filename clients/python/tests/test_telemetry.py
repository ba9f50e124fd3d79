"""Telemetry from a Device to a Dashboard through a real hub: exact readings,
filters, confirmations, buffering while offline, pacing and rate-limit resends."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Callable, Dict, List

import pytest

import telehub
from conftest import Hub, free_port, run


async def telemetry_until(
    dash: telehub.Dashboard, done: Callable[[List[telehub.Telemetry]], bool], timeout: float = 10.0
) -> List[telehub.Telemetry]:
    """The dashboard's telemetry until `done(received)` holds (bounded)."""
    got: List[telehub.Telemetry] = []
    deadline = time.monotonic() + timeout
    while not done(got):
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"timed out; received seqs {[t.seq for t in got]}")
        try:
            event = await dash.next(left)
        except asyncio.TimeoutError:
            continue
        if isinstance(event, telehub.Telemetry):
            got.append(event)
    return got


async def quiet(dash: telehub.Dashboard, seconds: float) -> List[telehub.Telemetry]:
    """Telemetry that arrives within `seconds` (expected: none)."""
    got: List[telehub.Telemetry] = []
    deadline = time.monotonic() + seconds
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return got
        try:
            event = await dash.next(left)
        except asyncio.TimeoutError:
            return got
        if isinstance(event, telehub.Telemetry):
            got.append(event)


def test_telemetry_reaches_a_dashboard_with_exact_readings_and_units(hub: Hub) -> None:
    sent = [
        {
            "temperature": (21.5, "Cel"),
            "rssi": (-67, "dBm"),
            "charging": True,
            "status": "Temperatur 21,5 °C – ok ✓",
            "frame": b"\x00\x01\xfe\xff",
        },
        [
            telehub.Reading("pressure", 0.1 + 0.2, "bar"),
            telehub.Reading("uptime", -(2**62), "s"),
            telehub.Reading("door_open", False),
        ],
        {"empty_text": "", "zero": 0, "nan_free": 1e-300},
    ]
    want = [
        [
            telehub.Reading("temperature", 21.5, "Cel"),
            telehub.Reading("rssi", -67, "dBm"),
            telehub.Reading("charging", True),
            telehub.Reading("status", "Temperatur 21,5 °C – ok ✓"),
            telehub.Reading("frame", b"\x00\x01\xfe\xff"),
        ],
        list(sent[1]),
        [telehub.Reading("empty_text", ""), telehub.Reading("zero", 0), telehub.Reading("nan_free", 1e-300)],
    ]

    async def scenario() -> None:
        async with hub.dashboard() as dash:
            subscribed = await dash.subscribe(["lab.*"], tags={"fleet": "north"})
            assert subscribed == ["lab.*"]
            north = telehub.Device(hub.url, hub.token("device", "lab-north", "--tag", "fleet=north"), ca_file=hub.ca)
            south = telehub.Device(hub.url, hub.token("device", "lab-south", "--tag", "fleet=south"), ca_file=hub.ca)
            async with north, south:
                welcome = await north.wait_connected(10)
                assert (welcome.subject, welcome.role, welcome.confirmations) == ("lab-north", "device", True)
                await south.wait_connected(10)
                for i, readings in enumerate(sent):
                    south.send("lab.climate", {"other": i})
                    assert north.send("lab.climate", readings, timestamp_ms=1_700_000_000_000 + i) == i + 1
                await north.flush(10)
                await south.flush(10)
                got = await telemetry_until(dash, lambda g: len(g) >= len(sent))
                # Only the north device passes the tag filter.
                assert await quiet(dash, 0.3) == []
        for i, t in enumerate(got):
            assert (t.device_id, t.category, t.seq, t.timestamp_ms) == ("lab-north", "lab.climate", i + 1, 1_700_000_000_000 + i)
            assert t.readings == want[i], f"message {i + 1}"
            assert t.received_ms > 0 and not t.history
        assert got[0].values["temperature"] == 21.5
        # bool stays bool, int stays int through the wire.
        assert type(got[0].values["charging"]) is bool and type(got[0].values["rssi"]) is int

    run(scenario())


def test_presence_and_subscription_errors(hub: Hub) -> None:
    async def scenario() -> None:
        async with hub.dashboard() as dash:
            with pytest.raises(telehub.SubscriptionError) as refused:
                await dash.subscribe(["not a pattern!"])
            assert refused.value.code == "INVALID_SUBSCRIPTION"
            await dash.subscribe(["presence.*"])
            async with hub.device("presence-dev") as dev:
                await dev.wait_connected(10)
                event = await dash.next(10)
                while not (isinstance(event, telehub.Presence) and event.device_id == "presence-dev"):
                    event = await dash.next(10)
                assert event.online
            event = await dash.next(10)
            while not (isinstance(event, telehub.Presence) and event.device_id == "presence-dev"):
                event = await dash.next(10)
            assert not event.online

    run(scenario())


def test_confirmations_arrive_and_the_buffer_drains(hub: Hub) -> None:
    async def scenario() -> None:
        async with hub.dashboard() as dash:
            await dash.subscribe(["drain.*"])
            async with hub.device("drain-dev") as dev:
                await dev.wait_connected(10)
                for i in range(100):
                    dev.send("drain.level", {"i": i})
                assert dev.stats.buffered > 0
                await dev.flush(10)
                s = dev.stats
                assert (s.queued, s.confirmed, s.confirmed_through, s.buffered) == (100, 100, 100, 0), s
                assert (s.transmitted, s.resent, s.dropped, s.rate_limited) == (100, 0, 0, 0), s
                got = await telemetry_until(dash, lambda g: len(g) >= 100)
                assert [t.seq for t in got] == list(range(1, 101))
                assert [t.values["i"] for t in got] == list(range(100))

    run(scenario())


def test_buffered_while_the_hub_is_down_oldest_dropped_when_full(make_hub: Callable[..., Hub]) -> None:
    """The device starts while its hub is down: `send` buffers (at most
    `max_buffered`, dropping the oldest), the device keeps retrying, and once the
    hub is up everything kept is sent, confirmed and seen by a dashboard."""
    h = make_hub()
    h.stop()

    async def scenario() -> None:
        dev = h.device("offline-dev", max_buffered=10)
        async with dev:
            for i in range(1, 16):
                dev.send("offline.t", {"i": i})
            await asyncio.sleep(0.5)
            s = dev.stats
            assert (s.buffered, s.dropped, s.connections, s.transmitted) == (10, 5, 0, 0), s
            await asyncio.get_running_loop().run_in_executor(None, h.start)
            async with h.dashboard() as dash:
                # The History of the subscription holds what arrived before it.
                await dash.subscribe(["offline.*"])
                await dev.flush(10)
                got = await telemetry_until(dash, lambda g: len(g) >= 10)
            assert [t.seq for t in got] == list(range(6, 16))
            s = dev.stats
            assert (s.confirmed_through, s.buffered, s.dropped, s.connections) == (15, 0, 5, 1), s

    run(scenario())


def test_rate_limited_messages_are_resent_and_paced_ones_never_refused(make_hub: Callable[..., Hub]) -> None:
    h = make_hub("--rate", "20", "--burst", "5")

    async def scenario() -> None:
        async with h.dashboard() as dash:
            await dash.subscribe(["rl.*"])
            # Without pacing: most of a burst of 40 is refused, resent after
            # retry_after_ms with the same seq, and confirmed in the end.
            async with h.device("rl-unpaced", pace=False) as dev:
                welcome = await dev.wait_connected(10)
                assert (welcome.rate_per_second, welcome.burst) == (20, 5)
                for i in range(40):
                    dev.send("rl.unpaced", {"i": i})
                await dev.flush(20)
                s = dev.stats
                assert s.rate_limited > 0 and s.resent > 0, s
                assert (s.confirmed_through, s.buffered, s.dropped) == (40, 0, 0), s
            got = await telemetry_until(dash, lambda g: len(g) >= 40)
            # Each seq published once: resends of refused messages are not duplicates.
            assert sorted(t.seq for t in got) == list(range(1, 41))
            assert all(t.values["i"] == t.seq - 1 for t in got)

            # Paced within the Welcome's rate and burst: nothing refused.
            async with h.device("rl-paced") as dev:
                await dev.wait_connected(10)
                started = time.monotonic()
                for i in range(40):
                    dev.send("rl.paced", {"i": i})
                await dev.flush(20)
                elapsed = time.monotonic() - started
                s = dev.stats
                assert (s.rate_limited, s.resent, s.confirmed_through) == (0, 0, 40), s
                # 4 at once, then 19/s.
                assert elapsed > 1.5, elapsed
            got = await telemetry_until(dash, lambda g: len(g) >= 40)
            assert [t.seq for t in got] == list(range(1, 41))

    run(scenario())


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
def test_hub_restart_mid_stream_loses_nothing_confirmed(make_hub: Callable[..., Hub], sig: int) -> None:
    """The hub is stopped (SIGTERM: it confirms what it accepted and closes with
    1001; SIGKILL: it just dies) and a new one started on the same port and data dir
    while the device keeps sending. At the end every seq is confirmed; the dashboard,
    which reconnects too, saw every message the new hub accepted (live or in the
    History of its re-subscription) and every message the old hub accepted, except
    perhaps the few that sat in its queue when the old hub went away (confirmed
    means published, not delivered: see the client README).
    What the old hub accepted but had not confirmed is sent again, and published
    again (at least once)."""
    h = make_hub("--rate", "2000", "--burst", "2000")
    # A few hundred messages a second: some are always in flight or unconfirmed.
    total, restart_after = 600, 200

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        async with h.dashboard() as dash, h.device("restart-dev") as dev:
            await dash.subscribe(["restart.*"])
            await dev.wait_connected(10)
            sent_at: Dict[int, float] = {}
            stop_at: List[float] = []
            through_old: List[int] = []

            async def restart() -> None:
                stop_at.append(time.monotonic())
                await loop.run_in_executor(None, h.stop, sig)
                # What the old hub sent is read by now, and nothing more can be
                # confirmed before the new hub is up.
                await asyncio.sleep(0.05)
                through_old.append(dev.stats.confirmed_through)
                await loop.run_in_executor(None, h.start)

            restarting = None
            for i in range(1, total + 1):
                seq = dev.send("restart.stream", {"i": i})
                sent_at[seq] = time.monotonic()
                if i == restart_after:
                    restarting = asyncio.ensure_future(restart())
                await asyncio.sleep(0.002)
            assert restarting is not None
            await restarting
            await dev.flush(15)
            s = dev.stats
            assert (s.confirmed_through, s.buffered, s.dropped) == (total, 0, 0), s
            assert s.connections == 2, s

            seen: Dict[int, int] = {}
            disconnects = 0
            deadline = time.monotonic() + 10
            while any(seq not in seen for seq in range(through_old[0] + 1, total + 1)):
                assert time.monotonic() < deadline, f"the dashboard is missing {sorted(set(range(1, total + 1)) - set(seen))}"
                try:
                    event = await dash.next(1)
                except asyncio.TimeoutError:
                    continue
                if isinstance(event, telehub.Telemetry):
                    seen[event.seq] = seen.get(event.seq, 0) + 1
                elif isinstance(event, telehub.Disconnected):
                    disconnects += 1
                    assert event.code == (1001 if sig == signal.SIGTERM else 1006), event
            assert disconnects == 1
            seen_more = await quiet(dash, 0.3)
            for t in seen_more:
                seen[t.seq] = seen.get(t.seq, 0) + 1

        old = through_old[0]
        missing = sorted(set(range(1, total + 1)) - set(seen))
        twice = sorted(seq for seq, n in seen.items() if n > 1)
        print(f"old hub confirmed through {old}; dashboard missed {missing}, saw twice {twice}")
        # Only messages the old hub had confirmed may be missing, and only those
        # sent in the moments before it was told to stop.
        assert all(seq <= old and stop_at[0] - sent_at[seq] < 1.0 for seq in missing), (missing, old)
        # Resent after the restart: at most those sent to the old hub unconfirmed.
        assert all(n == 1 or seq > old for seq, n in seen.items()), seen

    run(scenario(), timeout=45)


def test_send_refuses_what_the_hub_would_refuse(hub: Hub) -> None:
    async def scenario() -> None:
        async with hub.device("refuse-dev") as dev:
            await dev.wait_connected(10)
            with pytest.raises(ValueError):
                dev.send("bad category", {"x": 1})
            with pytest.raises(ValueError):
                dev.send("a..b", {"x": 1})
            with pytest.raises(TypeError):
                dev.send("ok.cat", {"x": [1, 2]})  # type: ignore[dict-item]
            with pytest.raises(ValueError):
                dev.send("ok.cat", {"x": 2**63})
            with pytest.raises(ValueError):
                dev.send("ok.cat", {"blob": b"x" * 70_000})
            assert dev.last_seq == 0, "nothing refused took a seq"
            assert dev.send("ok.cat", {"x": 1}) == 1
            await dev.flush(10)

    run(scenario())


def test_refused_credentials_stop_the_device(hub: Hub) -> None:
    async def scenario() -> None:
        dev = telehub.Device(hub.url, "not-a-token", ca_file=hub.ca)
        async with dev:
            with pytest.raises(telehub.AuthenticationError) as refused:
                await dev.wait_connected(10)
            assert refused.value.status == 401
            with pytest.raises(telehub.AuthenticationError):
                dev.send("x.y", {"v": 1})

        viewer = telehub.Device(hub.url, hub.token("viewer", "not-a-device"), ca_file=hub.ca)
        async with viewer:
            with pytest.raises(telehub.AuthenticationError) as refused:
                await viewer.wait_closed()
            assert refused.value.status == 403

        # Revoked while connected: close 4003, and the device stops.
        token = hub.token("device", "revoked-dev")
        async with telehub.Device(hub.url, token, ca_file=hub.ca) as dev:
            await dev.wait_connected(10)
            await asyncio.get_running_loop().run_in_executor(None, hub.rest, "POST", "/v1/revocations", {"token": token})
            with pytest.raises(telehub.AuthenticationError) as revoked:
                await asyncio.wait_for(dev.wait_closed(), 10)
            assert revoked.value.close_code == 4003

    run(scenario())


def test_a_device_keeps_retrying_and_moves_on_to_the_next_url(hub: Hub) -> None:
    nobody = f"wss://127.0.0.1:{free_port()}"
    quick = telehub.Backoff(initial=0.05, maximum=0.2)

    async def scenario() -> None:
        async with telehub.Device(nobody, "token", backoff=quick) as dev:
            dev.send("x.y", {"v": 1})
            with pytest.raises(asyncio.TimeoutError):
                await dev.wait_connected(0.5)
            assert dev.error is None and not dev.connected
            assert dev.stats.buffered == 1
        # Several URLs (the nodes of a cluster): a failed connect tries the next.
        token = hub.token("device", "two-urls")
        async with telehub.Device([nobody, hub.url], token, ca_file=hub.ca, backoff=quick) as dev:
            dev.send("x.y", {"v": 1})
            await dev.wait_connected(10)
            await dev.flush(10)

    run(scenario())


def test_a_device_with_a_client_certificate(make_hub: Callable[..., Hub]) -> None:
    """mTLS: a hub that takes device certificates, a device with one and no token,
    without permessage-deflate."""

    def issue(root: Path) -> None:
        subprocess.run(
            [os.environ["TELEHUB_BIN"], "certs", "issue-device", "--subject", "pi-cert", "--certs-dir", str(root / "certs")],
            check=True,
            capture_output=True,
            timeout=30,
        )

    h = make_hub(config='[tls]\ndevice_ca = "{root}/certs/device-ca.pem"\n', setup=issue)
    devices = Path(h.certs_dir) / "devices"

    async def scenario() -> None:
        async with h.dashboard() as dash:
            await dash.subscribe(["cert.*"])
            dev = telehub.Device(
                h.url,
                ca_file=h.ca,
                client_cert=str(devices / "pi-cert.pem"),
                client_key=str(devices / "pi-cert.key"),
                compression=False,
            )
            async with dev:
                welcome = await dev.wait_connected(10)
                assert welcome.subject == "pi-cert"
                dev.send("cert.t", {"v": (1.5, "V")})
                await dev.flush(10)
            got = await telemetry_until(dash, lambda g: len(g) >= 1)
            assert (got[0].device_id, got[0].readings) == ("pi-cert", [telehub.Reading("v", 1.5, "V")])

    run(scenario())
