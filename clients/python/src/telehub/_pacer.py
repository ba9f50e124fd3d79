"""Client-side pacing of telemetry within the hub's per-connection rate limit.

The hub checks every telemetry frame against a token bucket of ``rate_per_second``
and ``burst`` (the Welcome says which), created when the connection opens. The
device spends from a bucket of its own, started when the Welcome arrives (so never
ahead of the hub's) with less of both (98 % of the rate and half the burst, as
docs/devices.md advises): frames that travel closer together than they were sent
still find a token at the hub. Refusals that happen anyway (another clock, a hub that restarted its
count) are resent after the hub's ``retry_after_ms``, and ``pause`` empties the
bucket until then.
"""

from __future__ import annotations

import asyncio

__all__ = ["Pacer"]


class Pacer:
    def __init__(self, rate_per_second: float, burst: int) -> None:
        self._rate = max(rate_per_second * 0.98, 0.001)
        self._capacity = float(max(1, burst // 2))
        loop = asyncio.get_running_loop()
        self._clock = loop.time
        self._tokens = self._capacity
        self._updated = self._clock()
        self._not_before = 0.0

    def pause(self, seconds: float) -> None:
        """The hub refused a frame: nothing more until ``seconds`` from now."""
        now = self._clock()
        self._not_before = max(self._not_before, now + seconds)
        self._tokens = 0.0
        self._updated = max(self._updated, self._not_before)

    async def take(self) -> None:
        """Waits until one frame may go out, and spends its token."""
        while True:
            now = self._clock()
            if now < self._not_before:
                await asyncio.sleep(self._not_before - now)
                continue
            if now > self._updated:
                self._tokens = min(self._capacity, self._tokens + (now - self._updated) * self._rate)
                self._updated = now
            if self._tokens >= 1.0:
                self._tokens -= 1.0
                return
            await asyncio.sleep((1.0 - self._tokens) / self._rate)
