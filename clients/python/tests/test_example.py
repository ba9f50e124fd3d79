"""examples/sensor_loop.py runs as documented against a real hub: its readings reach
a dashboard and a CRITICAL notification is handled and acknowledged."""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path
from typing import List

import telehub
from conftest import Hub, device_state, notify, run

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "sensor_loop.py"


def test_the_sensor_loop_example(hub: Hub, tmp_path: Path) -> None:
    token_file = tmp_path / "device.jwt"
    token_file.write_text(hub.token("device", "example-pi") + "\n")

    async def scenario() -> None:
        async with hub.dashboard() as dash:
            await dash.subscribe(["env.climate"], device_ids=["example-pi"])
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                str(EXAMPLE),
                "--url",
                hub.url,
                "--ca",
                hub.ca,
                "--token-file",
                str(token_file),
                "--interval",
                "0.1",
                "--count",
                "25",
                "--spool",
                str(tmp_path / "spool.db"),
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
            )
            try:
                got: List[telehub.Telemetry] = []
                nid = None
                deadline = time.monotonic() + 15
                while len(got) < 25:
                    assert time.monotonic() < deadline, [t.seq for t in got]
                    try:
                        event = await dash.next(1)
                    except asyncio.TimeoutError:
                        continue
                    if isinstance(event, telehub.Telemetry):
                        got.append(event)
                        if nid is None:
                            nid = await notify(hub, "example-pi", title="Leak detected", body="Stop the pump")
                assert nid is not None
                await device_state(hub, nid, "example-pi", "acknowledged")
                out, _ = await asyncio.wait_for(proc.communicate(), 15)
            finally:
                if proc.returncode is None:
                    proc.kill()
                    await proc.wait()
        text = out.decode()
        assert proc.returncode == 0, text
        assert f"notification {nid} [CRITICAL] Leak detected: Stop the pump" in text, text
        assert "critical: pump stopped" in text, text
        assert "done: 25 readings, confirmed through seq 25, 0 unconfirmed" in text, text
        assert [t.seq for t in got] == list(range(1, 26))
        first = got[0]
        assert [(r.name, r.unit) for r in first.readings] == [("temperature", "Cel"), ("humidity", "%"), ("fan_on", "")]
        assert isinstance(first.values["fan_on"], bool) and 15 < first.values["temperature"] < 30  # type: ignore[operator]

    run(scenario())
