"""What applications hand to the library and get back from it: readings,
notifications, dashboard events and counters, as plain dataclasses.

The protobuf messages stay inside the library (see ``_proto``); these types are the
public face of the same contract, with Python types for the reading values:

=============  ===============  =====================================
Python         ``Reading`` field  notes
=============  ===============  =====================================
``bool``       ``flag``         checked before ``int`` (``True`` is an ``int``)
``int``        ``integer``      sint64: -2**63 .. 2**63-1
``float``      ``number``       any real number (``numbers.Real``)
``str``        ``text``
``bytes``      ``raw``          also ``bytearray`` and ``memoryview``
=============  ===============  =====================================
"""

from __future__ import annotations

import enum
import numbers
from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, List, Mapping, Tuple, Union

from . import _proto

__all__ = [
    "Value",
    "Reading",
    "ReadingsLike",
    "Severity",
    "Notification",
    "Welcome",
    "Telemetry",
    "Presence",
    "Dropped",
    "Connected",
    "Disconnected",
    "DashboardEvent",
    "DeviceStats",
]

#: A reading's value.
Value = Union[bool, int, float, str, bytes]

_INT64 = (-(2**63), 2**63 - 1)


@dataclass(frozen=True)
class Reading:
    """One named, typed value, with an optional unit (UCUM-style codes such as
    ``"Cel"``, ``"%"``, ``"V"`` are recommended)."""

    name: str
    value: Value
    unit: str = ""

    def to_proto(self) -> Any:
        r = _proto.Reading(name=self.name)
        v = self.value
        if isinstance(v, bool):
            r.flag = v
        elif isinstance(v, numbers.Integral):
            i = int(v)
            if not _INT64[0] <= i <= _INT64[1]:
                raise ValueError(f"reading {self.name!r}: {i} does not fit in 64 bits")
            r.integer = i
        elif isinstance(v, numbers.Real):
            r.number = float(v)
        elif isinstance(v, str):
            r.text = v
        elif isinstance(v, (bytes, bytearray, memoryview)):
            r.raw = bytes(v)
        else:
            raise TypeError(
                f"reading {self.name!r}: {type(v).__name__} is not a reading value "
                "(bool, int, float, str or bytes)"
            )
        if self.unit:
            r.unit = self.unit
        return r

    @classmethod
    def from_proto(cls, r: Any) -> "Reading":
        kind = r.WhichOneof("value")
        value: Value = getattr(r, kind) if kind is not None else b""
        return cls(r.name, value, r.unit)


#: What ``Device.send`` takes: a mapping of name to value or ``(value, unit)``, or
#: an iterable of ``Reading``.
ReadingsLike = Union[Mapping[str, Union[Value, Tuple[Value, str], Reading]], Iterable[Reading]]


def readings_from(readings: ReadingsLike) -> List[Reading]:
    """Normalises the forms ``Device.send`` accepts into a list of ``Reading``."""
    out: List[Reading] = []
    if isinstance(readings, Mapping):
        for name, v in readings.items():
            if isinstance(v, Reading):
                out.append(v)
            elif isinstance(v, tuple):
                if len(v) != 2 or not isinstance(v[1], str):
                    raise TypeError(f"reading {name!r}: a tuple must be (value, unit)")
                out.append(Reading(name, v[0], v[1]))
            else:
                out.append(Reading(name, v))
    else:
        for r in readings:
            if not isinstance(r, Reading):
                raise TypeError(f"expected Reading, got {type(r).__name__}")
            out.append(r)
    return out


class Severity(enum.IntEnum):
    """A notification's severity (``Notification.Severity`` in the proto)."""

    UNSPECIFIED = 0
    INFO = 1
    WARNING = 2
    CRITICAL = 3


@dataclass(frozen=True)
class Notification:
    """A notification pushed by an operator. CRITICAL ones are redelivered by the
    hub until acknowledged (``Device.ack``, or automatically with ``auto_ack``)."""

    id: str
    severity: Severity
    title: str
    body: str
    payload: bytes
    created_ms: int
    expires_ms: int
    #: The hub sent it again because no ack arrived in time (the library hands each
    #: id to the application once, so this is only ever set when the first delivery
    #: did not reach this process, e.g. before a restart without a spool).
    redelivery: bool

    @property
    def critical(self) -> bool:
        return self.severity == Severity.CRITICAL

    @classmethod
    def from_proto(cls, n: Any) -> "Notification":
        try:
            severity = Severity(n.severity)
        except ValueError:
            severity = Severity.UNSPECIFIED
        return cls(
            id=n.id,
            severity=severity,
            title=n.title,
            body=n.body,
            payload=bytes(n.payload),
            created_ms=n.created_ms,
            expires_ms=n.expires_ms,
            redelivery=n.redelivery,
        )


@dataclass(frozen=True)
class Welcome:
    """The hub's first message on every connection: who it took the client for and
    the connection's limits."""

    subject: str
    role: str
    max_message_bytes: int
    #: The device's telemetry rate limit (messages per second and burst); 0 for
    #: dashboards.
    rate_per_second: int
    burst: int
    server_version: str
    #: The hub confirms telemetry on request (uplink confirmations).
    confirmations: bool

    @classmethod
    def from_proto(cls, w: Any) -> "Welcome":
        return cls(
            subject=w.subject,
            role=w.role,
            max_message_bytes=w.max_message_bytes,
            rate_per_second=w.rate_per_second,
            burst=w.burst,
            server_version=w.server_version,
            confirmations=w.confirmations,
        )


@dataclass(frozen=True)
class Telemetry:
    """One telemetry message as a dashboard receives it."""

    device_id: str
    category: str
    #: The device's clock (ms since the Unix epoch).
    timestamp_ms: int
    seq: int
    readings: List[Reading]
    #: When the hub accepted it (ms since the Unix epoch).
    received_ms: int
    #: Part of the recent history replayed after a Subscribe, not live.
    history: bool = False

    @property
    def values(self) -> Dict[str, Value]:
        """The readings as a ``{name: value}`` dict."""
        return {r.name: r.value for r in self.readings}

    @classmethod
    def from_proto(cls, t: Any, history: bool = False) -> "Telemetry":
        return cls(
            device_id=t.device_id,
            category=t.category,
            timestamp_ms=t.timestamp_ms,
            seq=t.seq,
            readings=[Reading.from_proto(r) for r in t.readings],
            received_ms=t.received_ms,
            history=history,
        )


@dataclass(frozen=True)
class Presence:
    """A device came online or went offline (dashboards get a snapshot of the online
    devices on connect, then every change)."""

    device_id: str
    online: bool
    at_ms: int
    tags: Dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Dropped:
    """The hub dropped ``count`` telemetry messages for this dashboard (its queue
    overflowed) since the previous notice; ``total`` since it connected."""

    count: int
    total: int


@dataclass(frozen=True)
class Connected:
    """The dashboard (re)connected and re-sent its subscriptions."""

    welcome: Welcome


@dataclass(frozen=True)
class Disconnected:
    """The connection ended; the dashboard reconnects unless told otherwise.
    ``code`` is the WebSocket close code (1006 when there was none)."""

    code: int
    reason: str


#: What iterating over a ``Dashboard`` yields.
DashboardEvent = Union[Telemetry, Presence, Dropped, Connected, Disconnected]


@dataclass
class DeviceStats:
    """A ``Device``'s counters since it was created (a snapshot: ``Device.stats``)."""

    #: Messages ``send`` accepted into the buffer.
    queued: int = 0
    #: Telemetry frames written to a connection, first sends and resends.
    transmitted: int = 0
    #: Frames that were resends (after a reconnect or a rate-limit refusal).
    resent: int = 0
    #: Messages the hub confirmed (or passed over as invalid).
    confirmed: int = 0
    #: Highest seq the hub confirmed cumulatively in this boot.
    confirmed_through: int = 0
    #: Messages dropped unsent because the buffer was full (oldest first).
    dropped: int = 0
    #: Refusals by the hub's rate limiter (each resent later).
    rate_limited: int = 0
    #: Messages waiting for confirmation (or for a connection).
    buffered: int = 0
    #: Connections that reached the hub's Welcome.
    connections: int = 0
    #: Notifications handed to the application.
    notifications: int = 0
    #: Notifications received again after the first delivery and not handed on.
    duplicate_notifications: int = 0
    #: Acks written to a connection.
    acks_sent: int = 0
