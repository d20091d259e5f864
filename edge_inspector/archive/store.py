"""NG archive: rejected frames (and a heatmap overlay) kept as PNG files for review.

Layout under archive.path (relative paths resolve against the service's working directory,
/var/lib/edge-inspector/<station> under systemd)::

    2026-11-28/<frame_id>.png          the frame as grabbed (original pixels)
    2026-11-28/<frame_id>.heatmap.png  the frame with the anomaly map and defect boxes drawn on it

The day is the verdict's UTC date. ``on_verdict`` only queues the work (encoding a
multi-megapixel PNG takes tens of milliseconds) and returns a ``PendingRef`` for
``"2026-11-28/<frame_id>.png"``. A result names an archive file only once it is written: the
publish stage waits for the pending write (at most ``REF_WAIT_S``) and puts the reference into
the payload only if the file is on disk. A small writer thread drains a bounded queue; when it is
full the frame is skipped (counted and logged) rather than slowing the line, and the payload then
carries no reference.

Disk full is a state, not a crash: a write that fails with ENOSPC leaves no half file, sets
``disk_full`` (status payload ``warnings``, /healthz body, ``edge_inspector_disk_full{store="archive"}``),
keeps every file already archived, and clears by itself with the next write that succeeds.

Limits: after each write, and once a minute, the oldest entries are removed first until the
archive is under archive.max_mb and nothing is older than archive.max_age_days.
"""

from __future__ import annotations

import collections
import errno
import os
import queue
import re
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Optional

import cv2
import numpy as np

from edge_inspector.config.models import ArchiveConfig
from edge_inspector.errors import ConfigError
from edge_inspector.faults import fault_point
from edge_inspector.logging import get_logger
from edge_inspector.observer import PipelineObserver
from edge_inspector.threads import start_supervised

log = get_logger(__name__)

HEATMAP_SUFFIX = ".heatmap.png"
_DAY_DIR = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
_IDLE_SWEEP_S = 60.0
EVICTION_LOG_INTERVAL_S = 60.0  # at most one archive_evicted summary line per minute
_TMP_SUFFIX = ".tmp"
# Longest the publish stage waits for a frame's archive write before publishing the result
# without the reference (typically one PNG encode, tens of ms, and only for archived frames).
REF_WAIT_S = 1.0
SEQ_MEMORY = 10_000  # the most recent archived results whose files can be fetched by seq


class PendingRef(str):
    """An archive reference (the str itself) that becomes valid when the writer has put the file
    on disk: ``resolve`` says whether it did."""

    def __new__(cls, ref: str, heatmap: bool = False):
        obj = super().__new__(cls, ref)
        obj._done = threading.Event()
        obj.written = False
        obj.heatmap_ref = heatmap_ref(ref) if heatmap else None  # written with the frame, or neither is
        return obj

    @property
    def ref(self) -> str:
        return str.__str__(self)

    def settle(self, written: bool) -> None:
        self.written = written
        self._done.set()

    def resolve(self, timeout: float = REF_WAIT_S) -> Optional[str]:
        """The reference when the file was written within ``timeout`` seconds, else None."""
        return self.ref if self._done.wait(timeout) and self.written else None


@dataclass
class _Entry:
    """One archived frame: its image and (optional) heatmap, evicted together."""

    ref: str  # "YYYY-MM-DD/<name>.png", relative to the archive root
    mtime: float
    size: int


@dataclass
class _Job:
    ref: str
    image: np.ndarray
    anomaly_map: Optional[np.ndarray]
    threshold: Optional[float]
    defects: list = field(default_factory=list)
    geometry: Any = None
    pending: Optional[PendingRef] = None


def heatmap_ref(ref: str) -> str:
    """``2026-11-28/x.png`` → ``2026-11-28/x.heatmap.png``."""
    return ref[: -len(".png")] + HEATMAP_SUFFIX


def safe_name(frame_id: str) -> str:
    """A frame id as a file name: no path separators, no surprises, bounded length."""
    name = _UNSAFE.sub("_", str(frame_id)).strip("._")[:120]
    return name or "frame"


class ArchiveStore(PipelineObserver):
    """PipelineObserver that archives NG frames (and every Nth OK frame) with quota and age limits."""

    def __init__(self, cfg: ArchiveConfig, queue_size: int = 16, clock=time.time, roi=None):
        self._cfg = cfg
        # preprocess.roi, to place the heatmap when the frame does not carry its Geometry.
        self.roi: Optional[tuple[int, int, int, int]] = roi
        self._clock = clock
        self._queue: "queue.Queue[Optional[_Job]]" = queue.Queue(maxsize=queue_size)
        self._lock = threading.Lock()  # guards the index, counters and config
        self._index: deque[_Entry] = deque()
        self._pending: set[str] = set()
        self._bytes = 0
        self._ok_seen = 0
        self._thread: Optional[threading.Thread] = None
        self._last_skip_log = 0.0
        self._evicted_unlogged: dict[str, int] = {}  # since the last archive_evicted summary
        self._evicted_unlogged_last = ""
        self._last_evict_log = 0.0
        self.disk_full: Optional[str] = None  # one-line reason while archive writes fail for lack of space
        self.counters = {
            "saved": 0,
            "skipped_queue_full": 0,
            "write_errors": 0,
            "disk_full_errors": 0,
            "evicted_quota": 0,
            "evicted_age": 0,
        }
        self.root = Path(cfg.path)
        # seq -> (archive ref, heatmap ref) of this run's results, for /images/seq/... and snapshot by seq
        self._by_seq: "collections.OrderedDict[int, tuple[str, Optional[str]]]" = collections.OrderedDict()
        if cfg.enabled:
            check_archive_path(self.root)
            self._scan()

    # --- lifecycle --------------------------------------------------------------------------
    def start(self) -> "ArchiveStore":
        if self._thread is None:
            self._thread = start_supervised("archive-writer", self._run)
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Write what is queued (up to ``timeout``), then end the writer thread."""
        if self._thread is None:
            return
        try:
            self._queue.put(None, timeout=timeout)
        except queue.Full:
            log.warning("archive_not_drained", detail="queued frames are lost", queued=self._queue.qsize())
        self._thread.join(timeout)
        self._thread = None
        self._report_evictions([], flush=True)  # the last summary is not lost at shutdown

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until every queued frame is written (tests, shutdown). True when drained."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._queue.unfinished_tasks == 0:
                return True
            time.sleep(0.01)
        return False

    def apply_config(self, cfg: Any) -> str:
        """Reload with a station Config (or an ArchiveConfig): new limits apply at once; a new
        path starts a fresh index there (files under the old path stay). Returns a short note."""
        if hasattr(cfg, "preprocess"):
            self.roi = cfg.preprocess.roi
        new = cfg.archive if hasattr(cfg, "archive") else cfg
        with self._lock:
            old = self._cfg
            moved = Path(new.path) != self.root
            self._cfg = new
            if moved:
                self.root = Path(new.path)
        if new.enabled and (moved or not old.enabled):
            check_archive_path(Path(new.path))  # a bad new path fails the reload of this section, loudly
            self._scan()  # files written before (another path, or before it was switched off)
        if new.enabled:
            self.enforce_limits()
        changed = [f"{k} {getattr(old, k)} -> {getattr(new, k)}" for k in type(new).model_fields if getattr(old, k) != getattr(new, k)]
        return f"archive: {', '.join(changed)}" if changed else "archive: unchanged"

    @property
    def enabled(self) -> bool:
        return self._cfg.enabled

    def remember(self, seq: int, ref: Optional[str], heatmap: Optional[str]) -> None:
        """The result ``seq`` names these files (called when the result is stored)."""
        if not ref:
            return
        with self._lock:
            self._by_seq[seq] = (str(ref), heatmap)
            while len(self._by_seq) > SEQ_MEMORY:
                self._by_seq.popitem(last=False)

    def refs_for_seq(self, seq: int) -> Optional[tuple[str, Optional[str]]]:
        with self._lock:
            return self._by_seq.get(seq)

    def read_image(self, seq: int) -> Optional[np.ndarray]:
        """The archived frame of result ``seq`` (original pixels), or None."""
        refs = self.refs_for_seq(seq)
        if refs is None:
            return None
        image = cv2.imread(str(self.root / refs[0]), cv2.IMREAD_UNCHANGED)
        return image

    def stats(self) -> dict[str, float]:
        with self._lock:
            return dict(self.counters, files=len(self._index), bytes=self._bytes, queued=self._queue.qsize())

    # --- PipelineObserver -------------------------------------------------------------------
    def on_verdict(self, verdict: Any, frame: Any, anomaly_map: Optional[np.ndarray]) -> Optional[str]:
        cfg = self._cfg
        image = getattr(frame, "image", None)
        if not cfg.enabled or image is None:
            return None
        kind = getattr(verdict, "verdict", None)
        if kind == "OK":
            if cfg.sample_ok_every <= 0:
                return None
            with self._lock:
                self._ok_seen += 1
                if self._ok_seen % cfg.sample_ok_every:
                    return None
        elif kind != "NG":
            return None  # ERROR frames are counted by metrics; their image is often the problem itself

        if self._queue.full():
            return self._skip(getattr(verdict, "frame_id", ""))
        day = datetime.fromtimestamp(getattr(verdict, "ts_wall", None) or self._clock(), tz=timezone.utc).strftime("%Y-%m-%d")
        name = safe_name(getattr(verdict, "frame_id", "") or getattr(frame, "frame_id", ""))
        job = _Job(
            ref="",
            # The camera may reuse its buffer for the next grab: keep our own copy.
            image=np.array(image, copy=True),
            anomaly_map=None if anomaly_map is None or not cfg.save_heatmap else np.array(anomaly_map, dtype=np.float32),
            threshold=getattr(verdict, "threshold", None),
            defects=list(getattr(verdict, "defects", []) or []),
            geometry=(getattr(frame, "meta", None) or {}).get("geometry") or self.roi,
        )
        with self._lock:
            job.ref = self._unique_ref(day, name)
            job.pending = PendingRef(job.ref, heatmap=job.anomaly_map is not None)
            try:
                self._queue.put_nowait(job)
            except queue.Full:
                job = None
            else:
                self._pending.add(job.ref)
        return job.pending if job is not None else self._skip(name)

    def _skip(self, frame_id: str) -> None:
        """Count (and now and then log) a frame the writer had no room for."""
        with self._lock:
            self.counters["skipped_queue_full"] += 1
            skipped = self.counters["skipped_queue_full"]
        now = time.monotonic()
        if now - self._last_skip_log > 10:
            log.warning("archive_skipped", reason="writer queue full", frame_id=frame_id, skipped=skipped)
            self._last_skip_log = now
        return None

    def _unique_ref(self, day: str, name: str) -> str:
        """Frame ids restart with the daemon; never overwrite an earlier frame's file."""
        ref, n = f"{day}/{name}.png", 1
        while ref in self._pending or (self.root / ref).exists():
            ref, n = f"{day}/{name}-{n}.png", n + 1
        return ref

    # --- writer thread ----------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            fault_point("archive.writer")
            try:
                job = self._queue.get(timeout=_IDLE_SWEEP_S)
            except queue.Empty:
                self.enforce_limits()  # the age limit also applies while the line stands still
                continue
            if job is None:
                self._queue.task_done()
                return
            written = False
            try:
                written = self._write(job)
                self.enforce_limits()
            except Exception:  # noqa: BLE001 - the writer thread must outlive any one frame
                log.exception("archive_writer_error", ref=job.ref)
            finally:
                if job.pending is not None:
                    job.pending.settle(written)
                with self._lock:
                    self._pending.discard(job.ref)
                self._queue.task_done()

    def _write(self, job: _Job) -> bool:
        """Write the frame (and heatmap); True when the frame's file is on disk."""
        target = self.root / job.ref
        heatmap = self.root / heatmap_ref(job.ref)
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            size = _write_png(target, job.image)
            if job.anomaly_map is not None:
                overlay = render_overlay(job.image, job.anomaly_map, job.threshold, job.defects, job.geometry)
                try:
                    size += _write_png(heatmap, overlay)
                except BaseException:
                    target.unlink(missing_ok=True)  # an entry is the frame and its heatmap, or nothing
                    raise
        except Exception as exc:  # noqa: BLE001 - a full disk or odd frame must not kill the writer
            disk_full = isinstance(exc, OSError) and exc.errno == errno.ENOSPC
            with self._lock:
                self.counters["write_errors"] += 1
                if disk_full:
                    self.counters["disk_full_errors"] += 1
            if disk_full:
                if self.disk_full is None:
                    log.error("archive_disk_full", path=str(self.root), ref=job.ref,
                              message=f"archive {self.root}: disk full, NG frames are not archived (results carry "
                              "no archive reference) until space returns; archived files are kept")
                self.disk_full = f"disk full at {self.root}: NG frames not archived"
            else:
                log.error("archive_write_failed", ref=job.ref, error=f"{type(exc).__name__}: {exc}")
            return False
        if self.disk_full is not None:
            log.info("archive_disk_space_back", path=str(self.root))
            self.disk_full = None
        with self._lock:
            self._index.append(_Entry(job.ref, self._clock(), size))
            self._bytes += size
            self.counters["saved"] += 1
        return True

    # --- limits -----------------------------------------------------------------------------
    def enforce_limits(self) -> None:
        """Remove oldest entries until under max_mb and none is older than max_age_days."""
        with self._lock:
            cfg = self._cfg
            max_bytes = cfg.max_mb * 1024 * 1024
            oldest_allowed = self._clock() - cfg.max_age_days * 86400
            victims: list[tuple[_Entry, str]] = []
            while self._index:
                head = self._index[0]
                if head.mtime < oldest_allowed:
                    reason = "evicted_age"
                elif self._bytes > max_bytes:
                    reason = "evicted_quota"
                else:
                    break
                self._index.popleft()
                self._bytes -= head.size
                self.counters[reason] += 1
                victims.append((head, reason))
        for entry, reason in victims:
            self._remove(entry)
        if victims:
            self._report_evictions(victims)

    def _report_evictions(self, victims: list[tuple["_Entry", str]], flush: bool = False) -> None:
        """One ``archive_evicted`` summary per EVICTION_LOG_INTERVAL_S, not one line per write:
        a full archive evicts on every saved frame (319 of 361 journal lines in one run). The
        exact numbers are in ``edge_inspector_archive_frames_total{kind=~"evicted_.*"}``."""
        with self._lock:
            for entry, reason in victims:
                self._evicted_unlogged[reason] = self._evicted_unlogged.get(reason, 0) + 1
                self._evicted_unlogged_last = entry.ref
            now = time.monotonic()
            due = self._evicted_unlogged and (flush or now - self._last_evict_log >= EVICTION_LOG_INTERVAL_S)
            if not due:
                return
            summary, last = dict(self._evicted_unlogged), self._evicted_unlogged_last
            since = None if self._last_evict_log == 0.0 else round(now - self._last_evict_log, 1)
            self._evicted_unlogged.clear()
            self._last_evict_log = now
        log.info("archive_evicted", removed=sum(summary.values()), by_reason=summary, newest_removed=last,
                 since_last_summary_s=since, files=len(self._index), mb=round(self._bytes / 1048576, 1))

    def _remove(self, entry: _Entry) -> None:
        image = self.root / entry.ref
        for path in (image, image.with_name(image.name[: -len(".png")] + HEATMAP_SUFFIX)):
            try:
                path.unlink()
            except FileNotFoundError:
                pass
            except OSError as exc:
                log.warning("archive_remove_failed", path=str(path), error=str(exc))
        try:
            image.parent.rmdir()  # drop a day folder once its last frame is gone
        except OSError:
            pass

    def _scan(self) -> None:
        """Rebuild the index from disk (start, or a new path): a restart must not forget old files."""
        entries: list[_Entry] = []
        root = self.root
        if root.is_dir():
            for day in sorted(p for p in root.iterdir() if p.is_dir() and _DAY_DIR.match(p.name)):
                sizes: dict[str, list] = {}
                for f in day.iterdir():
                    if not f.is_file():
                        continue
                    if f.name.startswith("."):
                        if f.name.endswith(_TMP_SUFFIX):
                            f.unlink(missing_ok=True)  # left by a crash mid-write
                        continue
                    base = f.name[: -len(HEATMAP_SUFFIX)] + ".png" if f.name.endswith(HEATMAP_SUFFIX) else f.name
                    st = f.stat()
                    slot = sizes.setdefault(base, [0.0, 0])
                    slot[0] = max(slot[0], st.st_mtime)
                    slot[1] += st.st_size
                for base, (mtime, size) in sizes.items():
                    entries.append(_Entry(f"{day.name}/{base}", mtime, size))
        entries.sort(key=lambda e: e.mtime)
        with self._lock:
            self._index = deque(entries)
            self._bytes = sum(e.size for e in entries)


def check_archive_path(root: Path) -> None:
    """A bad ``archive.path`` is a config error (exit 2) at start, not write errors for months.

    Creates the folder when missing. A full disk is not a bad path: it is the ``disk_full``
    state, reported once writes fail, so it only logs here."""
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            log.error("archive_disk_full", path=str(root), message=f"archive {root}: no space to create the folder")
            return
        raise ConfigError(f"archive.path={root}: cannot create the archive folder "
                          f"({exc.strerror or exc.__class__.__name__}: {exc.filename or root})") from None
    if not os.access(root, os.W_OK | os.X_OK):
        raise ConfigError(f"archive.path={root}: folder is not writable by this user")


def _write_png(path: Path, image: np.ndarray) -> int:
    """Encode and write atomically (temp name + rename): a reviewer never opens half a file."""
    ok, buf = cv2.imencode(".png", image, [cv2.IMWRITE_PNG_COMPRESSION, 3])
    if not ok:
        raise ValueError(f"cannot encode image of shape {getattr(image, 'shape', None)} as PNG")
    atomic_write(path, buf.tobytes())
    return len(buf)


def atomic_write(path: Path, data: bytes) -> None:
    """Temp name + rename: a reader (reviewer, training) never opens half a file."""
    tmp = path.with_name(f".{path.name}{_TMP_SUFFIX}")
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)  # a full disk must not leave half files behind
        raise


def render_overlay(
    image: np.ndarray,
    anomaly_map: np.ndarray,
    threshold: Optional[float],
    defects: list,
    geometry: Any = None,
) -> np.ndarray:
    """The frame with the anomaly map as a colour overlay and the defect boxes drawn in red.

    The map (model-input size) is stretched over the ROI given by ``geometry`` (preprocess
    Geometry with roi_x/roi_y/roi_w/roi_h, or an [x, y, w, h] ROI) or over the whole frame. Colours are relative to the
    threshold — the threshold sits mid-scale — so heatmaps from one model compare across frames.
    """
    from edge_inspector.preprocess.core import to_bgr_uint8

    canvas = to_bgr_uint8(image).copy()
    h, w = canvas.shape[:2]
    heat = np.squeeze(np.asarray(anomaly_map, dtype=np.float32))
    if heat.ndim != 2:
        raise ValueError(f"anomaly map must be 2-D after squeezing, got shape {heat.shape}")
    if threshold and threshold > 0:
        norm = np.clip(heat / (2.0 * threshold), 0.0, 1.0)
    else:
        lo, hi = float(np.min(heat)), float(np.max(heat))
        norm = (heat - lo) / (hi - lo) if hi > lo else np.zeros_like(heat)
    x, y, rw, rh = 0, 0, w, h
    if geometry is not None and all(hasattr(geometry, a) for a in ("roi_x", "roi_y", "roi_w", "roi_h")):
        x, y, rw, rh = int(geometry.roi_x), int(geometry.roi_y), int(geometry.roi_w), int(geometry.roi_h)
    elif isinstance(geometry, (tuple, list)) and len(geometry) == 4:  # preprocess.roi [x, y, w, h]
        x, y, rw, rh = (int(v) for v in geometry)
    rw, rh = min(rw, w - x), min(rh, h - y)  # the same clipping as Preprocessor._crop
    if rw > 0 and rh > 0:
        colour = cv2.applyColorMap(cv2.resize((norm * 255).astype(np.uint8), (rw, rh), interpolation=cv2.INTER_LINEAR), cv2.COLORMAP_JET)
        region = canvas[y : y + rh, x : x + rw]
        canvas[y : y + rh, x : x + rw] = cv2.addWeighted(region, 0.55, colour, 0.45, 0)
    thickness = max(1, round(max(h, w) / 500))
    for d in defects:
        bbox = getattr(d, "bbox", None) or (d.get("bbox") if isinstance(d, dict) else None)
        if bbox:
            bx, by, bw, bh = (int(v) for v in bbox)
            cv2.rectangle(canvas, (bx, by), (bx + bw - 1, by + bh - 1), (0, 0, 255), thickness)
    return canvas


def create_ops_component(supervisor: Any) -> ArchiveStore:
    """Hook for Supervisor._build_ops. Always built (even when disabled) so a reload can turn it on."""
    cfg = supervisor.cfg
    store = ArchiveStore(cfg.archive, roi=cfg.preprocess.roi)
    from edge_inspector.health.metrics import find_metrics

    metrics = find_metrics(supervisor)
    if metrics is not None:
        metrics.watch_counters("archive_frames", "NG archive activity (saved, skipped, evicted, write errors)",
                               lambda: {k: v for k, v in store.stats().items() if k in store.counters})
        # One unit per metric (Prometheus naming): bytes, files and queued frames are three gauges.
        metrics.watch_value("archive_size_bytes", "Bytes the NG archive holds now", lambda: store.stats()["bytes"])
        metrics.watch_value("archive_files", "Frames the NG archive holds now", lambda: store.stats()["files"])
        metrics.watch_value("archive_queue_depth", "Frames waiting for the archive writer", lambda: store.stats()["queued"])
    return store
