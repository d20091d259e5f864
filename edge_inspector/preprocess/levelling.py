"""Illumination slope: fit it, record the training frames' range of it, level what lies beyond.

A lamp to one side, or sun through a skylight, lays a smooth ramp over the frame. Its first-order
part is a plane a + b·x + c·y fitted to the luma (x, y from −0.5 to 0.5 across the frame); the
slope is (b/a, c/a), which a change of gain leaves alone.

A part has a slope of its own, though: tire's lamp lights its left side (mean slope +0.14 in x),
and kolektorsdd's frames lean either way (standard deviation 0.07; both recorded as
``model.exposure.slope_band`` in benchmarks/results/light_default.json).
Levelling every frame flat removes that; kolektorsdd's clean image AUROC was 0.899 with it against
0.947 with the tone curve alone (docs/benchmarks.md, "Light stress"; two trainings of the same
set differ by up to 0.03, so part of that gap is the training's). So the training side records
the band of slopes its frames showed (mean ± ``SLOPE_BAND_SDS`` standard deviations,
``slope_band``), and ``level`` divides out only the part of a frame's slope beyond that band: a
frame lit like the training frames is left exactly as it is.
"""

from __future__ import annotations

from typing import Iterable, Optional

import cv2
import numpy as np

# A pixel at or above this level in every channel stays at 255: a clipped pixel has no known true
# value to level.
CLIPPED_LEVEL = 254
# Half-width of the band of training slopes, in standard deviations: a frame further out than
# three of them is one the training set did not show.
SLOPE_BAND_SDS = 3.0
# The plane is fitted on a subsample of at most this many pixels a side.
FIT_SIDE = 128
# Clipped pixels do not scale with the light, so one division leaves part of a steep ramp in
# place (bottle's clipped white background); each further pass takes out most of what is left.
BAND_PASSES = 3


def fit_slope(img: np.ndarray) -> tuple[float, float, float]:
    """(a, b/a, c/a) of the least-squares plane a + b·x + c·y through the frame's luma."""
    h, w = img.shape[:2]
    step = max(1, int(np.ceil(max(h, w) / FIT_SIDE)))
    sample = np.ascontiguousarray(img[::step, ::step])
    if sample.ndim == 3 and sample.shape[2] == 3:
        sample = cv2.cvtColor(sample, cv2.COLOR_BGR2GRAY)
    luma = sample.reshape(sample.shape[0], sample.shape[1]).astype(np.float32)
    sh, sw = luma.shape
    ys, xs = np.mgrid[0:sh, 0:sw].astype(np.float32)
    xs = (xs * step + 0.5) / w - 0.5
    ys = (ys * step + 0.5) / h - 0.5
    design = np.stack([np.ones(luma.size, np.float32), xs.ravel(), ys.ravel()], axis=1)
    (a, b, c), *_ = np.linalg.lstsq(design, luma.ravel(), rcond=None)
    if a < 1.0:  # a black frame has no illumination to level (the quality gate names it)
        return float(a), 0.0, 0.0
    return float(a), float(b / a), float(c / a)


def slope_band(slopes: Iterable[tuple[float, float]]) -> dict:
    """The training frames' slopes (b/a, c/a) → ``exposure.slope_band`` in model.json."""
    s = np.asarray(list(slopes), dtype=np.float64).reshape(-1, 2)
    if not len(s):
        raise ValueError("slope_band needs at least one frame")
    mean, sd = s.mean(axis=0), s.std(axis=0)
    return {
        "mean": [round(float(v), 5) for v in mean],
        "sd": [round(float(v), 5) for v in sd],
        "low": [round(float(v), 5) for v in mean - SLOPE_BAND_SDS * sd],
        "high": [round(float(v), 5) for v in mean + SLOPE_BAND_SDS * sd],
    }


def _divide(img: np.ndarray, slope: tuple[float, float], keep: tuple[float, float]) -> np.ndarray:
    """Replace the illumination field 1 + slope·(x, y) by 1 + keep·(x, y), clipped pixels kept at 255."""
    h, w = img.shape[:2]
    x = (np.arange(w, dtype=np.float32) + 0.5) / w - 0.5
    y = (np.arange(h, dtype=np.float32) + 0.5) / h - 0.5
    field = np.clip(1.0 + slope[0] * x[None, :] + slope[1] * y[:, None], 0.25, 4.0)
    factor = ((1.0 + keep[0] * x[None, :] + keep[1] * y[:, None]) / field).astype(np.float32)
    channels = 1 if img.ndim == 2 else img.shape[2]
    levelled = cv2.multiply(img, factor if channels == 1 else cv2.merge([factor] * channels), dtype=cv2.CV_8U)  # saturating
    # A pixel the sensor clipped says only "at least this bright": dividing it by a factor > 1
    # would invent a grey that was never seen. Bottle's white background, clipped in every
    # training frame, came out grey wherever the fitted plane leant (clean frames too, more so in
    # brightened ones), and the model called the grey an anomaly: on one bundle FAR 15 % in clean
    # light and 40-90 % at gain x1.2-x1.6 without this rule, 0 % with it (docs/benchmarks.md,
    # "Light stress": what clipping hid in training, darkening still reveals).
    clipped = cv2.inRange(img, (CLIPPED_LEVEL,) * channels, (255,) * channels)  # 255 where every channel clips
    return cv2.max(levelled, clipped if channels == 1 else cv2.merge([clipped] * channels))


def level(img: np.ndarray, band: Optional[dict] = None) -> np.ndarray:
    """Divide out the frame's illumination slope: all of it without a band (bundles trained
    before ``slope_band`` was recorded), else only the part beyond the band, up to
    ``BAND_PASSES`` times. A frame within the band comes back unchanged (the same array)."""
    a, b, c = fit_slope(img)
    if a < 1.0:
        return img
    if band is None:
        return _divide(img, (b, c), (0.0, 0.0))
    low, high = band["low"], band["high"]
    for _ in range(BAND_PASSES):
        keep = (min(max(b, low[0]), high[0]), min(max(c, low[1]), high[1]))
        if keep == (b, c):
            break
        img = _divide(img, (b, c), keep)
        a, b, c = fit_slope(img)
        if a < 1.0:
            break
    return img
