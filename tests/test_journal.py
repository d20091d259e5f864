"""Journal hygiene (issue 10): with JSON logs every line the daemon writes to stderr is one JSON
object carrying station and line — onnxruntime's coloured C++ warnings and FFmpeg's messages
included (17 of 41 lines of one run were not, and the documented jq recipes failed)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from tests.helpers.station import PYTHON, REPO, bundle_and_parts, station_config, write_config

pytest.importorskip("onnx", reason="the tiny test bundle is built with onnx (the train extra)")


def _json_lines(stderr: str) -> list[dict]:
    lines = [line for line in stderr.splitlines() if line.strip()]
    parsed = []
    for line in lines:
        try:
            parsed.append(json.loads(line))
        except json.JSONDecodeError:
            pytest.fail(f"not a JSON line in the daemon's stderr: {line!r}")
    return parsed


def test_every_daemon_line_is_json_with_station_fields(tmp_path):
    model, images = bundle_and_parts(tmp_path, 3)
    cfg = station_config(tmp_path, 9, model, images, health={"enabled": True, "port": 0})
    config = write_config(tmp_path / "station.yaml", cfg)
    # A HOME nobody can create (not even root): onnxruntime's C++ logger then writes its coloured
    # "Failed to persist telemetry device ID" warning to stderr at the first session.
    (tmp_path / "a-file").write_text("x")
    env = {k: v for k, v in os.environ.items() if k != "NOTIFY_SOCKET"}
    env.update(HOME=str(tmp_path / "a-file" / "home"), PYTHONWARNINGS="always")
    proc = subprocess.run([PYTHON, "-m", "edge_inspector", "run", "--config", str(config), "--max-frames", "3",
                           "--set", "pipeline.shutdown_timeout_s=2"],
                          cwd=str(REPO), env=env, capture_output=True, text=True, timeout=120)
    events = _json_lines(proc.stderr)
    assert any(e.get("event") == "stopped" for e in events), proc.stderr[-2000:]
    for event in events:
        assert event.get("station") == "st1" and event.get("line") == "l1", event
    native = [e for e in events if e.get("event") == "native_output"]
    assert all("\x1b" not in e["output"] for e in native), "colour codes stripped"


def test_native_stderr_and_stdlib_logging_become_json(tmp_path):
    """fd-level output of C/C++ code (FFmpeg via OpenCV, a raw write(2)), Python warnings and
    stdlib logging records, each re-emitted as one JSON line."""
    bad_video = tmp_path / "bad.mp4"
    bad_video.write_bytes(b"not a video")
    script = textwrap.dedent(f"""
        import logging, os, warnings
        # Not quietened (no quiet_native_env): FFmpeg writes straight to fd 2 from C; still JSON.
        for key in ("OPENCV_FFMPEG_LOGLEVEL", "OPENCV_LOG_LEVEL"):
            os.environ.pop(key, None)
        from edge_inspector.logging import bind_station, native_output_to_log, setup_logging
        bind_station("l9", "st9")
        setup_logging("INFO", json_logs=True)
        with native_output_to_log():
            import cv2
            cv2.VideoCapture({str(bad_video)!r})
            os.write(2, b"\\x1b[0;93m2026-11-30 [W:onnxruntime:Default, x.cc:1] a C++ warning\\x1b[m\\n")
            logging.getLogger("paho.mqtt.client").error("Caught exception in on_message")
            warnings.warn("something deprecated")
        print("done")
    """)
    proc = subprocess.run([sys.executable, "-c", script], cwd=str(REPO), capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and "done" in proc.stdout, proc.stderr
    events = _json_lines(proc.stderr)
    assert all(e.get("station") == "st9" and e.get("line") == "l9" for e in events), events
    outputs = [e.get("output", "") for e in events if e.get("event") == "native_output"]
    assert any("moov atom not found" in o for o in outputs), events  # FFmpeg, from C
    (ort,) = [e for e in events if "a C++ warning" in e.get("output", "")]
    assert ort["level"] == "warning" and "\x1b" not in ort["output"]
    paho = [e for e in events if e.get("event") == "Caught exception in on_message"]
    assert paho and paho[0]["logger"] == "paho.mqtt.client" and paho[0]["level"] == "error"
    assert any("something deprecated" in json.dumps(e) for e in events)
