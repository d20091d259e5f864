"""Drift monitor: replaying the calibration set stays below the alert threshold, a brighter replay
of the same parts goes above it — on /metrics and on P/health of the real daemon. Plus the PSI
itself and bundles without a reference."""

from __future__ import annotations

import json
import types

import cv2
import numpy as np
import pytest

jsonschema = pytest.importorskip("jsonschema")

from edge_inspector.config.models import DriftConfig
from edge_inspector.drift import DriftMonitor, drift_reference, image_stats, psi
from tests.helpers.page import page_station, request
from tests.helpers.station import REPO, Subscriber, start_daemon, stop_daemon
from tests.helpers.tiny_bundle import make_tiny_bundle

N = 40
HEALTH_SCHEMA = json.loads((REPO / "docs" / "schemas" / "health.schema.json").read_text())


def write_calibration_parts(folder, brighten: int = 0) -> list[np.ndarray]:
    """Mid-grey parts with a little per-part exposure spread and sensor noise (seeded)."""
    rng = np.random.default_rng(7)
    folder.mkdir(parents=True)
    images = []
    for i in range(N):
        img = np.full((96, 128), 120 + int(rng.integers(-8, 9)), np.float32) + rng.normal(0, 6, (96, 128))
        img = np.clip(img + brighten, 0, 255).astype(np.uint8)
        cv2.imwrite(str(folder / f"part_{i:03d}.png"), img)
        images.append(img)
    return images


def _metric(text: str, name: str) -> dict[str, float]:
    found = {}
    for line in text.splitlines():
        if line.startswith(name):
            key, value = line.rsplit(" ", 1)
            found[key[len(name):]] = float(value)
    return found


def _replay(tmp_path, mqtt_port, model_dir, images, name) -> tuple[dict, dict]:
    """Run the daemon over ``images`` in a loop until the drift window is full; return the
    drift gauges from /metrics and the drift section of a P/health message."""
    work = tmp_path / name
    work.mkdir()
    config, base = page_station(work, mqtt_port, model_dir, images, camera={"fps": 40.0},
                                drift={"window": N, "min_samples": N})
    sub = Subscriber(mqtt_port)
    proc = start_daemon(config, log_path=work / "daemon.log")
    try:
        sub.wait_for(lambda: any(h.get("drift", {}).get("status") in ("ok", "alert") for h in sub.payloads("health")),
                     60, "a P/health drift verdict")
        message = [h for h in sub.payloads("health") if h.get("drift", {}).get("status") in ("ok", "alert")][-1]
        jsonschema.validate(message, HEALTH_SCHEMA)  # the documented schema knows the drift section
        health = message["drift"]
        metrics = request(base + "/metrics")[1].decode()
    finally:
        stop_daemon(proc)
        sub.close()
    return {"psi": _metric(metrics, "edge_inspector_drift_psi"), "alert": _metric(metrics, "edge_inspector_drift_alert")[""]}, health


def test_brighter_replay_raises_drift_past_the_alert_threshold_calibration_replay_does_not(tmp_path, mosquitto):
    calib = write_calibration_parts(tmp_path / "calibration")
    write_calibration_parts(tmp_path / "brighter", brighten=40)
    # The reference the trainer would write: the calibration parts' scores (here: the tiny
    # bundle's, read back from a first replay) and their image statistics.
    plain = make_tiny_bundle(tmp_path / "plain", image_size=64, threshold=5.0)
    sub = Subscriber(mosquitto.port, client_id="scores")
    config, _ = page_station(tmp_path, mosquitto.port, plain, tmp_path / "calibration", camera={"loop": False, "fps": 40.0})
    proc = start_daemon(config)
    try:
        sub.wait_for(lambda: len(sub.results_by_seq()) >= N, 60, "calibration scores")
    finally:
        stop_daemon(proc)
        sub.close()
    scores = [r["score"] for r in sub.results_by_seq().values()]
    reference = drift_reference(scores, [image_stats(img) for img in calib])
    model_dir = make_tiny_bundle(tmp_path / "model", image_size=64, threshold=5.0, drift_reference=reference)

    same, same_health = _replay(tmp_path, mosquitto.port, model_dir, tmp_path / "calibration", "same")
    bright, bright_health = _replay(tmp_path, mosquitto.port, model_dir, tmp_path / "brighter", "bright")

    alert = DriftConfig().alert_psi
    assert same["alert"] == 0.0 and same_health["status"] == "ok"
    assert max(same["psi"].values()) < alert, same
    assert bright["alert"] == 1.0 and bright_health["status"] == "alert"
    assert bright["psi"]['{signal="mean_luma"}'] >= alert and bright["psi"]['{signal="score"}'] >= alert, bright
    assert bright_health["worst"] in ("mean_luma", "score", "contrast") and bright_health["alert_threshold"] == alert
    assert bright_health["recent_mean"]["mean_luma"] > bright_health["reference_mean"]["mean_luma"] + 30


def test_psi_is_zero_for_the_same_sample_and_large_for_a_shift():
    rng = np.random.default_rng(0)
    ref = rng.normal(0, 1, 200)
    assert psi(ref, ref) == pytest.approx(0.0, abs=1e-9)
    assert psi(ref, rng.normal(0, 1, 500)) < 0.1
    assert psi(ref, rng.normal(1.0, 1, 500)) > 0.25
    assert psi(ref, ref + 10) > 5


def _monitor(meta, **cfg):
    return DriftMonitor(DriftConfig(**cfg), lambda: meta)


def _frame(value: int):
    return types.SimpleNamespace(image=np.full((32, 32), value, np.uint8))


def test_a_bundle_without_reference_reports_unavailable_in_one_line():
    monitor = _monitor({"name": "old-bundle"})
    monitor.on_verdict(types.SimpleNamespace(verdict="OK", score=1.0), _frame(100), None)
    snap = monitor.snapshot()
    assert snap["status"] == "unavailable" and "old-bundle" in snap["reason"] and "\n" not in snap["reason"]


def test_collecting_until_min_samples_and_error_verdicts_do_not_count():
    ref = drift_reference([0.0, 1.0, 2.0] * 10, [(100.0, 5.0)] * 30)
    monitor = _monitor({"name": "m", "drift_reference": ref}, window=20, min_samples=20)
    for _ in range(19):
        monitor.on_verdict(types.SimpleNamespace(verdict="OK", score=1.0), _frame(100), None)
        monitor.on_verdict(types.SimpleNamespace(verdict="ERROR", score=None), _frame(100), None)
    assert monitor.snapshot()["status"] == "collecting"
    monitor._cached = None
    monitor.on_verdict(types.SimpleNamespace(verdict="NG", score=2.0), _frame(100), None)
    assert monitor.snapshot()["status"] in ("ok", "alert") and monitor.snapshot()["samples"] == 20


def test_a_new_model_starts_a_new_window():
    meta = {"name": "a", "drift_reference": drift_reference([1.0] * 20, [(100.0, 5.0)] * 20)}
    monitor = _monitor(meta, window=20, min_samples=10)
    for _ in range(10):
        monitor.on_verdict(types.SimpleNamespace(verdict="OK", score=1.0), _frame(100), None)
    monitor.on_model("b", "sha")
    assert monitor.snapshot()["samples"] == 0


def test_min_samples_above_the_window_is_capped_at_the_window():
    ref = drift_reference([1.0] * 20, [(100.0, 5.0)] * 20)
    monitor = _monitor({"name": "m", "drift_reference": ref}, window=20, min_samples=300)
    for _ in range(25):
        monitor.on_verdict(types.SimpleNamespace(verdict="OK", score=1.0), _frame(100), None)
    assert monitor.snapshot()["status"] in ("ok", "alert") and monitor.snapshot()["samples"] == 20
