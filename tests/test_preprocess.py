import numpy as np
import pytest

from edge_inspector.errors import InputError
from edge_inspector.preprocess import Preprocessor, aspect_input_shape, random_photometric, strong_light


def test_grey_and_colour_give_same_shape():
    p = Preprocessor(64)
    grey = np.full((100, 80), 127, np.uint8)
    x, geom = p.prepare(grey)
    assert x.shape == (3, 64, 64) and x.dtype == np.float32
    assert abs(float(x.mean())) < 1e-6  # (127 - 127) / 128
    y, _ = p.prepare(np.zeros((50, 60, 3), np.uint8))
    assert y.shape == (3, 64, 64) and np.allclose(y, -127 / 128)
    assert geom.orig_w == 80 and geom.orig_h == 100


def test_roi_geometry_maps_back():
    p = Preprocessor(64, roi=(10, 20, 128, 64))
    _, g = p.prepare(np.zeros((200, 300, 3), np.uint8))
    assert g.map_to_original(0, 0) == (10, 20)
    assert g.map_to_original(64, 64) == (138, 84)


@pytest.mark.parametrize("frame, size, expected", [
    ((900, 900), 256, (256, 256)),  # square frames: exactly what square models had
    ((100, 100), 256, (256, 256)),  # small square frames too
    ((384, 288), 256, (352, 256)),  # MVTec 3D-AD tire: short side 256 as before, long side not squashed
    ((384, 152), 256, (384, 160)),  # kolektorsdd strips: native, not upsampled 1.7× across
    ((200, 100), 256, (256, 128)),  # upsampled only until the long side has 256
    ((1200, 1920), 256, (256, 416)),  # a landscape camera frame
    ((4000, 100), 256, (1024, 32)),  # a line-scan strip: long side capped at 4·256
])
def test_keep_aspect_input_shape(frame, size, expected):
    shape = aspect_input_shape(*frame, size)
    assert shape == expected and all(v % 32 == 0 for v in shape)


def test_keep_aspect_input_is_height_by_width_and_maps_back():
    p = Preprocessor((96, 32), roi=(10, 20, 60, 180))
    frame = np.zeros((300, 100, 3), np.uint8)
    frame[20 + 90, 10 + 30] = 255  # ROI centre
    x, g = p.prepare(frame)
    assert x.shape == (3, 96, 32)
    assert (g.scale_x, g.scale_y) == (60 / 32, 180 / 96)
    assert g.map_to_original(16, 48) == (40.0, 110.0)
    y, xx = np.unravel_index(int(np.argmax(x[0])), x[0].shape)
    assert abs(y - 48) <= 1 and abs(xx - 16) <= 1


def test_bad_frames_raise_input_error():
    p = Preprocessor(64)
    with pytest.raises(InputError):
        p.prepare(np.zeros((10, 10, 5), np.uint8))
    with pytest.raises(InputError):
        p.prepare(np.zeros((0, 0), np.uint8))
    with pytest.raises(InputError):
        Preprocessor(64, roi=(500, 0, 10, 10)).prepare(np.zeros((100, 100), np.uint8))


@pytest.mark.parametrize("lighting", ["clahe", "match_train"])
def test_lighting_modes_run(lighting):
    p = Preprocessor(32, lighting=lighting, train_stats={"mean": [90, 100, 110], "std": [30, 30, 30]})
    img = (np.random.default_rng(0).random((40, 40, 3)) * 255).astype(np.uint8)
    x, _ = p.prepare(img)
    assert np.isfinite(x).all()


def test_match_train_undoes_a_global_gain():
    rng = np.random.default_rng(1)
    img = (rng.random((64, 64, 3)) * 120 + 40).astype(np.uint8)
    stats = {"mean": img.reshape(-1, 3).mean(0).tolist(), "std": img.reshape(-1, 3).std(0).tolist()}
    p = Preprocessor(64, lighting="match_train", train_stats=stats)
    a, _ = p.prepare(img)
    b, _ = p.prepare(np.clip(img.astype(np.float32) * 1.5, 0, 255).astype(np.uint8))
    assert np.abs(a - b).mean() < 0.02


def test_photometric_changes_image_but_keeps_shape():
    img = np.full((32, 48, 3), 100, np.uint8)
    out = strong_light(img)
    assert out.shape == img.shape and out.mean() > img.mean()
    aug = random_photometric(img, np.random.default_rng(0))
    assert aug.shape == img.shape and aug.dtype == np.uint8


def test_photometric_handles_grey_images():
    grey = np.full((40, 30), 90, np.uint8)
    assert strong_light(grey).shape == grey.shape
    rng = np.random.default_rng(3)
    for _ in range(10):  # the specular blob is random: run enough draws to hit it
        assert random_photometric(grey, rng).shape == grey.shape
