"""The device side: telemetry up (buffered, confirmed, resent), notifications down
(de-duplicated, acknowledged).

A ``Device`` runs one background task that keeps a connection to
``wss://HOST:PORT/v1/device`` for as long as the device is open:

1. Connect (token in ``Authorization: Bearer``, or a client certificate), read the
   ``Welcome``. A refused credential (HTTP 401/403, close 4003) ends the device with
   an ``AuthenticationError``; anything else is retried after an exponential
   back-off with jitter (``Backoff``), the longest one after a takeover by another
   connection with the same device id (close 4001) or a protocol error.
2. Ask for uplink confirmations (``ConfirmTelemetry{boot_id}``). The hub answers at
   once with what it already has of this boot (``through_seq``); the device drops
   that from its buffer and sends the rest in seq order, then each new message as
   ``send`` adds it, paced within the Welcome's rate and burst.
3. Every ``TelemetryConfirmed`` drops what it covers. Seqs it lists as
   rate-limited are sent again (same seq) after ``retry_after_ms``.
4. Notifications go to the application once per id, and acks go back.

A hub without confirmations (``Welcome.confirmations`` false) gets each message
once, dropped from the buffer when written (at most once), as older hubs did.
"""

from __future__ import annotations

import asyncio
import collections
import inspect
import logging
import re
import ssl
import time
from dataclasses import dataclass, replace
from typing import (
    Any,
    AsyncIterator,
    Awaitable,
    Callable,
    Deque,
    Dict,
    List,
    Mapping,
    Optional,
    Sequence,
    Set,
    Tuple,
    Union,
)

from google.protobuf.message import DecodeError
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus, InvalidURI

from . import _proto, _transport
from ._outbox import Outbox, Spool, new_boot_id
from ._pacer import Pacer
from ._transport import Backoff, TokenSource
from .errors import AuthenticationError, ClientClosedError, TelehubError
from .model import DeviceStats, Notification, ReadingsLike, Welcome, readings_from

__all__ = ["Device", "NotificationHandler"]

log = logging.getLogger("telehub")

#: A function (or coroutine function) the device hands each notification to.
NotificationHandler = Callable[[Notification], Union[None, Awaitable[None]]]

# Categories: dotted segments of [A-Za-z0-9_-], at most 128 bytes (as the hub checks).
_CATEGORY = re.compile(r"[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*\Z")
_MAX_CATEGORY = 128
# Until a Welcome says otherwise: the hub's default limit.
_DEFAULT_MAX_MESSAGE = 64 * 1024
# Notification ids remembered for de-duplication.
_SEEN_MAX = 4096
_ERROR_CODES = {v: k for k, v in _proto.Error.Code.items()}


@dataclass
class _Seen:
    """A notification id the application already got."""

    expires_ms: int
    acked: bool


class _Link:
    """One connection's state, gone with it."""

    def __init__(self, ws: ClientConnection, welcome: Welcome, confirming: bool, pace: bool) -> None:
        self.ws = ws
        self.welcome = welcome
        self.confirming = confirming
        #: Set by the first TelemetryConfirmed: where sending resumes.
        self.synced = asyncio.Event()
        #: The highest seq sent in order on this connection.
        self.cursor = 0
        #: Rate-limited seqs -> when they may go again (loop time).
        self.retries: Dict[int, float] = {}
        self.pacer = Pacer(welcome.rate_per_second, welcome.burst) if pace and welcome.rate_per_second else None


class Device:
    """A device's connection to a telehub hub.

    Use it as an async context manager (or call ``start`` and ``close``)::

        async with telehub.Device("wss://hub.example:8443", token, ca_file="ca.pem") as dev:
            dev.send("env.climate", {"temperature": (21.5, "Cel"), "door_open": False})
            async for note in dev.notifications():
                print(note.title)

    Args:
        url: the hub, ``wss://HOST:PORT`` (``/v1/device`` is added when no path is
            given), or a list of them (the nodes of a cluster): a failed connect
            moves on to the next.
        token: the device's JWT, or a function returning the current one (called
            before each connection attempt; a 401 is then retried once the function
            returns another token, and an exception it raises stops the device).
            ``None`` with a client certificate.
        ca_file: PEM file of the CA the hub's certificate chains to (default: the
            system's roots).
        client_cert, client_key: PEM client certificate and key, for hubs that
            authenticate devices by certificate (mTLS).
        ssl_context: a complete ``ssl.SSLContext`` instead of the three above.
        compression: offer permessage-deflate (on by default).
        max_buffered: messages kept until confirmed; past it the oldest are dropped
            and counted (``stats.dropped``).
        spool: path of a SQLite file that keeps the buffer (and the boot) across
            restarts of the process; ``None`` keeps it in memory only.
        auto_ack: acknowledge each notification once it is handed to the
            application (the callback returned, or the iterator yielded it).
            Otherwise call ``ack``.
        on_notification: called with each new notification (a coroutine function is
            awaited); without it, read them with ``notifications()``.
        backoff: reconnection delays.
        pace: keep telemetry within the Welcome's rate and burst (on by default).
        confirm: ask the hub for uplink confirmations (on by default).
        open_timeout: bound on connecting and on each handshake step, in seconds.
        connect_options: extra keyword arguments for ``websockets.connect``
            (``proxy``, ``ping_interval``, ``max_size``, ...).
    """

    def __init__(
        self,
        url: Union[str, Sequence[str]],
        token: TokenSource = None,
        *,
        ca_file: Optional[str] = None,
        client_cert: Optional[str] = None,
        client_key: Optional[str] = None,
        ssl_context: Optional[ssl.SSLContext] = None,
        compression: bool = True,
        max_buffered: int = 10_000,
        spool: Optional[str] = None,
        auto_ack: bool = True,
        on_notification: Optional[NotificationHandler] = None,
        backoff: Backoff = Backoff(),
        pace: bool = True,
        confirm: bool = True,
        open_timeout: float = 10.0,
        connect_options: Optional[Mapping[str, Any]] = None,
    ) -> None:
        self._urls = _transport.endpoint_urls(url, "/v1/device")
        #: The URL connected to, or tried next.
        self._url = self._urls[0]
        self._token = token
        self._tls = (
            _transport.tls_context(ca_file, client_cert, client_key, ssl_context)
            if any(u.startswith("wss:") for u in self._urls)
            else None
        )
        self._compression = compression
        self._auto_ack = auto_ack
        self._handler = on_notification
        self._backoff = backoff
        self._pace = pace
        self._confirm = confirm
        self._open_timeout = open_timeout
        self._connect_options = dict(connect_options or {})

        self._spool = Spool(spool) if spool else None
        self._outbox = Outbox(max_buffered, self._spool)
        #: Notification id -> what the application was told.
        self._seen: "collections.OrderedDict[str, _Seen]" = collections.OrderedDict()
        if self._spool is not None:
            state = self._spool.load()
            self._boot_id = state.boot_id or new_boot_id()
            self._next_seq = state.next_seq if state.boot_id else 1
            self._outbox.restore(state.messages)
            for nid, expires in state.acked.items():
                self._seen[nid] = _Seen(expires, acked=True)
            self._spool.save_boot(self._boot_id, self._next_seq)
        else:
            self._boot_id = new_boot_id()
            self._next_seq = 1
        #: The highest seq ever written to a connection (what counts as a resend).
        self._high_sent = 0

        self._stats = DeviceStats()
        self._welcome: Optional[Welcome] = None
        self._link: Optional[_Link] = None
        self._pending_acks: Deque[str] = collections.deque()
        self._flush_waiters: List[Tuple[int, "asyncio.Future[None]"]] = []
        self._error: Optional[BaseException] = None
        self._closed = False
        self._last_drop_warning = 0.0
        # Made in start(), inside the running loop.
        self._wake: Optional[asyncio.Event] = None
        self._stop: Optional[asyncio.Event] = None
        self._connected: Optional[asyncio.Event] = None
        #: Notifications for the application; None marks the end (an error).
        self._deliveries: Optional["asyncio.Queue[Optional[Notification]]"] = None
        self._task: Optional["asyncio.Task[None]"] = None
        self._dispatcher: Optional["asyncio.Task[None]"] = None

    # -- life cycle ---------------------------------------------------------------

    async def start(self) -> "Device":
        """Starts connecting in the background and returns at once: a device works
        offline too (``send`` buffers). See ``wait_connected``."""
        if self._task is not None:
            return self
        if self._closed:
            raise ClientClosedError("the device was closed")
        self._wake = asyncio.Event()
        self._stop = asyncio.Event()
        self._connected = asyncio.Event()
        self._deliveries = asyncio.Queue()
        self._task = asyncio.ensure_future(self._run())
        if self._handler is not None:
            self._dispatcher = asyncio.ensure_future(self._dispatch(self._handler))
        return self

    async def close(self, flush_timeout: Optional[float] = None) -> None:
        """Stops the device: closes the connection (1000) and the spool. With
        ``flush_timeout``, first waits up to that long for the buffer to be
        confirmed. What stays unconfirmed is lost unless a spool keeps it."""
        if self._closed:
            return
        if flush_timeout and self._task is not None and self._error is None:
            try:
                await self.flush(flush_timeout)
            except (asyncio.TimeoutError, TelehubError):
                pass
        self._closed = True
        if self._stop is not None:
            self._stop.set()
        if self._task is not None:
            await asyncio.gather(self._task, return_exceptions=True)
        if self._dispatcher is not None:
            self._dispatcher.cancel()
            await asyncio.gather(self._dispatcher, return_exceptions=True)
        self._fail_waiters(ClientClosedError("the device was closed"))
        if self._spool is not None:
            self._outbox.detach_spool()
            self._spool.close()
            self._spool = None

    async def __aenter__(self) -> "Device":
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def wait_connected(self, timeout: Optional[float] = None) -> Welcome:
        """Waits until a connection is up; returns its Welcome. Raises the error that
        ended the device, if one did."""
        self._check_open()
        assert self._connected is not None and self._task is not None
        waiter = asyncio.ensure_future(self._connected.wait())
        try:
            done, _ = await asyncio.wait({waiter, self._task}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiter.cancel()
        self._check_open()
        if not done:
            raise asyncio.TimeoutError()
        assert self._welcome is not None
        return self._welcome

    async def wait_closed(self) -> None:
        """Waits until the device stops, and raises the error that stopped it (an
        ``AuthenticationError``), if any."""
        if self._task is not None:
            await asyncio.gather(self._task, return_exceptions=True)
        if self._error is not None:
            raise self._error

    # -- state --------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self._link is not None

    @property
    def welcome(self) -> Optional[Welcome]:
        """The latest connection's Welcome."""
        return self._welcome

    @property
    def boot_id(self) -> int:
        """This boot's id (kept in the spool, when there is one)."""
        return self._boot_id

    @property
    def last_seq(self) -> int:
        """The seq of the latest message ``send`` took (0: none yet)."""
        return self._next_seq - 1

    @property
    def error(self) -> Optional[BaseException]:
        """What stopped the device, if something did."""
        return self._error

    @property
    def stats(self) -> DeviceStats:
        """A snapshot of the counters."""
        return replace(self._stats, buffered=len(self._outbox))

    # -- telemetry ----------------------------------------------------------------

    def send(self, category: str, readings: ReadingsLike, *, timestamp_ms: Optional[int] = None) -> int:
        """Queues one telemetry message and returns its seq. Never blocks: the
        message waits in the buffer until the hub confirms it (see the module doc).

        ``readings``: ``{"temperature": 21.5}``, ``{"temperature": (21.5, "Cel")}``,
        or a list of ``Reading``. Values: bool, int, float, str, bytes.
        ``timestamp_ms``: the reading time (default: now).

        Raises ``ValueError``/``TypeError`` for what the hub would refuse anyway (an
        invalid category, an unsupported value, a message over the hub's size limit),
        ``ClientClosedError`` after ``close``.
        """
        if self._closed or self._error is not None:
            self._check_open()
        if len(category.encode()) > _MAX_CATEGORY or not _CATEGORY.match(category):
            raise ValueError(
                f"invalid category {category!r}: dotted segments of [A-Za-z0-9_-], at most {_MAX_CATEGORY} bytes"
            )
        seq = self._next_seq
        env = _proto.Envelope()
        t = env.telemetry
        t.category = category
        t.timestamp_ms = int(time.time() * 1000) if timestamp_ms is None else int(timestamp_ms)
        t.seq = seq
        t.readings.extend(r.to_proto() for r in readings_from(readings))
        data = env.SerializeToString()
        limit = self._welcome.max_message_bytes if self._welcome else _DEFAULT_MAX_MESSAGE
        if len(data) > limit:
            raise ValueError(f"telemetry message of {len(data)} bytes; the hub takes at most {limit}")
        self._next_seq = seq + 1
        dropped = self._outbox.add(seq, data)
        self._stats.queued += 1
        if dropped is not None:
            self._stats.dropped += 1
            self._warn_dropped()
            self._check_flushes()
        if self._wake is not None:
            self._wake.set()
        return seq

    async def flush(self, timeout: Optional[float] = None) -> None:
        """Waits until every message ``send`` took so far is confirmed by the hub (or
        dropped for room); raises ``asyncio.TimeoutError`` after ``timeout``
        seconds."""
        self._check_open()
        target = self._next_seq - 1
        if self._flushed(target):
            return
        fut = asyncio.get_running_loop().create_future()
        self._flush_waiters.append((target, fut))
        await _transport.timeout(asyncio.shield(fut), timeout)

    def _flushed(self, target: int) -> bool:
        first = self._outbox.first()
        return first is None or first > target

    def _check_flushes(self) -> None:
        keep = []
        for target, fut in self._flush_waiters:
            if fut.done():
                continue
            if self._flushed(target):
                fut.set_result(None)
            else:
                keep.append((target, fut))
        self._flush_waiters = keep

    def _fail_waiters(self, error: BaseException) -> None:
        for _, fut in self._flush_waiters:
            if not fut.done():
                fut.set_exception(error)
                # Retrieved here, so an abandoned waiter logs nothing.
                fut.exception()
        self._flush_waiters = []

    def _warn_dropped(self) -> None:
        now = time.monotonic()
        if now - self._last_drop_warning >= 60:
            self._last_drop_warning = now
            log.warning(
                "telemetry buffer full (%d messages): dropping the oldest (%d dropped so far)",
                self._outbox.limit,
                self._stats.dropped,
            )

    # -- notifications ------------------------------------------------------------

    def notifications(self) -> AsyncIterator[Notification]:
        """The notifications, each id once, as they arrive; ends when the device
        closes. With ``auto_ack`` each is acknowledged as it is yielded. Use one
        iterator at a time, and not together with ``on_notification``."""
        if self._handler is not None:
            raise TelehubError("notifications go to on_notification; there is no iterator")
        return _Notifications(self)

    def ack(self, notification: Union[Notification, str]) -> None:
        """Acknowledges a notification (required for CRITICAL ones without
        ``auto_ack``). Sent at once when connected, else after the next connect;
        acknowledging twice is harmless."""
        if isinstance(notification, Notification):
            nid, expires = notification.id, notification.expires_ms
        else:
            nid = notification
            seen = self._seen.get(nid)
            expires = seen.expires_ms if seen else 0
        self._remember(nid, expires, acked=True)
        if self._spool is not None:
            self._spool.remember_ack(nid, expires, _SEEN_MAX)
        if nid not in self._pending_acks:
            self._pending_acks.append(nid)
        if self._wake is not None:
            self._wake.set()

    def _remember(self, nid: str, expires_ms: int, acked: bool) -> None:
        # The latest _SEEN_MAX ids, whatever their expiry says: a device's clock
        # (no RTC, before NTP) is no judge of the hub's.
        self._seen[nid] = _Seen(expires_ms, acked)
        self._seen.move_to_end(nid)
        while len(self._seen) > _SEEN_MAX:
            self._seen.popitem(last=False)

    def _on_notification(self, msg: Any) -> None:
        note = Notification.from_proto(msg)
        seen = self._seen.get(note.id)
        if seen is not None:
            self._stats.duplicate_notifications += 1
            if seen.acked:
                # Our ack was lost (or is on its way): say it again.
                self.ack(note.id)
            return
        self._remember(note.id, note.expires_ms, acked=False)
        self._stats.notifications += 1
        assert self._deliveries is not None
        self._deliveries.put_nowait(note)

    def _handed_over(self, note: Notification) -> None:
        if self._auto_ack:
            self.ack(note)

    def _not_handled(self, note: Notification) -> None:
        """The application failed on it: forget it, so a redelivery reaches it again."""
        seen = self._seen.get(note.id)
        if seen is not None and not seen.acked:
            del self._seen[note.id]

    async def _dispatch(self, handler: NotificationHandler) -> None:
        assert self._deliveries is not None
        while True:
            note = await self._deliveries.get()
            if note is None:
                # The device stopped on an error.
                return
            try:
                result = handler(note)
                if inspect.isawaitable(result):
                    await result
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("notification handler failed on %s; it was not acknowledged", note.id)
                self._not_handled(note)
                continue
            self._handed_over(note)

    # -- the connection -------------------------------------------------------------

    def _check_open(self) -> None:
        if self._error is not None:
            raise self._error
        if self._closed:
            raise ClientClosedError("the device was closed")
        if self._task is None:
            raise TelehubError("the device is not started: call start() or use `async with`")

    async def _run(self) -> None:
        assert self._stop is not None
        attempt = 0
        # The token the hub refused with 401, and that refusal.
        refused: Optional[Tuple[Optional[str], AuthenticationError]] = None
        loop = asyncio.get_running_loop()
        try:
            while not self._stop.is_set():
                token = _transport.current_token(self._token)
                if refused is not None and token == refused[0]:
                    raise refused[1]
                started = loop.time()
                close_code = None
                try:
                    ws = await _transport.unless_stopped(
                        self._stop,
                        _transport.open_connection(
                            self._url,
                            token,
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
                    if error is None:
                        log.warning("connecting to %s: %s", self._url, e)
                    elif error.status == 401 and callable(self._token):
                        # Retried only with another token than this one.
                        refused = (token, error)
                        log.warning("%s; retrying with the next token", error)
                    else:
                        raise error
                    self._next_url()
                except (OSError, asyncio.TimeoutError, InvalidHandshake, InvalidURI, TelehubError) as e:
                    log.warning("connecting to %s: %s", self._url, e or type(e).__name__)
                    self._next_url()
                else:
                    refused = None
                    close_code = await self._session(ws)
                    if loop.time() - started >= self._backoff.reset_after:
                        attempt = 0
                if self._stop.is_set():
                    break
                if close_code in _transport.LONG_BACKOFF_CLOSES:
                    delay = self._backoff.long_delay()
                else:
                    delay = self._backoff.delay(attempt)
                    attempt += 1
                log.info("reconnecting in %.1f s", delay)
                if await _transport.sleep_unless(self._stop, delay):
                    break
        except asyncio.CancelledError:
            raise
        except Exception as e:
            self._error = e
            log.error("device stopped: %s", e)
            self._fail_waiters(e)
            if self._deliveries is not None:
                self._deliveries.put_nowait(None)

    def _next_url(self) -> None:
        self._url = self._urls[(self._urls.index(self._url) + 1) % len(self._urls)]

    async def _session(self, ws: ClientConnection) -> Optional[int]:
        """One connection, from the Welcome to its close; returns the hub's close
        code, if it sent one. Raises only what ends the device (a revocation)."""
        assert self._stop is not None and self._connected is not None
        tasks: Set["asyncio.Future[Any]"] = set()
        close_code = None
        try:
            welcome = await self._welcome_of(ws)
            link = _Link(ws, welcome, self._confirm and welcome.confirmations, self._pace)
            if self._confirm and not welcome.confirmations:
                log.warning("the hub does not confirm telemetry: each message is sent once, unconfirmed")
            if link.confirming:
                env = _proto.Envelope()
                env.confirm_telemetry.boot_id = self._boot_id
                await ws.send(env.SerializeToString())
            self._welcome = welcome
            self._link = link
            self._stats.connections += 1
            self._connected.set()
            log.info("connected to %s as %s", self._url, welcome.subject)
            reader = asyncio.ensure_future(self._read(link))
            writer = asyncio.ensure_future(self._write(link))
            stopper = asyncio.ensure_future(self._stop.wait())
            tasks = {reader, writer, stopper}
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for t in done:
                if t is not stopper and t.exception() is not None:
                    raise t.exception()  # type: ignore[misc]
        except ConnectionClosed as e:
            fatal = _transport.closed_by_hub(e)
            if fatal is not None:
                raise fatal
            close_code, reason = _transport.close_of(e)
            log.warning("connection closed: %d %s", close_code, reason)
            if close_code == _transport.CLOSE_TAKEN_OVER:
                log.warning("another connection uses this device id: reconnecting after the longest back-off")
        except (OSError, asyncio.TimeoutError, TelehubError, DecodeError) as e:
            log.warning("connection failed: %s", e or type(e).__name__)
        finally:
            self._link = None
            self._connected.clear()
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            # A normal close when stopping; otherwise the connection is gone already.
            try:
                await _transport.timeout(ws.close(), self._open_timeout)
            except (asyncio.TimeoutError, OSError):
                pass
        return close_code

    async def _welcome_of(self, ws: ClientConnection) -> Welcome:
        raw = await _transport.timeout(ws.recv(), self._open_timeout)
        if not isinstance(raw, bytes):
            raise TelehubError("expected a binary Welcome, got text")
        env = _proto.Envelope.FromString(raw)
        if env.WhichOneof("body") != "welcome":
            raise TelehubError(f"expected Welcome, got {env.WhichOneof('body')}")
        return Welcome.from_proto(env.welcome)

    async def _read(self, link: _Link) -> None:
        while True:
            raw = await link.ws.recv()
            if not isinstance(raw, bytes):
                log.warning("ignoring a text frame from the hub")
                continue
            try:
                env = _proto.Envelope.FromString(raw)
            except DecodeError as e:
                log.warning("ignoring an undecodable envelope: %s", e)
                continue
            kind = env.WhichOneof("body")
            if kind == "telemetry_confirmed":
                self._on_confirmed(link, env.telemetry_confirmed)
            elif kind == "notification":
                self._on_notification(env.notification)
            elif kind == "error":
                self._on_error(link, env.error)
            else:
                log.debug("ignoring %s from the hub", kind)

    def _on_confirmed(self, link: _Link, c: Any) -> None:
        if c.boot_id != self._boot_id:
            return
        through = c.through_seq
        done = self._outbox.confirm_through(through)
        self._stats.confirmed += done
        self._stats.confirmed_through = max(self._stats.confirmed_through, through)
        if not link.synced.is_set():
            # Everything above `through` goes again, in order, from here.
            link.cursor = through
            link.synced.set()
        # The hub waits for through + 1 before confirming anything above it.
        self._outbox.await_seq(through + 1)
        for seq in [s for s in link.retries if s <= through]:
            del link.retries[seq]
        if c.rate_limited:
            retry_after = c.retry_after_ms / 1000.0
            due = asyncio.get_running_loop().time() + retry_after
            for seq in c.rate_limited:
                self._stats.rate_limited += 1
                if seq in self._outbox:
                    link.retries[seq] = due
                    self._outbox.await_seq(seq)
            if link.pacer is not None:
                link.pacer.pause(retry_after)
        self._check_flushes()
        assert self._wake is not None
        self._wake.set()

    def _on_error(self, link: _Link, e: Any) -> None:
        code = _ERROR_CODES.get(e.code, str(e.code))
        if code == "RATE_LIMITED":
            if link.pacer is not None:
                link.pacer.pause(e.retry_after_ms / 1000.0)
            if not link.confirming:
                log.warning("the hub refused telemetry over its rate limit (unconfirmed: it is lost): %s", e.message)
                return
            log.debug("rate limited: %s", e.message)
        else:
            log.warning("the hub answered %s: %s", code, e.message)

    async def _write(self, link: _Link) -> None:
        assert self._wake is not None
        loop = asyncio.get_running_loop()
        if link.confirming:
            if not await _transport.wait_event(link.synced, self._open_timeout):
                raise TelehubError("the hub did not answer ConfirmTelemetry")
        while True:
            self._wake.clear()
            while self._pending_acks:
                nid = self._pending_acks[0]
                env = _proto.Envelope()
                env.ack.notification_id = nid
                await link.ws.send(env.SerializeToString())
                if self._pending_acks and self._pending_acks[0] == nid:
                    self._pending_acks.popleft()
                self._stats.acks_sent += 1
            now = loop.time()
            seq = self._next_retry(link, now)
            if seq is None:
                seq = self._outbox.after(link.cursor)
                if seq is not None:
                    link.cursor = seq
            if seq is None:
                wait = min(link.retries.values()) - now if link.retries else None
                await _transport.wait_event(self._wake, wait)
                continue
            if link.pacer is not None:
                await link.pacer.take()
            data = self._outbox.get(seq)
            if data is None:
                # Confirmed or dropped while waiting for the pacer.
                continue
            await link.ws.send(data)
            self._stats.transmitted += 1
            if seq <= self._high_sent:
                self._stats.resent += 1
            self._high_sent = max(self._high_sent, seq)
            if not link.confirming:
                self._outbox.remove(seq)
                self._check_flushes()

    def _next_retry(self, link: _Link, now: float) -> Optional[int]:
        due = [s for s, at in link.retries.items() if at <= now]
        if not due:
            return None
        seq = min(due)
        del link.retries[seq]
        return seq if seq in self._outbox else self._next_retry(link, now)


class _Notifications:
    """``Device.notifications()``: an async iterator over the delivery queue."""

    def __init__(self, device: Device) -> None:
        self._device = device

    def __aiter__(self) -> "_Notifications":
        return self

    async def __anext__(self) -> Notification:
        d = self._device
        if d._deliveries is None:
            raise TelehubError("the device is not started: call start() or use `async with`")
        while True:
            if d._closed and d._deliveries.empty():
                raise StopAsyncIteration
            getter = asyncio.ensure_future(d._deliveries.get())
            assert d._stop is not None
            stopper = asyncio.ensure_future(d._stop.wait())
            try:
                await asyncio.wait({getter, stopper}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                stopper.cancel()
                if not getter.done():
                    getter.cancel()
            if getter.done() and not getter.cancelled():
                note: Optional[Notification] = getter.result()
                if note is None:
                    # The device stopped on an error.
                    raise StopAsyncIteration
                d._handed_over(note)
                return note
            if d._stop.is_set():
                raise StopAsyncIteration
