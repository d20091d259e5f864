"""A free-run camera that reconnects by itself is not a stalled stage; a hung acquisition thread is.

Both are judged by the one rule the watchdog and /healthz share (health/liveness.py) on
``Supervisor.stage_heartbeats()``: here with a 0.5 s heartbeat timeout and a 1.5 s reconnect.
"""

from __future__ import annotations

import threading
import time

import pytest

from edge_inspector.acquisition.base import Frame, FrameSource
from edge_inspector.health.liveness import stalled_stages
from tests.helpers.tiny_bundle import make_tiny_bundle
from tests.test_pipeline import NumpyEngine, Recorder, grey, make_supervisor

HEARTBEAT_TIMEOUT_S = 0.5
OUTAGE_S = 1.5  # one long backoff step, as camera.reconnect_max_s allows (30 s by default)


class FlakyFreeRunCamera(FrameSource):
    """Streams 3 frames, loses the camera, retries after OUTAGE_S (the real sources' reconnect
    loop: state "reconnecting", then ``wait_to_reconnect``), streams 3 more and ends.
    ``hang_while_reconnecting``: the retry instead blocks inside a "driver call" forever."""

    triggered = False

    def __init__(self, hang_while_reconnecting=False):
        self.hang = hang_while_reconnecting
        self.reconnecting = threading.Event()
        self._stop = threading.Event()

    def open(self):
        self._set_state("open", "fake")

    def frames(self):
        for i in range(6):
            if i == 3:
                self._set_state("reconnecting", "fake: camera lost; retry in 1.50s")
                self.reconnecting.set()
                if self.hang:
                    self._stop.wait()  # e.g. a device open that never returns: no liveness report
                    return
                if not self.wait_to_reconnect(self._stop, OUTAGE_S):
                    return
                self._set_state("open", "fake: reconnected")
            yield Frame(frame_id=f"f{i}", image=grey(), ts_grab=time.monotonic(), ts_wall=time.time())
            self._stop.wait(0.02)
        self._set_state("ended", "fake")

    def close(self):
        self._stop.set()


def _start(tmp_path, source, recorder):
    model_dir = make_tiny_bundle(tmp_path / "model", image_size=32, threshold=0.5)
    sup = make_supervisor(tmp_path, model_dir, source, NumpyEngine(), observers=[recorder],
                          pipeline={"heartbeat_timeout_s": HEARTBEAT_TIMEOUT_S})
    sup.start()
    out: dict = {}
    thread = threading.Thread(target=lambda: out.setdefault("rc", sup.run()))
    thread.start()
    return sup, thread, out


def _watch_acquisition(sup, until: threading.Event, seconds: float) -> list[float]:
    """Acquisition heartbeat ages sampled like the watchdog does, for ``seconds``."""
    ages = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and not until.is_set():
        ages.append(sup.stage_heartbeats()["acquisition"])
        time.sleep(0.05)
    return ages


def test_reconnecting_camera_keeps_the_acquisition_heartbeat_alive(tmp_path):
    source, recorder = FlakyFreeRunCamera(), Recorder()
    sup, thread, out = _start(tmp_path, source, recorder)
    try:
        assert source.reconnecting.wait(10)
        ages = _watch_acquisition(sup, sup.pipeline.finished, OUTAGE_S)
        thread.join(20)
    finally:
        sup.request_stop("test")
        thread.join(20)
    assert out["rc"] == 0 and len(sup.publisher.verdicts) == 6  # the line came back and went on
    assert ages and max(ages) < HEARTBEAT_TIMEOUT_S, max(ages)
    assert ("camera", "reconnecting", "fake: camera lost; retry in 1.50s") in recorder.states
    assert not [s for s in recorder.states if s[:2] == ("pipeline", "stalled")]


def test_acquisition_hung_inside_a_reconnect_still_counts_as_stalled(tmp_path):
    source, recorder = FlakyFreeRunCamera(hang_while_reconnecting=True), Recorder()
    sup, thread, out = _start(tmp_path, source, recorder)
    try:
        assert source.reconnecting.wait(10)
        time.sleep(HEARTBEAT_TIMEOUT_S + 0.6)  # the supervisor loop checks every 0.2 s
        assert sup.status()["camera_state"] == "reconnecting"
        assert set(stalled_stages(sup.stage_heartbeats(), HEARTBEAT_TIMEOUT_S)) == {"acquisition"}
        assert ("pipeline", "stalled", "acquisition") in recorder.states
    finally:
        sup.request_stop("test")
        thread.join(20)
    assert out["rc"] == 0


@pytest.mark.pylon
def test_pylon_reconnect_reports_liveness_between_attempts(tmp_path, monkeypatch):
    """The real PylonSource reconnect loop: the device "disappears" (test seam), the first reopen
    attempts fail, and the waits between them keep reporting that the thread is alive."""
    pytest.importorskip("pypylon")
    import cv2
    import numpy as np

    from edge_inspector.acquisition.base import CameraError
    from edge_inspector.acquisition.pylon import PylonSource
    from edge_inspector.config.models import CameraConfig

    monkeypatch.setenv("PYLON_CAMEMU", "1")
    folder = tmp_path / "images"
    folder.mkdir()
    cv2.imwrite(str(folder / "part.png"), np.full((48, 64), 127, np.uint8))

    class UnpluggedForAWhile(PylonSource):
        removed_once = False
        failing_reopens = 2

        def _device_removed(self, camera):
            if not self.removed_once:
                self.removed_once = True
                return True
            return super()._device_removed(camera)

        def _connect(self):
            if self.removed_once and self.failing_reopens > 0:
                self.failing_reopens -= 1
                raise CameraError("camera.serial=0815-0000: no pylon camera with this serial")
            return super()._connect()

    cfg = CameraConfig.model_validate({"type": "pylon", "path": str(folder), "fps": 50,
                                       "reconnect_min_s": 0.8, "reconnect_max_s": 0.8})
    source = UnpluggedForAWhile(cfg)
    alive_at: list[float] = []
    source.on_alive = lambda: alive_at.append(time.monotonic())
    source.open()
    try:
        frames = source.frames()
        frame = next(frames)  # blocks through 3 waits: 0.8 + 0.8 + 0.8 s
    finally:
        source.close()
    assert frame.image is not None and source.stats["reconnects"] == 1
    assert alive_at[-1] - alive_at[0] > 2.0
    # beats every 0.1 s; one silent 0.8 s backoff sleep would show as a 0.8 s gap. 0.7 s leaves
    # room for a loaded 2-core CI box and is far inside any heartbeat timeout
    assert max(b - a for a, b in zip(alive_at, alive_at[1:])) < 0.7
