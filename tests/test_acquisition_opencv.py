"""OpenCVSource on a real MJPG .avi written with cv2.VideoWriter, and reconnect on dead devices/URLs."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge_inspector.acquisition import create_source
from edge_inspector.acquisition.opencv import OpenCVSource
from edge_inspector.config.models import CameraConfig
from edge_inspector.errors import InputError

LEVELS = [20, 60, 100, 140, 180, 220]  # one flat grey level per frame: survives MJPG compression


def _camera(**kw) -> CameraConfig:
    return CameraConfig.model_validate({"type": "opencv", **kw})


@pytest.fixture
def video(tmp_path) -> Path:
    path = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 25.0, (64, 48))
    assert writer.isOpened(), "OpenCV cannot write MJPG .avi here"
    for level in LEVELS:
        writer.write(np.full((48, 64, 3), level, dtype=np.uint8))
    writer.release()
    return path


def _levels(frames) -> list[int]:
    return [int(round(float(f.image.mean()) / 40.0)) * 40 + 20 for f in frames]


def test_video_file_plays_every_frame_once_then_ends(video):
    states = []
    with create_source(_camera(path=str(video), fps=200), on_state=lambda s, d: states.append(s)) as source:
        assert isinstance(source, OpenCVSource) and source.kind == "file" and not source.triggered
        frames = list(source.frames())
        assert source.state == "ended"
    assert _levels(frames) == LEVELS
    assert all(f.image.shape == (48, 64, 3) and f.image.dtype == np.uint8 for f in frames)
    assert [f.frame_id for f in frames] == [f"clip-{i}" for i in range(1, 7)]
    assert states == ["open", "ended", "closed"]


def test_video_file_loops_when_configured(video):
    with OpenCVSource(_camera(path=str(video), fps=500, loop=True)) as source:
        frames = []
        for frame in source.frames():
            frames.append(frame)
            if len(frames) == 14:
                break
    assert _levels(frames) == LEVELS + LEVELS + LEVELS[:2]
    assert [f.meta["pass"] for f in frames] == [0] * 6 + [1] * 6 + [2] * 2
    assert len({f.frame_id for f in frames}) == 14


def test_video_file_is_paced_at_camera_fps(video):
    with OpenCVSource(_camera(path=str(video), fps=40)) as source:
        stamps = [f.ts_grab for f in source.frames()]
    assert len(stamps) == 6
    assert stamps[-1] - stamps[0] >= 5 / 40 - 0.002
    assert stamps[-1] - stamps[0] < 5 / 40 + 0.1


@pytest.mark.parametrize(
    "path_of, expected",
    [
        (lambda tmp: str(tmp / "missing.avi"), "no such video file"),
        (lambda tmp: (tmp / "junk.avi").write_bytes(b"\x00garbage" * 64) and str(tmp / "junk.avi"), "cannot open this video file"),
    ],
    ids=["missing", "garbage"],
)
def test_bad_video_file_fails_at_open_with_one_line(tmp_path, path_of, expected):
    source = OpenCVSource(_camera(path=path_of(tmp_path)))
    with pytest.raises(InputError) as info:
        source.open()
    assert expected in str(info.value) and "camera.path=" in str(info.value) and "\n" not in str(info.value)


def test_software_trigger_mode_is_rejected(video):
    with pytest.raises(InputError, match="camera.trigger.mode=software"):
        OpenCVSource(_camera(path=str(video), trigger={"mode": "software"})).open()


def test_missing_path_is_rejected():
    with pytest.raises(InputError, match="camera.path: required"):
        OpenCVSource(_camera())


@pytest.mark.parametrize("path", ["rtsp://127.0.0.1:9/none", "97"], ids=["refused-rtsp-url", "absent-usb-index"])
def test_dead_live_source_retries_with_exponential_backoff_until_closed(path):
    details = []
    source = OpenCVSource(_camera(path=path, reconnect_min_s=0.05, reconnect_max_s=0.2, grab_timeout_ms=500),
                          on_state=lambda s, d: details.append((s, d)))
    source.open()  # live sources do not fail here: the camera may come up later
    assert source.state == "reconnecting"
    received = []
    consumer = threading.Thread(target=lambda: received.extend(source.frames()))
    consumer.start()
    deadline = time.monotonic() + 5
    while sum(s == "reconnecting" for s, _ in details) < 5 and time.monotonic() < deadline:
        time.sleep(0.02)
    started = time.monotonic()
    source.close()
    consumer.join(timeout=2)
    assert not consumer.is_alive() and time.monotonic() - started < 1.0
    retries = [d for s, d in details if s == "reconnecting"][1:]  # [0] is the failed open()
    assert [d.rsplit("retry in ", 1)[1] for d in retries[:4]] == ["0.05s", "0.10s", "0.20s", "0.20s"]
    assert received == [] and details[-1][0] == "closed"


class _ScriptedCapture:
    """Stands in for a live cv2.VideoCapture: serves ``good`` frames, then fails every read."""

    def __init__(self, good: int):
        self.good = good

    def read(self):
        if self.good > 0:
            self.good -= 1
            return True, np.zeros((4, 4, 3), np.uint8)
        return False, None

    def release(self):
        pass


def test_live_source_reopens_after_consecutive_read_failures_with_scripted_capture(monkeypatch):
    # No RTSP server here: the capture object is scripted, the reconnect logic is the real one.
    captures = iter([_ScriptedCapture(good=2), _ScriptedCapture(good=3)])
    monkeypatch.setattr(OpenCVSource, "_open_capture", lambda self: next(captures, None))
    states = []
    source = OpenCVSource(_camera(path="rtsp://camera.invalid/stream", max_consecutive_failures=3,
                                  reconnect_min_s=0.01, reconnect_max_s=0.02),
                          on_state=lambda s, d: states.append((s, d)))
    source.open()
    frames = []
    for frame in source.frames():
        frames.append(frame)
        if len(frames) == 5:
            break
    source.close()
    assert [f.frame_id for f in frames] == [f"stream-{i}" for i in range(1, 6)]
    assert source.read_failures == 3 and source.reconnects == 1
    assert [s for s, _ in states] == ["open", "reconnecting", "open", "closed"]
    assert "3 consecutive read failures" in states[1][1]
