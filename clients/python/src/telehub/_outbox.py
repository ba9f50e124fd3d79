"""Where a device's telemetry waits until the hub confirms it: a bounded buffer in
memory, mirrored to an optional SQLite file (the spool) that outlives the process.

Policy:

- Every message ``Device.send`` takes gets the boot's next seq and stays here until
  a ``TelemetryConfirmed`` covers it (``through_seq``), whether or not it was sent.
- At most ``limit`` messages are kept. When a new one arrives at the limit, the
  oldest one is dropped and counted, except a message the hub is known to be
  waiting for (one it refused over the rate limit, or the first one above its
  latest confirmation): dropping that one would hold the hub's cumulative
  confirmations below it for good. New readings are worth more than old ones to
  most applications, and the count tells how many were lost.

The spool keeps the boot (its id and next seq) with the messages, so a restarted
process resumes the same boot: its unconfirmed messages keep their seqs, the hub
de-duplicates the ones it already had, and nothing is published twice (the hub
remembers a boot for ``limits.confirm_window``, an hour by default). A spool is for
one process at a time. Writes use SQLite's WAL with ``synchronous=NORMAL``: a
process crash loses nothing that ``send`` returned, a power cut may lose the last
moments' messages (they were not synced to the disk yet).
"""

from __future__ import annotations

import itertools
import os
import secrets
import sqlite3
from dataclasses import dataclass, field
from typing import Dict, Iterator, List, Optional, Set, Tuple

__all__ = ["Outbox", "Spool", "SpoolState", "new_boot_id"]


def new_boot_id() -> int:
    """A random non-zero 64-bit boot id."""
    while True:
        b = secrets.randbits(64)
        if b:
            return b


@dataclass
class SpoolState:
    """What a spool held when it was opened."""

    boot_id: Optional[int] = None
    next_seq: int = 1
    #: (seq, encoded Envelope) in seq order.
    messages: List[Tuple[int, bytes]] = field(default_factory=list)
    #: Acknowledged notification id -> expires_ms.
    acked: Dict[str, int] = field(default_factory=dict)


class Spool:
    """The SQLite file behind a device's buffer."""

    def __init__(self, path: str) -> None:
        parent = os.path.dirname(os.path.abspath(path))
        os.makedirs(parent, exist_ok=True)
        # Autocommit mode: each write below is its own transaction or an explicit one.
        self._db = sqlite3.connect(path, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(
            """
            CREATE TABLE IF NOT EXISTS boot (
                id INTEGER PRIMARY KEY CHECK (id = 1),
                boot_id TEXT NOT NULL,
                next_seq INTEGER NOT NULL
            );
            CREATE TABLE IF NOT EXISTS outbox (
                seq INTEGER PRIMARY KEY,
                envelope BLOB NOT NULL
            );
            CREATE TABLE IF NOT EXISTS acked (
                notification_id TEXT PRIMARY KEY,
                expires_ms INTEGER NOT NULL
            );
            """
        )

    def load(self) -> SpoolState:
        state = SpoolState()
        row = self._db.execute("SELECT boot_id, next_seq FROM boot WHERE id = 1").fetchone()
        if row is not None:
            # Stored as text: SQLite integers are signed 64-bit.
            state.boot_id, state.next_seq = int(row[0]), int(row[1])
        state.messages = [
            (int(s), bytes(e)) for s, e in self._db.execute("SELECT seq, envelope FROM outbox ORDER BY seq")
        ]
        state.acked = {
            i: int(x) for i, x in self._db.execute("SELECT notification_id, expires_ms FROM acked ORDER BY rowid")
        }
        return state

    def save_boot(self, boot_id: int, next_seq: int) -> None:
        self._db.execute(
            "INSERT INTO boot (id, boot_id, next_seq) VALUES (1, ?, ?) "
            "ON CONFLICT (id) DO UPDATE SET boot_id = excluded.boot_id, next_seq = excluded.next_seq",
            (str(boot_id), next_seq),
        )

    def append(self, seq: int, envelope: bytes, dropped: Optional[int]) -> None:
        """Stores message ``seq`` (and the boot's next seq after it), removing the
        ``dropped`` one in the same transaction."""
        with _transaction(self._db):
            self._db.execute("INSERT OR REPLACE INTO outbox (seq, envelope) VALUES (?, ?)", (seq, envelope))
            self._db.execute("UPDATE boot SET next_seq = ? WHERE id = 1", (seq + 1,))
            if dropped is not None:
                self._db.execute("DELETE FROM outbox WHERE seq = ?", (dropped,))

    def remove_through(self, seq: int) -> None:
        self._db.execute("DELETE FROM outbox WHERE seq <= ?", (seq,))

    def remove(self, seq: int) -> None:
        self._db.execute("DELETE FROM outbox WHERE seq = ?", (seq,))

    def remember_ack(self, notification_id: str, expires_ms: int, keep: int) -> None:
        """Records an acknowledged id, keeping the latest ``keep``."""
        with _transaction(self._db):
            # REPLACE gives the row a new rowid: the order is the order of acks.
            self._db.execute(
                "INSERT OR REPLACE INTO acked (notification_id, expires_ms) VALUES (?, ?)",
                (notification_id, expires_ms),
            )
            self._db.execute(
                "DELETE FROM acked WHERE rowid NOT IN (SELECT rowid FROM acked ORDER BY rowid DESC LIMIT ?)",
                (keep,),
            )

    def close(self) -> None:
        self._db.close()


class _transaction:
    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def __enter__(self) -> None:
        self._db.execute("BEGIN")

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        self._db.execute("COMMIT" if exc_type is None else "ROLLBACK")


class Outbox:
    """The unconfirmed messages of the current boot, by seq (see the module doc)."""

    def __init__(self, limit: int, spool: Optional[Spool] = None) -> None:
        if limit < 1:
            raise ValueError("max_buffered must be at least 1")
        self.limit = limit
        self._spool = spool
        #: seq -> encoded Envelope; insertion order is seq order (seqs only grow).
        self._messages: Dict[int, bytes] = {}
        #: Seqs the hub is waiting for: never dropped for room.
        self._awaited: Set[int] = set()

    def detach_spool(self) -> None:
        """From now on in memory only (the spool is being closed)."""
        self._spool = None

    def restore(self, messages: List[Tuple[int, bytes]]) -> None:
        """Loads what a spool held (already stored there)."""
        for seq, data in messages:
            self._messages[seq] = data

    def __len__(self) -> int:
        return len(self._messages)

    def __contains__(self, seq: int) -> bool:
        return seq in self._messages

    def get(self, seq: int) -> Optional[bytes]:
        return self._messages.get(seq)

    def first(self) -> Optional[int]:
        return next(iter(self._messages), None)

    def add(self, seq: int, data: bytes) -> Optional[int]:
        """Keeps message ``seq``; returns the seq dropped to make room, if any."""
        dropped = None
        if len(self._messages) >= self.limit:
            dropped = next((s for s in self._messages if s not in self._awaited), None)
            if dropped is None:
                dropped = next(iter(self._messages))
            del self._messages[dropped]
            self._awaited.discard(dropped)
        self._messages[seq] = data
        if self._spool is not None:
            self._spool.append(seq, data, dropped)
        return dropped

    def confirm_through(self, seq: int) -> int:
        """Drops every message at or below ``seq``; returns how many."""
        done = list(itertools.takewhile(lambda s: s <= seq, self._messages))
        for s in done:
            del self._messages[s]
        self._awaited = {s for s in self._awaited if s > seq}
        if done and self._spool is not None:
            self._spool.remove_through(seq)
        return len(done)

    def remove(self, seq: int) -> None:
        if self._messages.pop(seq, None) is not None and self._spool is not None:
            self._spool.remove(seq)
        self._awaited.discard(seq)

    def await_seq(self, seq: int) -> None:
        """The hub waits for ``seq``: keep it when making room."""
        if seq in self._messages:
            self._awaited.add(seq)

    def after(self, seq: int) -> Optional[int]:
        """The smallest seq held above ``seq``."""
        if seq + 1 in self._messages:
            return seq + 1
        return next((s for s in self._messages if s > seq), None)

    def seqs(self) -> Iterator[int]:
        return iter(self._messages)
