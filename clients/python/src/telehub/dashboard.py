"""The dashboard side, for scripts: subscribe to categories and iterate over the
telemetry and presence the hub sends.

A ``Dashboard`` keeps one connection to ``wss://HOST:PORT/v1/dashboard`` (viewer or
operator token, subprotocol ``telehub.v1``) and, by default, reconnects after the
same back-off as devices, subscribing again to what it had subscribed. Each
Subscribe is answered with the recent history of the matching series, then live
telemetry. History, batches and live messages all come out as ``Telemetry``
events, with ``history=True`` for the replay, and the README's rule keeps each
message once: per series (device, category), only what is newer than the newest
already yielded, by ``(received_ms, seq)``. After a reconnect that rule makes the
replayed history fill exactly the gap the dashboard missed, within the history
the hub keeps (``dashboard.history_len`` messages per series, in memory: a
restarted hub has none).
"""

from __future__ import annotations

import asyncio
import collections
import logging
import ssl
from typing import Any, Deque, Dict, List, Mapping, Optional, Sequence, Set, Tuple, Union

from google.protobuf.message import DecodeError
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus, InvalidURI

from . import _proto, _transport
from ._transport import Backoff, TokenSource
from .errors import ClientClosedError, TelehubError
from .model import Connected, DashboardEvent, Disconnected, Dropped, Presence, Telemetry, Welcome

__all__ = ["Dashboard", "SubscriptionError"]

log = logging.getLogger("telehub")

_ERROR_CODES = {v: k for k, v in _proto.Error.Code.items()}


class SubscriptionError(TelehubError):
    """The hub refused a Subscribe (``INVALID_SUBSCRIPTION``, ``FORBIDDEN``,
    ``RATE_LIMITED``); nothing of it was applied."""

    def __init__(self, code: str, message: str, retry_after_ms: int = 0) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.retry_after_ms = retry_after_ms


class _Subscription:
    def __init__(
        self,
        categories: Sequence[str],
        device_ids: Sequence[str],
        tags: Mapping[str, str],
        max_delay_ms: int,
        conflate_ms: int,
    ) -> None:
        self.categories = list(categories)
        self.device_ids = list(device_ids)
        self.tags = dict(tags)
        self.max_delay_ms = max_delay_ms
        self.conflate_ms = conflate_ms

    def envelope(self) -> bytes:
        env = _proto.Envelope()
        s = env.subscribe
        s.categories.extend(self.categories)
        s.device_ids.extend(self.device_ids)
        for k, v in self.tags.items():
            s.tags[k] = v
        s.max_delay_ms = self.max_delay_ms
        s.conflate_ms = self.conflate_ms
        data: bytes = env.SerializeToString()
        return data


class Dashboard:
    """A dashboard connection for scripts.

    ::

        async with telehub.Dashboard("wss://hub.example:8443", viewer_token, ca_file="ca.pem") as dash:
            await dash.subscribe(["env.*"], tags={"fleet": "north"})
            async for event in dash:
                if isinstance(event, telehub.Telemetry):
                    print(event.device_id, event.values)

    Args:
        url: the hub, ``wss://HOST:PORT`` (``/v1/dashboard`` is added when no path
            is given), or a list of them: a failed connect moves on to the next.
        token: a viewer or operator JWT, or a function returning the current one.
        ca_file, ssl_context: TLS trust, as for ``Device``.
        compression: offer permessage-deflate (on by default).
        reconnect: reconnect after a lost connection (on by default); otherwise the
            iteration ends with the connection.
        dedup: yield each message once per series (see the module doc).
        backoff: reconnection delays.
        max_events: events held for a slow consumer; past it the oldest event is
            dropped (counted in ``dropped_events``) rather than stalling the
            connection.
        open_timeout: bound on connecting and on each reply, in seconds.
        connect_options: extra keyword arguments for ``websockets.connect``.
    """

    def __init__(
        self,
        url: Union[str, Sequence[str]],
        token: TokenSource,
        *,
        ca_file: Optional[str] = None,
        ssl_context: Optional[ssl.SSLContext] = None,
        compression: bool = True,
        reconnect: bool = True,
        dedup: bool = True,
        backoff: Backoff = Backoff(),
        max_events: int = 100_000,
        open_timeout: float = 10.0,
        connect_options: Optional[Mapping[str, Any]] = None,
    ) -> None:
        self._urls = _transport.endpoint_urls(url, "/v1/dashboard")
        #: The URL connected to, or tried next.
        self._url = self._urls[0]
        self._token = token
        self._tls = (
            _transport.tls_context(ca_file, None, None, ssl_context)
            if any(u.startswith("wss:") for u in self._urls)
            else None
        )
        self._compression = compression
        self._reconnect = reconnect
        self._dedup = dedup
        self._backoff = backoff
        self._max_events = max_events
        self._open_timeout = open_timeout
        self._connect_options = dict(connect_options or {})

        #: Subscriptions in force, oldest first, re-sent in this order after each
        #: reconnect; a pattern subscribed again moves to the newer one (the hub
        #: replaces its filter).
        self._subscriptions: List[_Subscription] = []
        #: Per series (device, category): newest received_ms and the seqs seen at it.
        self._newest: Dict[Tuple[str, str], Tuple[int, Set[int]]] = {}
        self._events: Deque[DashboardEvent] = collections.deque()
        self.dropped_events = 0
        self._ws: Optional[ClientConnection] = None
        self._welcome: Optional[Welcome] = None
        #: One per Subscribe/Unsubscribe sent on this connection, in order: who
        #: waits for its answer (None for subscriptions re-sent after a reconnect).
        self._replies: Deque[Optional["asyncio.Future[List[str]]"]] = collections.deque()
        self._error: Optional[BaseException] = None
        self._closed = False
        self._ended = False
        self._event: Optional[asyncio.Event] = None
        self._stop: Optional[asyncio.Event] = None
        self._connected: Optional[asyncio.Event] = None
        self._task: Optional["asyncio.Task[None]"] = None

    async def start(self, timeout: Optional[float] = None) -> "Dashboard":
        """Connects, retrying transient failures, and returns once connected
        (raises ``AuthenticationError`` for refused credentials, and
        ``asyncio.TimeoutError`` after ``timeout`` seconds, default
        ``open_timeout``)."""
        if self._task is None:
            if self._closed:
                raise ClientClosedError("the dashboard was closed")
            self._event = asyncio.Event()
            self._stop = asyncio.Event()
            self._connected = asyncio.Event()
            self._task = asyncio.ensure_future(self._run())
        assert self._connected is not None
        waiter = asyncio.ensure_future(self._connected.wait())
        try:
            done, _ = await asyncio.wait(
                {waiter, self._task},
                timeout=timeout if timeout is not None else self._open_timeout,
                return_when=asyncio.FIRST_COMPLETED,
            )
        finally:
            waiter.cancel()
        if self._error is not None:
            raise self._error
        if not done:
            raise asyncio.TimeoutError()
        return self

    async def close(self) -> None:
        """Closes the connection (1000); the iteration ends."""
        if self._closed:
            return
        self._closed = True
        if self._stop is not None:
            self._stop.set()
        if self._task is not None:
            await asyncio.gather(self._task, return_exceptions=True)

    async def __aenter__(self) -> "Dashboard":
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def welcome(self) -> Optional[Welcome]:
        return self._welcome

    @property
    def connected(self) -> bool:
        return self._ws is not None

    async def subscribe(
        self,
        categories: Sequence[str],
        *,
        device_ids: Sequence[str] = (),
        tags: Optional[Mapping[str, str]] = None,
        max_delay_ms: int = 0,
        conflate_ms: int = 0,
    ) -> List[str]:
        """Subscribes to category patterns (``"env.temperature"``, ``"env.*"``,
        ``"*"``), optionally only from ``device_ids`` or devices with all ``tags``;
        ``max_delay_ms`` for batched delivery, ``conflate_ms`` for conflated. Waits
        for the hub's answer and returns every pattern now subscribed; raises
        ``SubscriptionError`` if the hub refused it. Kept across reconnects."""
        if isinstance(categories, str):
            raise TypeError("categories must be a list of patterns, not one string")
        sub = _Subscription(categories, device_ids, tags or {}, max_delay_ms, conflate_ms)
        reply = await self._request(sub.envelope())
        self._forget(sub.categories)
        self._subscriptions.append(sub)
        return reply

    async def unsubscribe(self, categories: Sequence[str] = ()) -> List[str]:
        """Drops the named patterns (none: all); returns what stays subscribed."""
        env = _proto.Envelope()
        env.unsubscribe.categories.extend(categories)
        reply = await self._request(env.SerializeToString())
        if categories:
            self._forget(categories)
        else:
            self._subscriptions.clear()
        return reply

    def _forget(self, patterns: Sequence[str]) -> None:
        for s in self._subscriptions:
            s.categories = [c for c in s.categories if c not in patterns]
        self._subscriptions = [s for s in self._subscriptions if s.categories]

    async def _request(self, data: bytes) -> List[str]:
        if self._error is not None:
            raise self._error
        if self._closed or self._task is None:
            raise ClientClosedError("the dashboard is not open")
        assert self._connected is not None
        if not await _transport.wait_event(self._connected, self._open_timeout):
            raise asyncio.TimeoutError()
        ws = self._ws
        if ws is None:
            raise TelehubError("not connected")
        fut = asyncio.get_running_loop().create_future()
        self._replies.append(fut)
        await ws.send(data)
        return await _transport.timeout(fut, self._open_timeout)

    def __aiter__(self) -> "Dashboard":
        return self

    async def __anext__(self) -> DashboardEvent:
        """The next event: ``Telemetry``, ``Presence``, ``Dropped``, ``Connected``
        or ``Disconnected``. Ends after ``close``, or when the connection ends
        without ``reconnect``; raises the error that ended the dashboard."""
        if self._event is None:
            raise TelehubError("the dashboard is not started: call start() or use `async with`")
        while True:
            if self._events:
                return self._events.popleft()
            if self._error is not None:
                raise self._error
            if self._ended or self._closed:
                raise StopAsyncIteration
            self._event.clear()
            await self._event.wait()

    async def next(self, timeout: float) -> DashboardEvent:
        """The next event, waiting at most ``timeout`` seconds."""
        return await _transport.timeout(self.__anext__(), timeout)

    # -- the connection -------------------------------------------------------------

    def _push(self, event: DashboardEvent) -> None:
        if len(self._events) >= self._max_events:
            self._events.popleft()
            self.dropped_events += 1
        self._events.append(event)
        assert self._event is not None
        self._event.set()

    def _telemetry(self, t: Any, history: bool) -> None:
        if self._dedup:
            key = (t.device_id, t.category)
            newest = self._newest.get(key)
            if newest is not None:
                ms, seqs = newest
                if t.received_ms < ms or (t.received_ms == ms and t.seq in seqs):
                    return
                if t.received_ms == ms:
                    seqs.add(t.seq)
                else:
                    self._newest[key] = (t.received_ms, {t.seq})
            else:
                self._newest[key] = (t.received_ms, {t.seq})
        self._push(Telemetry.from_proto(t, history=history))

    async def _run(self) -> None:
        assert self._stop is not None and self._connected is not None
        attempt = 0
        loop = asyncio.get_running_loop()
        try:
            while not self._stop.is_set():
                started = loop.time()
                close_code: Optional[int] = None
                try:
                    ws = await _transport.unless_stopped(
                        self._stop,
                        _transport.open_connection(
                            self._url,
                            _transport.current_token(self._token),
                            self._tls,
                            compression=self._compression,
                            open_timeout=self._open_timeout,
                            options=self._connect_options,
                        ),
                    )
                    if ws is None:
                        break
                except InvalidStatus as e:
                    error = _transport.refused_upgrade(e)
                    if error is not None:
                        raise error
                    log.warning("connecting to %s: %s", self._url, e)
                    self._next_url()
                except (OSError, asyncio.TimeoutError, InvalidHandshake, InvalidURI, TelehubError) as e:
                    log.warning("connecting to %s: %s", self._url, e or type(e).__name__)
                    self._next_url()
                else:
                    close_code = await self._session(ws)
                    if loop.time() - started >= self._backoff.reset_after:
                        attempt = 0
                if self._stop.is_set() or not self._reconnect:
                    break
                if close_code in _transport.LONG_BACKOFF_CLOSES:
                    delay = self._backoff.long_delay()
                else:
                    delay = self._backoff.delay(attempt)
                    attempt += 1
                if await _transport.sleep_unless(self._stop, delay):
                    break
        except asyncio.CancelledError:
            raise
        except Exception as e:
            self._error = e
            log.error("dashboard stopped: %s", e)
        finally:
            self._ended = True
            if self._event is not None:
                self._event.set()

    def _next_url(self) -> None:
        self._url = self._urls[(self._urls.index(self._url) + 1) % len(self._urls)]

    async def _session(self, ws: ClientConnection) -> Optional[int]:
        """One connection; returns the hub's close code (1006: none)."""
        assert self._stop is not None and self._connected is not None
        stopper = asyncio.ensure_future(self._stop.wait())
        reader: Optional["asyncio.Future[None]"] = None
        close: Tuple[int, str] = (_transport.CLOSE_NORMAL, "")
        try:
            raw = await _transport.timeout(ws.recv(), self._open_timeout)
            env = _proto.Envelope.FromString(raw) if isinstance(raw, bytes) else None
            if env is None or env.WhichOneof("body") != "welcome":
                raise TelehubError("expected a Welcome first")
            self._welcome = Welcome.from_proto(env.welcome)
            # Subscriptions again, each pattern once with its filter; their replies
            # are not waited for here (errors are logged by the reader).
            for sub in self._subscriptions:
                await ws.send(sub.envelope())
                self._replies.append(None)
            self._ws = ws
            self._connected.set()
            self._push(Connected(self._welcome))
            reader = asyncio.ensure_future(self._read(ws))
            await asyncio.wait({reader, stopper}, return_when=asyncio.FIRST_COMPLETED)
            if reader.done():
                reader.result()
        except ConnectionClosed as e:
            fatal = _transport.closed_by_hub(e)
            if fatal is not None:
                raise fatal
            close = _transport.close_of(e)
        except (OSError, asyncio.TimeoutError, TelehubError, DecodeError) as e:
            close = (_transport.CLOSE_NO_STATUS, str(e) or type(e).__name__)
        finally:
            was_connected = self._ws is not None
            self._ws = None
            self._connected.clear()
            stopper.cancel()
            if reader is not None:
                reader.cancel()
                await asyncio.gather(reader, return_exceptions=True)
            for fut in self._replies:
                if fut is not None and not fut.done():
                    fut.set_exception(TelehubError("connection lost before the hub answered"))
                    fut.exception()
            self._replies.clear()
            try:
                await _transport.timeout(ws.close(), self._open_timeout)
            except (asyncio.TimeoutError, OSError):
                pass
        if was_connected and not self._stop.is_set():
            log.warning("dashboard connection closed: %d %s", *close)
            self._push(Disconnected(*close))
        return close[0]

    async def _read(self, ws: ClientConnection) -> None:
        while True:
            raw = await ws.recv()
            if not isinstance(raw, bytes):
                continue
            try:
                env = _proto.Envelope.FromString(raw)
            except DecodeError as e:
                log.warning("ignoring an undecodable envelope: %s", e)
                continue
            kind = env.WhichOneof("body")
            if kind == "telemetry":
                self._telemetry(env.telemetry, history=False)
            elif kind == "history":
                for t in env.history.telemetry:
                    self._telemetry(t, history=True)
            elif kind == "batch":
                for t in env.batch.telemetry:
                    self._telemetry(t, history=False)
            elif kind == "presence":
                p = env.presence
                self._push(Presence(p.device_id, p.online, p.at_ms, dict(p.tags)))
            elif kind == "dropped":
                self._push(Dropped(env.dropped.count, env.dropped.total))
            elif kind == "subscribed":
                self._answer(list(env.subscribed.categories))
            elif kind == "error":
                err = env.error
                code = _ERROR_CODES.get(err.code, str(err.code))
                if code in ("INVALID_SUBSCRIPTION", "FORBIDDEN", "RATE_LIMITED") and self._replies:
                    self._answer(SubscriptionError(code, err.message, err.retry_after_ms))
                else:
                    log.warning("the hub answered %s: %s", code, err.message)
            else:
                log.debug("ignoring %s from the hub", kind)

    def _answer(self, result: Union[List[str], SubscriptionError]) -> None:
        """The hub's answer to the oldest Subscribe/Unsubscribe still waiting."""
        if not self._replies:
            return
        fut = self._replies.popleft()
        if fut is None:
            if isinstance(result, SubscriptionError):
                log.warning("re-subscribing after a reconnect: %s", result)
        elif not fut.done():
            if isinstance(result, SubscriptionError):
                fut.set_exception(result)
            else:
                fut.set_result(result)
