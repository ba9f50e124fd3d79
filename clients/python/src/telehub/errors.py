"""Errors the library raises.

Only credential errors end a client by themselves: everything else the network or
the hub does is retried with back-off (see ``_transport``).
"""

from __future__ import annotations

from typing import Optional

__all__ = ["TelehubError", "AuthenticationError", "ClientClosedError"]


class TelehubError(Exception):
    """Base class of this library's errors."""


class AuthenticationError(TelehubError):
    """The hub refused the credentials: HTTP 401 or 403 at the upgrade (a missing,
    invalid, expired or revoked token; a token of the wrong role; a refused client
    certificate), or close code 4003 (the token was revoked while connected).
    Retrying with the same credentials cannot succeed, so the client stops."""

    def __init__(self, message: str, *, status: Optional[int] = None, close_code: Optional[int] = None):
        super().__init__(message)
        #: The HTTP status of a refused upgrade.
        self.status = status
        #: The WebSocket close code of a closed connection.
        self.close_code = close_code


class ClientClosedError(TelehubError):
    """The client was closed (by ``close()`` or by a terminal error)."""
