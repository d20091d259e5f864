"""Class 3 of issue 8 (frames are checked against the station's camera) and the postprocess's
defence in depth (class 1): unit level. The daemon-level tests are in test_inputs_daemon.py."""

from __future__ import annotations

import json
import math
import struct
import zlib

import cv2
import numpy as np
import pytest

from edge_inspector.acquisition.expect import FrameExpectation
from edge_inspector.config.models import FrameExpectConfig
from edge_inspector.errors import DatasetError, ModelBundleError
from edge_inspector.imageio import read_image
from edge_inspector.inference.bundle import load_bundle
from edge_inspector.postprocess.regions import RegionSettings, decide
from edge_inspector.preprocess.core import Geometry
from tests.helpers.tiny_bundle import make_tiny_bundle


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_claiming(width: int, height: int) -> bytes:
    """A PNG whose header claims width×height grey pixels, with one tiny IDAT: decoding it would
    allocate width·height bytes before finding out the data is short."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", zlib.compress(b"\0" * 64)) + _png_chunk(b"IEND", b"")


def jpeg_claiming(width: int, height: int) -> bytes:
    """A real small JPEG with its SOF0 frame size patched to width×height."""
    ok, buf = cv2.imencode(".jpg", np.full((16, 16), 127, np.uint8))
    data = bytearray(buf.tobytes())
    sof = data.index(b"\xff\xc0")
    data[sof + 5:sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def bmp_claiming(width: int, height: int) -> bytes:
    ok, buf = cv2.imencode(".bmp", np.full((4, 4, 3), 127, np.uint8))
    data = bytearray(buf.tobytes())
    data[18:26] = struct.pack("<ii", width, height)
    return bytes(data)


# --- decoding by content, at bounded memory ------------------------------------------------------------
def test_a_valid_jpeg_named_png_decodes(tmp_path):
    ok, buf = cv2.imencode(".jpg", np.full((48, 64, 3), 90, np.uint8))
    path = tmp_path / "part.png"
    path.write_bytes(buf.tobytes())
    image = read_image(path)
    assert image.shape == (48, 64, 3)


def test_a_valid_png_named_jpg_decodes_and_a_truncated_one_is_still_caught(tmp_path):
    ok, buf = cv2.imencode(".png", np.random.default_rng(0).integers(0, 255, (48, 64), dtype=np.uint8))
    good = tmp_path / "part.jpg"
    good.write_bytes(buf.tobytes())
    assert read_image(good).shape == (48, 64)
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(buf.tobytes()[: len(buf) // 2])
    with pytest.raises(DatasetError, match="truncated|not a readable image"):
        read_image(cut)


@pytest.mark.parametrize("kind, data", [
    ("png", png_claiming(100_000, 100_000)),
    ("jpeg", jpeg_claiming(60_000, 60_000)),
    ("bmp", bmp_claiming(30_000, 30_000)),
])
def test_oversize_is_refused_from_the_header_before_decoding(tmp_path, kind, data):
    path = tmp_path / f"frame.{kind}"
    path.write_bytes(data)
    with pytest.raises(DatasetError) as exc:
        read_image(path, max_pixels=40_000_000)
    message = str(exc.value)
    assert message.startswith(str(path)) and "\n" not in message
    assert "larger than" in message and "not decoded" in message, message


def test_tiff_header_is_read_too(tmp_path):
    path = tmp_path / "frame.tif"
    cv2.imwrite(str(path), np.full((300, 400), 127, np.uint8))
    assert read_image(path, max_pixels=200_000).shape == (300, 400)
    with pytest.raises(DatasetError, match="400×300 .*larger than"):
        read_image(path, max_pixels=100_000)


def test_unknown_content_is_not_an_image(tmp_path):
    path = tmp_path / "frame.png"
    path.write_bytes(b"GIF89a" + b"\0" * 64)
    with pytest.raises(DatasetError, match="not a readable image"):
        read_image(path)


# --- what the station's camera gives ---------------------------------------------------------------------
@pytest.mark.parametrize(
    "shape, needle",
    [
        ((1, 1), "1×1"),
        ((1, 5000), "5000×1"),
        ((8000, 8000), "8000×8000"),
        ((96, 128, 2), "2 channels"),
        ((96, 128, 4), "4 channels"),
    ],
)
def test_frames_no_camera_of_the_station_gives_are_refused(shape, needle):
    expect = FrameExpectation.from_config(FrameExpectConfig(), model_input_size=64)
    problem = expect.problem(np.zeros(shape, np.uint8))
    assert problem is not None and needle in problem and "camera.expect" in problem and "\n" not in problem, problem


def test_the_station_frame_passes_and_defaults_come_from_the_model_size():
    expect = FrameExpectation.from_config(FrameExpectConfig(), model_input_size=64)
    assert (expect.min_width, expect.max_width, expect.min_height, expect.max_height) == (16, 2048, 16, 2048)
    assert expect.problem(np.zeros((96, 128), np.uint8)) is None
    assert expect.problem(np.zeros((96, 128, 3), np.uint8)) is None


def test_explicit_expectation_wins_over_the_defaults():
    cfg = FrameExpectConfig(min_width=1200, max_width=1300, min_height=1000, max_height=1030, channels=[1])
    expect = FrameExpectation.from_config(cfg, model_input_size=256)
    assert expect.problem(np.zeros((1024, 1280), np.uint8)) is None
    assert "camera.expect.min_width" in expect.problem(np.zeros((1024, 640), np.uint8))
    assert "camera.expect.channels" in expect.problem(np.zeros((1024, 1280, 3), np.uint8))
    assert expect.max_pixels == 40_000_000


def test_channels_refuse_booleans():
    with pytest.raises(ValueError):
        FrameExpectConfig.model_validate({"channels": [True]})


# --- postprocess: defence in depth -----------------------------------------------------------------------
GEOMETRY = Geometry(32, 32, 0, 0, 32, 32, 32, 32)


@pytest.mark.parametrize("threshold", [math.nan, math.inf, -math.inf])
def test_non_finite_threshold_gives_error_never_ok(threshold):
    verdict = decide("f-1", 0.0, 0.0, 0.1, np.zeros((32, 32), np.float32), GEOMETRY, RegionSettings(threshold=threshold))
    assert verdict.verdict == "ERROR" and "threshold" in verdict.error
    assert verdict.threshold is None and verdict.score is None  # a payload can carry neither NaN nor inf


@pytest.mark.parametrize("score", [math.nan, math.inf, -math.inf, None])
def test_non_finite_score_gives_error_never_ok(score):
    verdict = decide("f-1", 0.0, 0.0, score, np.zeros((32, 32), np.float32), GEOMETRY, RegionSettings(threshold=0.5))
    assert verdict.verdict == "ERROR" and "non-finite score" in verdict.error and verdict.threshold == 0.5


@pytest.mark.parametrize("threshold", ["NaN", "Infinity", "-Infinity", "true", '"0.5"'])
def test_bundle_threshold_must_be_a_finite_number(tmp_path, threshold):
    model_dir = make_tiny_bundle(tmp_path / "model", image_size=64, threshold=0.5)
    meta_path = model_dir / "model.json"
    meta = json.loads(meta_path.read_text())
    text = json.dumps(meta).replace('"threshold": 0.5', f'"threshold": {threshold}')
    assert text != json.dumps(meta)
    meta_path.write_text(text)
    with pytest.raises(ModelBundleError, match="threshold"):
        load_bundle(model_dir)
