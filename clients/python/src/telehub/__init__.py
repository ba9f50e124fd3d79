"""telehub: the device library of the telehub IoT hub.

- ``Device``: sends telemetry (buffered, confirmed by the hub, resent after a
  reconnect, optionally spooled to disk) and receives notifications (each id once,
  acknowledged automatically or explicitly).
- ``Dashboard``: subscribes to categories and yields telemetry and presence, for
  scripts.

Both reconnect with exponential back-off and jitter, and stop only on refused
credentials (``AuthenticationError``). See the README for the protocol and the
policies.
"""

from ._transport import Backoff
from ._version import VERSION
from .dashboard import Dashboard, SubscriptionError
from .device import Device, NotificationHandler
from .errors import AuthenticationError, ClientClosedError, TelehubError
from .model import (
    Connected,
    DashboardEvent,
    DeviceStats,
    Disconnected,
    Dropped,
    Notification,
    Presence,
    Reading,
    ReadingsLike,
    Severity,
    Telemetry,
    Value,
    Welcome,
)

__version__ = VERSION

__all__ = [
    "AuthenticationError",
    "Backoff",
    "ClientClosedError",
    "Connected",
    "Dashboard",
    "DashboardEvent",
    "Device",
    "DeviceStats",
    "Disconnected",
    "Dropped",
    "Notification",
    "NotificationHandler",
    "Presence",
    "Reading",
    "ReadingsLike",
    "Severity",
    "SubscriptionError",
    "Telemetry",
    "TelehubError",
    "Value",
    "Welcome",
]
