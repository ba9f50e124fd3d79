"""Opening WebSocket connections to a hub, telling fatal failures from transient
ones, and the reconnection back-off: what ``Device`` and ``Dashboard`` share.

The transport is the ``websockets`` package (asyncio API): TLS through the
standard ``ssl`` module, permessage-deflate (RFC 7692) negotiated unless disabled,
keepalive pings, the subprotocol ``telehub.v1``.
"""

from __future__ import annotations

import asyncio
import logging
import random
import ssl
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Dict, List, Mapping, Optional, Sequence, TypeVar, Union
from urllib.parse import urlsplit, urlunsplit

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.version import version as websockets_version

from . import _proto
from ._version import VERSION
from .errors import AuthenticationError, TelehubError

log = logging.getLogger("telehub")

T = TypeVar("T")

USER_AGENT = f"telehub-python/{VERSION} websockets/{websockets_version}"

#: A token, or a function returning the current one (called before every
#: connection attempt, so a backend can hand out fresh tokens).
TokenSource = Union[str, Callable[[], str], None]

#: Close codes of the hub (README "Errors and closes").
CLOSE_NORMAL = 1000
CLOSE_GOING_AWAY = 1001
CLOSE_NO_STATUS = 1006
CLOSE_TAKEN_OVER = 4001
CLOSE_REVOKED = 4003
#: Closes after which a quick reconnect would meet the same fate, so the next
#: attempt waits the longest back-off: the client broke the protocol (1002, 1003,
#: 1007) or sent too large a message (1009), or another connection with the same
#: device id took over (4001: two devices share an id; fighting over it helps none).
LONG_BACKOFF_CLOSES = frozenset({1002, 1003, 1007, 1009, CLOSE_TAKEN_OVER})


@dataclass(frozen=True)
class Backoff:
    """Exponential back-off with jitter between connection attempts.

    The n-th consecutive failed attempt waits ``min(maximum, initial * factor**n)``
    seconds, less a random share of up to ``jitter`` of it: with the default
    ``jitter=1.0`` ("full jitter") anything between 0 and that, so a fleet that
    lost its hub at the same moment does not come back at the same moment. The
    count starts again once a connection has stayed up for ``reset_after``
    seconds. After the closes in ``LONG_BACKOFF_CLOSES`` the wait is
    ``long_delay()``: between half of ``maximum`` and all of it.
    """

    initial: float = 0.5
    maximum: float = 30.0
    factor: float = 2.0
    jitter: float = 1.0
    reset_after: float = 5.0

    def delay(self, attempt: int) -> float:
        base = min(self.maximum, self.initial * self.factor ** min(attempt, 64))
        return base * (1.0 - self.jitter * random.random())

    def long_delay(self) -> float:
        return self.maximum * (1.0 - 0.5 * random.random())


def endpoint_urls(url: Union[str, Sequence[str]], path: str) -> List[str]:
    """One URL or several (the same hub's nodes, tried in turn when a connect
    fails), each completed by ``endpoint_url``."""
    urls = [url] if isinstance(url, str) else list(url)
    if not urls:
        raise ValueError("no hub URL")
    return [endpoint_url(u, path) for u in urls]


def endpoint_url(url: str, path: str) -> str:
    """``wss://host:port`` (or with a path already) -> ``wss://host:port/v1/...``.
    ``https``/``http`` are accepted for ``wss``/``ws``."""
    parts = urlsplit(url)
    scheme = {"https": "wss", "http": "ws"}.get(parts.scheme, parts.scheme)
    if scheme not in ("wss", "ws"):
        raise ValueError(f"{url!r}: expected a wss:// (or ws://) URL")
    p = parts.path if parts.path not in ("", "/") else path
    return urlunsplit((scheme, parts.netloc, p, parts.query, ""))


def tls_context(
    ca_file: Optional[str] = None,
    client_cert: Optional[str] = None,
    client_key: Optional[str] = None,
    ssl_context: Optional[ssl.SSLContext] = None,
) -> ssl.SSLContext:
    """The TLS settings of a connection: ``ssl_context`` as given, or one that
    trusts ``ca_file`` (the system's roots without it) and presents
    ``client_cert``/``client_key`` (PEM) when the hub takes device certificates."""
    if ssl_context is not None:
        if ca_file or client_cert:
            raise ValueError("pass either ssl_context or ca_file/client_cert, not both")
        return ssl_context
    ctx = ssl.create_default_context(cafile=ca_file)
    if client_cert:
        ctx.load_cert_chain(client_cert, client_key)
    elif client_key:
        raise ValueError("client_key without client_cert")
    return ctx


def current_token(source: TokenSource) -> Optional[str]:
    return source() if callable(source) else source


async def open_connection(
    url: str,
    token: Optional[str],
    tls: Optional[ssl.SSLContext],
    *,
    compression: bool,
    open_timeout: float,
    options: Mapping[str, Any],
) -> ClientConnection:
    """One connection attempt; raises what ``classify`` sorts out."""
    headers: Dict[str, str] = {}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    kwargs: Dict[str, Any] = dict(
        additional_headers=headers,
        subprotocols=[_proto.PROTOCOL],
        compression="deflate" if compression else None,
        open_timeout=open_timeout,
        close_timeout=open_timeout,
        max_size=2**20,
        user_agent_header=USER_AGENT,
    )
    if url.startswith("wss:"):
        kwargs["ssl"] = tls
    kwargs.update(options)
    ws = await connect(url, **kwargs)
    if ws.subprotocol != _proto.PROTOCOL:
        await ws.close()
        raise TelehubError(f"the hub did not agree to subprotocol {_proto.PROTOCOL}")
    return ws


def refused_upgrade(e: InvalidStatus) -> Optional[AuthenticationError]:
    """The credential error for a refused upgrade (401, 403), or ``None`` for a
    status worth retrying (a proxy's 502, a 409 while another connection holds the
    device, the hub's 503)."""
    status = e.response.status_code
    if status not in (401, 403):
        return None
    body = e.response.body.decode("utf-8", "replace").strip() if e.response.body else ""
    detail = f"HTTP {status}" + (f": {body[:200]}" if body else "")
    return AuthenticationError(f"the hub refused the credentials ({detail})", status=status)


def closed_by_hub(e: ConnectionClosed) -> Optional[TelehubError]:
    """The fatal error for a close code (4003: the credential was revoked), or
    ``None`` to reconnect."""
    code = e.rcvd.code if e.rcvd is not None else CLOSE_NO_STATUS
    reason = e.rcvd.reason if e.rcvd is not None else ""
    if code == CLOSE_REVOKED:
        return AuthenticationError(f"the token was revoked (close {code} {reason})".strip(), close_code=code)
    return None


def close_of(e: BaseException) -> tuple[int, str]:
    """(code, reason) of a closed connection."""
    if isinstance(e, ConnectionClosed) and e.rcvd is not None:
        return e.rcvd.code, e.rcvd.reason
    return CLOSE_NO_STATUS, str(e) or type(e).__name__


async def unless_stopped(stop: asyncio.Event, connecting: Awaitable[T]) -> Optional[T]:
    """Awaits ``connecting`` unless ``stop`` is set first (then cancels it and
    returns ``None``), so closing a client never waits for a connection attempt."""
    attempt = asyncio.ensure_future(connecting)
    stopper = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({attempt, stopper}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopper.cancel()
    if attempt.done():
        return attempt.result()
    attempt.cancel()
    await asyncio.gather(attempt, return_exceptions=True)
    return None


async def timeout(aw: Awaitable[T], seconds: Optional[float]) -> T:
    """``aw``, or ``asyncio.TimeoutError`` after ``seconds``. Unlike
    ``asyncio.wait_for`` before Python 3.12, a cancellation that arrives as ``aw``
    completes is never swallowed, so the loops below always stop when cancelled."""
    task = asyncio.ensure_future(aw)
    try:
        done, _ = await asyncio.wait({task}, timeout=seconds)
    except BaseException:
        task.cancel()
        raise
    if not done:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        raise asyncio.TimeoutError()
    return task.result()


async def wait_event(event: asyncio.Event, seconds: Optional[float]) -> bool:
    """Waits until ``event`` is set, at most ``seconds``; returns whether it is."""
    if event.is_set():
        return True
    try:
        await timeout(event.wait(), seconds)
    except asyncio.TimeoutError:
        pass
    return event.is_set()


async def sleep_unless(stop: asyncio.Event, seconds: float) -> bool:
    """Sleeps ``seconds``; returns True early if ``stop`` is set meanwhile."""
    return await wait_event(stop, seconds)
