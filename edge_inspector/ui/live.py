"""The operator page's live state: what the station saw, kept where the pipeline cannot wait on it.

``LiveView`` is a PipelineObserver. Its hooks run on pipeline threads and do only constant-time
work: a counter, a deque append for the score strip, and a ``put_nowait`` of references (verdict,
frame image, anomaly map) into a small queue — when the queue is full the frame is simply not
shown (counted as ``dropped``). The ``ui-render`` thread scales, draws the heatmap and boxes,
encodes the JPEGs for the browser and a PNG of the original frame (for feedback) once per shown
frame, stores a ``Card`` and hands an event to ``EventHub``.

``EventHub`` gives every server-sent-events client its own bounded queue; publishing never
blocks: a client whose queue is full (a browser that stopped reading) is cut off, and its HTTP
thread ends by socket timeout. So a slow or stalled browser can cost one HTTP thread, never a frame.
"""

from __future__ import annotations

import itertools
import math
import queue
import threading
import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Any, Optional

import cv2
import numpy as np

from edge_inspector.logging import get_logger
from edge_inspector.observer import PipelineObserver, find_observer
from edge_inspector.threads import start_supervised

log = get_logger(__name__)

RENDER_QUEUE = 2  # frames waiting to be drawn; more would only show the page older parts
CLIENT_QUEUE = 32  # events buffered per browser before it counts as stalled and is cut off
JPEG_QUALITY = 80


@dataclass
class Card:
    """One shown part: metadata for the page plus the encoded images."""

    id: int
    frame_id: str
    ts: float
    verdict: str
    score: Optional[float]
    threshold: Optional[float]
    defects: list
    model: Optional[dict]
    part_id: Optional[str] = None
    product: Optional[str] = None
    error: Optional[str] = None
    seq: Optional[int] = None
    frame_jpeg: bytes = b""
    overlay_jpeg: bytes = b""
    original_png: bytes = field(default=b"", repr=False)  # full resolution, what feedback saves
    feedback: Optional[str] = None  # label once an operator judged it

    def as_json(self) -> dict:
        return {
            "id": self.id, "frame_id": self.frame_id, "ts": self.ts, "verdict": self.verdict,
            "score": _finite(self.score), "threshold": _finite(self.threshold), "defects": self.defects,
            "model": self.model, "part_id": self.part_id, "product": self.product, "error": self.error,
            "seq": self.seq, "feedback": self.feedback,
            "frame_url": f"/ui/img/{self.id}/frame.jpg" if self.frame_jpeg else None,
            "overlay_url": f"/ui/img/{self.id}/overlay.jpg" if self.overlay_jpeg else None,
        }


def _finite(v: Optional[float]) -> Optional[float]:
    return None if v is None or not math.isfinite(float(v)) else round(float(v), 4)


class EventHub:
    """Fan-out of page events to server-sent-events clients, without ever blocking the sender."""

    def __init__(self, client_queue: int = CLIENT_QUEUE):
        self._client_queue = client_queue
        self._clients: set[queue.Queue] = set()
        self._lock = threading.Lock()
        self.cut_off = 0  # clients dropped because they did not keep up

    def subscribe(self) -> queue.Queue:
        q: queue.Queue = queue.Queue(maxsize=self._client_queue)
        with self._lock:
            self._clients.add(q)
        return q

    def unsubscribe(self, q: queue.Queue) -> None:
        with self._lock:
            self._clients.discard(q)

    @property
    def clients(self) -> int:
        with self._lock:
            return len(self._clients)

    def close(self) -> None:
        """End every client's stream (station stopping)."""
        with self._lock:
            clients, self._clients = list(self._clients), set()
        for q in clients:
            try:
                q.put_nowait(None)
            except queue.Full:
                pass

    def publish(self, event: str, data: str) -> None:
        with self._lock:
            clients = list(self._clients)
        for q in clients:
            try:
                q.put_nowait((event, data))
            except queue.Full:
                self.unsubscribe(q)
                self.cut_off += 1
                try:  # tell its HTTP thread to stop (a slot frees once it took one item: never mind)
                    q.get_nowait()
                    q.put_nowait(None)
                except (queue.Empty, queue.Full):
                    pass


@dataclass
class _Job:
    verdict: Any
    image: Optional[np.ndarray]
    anomaly_map: Optional[np.ndarray]
    geometry: Any


class LiveView(PipelineObserver):
    """Counters, score strip, latest part and NG gallery for the operator page."""

    def __init__(self, cfg: Any, roi=None, drift: Any = None, clock=time.time):
        self._cfg = cfg.ui
        self.roi = roi
        self.drift = drift
        self._clock = clock
        self.station = f"{cfg.station.line}/{cfg.station.name}"
        self.hub = EventHub()
        self._jobs: "queue.Queue[Optional[_Job]]" = queue.Queue(maxsize=RENDER_QUEUE)
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self.started_at = clock()
        self.counts = {"OK": 0, "NG": 0, "ERROR": 0}  # this shift's (ui.shift_starts)
        self.shift_start = self.started_at
        self._next_shift = next_shift_start(self._cfg.shift_starts, self.started_at)
        self.frames = {"shown": 0, "dropped": 0}
        self.threshold: Optional[float] = None
        self.model: Optional[dict] = None
        self.strip: deque = deque(maxlen=self._cfg.score_points)  # (ts, score, verdict)
        self.latest: Optional[Card] = None
        self.gallery: deque[Card] = deque(maxlen=self._cfg.gallery_size)  # NG cards, newest last
        self.recent: deque[Card] = deque(maxlen=self._cfg.recent_size)
        self._seq_by_frame: OrderedDict[str, int] = OrderedDict()
        self._thread: Optional[threading.Thread] = None
        self._stopping = threading.Event()

    # --- lifecycle --------------------------------------------------------------------------
    def start(self) -> None:
        if self._thread is None:
            self._stopping.clear()
            self._thread = start_supervised("ui-render", self._run, self._stopping)

    def stop(self) -> None:
        self.hub.close()
        if self._thread is None:
            return
        self._stopping.set()
        try:
            self._jobs.put(None, timeout=1.0)
        except queue.Full:
            pass
        self._thread.join(5)
        self._thread = None

    def apply_config(self, cfg: Any) -> str:
        new = cfg.ui
        if new == self._cfg:
            return "ui: unchanged"
        with self._lock:
            self._cfg = new
            self.gallery = deque(self.gallery, maxlen=new.gallery_size)
            self.recent = deque(self.recent, maxlen=new.recent_size)
            self.strip = deque(self.strip, maxlen=new.score_points)
            self._next_shift = next_shift_start(new.shift_starts, self._clock())
        self.roi = cfg.preprocess.roi
        return "ui: applied"

    @property
    def feedback_root(self):
        return self._cfg.feedback_path

    # --- PipelineObserver (pipeline threads: constant time, never blocks) -------------------
    def on_verdict(self, verdict: Any, frame: Any, anomaly_map: Optional[np.ndarray]) -> None:
        kind = str(getattr(verdict, "verdict", "ERROR"))
        score = getattr(verdict, "score", None)
        ts = getattr(verdict, "ts_wall", None) or self._clock()
        with self._lock:
            if self._next_shift is not None and ts >= self._next_shift:  # a new shift: counters start over
                self.shift_start = self._next_shift
                self._next_shift = next_shift_start(self._cfg.shift_starts, ts)
                self.counts = {"OK": 0, "NG": 0, "ERROR": 0}
            self.counts[kind] = self.counts.get(kind, 0) + 1
            if getattr(verdict, "threshold", None) is not None:
                self.threshold = verdict.threshold
            if score is not None:
                self.strip.append((ts, float(score), kind))
        job = _Job(verdict, getattr(frame, "image", None), anomaly_map,
                   (getattr(frame, "meta", None) or {}).get("geometry") or self.roi)
        try:
            self._jobs.put_nowait(job)
        except queue.Full:
            with self._lock:
                self.frames["dropped"] += 1
        return None

    def on_published(self, seq: int, verdict: Any) -> None:
        frame_id = getattr(verdict, "frame_id", None)
        if frame_id is None:
            return
        with self._lock:
            self._seq_by_frame[frame_id] = seq
            while len(self._seq_by_frame) > 4 * (self._cfg.gallery_size + self._cfg.recent_size):
                self._seq_by_frame.popitem(last=False)
            for card in itertools.chain(self.recent, self.gallery):
                if card.frame_id == frame_id:
                    card.seq = seq

    def on_model(self, name: str, sha256: str) -> None:
        self.model = {"name": name, "sha256": sha256}

    # --- render thread ----------------------------------------------------------------------
    def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                job = self._jobs.get(timeout=0.5)
            except queue.Empty:
                continue
            if job is None:
                return
            card = self._render(job)
            with self._lock:
                card.seq = self._seq_by_frame.get(card.frame_id)
                self.latest = card
                self.recent.append(card)
                if card.verdict == "NG":
                    self.gallery.append(card)
                self.frames["shown"] += 1
            self.hub.publish("part", dumps({"card": card.as_json(), "stats": self.stats()}))

    def _render(self, job: _Job) -> Card:
        v = job.verdict
        defects = [d.to_dict() if hasattr(d, "to_dict") else dict(d) for d in (getattr(v, "defects", None) or [])]
        card = Card(
            id=next(self._ids), frame_id=str(getattr(v, "frame_id", "")), ts=getattr(v, "ts_wall", None) or self._clock(),
            verdict=str(getattr(v, "verdict", "ERROR")), score=getattr(v, "score", None),
            threshold=getattr(v, "threshold", None), defects=defects, model=getattr(v, "model", None),
            # part identity arrives with the MES trigger (issue 11); older verdicts lack the fields
            part_id=getattr(v, "part_id", None), product=getattr(v, "product", None), error=getattr(v, "error", None),
        )
        if job.image is None:
            return card
        try:
            from edge_inspector.archive.store import render_overlay
            from edge_inspector.preprocess.core import to_bgr_uint8

            image = to_bgr_uint8(job.image)
            h, w = image.shape[:2]
            scale = min(1.0, self._cfg.max_image_px / max(h, w))
            small = image if scale >= 1.0 else cv2.resize(image, (max(1, round(w * scale)), max(1, round(h * scale))),
                                                          interpolation=cv2.INTER_AREA)
            card.frame_jpeg = _jpeg(small)
            if job.anomaly_map is not None:
                boxes = [{"bbox": [round(c * scale) for c in d["bbox"]]} for d in defects]
                card.overlay_jpeg = _jpeg(render_overlay(small, job.anomaly_map, card.threshold, boxes,
                                                         _scaled_geometry(job.geometry, scale)))
            ok, png = cv2.imencode(".png", job.image, [cv2.IMWRITE_PNG_COMPRESSION, 1])
            card.original_png = png.tobytes() if ok else b""
        except Exception:  # noqa: BLE001 - an odd frame costs its picture, never the thread
            log.exception("ui_render_failed", frame_id=card.frame_id)
        return card

    # --- what the page reads ----------------------------------------------------------------
    def stats(self) -> dict:
        with self._lock:
            counts = dict(self.counts)
            frames = dict(self.frames)
            threshold = self.threshold
        inspected = counts.get("OK", 0) + counts.get("NG", 0)
        return {
            "station": self.station,
            "since": self.shift_start,
            "counts": counts,
            "yield": round(counts.get("OK", 0) / inspected, 4) if inspected else None,
            "threshold": _finite(threshold),
            "model": self.model,
            "frames": frames,
            "drift": self.drift.snapshot() if self.drift is not None else {"status": "off"},
        }

    def state(self) -> dict:
        with self._lock:
            latest = self.latest.as_json() if self.latest else None
            gallery = [c.as_json() for c in reversed(self.gallery)]
            strip = [[round(t, 3), round(s, 4), k] for t, s, k in self.strip if math.isfinite(s)]
        return {"latest": latest, "gallery": gallery, "strip": strip, "stats": self.stats()}

    def card(self, card_id: int) -> Optional[Card]:
        with self._lock:
            for card in itertools.chain(reversed(self.recent), reversed(self.gallery)):
                if card.id == card_id:
                    return card
        return None


def next_shift_start(starts: list[str], now: float) -> Optional[float]:
    """Epoch seconds of the first "HH:MM" (local time) after ``now``, or None without shifts."""
    if not starts:
        return None
    from datetime import datetime, timedelta

    here = datetime.fromtimestamp(now).astimezone()
    candidates = []
    for t in starts:
        h, m = (int(x) for x in t.split(":"))
        at = here.replace(hour=h, minute=m, second=0, microsecond=0)
        candidates.append(at if at > here else at + timedelta(days=1))
    return min(candidates).timestamp()


def _scaled_geometry(geometry: Any, scale: float):
    if geometry is None:
        return None
    if all(hasattr(geometry, a) for a in ("roi_x", "roi_y", "roi_w", "roi_h")):
        geometry = (geometry.roi_x, geometry.roi_y, geometry.roi_w, geometry.roi_h)
    if isinstance(geometry, (tuple, list)) and len(geometry) == 4:
        return tuple(round(float(c) * scale) for c in geometry)
    return None


def _jpeg(image: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    return buf.tobytes() if ok else b""


def dumps(obj: Any) -> str:
    """Event / API JSON: compact, and never NaN (a browser's JSON.parse rejects it)."""
    import json

    return json.dumps(obj, separators=(",", ":"), allow_nan=False)


def create_ops_component(supervisor: Any) -> Optional[LiveView]:
    """Hook for Supervisor._build_ops: the page lives on the health server, so both must be on."""
    cfg = supervisor.cfg
    if not (cfg.ui.enabled and cfg.health.enabled):
        return None
    from edge_inspector.drift import DriftMonitor
    from edge_inspector.health.metrics import find_metrics

    view = LiveView(cfg, roi=cfg.preprocess.roi, drift=find_observer(supervisor, DriftMonitor))
    metrics = find_metrics(supervisor)
    if metrics is not None:
        metrics.watch_counters("ui_frames", "Parts the operator page showed, or skipped because it was busy",
                               lambda: dict(view.frames))
    return view
