"""Durable outbox: every result is committed to SQLite before it is published, and removed only
when the broker has acknowledged it (PUBACK). See docs/mqtt.md, "Delivery guarantees".

Design notes
- One connection guarded by one lock: the pipeline's publisher thread adds rows, the MQTT worker
  reads and acknowledges them. SQLite serialises writers anyway; a single lock keeps the cached
  counters (depth, last seq) consistent with the table.
- WAL journal with ``synchronous=FULL`` for ``add``: the commit that creates a result fsyncs the
  WAL, so a result that was handed to the publisher survives a power cut, not only a crash.
  (``NORMAL`` in WAL mode survives a process crash but may lose the last commits on power loss;
  one fsync per verdict costs ~1 ms on an SSD, far below a frame period.)
  ``ack`` and evictions run with ``NORMAL``: losing an acknowledgement to a power cut only means a
  duplicate after restart, which subscribers already remove by ``seq``.
- ``seq`` lives in a ``meta`` table, not in ``max(seq)``: after every row is acknowledged the
  table is empty and the counter must still continue.
- ``seq`` runs 1..``SEQ_MAX`` (2**31 - 1: the PLC payload is 32-bit) and then wraps to 1
  (docs/mqtt.md, "seq range and wrap"). Rows stored before a wrap keep their place: ``pending``
  and eviction treat rows above the newest seq as older than the rows below it.
- ``<outbox>.seq`` (a tiny side file, written atomically once per ``SEQ_RESERVE`` results)
  records a seq that no result has passed yet: the counter's floor if the database is lost.
- ``session`` (meta table) counts the opens of the outbox, i.e. daemon starts: it makes result
  ``frame_id`` unique across restarts and pairs the retained status with its Last Will.
- A corrupt file is never deleted: it is renamed to ``<name>.corrupt-<UTC time>``, whatever can be
  read from it (pending rows, last seq) is copied into a fresh file. When the last seq cannot be
  read, the counter continues after the reserved seq in ``<outbox>.seq`` (a jump of at most
  ``SEQ_RESERVE``, never back); without that file, at the current Unix time in seconds (within
  the 32-bit range until 2038, and above any counter that issued fewer results than seconds
  have passed since 1970).
"""

from __future__ import annotations

import errno
import json
import math
import os
import sqlite3
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Literal, Optional

from edge_inspector.errors import InspectorError
from edge_inspector.logging import get_logger
from edge_inspector.publish.payload import SEQ_MAX

log = get_logger(__name__)

WhenFull = Literal["drop_oldest", "stop"]
SEQ_RESERVE = 1000  # seqs reserved per write of <outbox>.seq (one small fsync per this many results)


def seq_in_window(seq: int, window: Optional[tuple[int, int]]) -> bool:
    """Whether ``seq`` lies in the cyclic interval ``window`` = (first, last) (None: empty)."""
    if window is None:
        return False
    first, last = window
    return first <= seq <= last if first <= last else (seq >= first or seq <= last)


def next_seq(seq: int) -> int:
    """The seq after ``seq``: +1, and 1 after SEQ_MAX (the documented wrap)."""
    return 1 if seq >= SEQ_MAX else seq + 1

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL)",
    "CREATE TABLE IF NOT EXISTS outbox (seq INTEGER PRIMARY KEY, created REAL NOT NULL, payload TEXT NOT NULL)",
)


class OutboxError(InspectorError):
    """The outbox file cannot be used (I/O error, unreadable even after quarantine)."""


class OutboxFullError(OutboxError):
    """The outbox reached its quota and its policy is ``stop``: the result was NOT stored."""


class OutboxDiskFullError(OutboxError):
    """The filesystem under the outbox is full: the result was NOT stored. A state, not a crash:
    ``Outbox.disk_full`` says so until a later ``add`` succeeds (the caller retries)."""

    state = "disk_full"  # read by the publish stage: retry while beating (see pipeline/stages.py)


def _is_disk_full(exc: BaseException) -> bool:
    if getattr(exc, "sqlite_errorname", "") == "SQLITE_FULL":
        return True
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        return True
    return "disk is full" in str(exc) or "No space left" in str(exc)


class Outbox:
    """SQLite-backed queue of results waiting for a PUBACK, ordered by ``seq``.

    ``add`` assigns the next ``seq``, stores the final JSON (with ``seq`` in it) durably and returns
    it; ``pending`` lists rows in ``seq`` order; ``ack`` removes a row. Thread-safe.
    """

    def __init__(self, path: str | os.PathLike, max_mb: float = 512.0, when_full: WhenFull = "drop_oldest"):
        if when_full not in ("drop_oldest", "stop"):
            raise ValueError(f"outbox.when_full must be 'drop_oldest' or 'stop', not {when_full!r}")
        if not max_mb > 0:
            raise ValueError(f"outbox.max_mb must be > 0, not {max_mb!r}")
        self.path = Path(path)
        self.max_bytes = int(max_mb * 1024 * 1024)
        self.when_full: WhenFull = when_full
        self._lock = threading.Lock()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.quarantined: Path | None = None  # set when a corrupt file was moved aside at open
        # One-line reason while the disk under the outbox is full (None otherwise): /healthz,
        # the status payload and edge_inspector_disk_full{store="outbox"} read it.
        self.disk_full: str | None = None
        self._lock_file = _exclusive_lock(self.path)
        self._seq_file = Path(f"{self.path}.seq")
        self._reserved = _read_reserved(self._seq_file)  # no seq above this was handed out (0: unknown)
        try:
            self._conn = self._open_checked()
        except sqlite3.DatabaseError as exc:
            if not _is_corruption(exc):
                # Locked, unreadable, I/O error, ...: the file may be fine; never move it aside.
                self._lock_file.close()
                raise OutboxError(f"outbox {self.path}: cannot open: {exc}") from None
            self._conn = self._recover_from_corrupt(exc)
        self._last_seq = self._meta_get("last_seq", 0)
        self._evicted_total = self._meta_get("evicted_total", 0)
        self._depth = self._conn.execute("SELECT count(*) FROM outbox").fetchone()[0]
        self.session = self._next_session()

    # ----------------------------------------------------------------- public API
    def add(self, payload: dict) -> int:
        """Assign the next seq, store ``payload`` + seq as JSON durably, return the seq.

        Raises OutboxFullError (policy ``stop``) when the quota is reached; nothing is stored then.
        """
        with self._lock:
            seq = next_seq(self._last_seq)
            text = _dumps_with_seq(payload, seq)
            if self.when_full == "stop" and self._used_bytes() + len(text) > self.max_bytes:
                raise OutboxFullError(
                    f"outbox {self.path} is full ({self.max_bytes / 1048576:g} MB, {self._depth} results waiting, "
                    "policy 'stop'): result not stored"
                )
            try:
                if seq == 1 or seq > self._reserved:
                    self._reserve_from(seq)
                self._conn.execute("PRAGMA synchronous=FULL")
                with self._conn:  # one transaction: the row and the counter commit together
                    self._conn.execute(
                        "INSERT INTO outbox (seq, created, payload) VALUES (?, ?, ?)", (seq, time.time(), text)
                    )
                    self._meta_set("last_seq", seq)
            except (sqlite3.Error, OSError) as exc:
                if _is_disk_full(exc):
                    if self.disk_full is None:
                        log.error("outbox_disk_full", path=str(self.path), depth=self._depth,
                                  message=f"outbox {self.path}: disk full, results cannot be stored; waiting for space "
                                  f"({self._depth} stored results kept)")
                    # stable text: it is republished on the retained status whenever it changes
                    self.disk_full = f"disk full at {self.path.parent}: results cannot be stored"
                    raise OutboxDiskFullError(f"outbox {self.path}: disk full, result seq {seq} not stored") from exc
                raise OutboxError(f"outbox {self.path}: cannot store result seq {seq}: {exc}") from exc
            if self.disk_full is not None:
                log.info("outbox_disk_space_back", path=str(self.path), seq=seq)
                self.disk_full = None
            self._last_seq = seq
            self._depth += 1
            if self.when_full == "drop_oldest" and self._used_bytes() > self.max_bytes:
                self._evict_oldest_locked()
            return seq

    def pending(self, limit: int = 100, after_seq: int = 0) -> list[tuple[int, str]]:
        """Up to ``limit`` waiting results stored after ``after_seq`` (0: from the oldest), oldest
        first, as (seq, json). Wrap-aware: rows above the newest seq were stored before the wrap."""
        with self._lock:
            newest = self._last_seq
            rows: list[tuple[int, str]] = []
            if after_seq == 0 or after_seq > newest:  # still in (or before) the rows from before a wrap
                rows = self._conn.execute(
                    "SELECT seq, payload FROM outbox WHERE seq > ? ORDER BY seq LIMIT ?", (max(after_seq, newest), limit)
                ).fetchall()
                after_seq = 0
            if len(rows) < limit:
                rows += self._conn.execute(
                    "SELECT seq, payload FROM outbox WHERE seq > ? AND seq <= ? ORDER BY seq LIMIT ?",
                    (after_seq, newest, limit - len(rows)),
                ).fetchall()
            return rows

    def pending_window(self) -> Optional[tuple[int, int]]:
        """(oldest, newest) seq of the waiting results — a cyclic interval (oldest > newest after a
        wrap) — or None when nothing waits."""
        with self._lock:
            if not self._depth:
                return None
            newest = self._last_seq
        oldest = self.pending(limit=1)
        return (oldest[0][0], newest) if oldest else None

    def ack(self, seq: int) -> bool:
        """Remove a delivered result. Returns False when it was not there (evicted or acked twice)."""
        with self._lock:
            self._conn.execute("PRAGMA synchronous=NORMAL")
            with self._conn:
                removed = self._conn.execute("DELETE FROM outbox WHERE seq = ?", (seq,)).rowcount
            self._depth -= removed
            return removed > 0

    def depth(self) -> int:
        """Number of results waiting for a PUBACK."""
        with self._lock:
            return self._depth

    @property
    def last_seq(self) -> int:
        with self._lock:
            return self._last_seq

    @property
    def evicted_total(self) -> int:
        """Results dropped by the ``drop_oldest`` policy over the outbox's whole life (persisted)."""
        with self._lock:
            return self._evicted_total

    def used_bytes(self) -> int:
        with self._lock:
            return self._used_bytes()

    def close(self) -> None:
        with self._lock:
            try:
                self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            except sqlite3.Error:
                pass
            self._conn.close()
            self._lock_file.close()

    # ----------------------------------------------------------------- internals
    def _next_session(self) -> int:
        """+1 per open (daemon start), persisted: the result's ``frame_id`` and the status/will
        ``session`` carry it, so ids stay unique across restarts and a will pairs with its birth.
        A file without the counter (first start, deleted, or rebuilt after corruption) starts from
        the Unix time in minutes: above any counter that started fewer times than minutes have
        passed since 1970, so even a lost outbox cannot bring back an old ``frame_id``."""
        previous = self._meta_get("session", 0)
        session = previous + 1 if previous else int(time.time() // 60)
        try:
            with self._conn:
                self._meta_set("session", session)
        except (sqlite3.Error, OSError) as exc:
            # e.g. a full disk: the station must still start (and report it). Not persisted, so
            # jump to the minutes clock: a restart in the same state a minute later cannot repeat it.
            session = max(session, int(time.time() // 60))
            log.error("outbox_session_not_saved", path=str(self.path), session=session, error=f"{type(exc).__name__}: {exc}")
        return session

    def _connect(self, path: Path) -> sqlite3.Connection:
        # Default (legacy) transaction handling: DML opens a transaction, "with conn" commits it.
        return sqlite3.connect(str(path), check_same_thread=False, timeout=10.0)

    def _open_checked(self) -> sqlite3.Connection:
        conn = self._connect(self.path)
        try:
            mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise sqlite3.OperationalError(f"cannot switch to WAL journal (got {mode})")
            for statement in _SCHEMA:
                conn.execute(statement)
            conn.commit()
            # quick_check reads every page once: ~1 s per few hundred MB, only at start-up.
            result = conn.execute("PRAGMA quick_check").fetchone()[0]
            if result != "ok":
                raise _CorruptFile(f"integrity check failed: {result}")
        except sqlite3.DatabaseError:
            conn.close()
            raise
        return conn

    def _recover_from_corrupt(self, exc: Exception) -> sqlite3.Connection:
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        aside = self.path.with_name(f"{self.path.name}.corrupt-{stamp}")
        for suffix in ("", "-wal", "-shm"):
            src = Path(str(self.path) + suffix)
            if src.exists():
                os.replace(src, Path(str(aside) + suffix))
        self.quarantined = aside
        rows, last_seq, evicted = _salvage(aside)
        if last_seq is None and self._reserved:
            # every seq ever issued is <= the reservation: continue above it (a gap, never a step back)
            last_seq = self._reserved
            seq_note = f"last seq unreadable: seq continues after the reserved seq in {self._seq_file.name}"
        elif last_seq is None:
            last_seq = max([int(time.time()) % SEQ_MAX] + [seq for seq, _, _ in rows])
            seq_note = "last seq unreadable and no seq reservation file: seq continues from the Unix time in seconds"
        else:
            seq_note = "seq continues"
        if self._reserved and last_seq < self._reserved:
            self._reserved = 0  # the next add writes a fresh reservation from the recovered counter
        log.error(
            "outbox_corrupt",
            message=f"outbox {self.path} is corrupt ({exc}); moved to {aside.name}, "
            f"{len(rows)} waiting results recovered, {seq_note} after {last_seq}",
        )
        try:
            conn = self._open_checked()
            with conn:
                conn.executemany("INSERT OR IGNORE INTO outbox (seq, created, payload) VALUES (?, ?, ?)", rows)
                conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('last_seq', ?)", (last_seq,))
                conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('evicted_total', ?)", (evicted,))
        except sqlite3.Error as exc2:
            raise OutboxError(f"outbox {self.path}: cannot create a fresh file after quarantine: {exc2}") from exc2
        return conn

    def _reserve_from(self, seq: int) -> None:
        """Record (durably, before ``seq`` is used) that seqs up to ``seq + SEQ_RESERVE - 1`` may be
        handed out: a lost database then resumes above every seq ever issued."""
        reserved = min(SEQ_MAX, seq + SEQ_RESERVE - 1)
        tmp = self._seq_file.with_name(self._seq_file.name + ".tmp")
        try:
            with open(tmp, "w", encoding="ascii") as fh:
                fh.write(f"{reserved}\n")
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, self._seq_file)
        except OSError:
            tmp.unlink(missing_ok=True)
            raise
        self._reserved = reserved

    def _meta_get(self, key: str, default: int) -> int:
        row = self._conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return int(row[0]) if row else default

    def _meta_set(self, key: str, value: int) -> None:
        self._conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value))

    def _used_bytes(self) -> int:
        # Pages in use, not the file size: deleted rows go to the freelist and are reused, so the
        # file itself never shrinks below its high-water mark and would otherwise stay "full".
        page_size = self._conn.execute("PRAGMA page_size").fetchone()[0]
        page_count = self._conn.execute("PRAGMA page_count").fetchone()[0]
        free = self._conn.execute("PRAGMA freelist_count").fetchone()[0]
        return (page_count - free) * page_size

    def _evict_oldest_locked(self) -> None:
        # Evict down to 90 % of the quota, not just under it: eviction then happens in rare
        # chunks (one log line each) instead of on every add once the outbox is full.
        target = int(self.max_bytes * 0.9)
        evicted_seqs: list[int] = []
        self._conn.execute("PRAGMA synchronous=NORMAL")
        while self._used_bytes() > target and self._depth > 1:
            # Delete ~2 % of the rows per round (at least one), then re-measure: page usage only
            # falls when whole pages empty, so a per-row loop would re-measure needlessly.
            batch = max(1, min(self._depth - 1, math.ceil(self._depth * 0.02)))
            with self._conn:
                seqs = [r[0] for r in self._conn.execute(  # oldest first, rows from before a wrap first
                    "SELECT seq FROM outbox ORDER BY seq <= ?, seq LIMIT ?", (self._last_seq, batch))]
                self._conn.executemany("DELETE FROM outbox WHERE seq = ?", [(s,) for s in seqs])
                self._evicted_total += len(seqs)
                self._meta_set("evicted_total", self._evicted_total)
            self._depth -= len(seqs)
            evicted_seqs.extend(seqs)
        if evicted_seqs:
            log.error(
                "outbox_full_evicted",
                message=f"outbox {self.path} over its {self.max_bytes / 1048576:g} MB quota: dropped "
                f"{len(evicted_seqs)} oldest undelivered results (seq {evicted_seqs[0]}..{evicted_seqs[-1]})",
                evicted=len(evicted_seqs),
                evicted_total=self._evicted_total,
                first_seq=evicted_seqs[0],
                last_seq=evicted_seqs[-1],
            )


class _CorruptFile(sqlite3.DatabaseError):
    """quick_check found damage in a file SQLite could open."""


def _is_corruption(exc: sqlite3.DatabaseError) -> bool:
    # SQLITE_NOTADB: not a database at all; SQLITE_CORRUPT: damaged pages. Everything else
    # (OperationalError: locked, cannot open, disk I/O) says nothing about the file's content.
    if isinstance(exc, _CorruptFile):
        return True
    name = getattr(exc, "sqlite_errorname", "")
    if name:
        return name.startswith(("SQLITE_CORRUPT", "SQLITE_NOTADB"))
    return not isinstance(exc, sqlite3.OperationalError)


def _exclusive_lock(path: Path):
    """Hold ``<outbox>.lock`` for the outbox's lifetime: two daemons on one outbox would hand out
    the same seq twice. The OS releases the lock when the process dies (no stale lock files)."""
    import fcntl

    handle = open(f"{path}.lock", "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.seek(0)
        holder = handle.read().strip() or "unknown"
        handle.close()
        raise OutboxError(f"outbox {path} is in use by another process (pid {holder})") from None
    handle.seek(0)
    handle.truncate()
    handle.write(str(os.getpid()))
    handle.flush()
    return handle


def _read_reserved(path: Path) -> int:
    """The reserved seq recorded in ``<outbox>.seq``, or 0 when there is none (or it is unreadable)."""
    try:
        value = int(path.read_text(encoding="ascii").strip())
    except (OSError, ValueError):
        return 0
    return value if 1 <= value <= SEQ_MAX else 0


def _dumps_with_seq(payload: dict, seq: int) -> str:
    """JSON of ``payload`` with ``seq`` placed right after ``schema`` (or first when there is none)."""
    ordered: dict = {} if "schema" in payload else {"seq": seq}
    for key, value in payload.items():
        if key == "seq":
            continue
        ordered[key] = value
        if key == "schema":
            ordered["seq"] = seq
    return json.dumps(ordered, separators=(",", ":"), allow_nan=False)


def _salvage(path: Path) -> tuple[list[tuple[int, float, str]], int | None, int]:
    """Best effort: read what a corrupt outbox still gives (rows, last seq, evicted count)."""
    rows: list[tuple[int, float, str]] = []
    last_seq: int | None = None
    evicted = 0
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    except sqlite3.Error:
        return rows, last_seq, evicted
    try:
        try:
            row = conn.execute("SELECT value FROM meta WHERE key = 'last_seq'").fetchone()
            last_seq = int(row[0]) if row else None
            row = conn.execute("SELECT value FROM meta WHERE key = 'evicted_total'").fetchone()
            evicted = int(row[0]) if row else 0
        except (sqlite3.Error, ValueError, TypeError):
            last_seq = None
        try:
            for seq, created, payload in conn.execute("SELECT seq, created, payload FROM outbox ORDER BY seq"):
                json.loads(payload)  # keep only rows that are still whole JSON
                rows.append((int(seq), float(created), payload))
        except (sqlite3.Error, ValueError, TypeError):
            pass
    finally:
        conn.close()
    return rows, last_seq, evicted
