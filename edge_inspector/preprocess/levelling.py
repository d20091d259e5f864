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

**Against a reference** (``levelling: reference``, bundles trained from this version on). A plane
fitted to the frame's own luma also fits the part: bottle's dark centre in its clipped white
background, tire's tread. Under a strong ramp that fit was off by tens of percent (bottle, ±40 % at
30°: slope 1.08 fitted against 0.80 applied), and what was left of the ramp after levelling read as
a defect. So the training side records the **reference**: the training frames' mean luma on a
coarse ``REFERENCE_SIDE``² grid, and the share of each cell they clipped. The slope is then fitted
to the ratio frame / reference — what light did to this frame, with the part divided out — over
the cells that neither the training frames nor this frame clipped or left black (a clipped cell
says "at least this bright", not how bright). The band is that of the training frames' own ratio
slopes (mean ± 3 sd: about ±0.035 on tire, ±0.14 on bottle, ±0.20 on kolektorsdd). It is flat-field correction whose reference is learnt
from ``train/good`` instead of an image of the empty field, which an inspection line seldom has.
Bundles without ``levelling`` fit the plane to the luma, as they were trained.
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


# The reference grid (a side) and what makes a cell of it unusable for the ratio fit.
REFERENCE_SIDE = 32
REFERENCE_DARK = 10.0  # mean luma at or below: too dark for a ratio (black level 5, noise)
REFERENCE_CLIPPED_SHARE = 0.05  # more of the cell clipped than this: its true brightness is unknown
# Fewer usable cells than this share of the grid: nothing to fit, the frame is left as it is.
REFERENCE_MIN_CELLS = 0.05
CLIPPED_LUMA = 250  # as quality.SATURATED_LEVEL (importing it would be circular)
COARSE_SAMPLE_SIDE = 256
LEVELLINGS = ("plane", "reference")
DEFAULT_LEVELLING = "reference"


def _luma(img: np.ndarray) -> np.ndarray:
    if img.ndim == 3 and img.shape[2] == 3:
        return cv2.cvtColor(np.ascontiguousarray(img), cv2.COLOR_BGR2GRAY)
    return np.ascontiguousarray(img.reshape(img.shape[0], img.shape[1]))


def coarse_luma(img: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(mean luma, clipped share) of each cell of the ``REFERENCE_SIDE``² grid over the frame,
    from a strided subsample of at most ``COARSE_SAMPLE_SIDE`` pixels a side (a fixed cost per frame)."""
    h, w = img.shape[:2]
    step = max(1, int(np.ceil(max(h, w) / COARSE_SAMPLE_SIDE)))
    img = img[::step, ::step]
    luma = _luma(img)
    brightest = img.max(axis=2) if img.ndim == 3 and img.shape[2] == 3 else luma
    size = (REFERENCE_SIDE, REFERENCE_SIDE)
    mean = cv2.resize(luma, size, interpolation=cv2.INTER_AREA).astype(np.float32)
    clipped = cv2.resize(np.ascontiguousarray(brightest >= CLIPPED_LUMA, dtype=np.float32), size, interpolation=cv2.INTER_AREA)
    return mean, clipped


class Reference:
    """The training frames' coarse luma and clipped share (model.json ``exposure.reference``)."""

    def __init__(self, luma: np.ndarray, clipped: np.ndarray) -> None:
        self.luma = np.asarray(luma, dtype=np.float32)
        self.clipped = np.asarray(clipped, dtype=np.float32)
        if self.luma.shape != (REFERENCE_SIDE, REFERENCE_SIDE) or self.clipped.shape != self.luma.shape:
            raise ValueError(f"a levelling reference is {REFERENCE_SIDE}×{REFERENCE_SIDE} (got {self.luma.shape} and {self.clipped.shape})")
        self.usable = (self.luma > REFERENCE_DARK) & (self.clipped <= REFERENCE_CLIPPED_SHARE)

    @classmethod
    def of_frames(cls, coarse: Iterable[tuple[np.ndarray, np.ndarray]]) -> "Reference":
        lumas, clips = zip(*coarse)
        return cls(np.mean(lumas, axis=0), np.mean(clips, axis=0))

    def to_json(self) -> dict:
        return {"side": REFERENCE_SIDE, "luma": np.round(self.luma, 1).tolist(), "clipped": np.round(self.clipped, 3).tolist()}

    @classmethod
    def from_json(cls, d: dict) -> "Reference":
        return cls(np.asarray(d["luma"], dtype=np.float32), np.asarray(d["clipped"], dtype=np.float32))


_CELL = (np.arange(REFERENCE_SIDE, dtype=np.float32) + 0.5) / REFERENCE_SIDE - 0.5
_CELL_X, _CELL_Y = np.meshgrid(_CELL, _CELL)


def fit_ratio_slope(img: np.ndarray, reference: Reference, coarse=None) -> tuple[float, float, float]:
    """(a, b/a, c/a) of the least-squares plane a + b·x + c·y through frame / reference, on the
    cells that neither clipped nor left black (a = 0 when too few are left: nothing to level)."""
    mean, clipped = coarse if coarse is not None else coarse_luma(img)
    ok = reference.usable & (clipped <= REFERENCE_CLIPPED_SHARE) & (mean > REFERENCE_DARK)
    if ok.sum() < REFERENCE_MIN_CELLS * ok.size:
        return 0.0, 0.0, 0.0
    ratio = mean[ok] / reference.luma[ok]
    design = np.stack([np.ones(ratio.size, np.float32), _CELL_X[ok], _CELL_Y[ok]], axis=1)
    (a, b, c), *_ = np.linalg.lstsq(design, ratio, rcond=None)
    if a <= 1e-3:
        return float(a), 0.0, 0.0
    return float(a), float(b / a), float(c / a)


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


def level(img: np.ndarray, band: Optional[dict] = None, reference: Optional[Reference] = None) -> np.ndarray:
    """Divide out the frame's illumination slope: all of it without a band (bundles trained
    before ``slope_band`` was recorded), else only the part beyond the band, up to
    ``BAND_PASSES`` times. A frame within the band comes back unchanged (the same array).
    With a ``reference`` the slope is that of frame / reference (``fit_ratio_slope``)."""
    if reference is not None:
        return _level_against(img, band, reference)
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


def _level_against(img: np.ndarray, band: Optional[dict], reference: Reference) -> np.ndarray:
    a, b, c = fit_ratio_slope(img, reference)
    if a <= 1e-3:
        return img
    low, high = (band["low"], band["high"]) if band is not None else ((0.0, 0.0), (0.0, 0.0))
    for _ in range(BAND_PASSES):
        keep = (min(max(b, low[0]), high[0]), min(max(c, low[1]), high[1]))
        if keep == (b, c):
            break
        img = _divide(img, (b, c), keep)
        a, b, c = fit_ratio_slope(img, reference)
        if a <= 1e-3:
            break
    return img
