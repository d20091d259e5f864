"""Drift monitor: is the line still showing the model what it was calibrated on?

The trainer stores a reference in model.json (``drift_reference``): the calibration (hold-out)
images' normalised scores and every training image's mean brightness and contrast (luma mean and
standard deviation on the same subsample the image-quality gate uses). The daemon keeps the last
``drift.window`` inspected frames (OK and NG; ERROR frames have no score) and compares each signal
with its reference by the population stability index:

    PSI = Σ_bins (a − e) · ln(a / e)

over bins cut at the reference's quantiles (``a``, ``e``: the recent and reference share of each
bin, floored at 1e-4). The usual reading: < 0.1 stable, 0.1–0.25 moderate shift, ≥ 0.25 a shift
worth acting on, hence the default alert threshold ``drift.alert_psi: 0.25``. Drift is a warning
(P/health ``drift``, /metrics ``edge_inspector_drift_*``, the operator page), never a verdict.

Sampling noise: for two samples of the same distribution PSI is about (k − 1)(1/n + 1/m) (k
bins, n recent frames, m reference values); k = clamp(m / 10, 2, 10) keeps that below 0.1 for
the default window (500) and min_samples (200) whenever the reference has 20 or more values.

A bundle trained before the reference existed reports ``status: "unavailable"`` with the reason.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from typing import Any, Callable, Iterable, Optional

import numpy as np

from edge_inspector.logging import get_logger
from edge_inspector.observer import PipelineObserver
from edge_inspector.preprocess.quality import sampled_luma

log = get_logger(__name__)

SIGNALS = ("score", "mean_luma", "contrast")
REFERENCE_POINTS = 200  # values kept per signal in model.json (order statistics of the full set)
PSI_FLOOR = 1e-4
_SNAPSHOT_TTL_S = 1.0  # scrapes, P/health and the page share one computation per second


def image_stats(image: np.ndarray) -> tuple[float, float]:
    """(mean luma, luma standard deviation) of a uint8 frame, on the quality gate's subsample."""
    luma = sampled_luma(image).astype(np.float32)
    return float(luma.mean()), float(luma.std())


def _thin(values: Iterable[float]) -> list[float]:
    """At most REFERENCE_POINTS evenly spaced order statistics: the distribution, compactly."""
    v = np.sort(np.asarray([float(x) for x in values if math.isfinite(float(x))], dtype=np.float64))
    if v.size > REFERENCE_POINTS:
        v = v[np.linspace(0, v.size - 1, REFERENCE_POINTS).round().astype(int)]
    return [round(float(x), 5) for x in v]


def drift_reference(scores: Iterable[float], stats: Iterable[tuple[float, float]]) -> dict:
    """model.json ``drift_reference`` from calibration scores (normalised) and the training
    images' ``image_stats``."""
    stats = list(stats)
    return {
        "measure": "psi",
        "score": _thin(scores),
        "mean_luma": _thin(s[0] for s in stats),
        "contrast": _thin(s[1] for s in stats),
    }


def psi(reference: Iterable[float], recent: Iterable[float]) -> float:
    """Population stability index of ``recent`` against ``reference`` (bins: reference quantiles)."""
    ref = np.asarray(list(reference), dtype=np.float64)
    cur = np.asarray(list(recent), dtype=np.float64)
    if ref.size == 0 or cur.size == 0:
        raise ValueError("psi needs values on both sides")
    bins = int(min(10, max(2, ref.size // 10)))
    edges = np.unique(np.quantile(ref, np.linspace(0.0, 1.0, bins + 1)[1:-1]))
    n_bins = edges.size + 1
    expected = np.bincount(np.searchsorted(edges, ref, side="right"), minlength=n_bins) / ref.size
    actual = np.bincount(np.searchsorted(edges, cur, side="right"), minlength=n_bins) / cur.size
    expected = np.maximum(expected, PSI_FLOOR)
    actual = np.maximum(actual, PSI_FLOOR)
    return float(np.sum((actual - expected) * np.log(actual / expected)))


class DriftMonitor(PipelineObserver):
    """Rolling window of scores and image statistics vs. the bundle's ``drift_reference``.

    ``on_verdict`` costs two means over a ≤256-pixel-side strided view and three deque appends;
    the PSI itself is computed when someone asks (``snapshot``), at most once a second."""

    def __init__(self, cfg: Any, bundle_meta: Callable[[], Optional[dict]], clock=time.monotonic):
        self._cfg = cfg
        self._bundle_meta = bundle_meta
        self._clock = clock
        self._lock = threading.Lock()
        self._recent = {name: deque(maxlen=cfg.window) for name in SIGNALS}
        self._reference: Optional[dict] = None
        self._unavailable = "no model in service yet"
        self._cached: Optional[tuple[float, dict]] = None
        self._load_reference()

    # --- reference --------------------------------------------------------------------------
    def _load_reference(self) -> None:
        meta = self._bundle_meta() or {}
        ref = meta.get("drift_reference")
        reference, reason = None, None
        if not meta:
            reason = "no model in service yet"
        elif not isinstance(ref, dict):
            reason = (f"model bundle {meta.get('name', '?')} has no drift_reference (trained before drift "
                      "monitoring): retrain it to enable the drift monitor")
        else:
            reference = {s: [float(v) for v in ref.get(s) or []] for s in SIGNALS}
            empty = [s for s in SIGNALS if not reference[s]]
            if empty:
                reference, reason = None, f"model bundle {meta.get('name', '?')}: drift_reference has no values for {', '.join(empty)}"
        with self._lock:
            self._reference, self._unavailable = reference, reason
            for window in self._recent.values():
                window.clear()  # another model: its scores mean something else
            self._cached = None

    # --- PipelineObserver -------------------------------------------------------------------
    def on_model(self, name: str, sha256: str) -> None:
        self._load_reference()

    def on_verdict(self, verdict: Any, frame: Any, anomaly_map: Any) -> None:
        if not self._cfg.enabled or getattr(verdict, "verdict", None) not in ("OK", "NG"):
            return None
        score = getattr(verdict, "score", None)
        image = getattr(frame, "image", None)
        if score is None or image is None or not math.isfinite(float(score)):
            return None
        mean, contrast = image_stats(image)
        with self._lock:
            self._recent["score"].append(float(score))
            self._recent["mean_luma"].append(mean)
            self._recent["contrast"].append(contrast)
        return None

    # --- reporting --------------------------------------------------------------------------
    def snapshot(self) -> dict:
        """{"status": ok | alert | collecting | unavailable | off, "psi": {signal: value}, ...}."""
        now = self._clock()
        with self._lock:
            if self._cached is not None and now - self._cached[0] < _SNAPSHOT_TTL_S:
                return self._cached[1]
            reference = self._reference
            recent = {s: list(w) for s, w in self._recent.items()}
            reason = self._unavailable
        cfg = self._cfg
        body: dict[str, Any] = {"measure": "psi", "alert_threshold": cfg.alert_psi, "window": cfg.window,
                                "samples": len(recent["score"])}
        if not cfg.enabled:
            body.update(status="off", reason="drift.enabled is false")
        elif reference is None:
            body.update(status="unavailable", reason=reason)
        elif body["samples"] < min(cfg.min_samples, cfg.window):
            body.update(status="collecting", reason=f"{body['samples']}/{min(cfg.min_samples, cfg.window)} frames in the window")
        else:
            values = {s: round(psi(reference[s], recent[s]), 4) for s in SIGNALS}
            worst = max(values, key=values.get)
            alert = values[worst] >= cfg.alert_psi
            body.update(status="alert" if alert else "ok", psi=values, worst=worst,
                        recent_mean={s: round(float(np.mean(recent[s])), 4) for s in SIGNALS},
                        reference_mean={s: round(float(np.mean(reference[s])), 4) for s in SIGNALS})
        with self._lock:
            self._cached = (now, body)
        return body

    def health_section(self) -> dict:
        """The ``drift`` section of P/health."""
        return {"drift": self.snapshot()}

    def apply_config(self, cfg: Any) -> str:
        new = cfg.drift
        if new == self._cfg:
            return "drift: unchanged"
        with self._lock:
            self._cfg = new
            for name in SIGNALS:
                self._recent[name] = deque(self._recent[name], maxlen=new.window)
            self._cached = None
        return "drift: applied"


class _DriftCollector:
    """/metrics: edge_inspector_drift_psi{signal}, _drift_alert, _drift_samples, _drift_available."""

    def __init__(self, monitor: DriftMonitor):
        self._monitor = monitor

    def collect(self):
        from prometheus_client.core import GaugeMetricFamily

        from edge_inspector.health.metrics import NAMESPACE

        snap = self._monitor.snapshot()
        family = GaugeMetricFamily(f"{NAMESPACE}_drift_psi", "Population stability index of recent frames vs. the "
                                   "model's calibration set, per signal (alert at drift.alert_psi)", labels=["signal"])
        for signal, value in sorted((snap.get("psi") or {}).items()):
            family.add_metric([signal], value)
        yield family
        yield GaugeMetricFamily(f"{NAMESPACE}_drift_alert", "1 while a drift PSI is at or above drift.alert_psi",
                                value=1.0 if snap["status"] == "alert" else 0.0)
        yield GaugeMetricFamily(f"{NAMESPACE}_drift_alert_threshold", "drift.alert_psi", value=float(snap["alert_threshold"]))
        yield GaugeMetricFamily(f"{NAMESPACE}_drift_samples", "Frames in the drift window", value=float(snap["samples"]))
        yield GaugeMetricFamily(f"{NAMESPACE}_drift_available", "0 when the model bundle has no drift reference",
                                value=0.0 if snap["status"] == "unavailable" else 1.0)


def create_ops_component(supervisor: Any) -> DriftMonitor:
    """Hook for Supervisor._build_ops (after metrics, which exports its collector)."""
    from edge_inspector.health.metrics import find_metrics

    def bundle_meta() -> Optional[dict]:
        runtime = supervisor.current_runtime()
        return None if runtime is None else runtime.bundle.meta

    monitor = DriftMonitor(supervisor.cfg.drift, bundle_meta)
    metrics = find_metrics(supervisor)
    if metrics is not None:
        metrics.registry.register(_DriftCollector(monitor))
    return monitor
