"""The real daemon on pylon's camera emulator: with the emulator's image folder removed, the
camera reconnects with backoff as docs/cameras.md says (issue 8: the daemon exited 1 with a
traceback); health stays honest and delivery resumes, contiguous, once the folder is back."""

from __future__ import annotations

import signal

import pytest

from tests.helpers.broker import free_port
from tests.helpers.faults import assert_contiguous, healthz, log_events, start_daemon, wait_until
from tests.helpers.station import Subscriber, station_config, stop_daemon, write_config, write_parts
from tests.helpers.tiny_bundle import make_tiny_bundle

pytest.importorskip("pypylon")
pytestmark = pytest.mark.pylon


def test_emulator_image_folder_removed_reconnects_instead_of_exiting(tmp_path, mosquitto):
    images = tmp_path / "images"
    write_parts(images, 6)
    health_port = free_port()
    cfg = station_config(tmp_path, mosquitto.port, make_tiny_bundle(tmp_path / "model"), images,
                         camera={"type": "pylon", "fps": 10.0, "pixel_format": "Mono8", "trigger": {"mode": "free_run"},
                                 "grab_timeout_ms": 300, "max_consecutive_failures": 2,
                                 "reconnect_min_s": 0.2, "reconnect_max_s": 1.0},
                         pipeline={"heartbeat_timeout_s": 3.0, "shutdown_timeout_s": 3.0},
                         health={"enabled": True, "port": health_port})
    config = write_config(tmp_path / "station.yaml", cfg)
    sub = Subscriber(mosquitto.port)
    log = tmp_path / "daemon.log"
    proc = start_daemon(config, log_path=log, env={"PYLON_CAMEMU": "1"})
    try:
        wait_until(lambda: len(sub.results_by_seq()) >= 3, 60, "first results", proc, log)
        away = images.with_name("images-away")
        images.rename(away)
        wait_until(lambda: log_events(log, "pylon_reconnect_rejected"), 30, "a rejected reconnect attempt", proc, log)
        wait_until(lambda: len(log_events(log, "pylon_reconnect_rejected")) >= 2, 30, "a second attempt (backoff)", proc, log)
        assert proc.poll() is None, log.read_text()[-3000:]  # still running: retrying, not exiting
        assert any(s.get("camera") == "reconnecting" for s in sub.payloads("status"))
        code, body = healthz(health_port)
        assert code == 200, body  # the retry loop is alive and says so
        away.rename(images)
        seen = len(sub.results_by_seq())
        wait_until(lambda: len(sub.results_by_seq()) > seen + 3, 30, "results after the folder came back", proc, log)
    finally:
        sub.close()
        rc = stop_daemon(proc, signal.SIGTERM)
    assert rc == 0, log.read_text()[-3000:]
    assert "Traceback" not in log.read_text()
    assert_contiguous(sub.results_by_seq())
