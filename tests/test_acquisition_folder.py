"""FolderSource: replay order, pacing, loop, corrupt files → error frames, bad paths → InputError."""

from __future__ import annotations

import threading
import time
from itertools import islice
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge_inspector.acquisition import CameraError, create_source
from edge_inspector.acquisition.folder import FolderSource
from edge_inspector.config.models import CameraConfig
from edge_inspector.errors import InputError


def _camera(**kw) -> CameraConfig:
    return CameraConfig.model_validate({"type": "folder", **kw})


def _write_images(folder: Path, names: list[str], seed: int = 0) -> dict[str, np.ndarray]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    images = {}
    for name in names:
        image = rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)
        assert cv2.imwrite(str(folder / name), image)
        images[Path(name).stem] = image
    return images


def test_replays_folder_in_name_order_bit_exact_then_ends(tmp_path):
    images = _write_images(tmp_path / "imgs", ["b.png", "a.png", "c.png"])
    states = []
    with create_source(_camera(path=str(tmp_path / "imgs"), fps=200), on_state=lambda s, d: states.append(s)) as source:
        frames = list(source.frames())
        assert source.state == "ended"
    assert [f.meta["path"].rsplit("/", 1)[-1] for f in frames] == ["a.png", "b.png", "c.png"]
    for frame in frames:
        assert frame.error is None
        stem = Path(frame.meta["path"]).stem
        assert np.array_equal(frame.image, images[stem])
    assert len({f.frame_id for f in frames}) == 3
    assert all(f.frame_id.startswith(Path(f.meta["path"]).stem + "-") for f in frames)
    assert states == ["open", "ended", "closed"]
    # host timestamps, increasing
    grabs = [f.ts_grab for f in frames]
    assert grabs == sorted(grabs) and abs(frames[0].ts_wall - time.time()) < 5


def test_single_file_path_is_replayed(tmp_path):
    images = _write_images(tmp_path, ["only.png"])
    with FolderSource(_camera(path=str(tmp_path / "only.png"), fps=100)) as source:
        frames = list(source.frames())
    assert len(frames) == 1 and np.array_equal(frames[0].image, images["only"])


def test_loop_restarts_with_unique_frame_ids(tmp_path):
    _write_images(tmp_path, ["a.png", "b.png"])
    with FolderSource(_camera(path=str(tmp_path), fps=500, loop=True)) as source:
        frames = list(islice(source.frames(), 5))
    assert [Path(f.meta["path"]).stem for f in frames] == ["a", "b", "a", "b", "a"]
    assert [f.meta["pass"] for f in frames] == [0, 0, 1, 1, 2]
    assert len({f.frame_id for f in frames}) == 5


def test_pacing_follows_fps_without_drift_when_consumer_does_work(tmp_path):
    # 20 frames at 50 fps with 10 ms of work per frame: deadline pacing keeps 19 periods = 0.38 s;
    # sleeping one period after each frame would drift to 19 * 30 ms = 0.57 s.
    _write_images(tmp_path, [f"{i:02d}.png" for i in range(20)])
    period = 1 / 50
    with FolderSource(_camera(path=str(tmp_path), fps=50)) as source:
        stamps = []
        for frame in source.frames():
            stamps.append(frame.ts_grab)
            time.sleep(0.010)
    assert len(stamps) == 20
    offsets = [t - stamps[0] for t in stamps]
    # never early: frame k leaves no sooner than k periods after the first (1 ms timer slack)
    assert all(off >= k * period - 0.001 for k, off in enumerate(offsets)), offsets
    assert offsets[-1] < 19 * period + 0.09, f"drifted: {offsets[-1]:.3f}s for 19 periods of {period}s"


def test_corrupt_and_truncated_files_become_error_frames_and_replay_continues(tmp_path):
    _write_images(tmp_path, ["a.png", "d.png"])
    (tmp_path / "b.png").write_bytes(b"this is not a png")
    good = (tmp_path / "a.png").read_bytes()
    (tmp_path / "c.png").write_bytes(good[: len(good) // 2])
    with FolderSource(_camera(path=str(tmp_path), fps=500)) as source:
        frames = list(source.frames())
    assert [Path(f.meta["path"]).name for f in frames] == ["a.png", "b.png", "c.png", "d.png"]
    assert frames[0].image is not None and frames[3].image is not None
    for bad, word in ((frames[1], "not a readable image"), (frames[2], "truncated")):
        assert bad.image is None
        assert bad.error.startswith(str(tmp_path / Path(bad.meta["path"]).name)) and word in bad.error
        assert "\n" not in bad.error


@pytest.mark.parametrize(
    "make_path, expected",
    [
        (lambda tmp: None, "camera.path: required"),
        (lambda tmp: str(tmp / "missing"), "no such folder or file"),
        (lambda tmp: str(tmp), "no images"),
        (lambda tmp: (tmp / "notes.txt").write_text("x") and str(tmp / "notes.txt"), "not an image file"),
    ],
    ids=["no-path", "missing-folder", "empty-folder", "not-an-image"],
)
def test_bad_paths_fail_at_open_with_one_line(tmp_path, make_path, expected):
    (tmp_path / "sub").mkdir()  # a folder without images must not count as one
    source = FolderSource(_camera(path=make_path(tmp_path)))
    with pytest.raises(InputError) as info:
        source.open()
    message = str(info.value)
    assert expected in message and "camera.path" in message and "\n" not in message


def test_trigger_mode_default_is_triggered_and_explicit_free_run_allows_drops(tmp_path):
    assert FolderSource(_camera(path=str(tmp_path))).triggered is True
    assert FolderSource(_camera(path=str(tmp_path), trigger={"mode": "hardware"})).triggered is True
    free = FolderSource(_camera(path=str(tmp_path), trigger={"mode": "free_run"}))
    assert free.triggered is False and free.trigger_mode == "free_run"


def test_software_trigger_releases_one_image_per_trigger(tmp_path):
    _write_images(tmp_path, ["a.png", "b.png", "c.png"])
    source = FolderSource(_camera(path=str(tmp_path), trigger={"mode": "software"}, fps=1))
    source.open()
    received = []
    consumer = threading.Thread(target=lambda: received.extend(source.frames()))
    consumer.start()
    time.sleep(0.3)
    assert received == []  # nothing without a trigger
    source.trigger()
    source.trigger()
    deadline = time.monotonic() + 2
    while len(received) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.2)
    assert [Path(f.meta["path"]).stem for f in received] == ["a", "b"]
    source.close()
    consumer.join(timeout=1)
    assert not consumer.is_alive()


def test_trigger_refused_outside_software_mode(tmp_path):
    with pytest.raises(CameraError, match="camera.trigger.mode=software"):
        FolderSource(_camera(path=str(tmp_path))).trigger()


def test_close_from_another_thread_stops_a_waiting_frames_call(tmp_path):
    _write_images(tmp_path, ["a.png", "b.png"])
    source = FolderSource(_camera(path=str(tmp_path), fps=0.2, loop=True))  # 5 s between frames
    source.open()
    received = []
    consumer = threading.Thread(target=lambda: received.extend(source.frames()))
    consumer.start()
    time.sleep(0.2)
    started = time.monotonic()
    source.close()
    consumer.join(timeout=4)
    # without the interrupt the consumer would sleep ~4.8 s more; 2 s leaves room for a loaded CI box
    assert not consumer.is_alive() and time.monotonic() - started < 2.0
    assert len(received) == 1 and source.state == "closed"
