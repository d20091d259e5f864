"""PylonSource against pylon's own camera emulator (PYLON_CAMEMU): the real pypylon path.

pylon reads PYLON_CAMEMU at every device enumeration (checked: setting it after ``import
pypylon`` works), so a per-test monkeypatch.setenv is enough; no subprocess is needed.
The emulator cannot be unplugged, so device removal is simulated through the
``_device_removed`` seam; failed grabs use the emulator's own ForceFailedBuffer command.
"""

from __future__ import annotations

import threading
import time
from itertools import islice
from pathlib import Path

import cv2
import numpy as np
import pytest

pytest.importorskip("pypylon")

from edge_inspector.acquisition import CameraError, create_source  # noqa: E402
from edge_inspector.acquisition.pylon import PylonSource  # noqa: E402
from edge_inspector.config.models import CameraConfig  # noqa: E402
from edge_inspector.errors import InputError  # noqa: E402

pytestmark = pytest.mark.pylon


@pytest.fixture(autouse=True)
def emulated_cameras(monkeypatch):
    monkeypatch.setenv("PYLON_CAMEMU", "2")  # serials 0815-0000 and 0815-0001


def _camera(**kw) -> CameraConfig:
    return CameraConfig.model_validate({"type": "pylon", **kw})


def _write(folder: Path, count: int, shape, seed=0) -> list[np.ndarray]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    images = [rng.integers(0, 256, shape, dtype=np.uint8) for _ in range(count)]
    for i, image in enumerate(images):
        assert cv2.imwrite(str(folder / f"part{i:02d}.png"), image)
    return images


@pytest.fixture
def mono_images(tmp_path):
    return tmp_path / "mono", _write(tmp_path / "mono", 4, (48, 64))


class _Consumer:
    """Runs frames() in its own thread like the pipeline's acquisition thread."""

    def __init__(self, source):
        self.source = source
        self.frames = []
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        for frame in self.source.frames():
            self.frames.append(frame)

    def wait_for(self, n: int, timeout: float = 5.0) -> list:
        deadline = time.monotonic() + timeout
        while len(self.frames) < n and time.monotonic() < deadline:
            time.sleep(0.01)
        return list(self.frames)

    def stop(self):
        self.source.close()
        self.thread.join(timeout=2)
        assert not self.thread.is_alive(), "frames() did not return after close()"


def test_free_run_replays_png_folder_bit_exactly(mono_images):
    folder, images = mono_images
    states = []
    with create_source(_camera(path=str(folder), fps=100), on_state=lambda s, d: states.append(s)) as source:
        assert isinstance(source, PylonSource) and not source.triggered
        frames = list(islice(source.frames(), 8))
    for k, frame in enumerate(frames):
        assert frame.error is None and frame.image.dtype == np.uint8 and frame.image.shape == (48, 64)
        assert np.array_equal(frame.image, images[k % 4]), f"frame {k} differs from part{k % 4:02d}.png"
    assert [f.frame_id for f in frames] == [f"0815-0000-{i}" for i in range(1, 9)]
    assert frames[0].meta["serial"] == "0815-0000" and frames[0].meta["pixel_format"] == "Mono8"
    stamps = [f.ts_grab for f in frames]
    assert stamps == sorted(stamps) and abs(frames[0].ts_wall - time.time()) < 5  # host clocks
    assert states == ["open", "closed"]


def test_colour_pixel_format_gives_bgr_matching_the_file(tmp_path):
    images = _write(tmp_path / "colour", 2, (48, 64, 3), seed=1)
    with PylonSource(_camera(path=str(tmp_path / "colour"), pixel_format="RGB8Packed", fps=100)) as source:
        frames = list(islice(source.frames(), 2))
    for frame, image in zip(frames, images):
        assert frame.image.shape == (48, 64, 3) and np.array_equal(frame.image, image)


def test_bayer_pixel_format_is_demosaiced_to_bgr_uint8(tmp_path):
    _write(tmp_path / "colour", 1, (48, 64, 3))
    with PylonSource(_camera(path=str(tmp_path / "colour"), pixel_format="BayerRG8", fps=100)) as source:
        (frame,) = list(islice(source.frames(), 1))
    assert frame.image.shape == (48, 64, 3) and frame.image.dtype == np.uint8


def test_software_trigger_n_triggers_give_exactly_n_frames(mono_images):
    folder, images = mono_images
    source = PylonSource(_camera(path=str(folder), trigger={"mode": "software"}))
    source.open()
    assert source.triggered
    consumer = _Consumer(source)
    time.sleep(0.3)
    assert consumer.frames == []  # no trigger, no image
    assert all(source.trigger() for _ in range(5))
    frames = consumer.wait_for(5)
    time.sleep(0.4)  # nothing more may arrive
    consumer.stop()
    assert len(consumer.frames) == 5
    assert all(np.array_equal(f.image, images[k % 4]) for k, f in enumerate(frames))
    assert source.stats["grabbed"] == 5 and source.stats["lost_triggers"] == 0


def test_open_by_serial_and_apply_exposure_gain(mono_images):
    folder, _ = mono_images
    with PylonSource(_camera(path=str(folder), serial="0815-0001", exposure_us=2500, gain_db=3.0, fps=100)) as source:
        nodes = source._camera.GetNodeMap()
        assert nodes.GetNode("ExposureTime").Value == pytest.approx(2500)
        assert nodes.GetNode("Gain").Value == pytest.approx(3.0, abs=0.05)
        (frame,) = list(islice(source.frames(), 1))
    assert source.serial == "0815-0001" and frame.frame_id == "0815-0001-1"


def test_unknown_serial_is_one_clear_line_listing_cameras():
    with pytest.raises(CameraError) as info:
        PylonSource(_camera(serial="4711-9999")).open()
    message = str(info.value)
    assert message.startswith("camera.serial=4711-9999: no pylon camera")
    assert "0815-0000" in message and "0815-0001" in message and "\n" not in message


@pytest.mark.parametrize(
    "settings, expected",
    [
        ({"pixel_format": "Mono99"}, "camera.pixel_format=Mono99: pylon camera 0815-0000 does not support"),
        # inside the config's range (0..100 dB), outside this camera's (0..48 dB): the device says so
        ({"gain_db": 60.0}, "camera.gain_db=60.0: out of range"),
        ({"trigger": {"mode": "hardware", "source": "Line9"}}, "camera.trigger.source=Line9"),
        ({"path": "/nonexistent/images"}, "camera.path=/nonexistent/images: no such image file or folder"),
    ],
    ids=["pixel-format", "gain", "trigger-line", "emulator-path"],
)
def test_invalid_camera_settings_fail_with_the_config_key(settings, expected):
    with pytest.raises(InputError) as info:
        PylonSource(_camera(**settings)).open()
    assert str(info.value).startswith(expected) and "\n" not in str(info.value)


def test_hardware_trigger_configures_line_and_waits_without_frames(mono_images):
    folder, _ = mono_images
    source = PylonSource(_camera(path=str(folder), trigger={"mode": "hardware", "source": "Line2", "activation": "FallingEdge"}))
    source.open()
    nodes = source._camera.GetNodeMap()
    assert (nodes.GetNode("TriggerMode").Value, nodes.GetNode("TriggerSource").Value,
            nodes.GetNode("TriggerActivation").Value) == ("On", "Line2", "FallingEdge")
    consumer = _Consumer(source)
    time.sleep(0.4)
    started = time.monotonic()
    consumer.stop()  # close() from another thread ends a blocked frames() promptly
    assert consumer.frames == [] and time.monotonic() - started < 1.0
    with pytest.raises(CameraError, match="trigger.mode=software"):
        source.trigger()


def test_failed_grabs_become_error_frames_when_triggered(mono_images):
    folder, _ = mono_images
    source = PylonSource(_camera(path=str(folder), trigger={"mode": "software"}, max_consecutive_failures=5))
    source.open()
    source._camera.ForceFailedBufferCount.Value = 2  # the emulator's own failure injection
    source._camera.ForceFailedBuffer.Execute()
    consumer = _Consumer(source)
    for _ in range(3):
        assert source.trigger()
    frames = consumer.wait_for(3)
    time.sleep(0.2)
    consumer.stop()
    assert len(consumer.frames) == 3
    assert [f.image is None for f in frames] == [True, True, False]
    assert all("grab failed" in f.error and f.error.startswith("pylon camera 0815-0000:") for f in frames[:2])
    assert source.stats["failed_grabs"] == 2 and source.stats["reconnects"] == 0


def test_repeated_failed_grabs_reopen_the_camera_by_serial(mono_images):
    folder, images = mono_images
    states = []
    source = PylonSource(_camera(path=str(folder), serial="0815-0001", fps=100, max_consecutive_failures=3,
                                 reconnect_min_s=0.05, reconnect_max_s=0.1),
                         on_state=lambda s, d: states.append((s, d)))
    source.open()
    source._camera.ForceFailedBufferCount.Value = 3
    source._camera.ForceFailedBuffer.Execute()
    frames = list(islice(source.frames(), 4))
    source.close()
    # free-run: failed grabs are counted, not yielded; the source reopened the same camera
    assert all(f.image is not None for f in frames)
    assert source.stats["failed_grabs"] == 3 and source.stats["reconnects"] == 1
    assert [s for s, _ in states] == ["open", "reconnecting", "open", "closed"]
    assert "3 consecutive failed grabs" in states[1][1] and states[2][1].startswith("0815-0001")
    assert np.array_equal(frames[0].image, images[0])  # a fresh device replays from the first file


class _RemovedOnce(PylonSource):
    """The emulator cannot be unplugged: ``removal_pending = True`` makes the next removal check
    say "device removed"; closing, re-enumerating and reopening by serial are the real pylon calls."""

    removal_pending = False

    def _device_removed(self, camera):
        if self.removal_pending:
            self.removal_pending = False
            return True
        return super()._device_removed(camera)


def test_removal_flag_simulated_via_seam_reopens_same_serial_and_reports_lost_triggers(mono_images):
    # The emulator cannot be unplugged: the removal flag comes from the _device_removed seam;
    # closing, re-enumerating and reopening the device by serial are the real pylon calls.
    folder, images = mono_images
    states = []

    source = _RemovedOnce(_camera(path=str(folder), trigger={"mode": "software"}, reconnect_min_s=0.05),
                         on_state=lambda s, d: states.append(s))
    source.open()
    # A part triggered just before the device "disappears" must come back as an error frame.
    source._outstanding_triggers.append(time.monotonic())
    source.removal_pending = True
    consumer = _Consumer(source)
    first = consumer.wait_for(1)
    deadline = time.monotonic() + 5
    while source.state != "open" or source.stats["reconnects"] < 1:
        assert time.monotonic() < deadline, f"no reconnect: {states}"
        time.sleep(0.02)
    assert source.trigger()
    frames = consumer.wait_for(2)
    consumer.stop()
    assert first[0].image is None and "software trigger lost: camera device removed" in first[0].error
    assert frames[1].image is not None and np.array_equal(frames[1].image, images[0])
    assert states == ["open", "reconnecting", "open", "closed"]
    assert source.stats["lost_triggers"] == 1


def test_software_trigger_without_image_times_out_into_an_error_frame(mono_images):
    folder, _ = mono_images
    source = PylonSource(_camera(path=str(folder), trigger={"mode": "software"}, grab_timeout_ms=200))
    source.open()
    # A trigger that pylon accepted but that produced no image (simulated: recorded, not executed).
    source._outstanding_triggers.append(time.monotonic())
    consumer = _Consumer(source)
    frames = consumer.wait_for(1, timeout=3)
    consumer.stop()
    assert len(frames) == 1 and frames[0].image is None
    assert "no image within 200 ms" in frames[0].error


def test_image_folder_removed_during_reconnect_retries_with_backoff_until_it_returns(mono_images):
    # Issue 8: with the emulator's image folder gone, the reconnect raised InputError out of
    # frames() and the daemon exited 1 with a traceback. A setting that worked at start and fails
    # on reconnect is retried with backoff (docs/cameras.md), saying why, until it works again.
    folder, images = mono_images
    states = []

    source = _RemovedOnce(_camera(path=str(folder), trigger={"mode": "software"}, reconnect_min_s=0.05,
                                 reconnect_max_s=0.2),
                         on_state=lambda s, d: states.append((s, d)))
    source.open()
    moved = folder.with_name("mono-away")
    folder.rename(moved)
    source.removal_pending = True
    consumer = _Consumer(source)
    deadline = time.monotonic() + 5
    while sum(1 for s, _ in states if s == "reconnecting") < 3:  # several attempts, none fatal
        assert time.monotonic() < deadline, f"no retries: {states}"
        assert consumer.thread.is_alive(), "frames() ended instead of retrying"
        time.sleep(0.02)
    assert any("no such image file or folder" in d for s, d in states if s == "reconnecting")
    moved.rename(folder)
    while source.state != "open" or source.stats["reconnects"] < 1:
        assert time.monotonic() < deadline, f"no reconnect after the folder came back: {states}"
        time.sleep(0.02)
    assert source.trigger()
    frames = consumer.wait_for(1)
    consumer.stop()
    assert frames[0].image is not None and np.array_equal(frames[0].image, images[0])
    assert states[-1][0] == "closed"


def test_auto_exposure_turns_on_the_cameras_auto_functions(mono_images):
    """Issue 9: closing the light loop in the camera. The emulator has ExposureAuto and GainAuto
    (but no brightness target node, and its images do not respond to exposure)."""
    folder, _ = mono_images
    with PylonSource(_camera(path=str(folder), auto_exposure=True)) as source:
        nodes = source._camera.GetNodeMap()
        assert nodes.GetNode("ExposureAuto").ToString() == "Continuous"
        assert nodes.GetNode("GainAuto").ToString() == "Continuous"
        (frame,) = list(islice(source.frames(), 1))
    assert frame.image is not None


def test_brightness_target_on_a_camera_without_the_node_is_one_clear_line(mono_images):
    folder, _ = mono_images
    with pytest.raises(InputError) as info:
        PylonSource(_camera(path=str(folder), auto_exposure=True, auto_target_brightness=0.42)).open()
    message = str(info.value)
    assert message.startswith("camera.auto_target_brightness=0.42: pylon camera 0815-0000 has neither AutoTargetBrightness")
    assert "\n" not in message


@pytest.mark.parametrize("settings", [{"auto_exposure": True, "exposure_us": 1000}, {"auto_exposure": True, "gain_db": 2.0}])
def test_auto_exposure_conflicts_are_config_errors(settings):
    with pytest.raises(ValueError, match="auto_"):
        _camera(**settings)
