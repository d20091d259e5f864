"""Image-quality gate: a frame whose exposure is unusable is not a part verdict (issue 9).

A washed-out or black frame scores far from the good parts, so the model would call it NG and the
line would scrap a good part (or, worse, a near-black frame could score OK). The gate looks at the
part of the frame the model sees (the ROI) before inference and turns such a frame into an ERROR
verdict whose ``error`` starts with ``overexposed:`` or ``underexposed:`` — the PLC gets res 3
and can re-trigger, fix the lamp or stop the line.

Three measures, each compared with what the training images looked like:

* saturated fraction: pixels with any channel ≥ ``saturated_level``;
* black fraction: pixels whose luma is ≤ ``black_level``;
* mean luma, against the training images' range of mean luma, as a ratio.

The first two measure information that is lost (clipped pixels no normalisation can bring back),
so their defaults are strict: 20 % of the ROI newly clipped (saturated) or 10 % newly black. The
saturated margin was 10 %: kolektorsdd's bright texture (mean luma 186) clips 16 % of a frame at
gain ×1.2, and the gate took out 64 % of those frames; let through, they scored FAR 0. At 0.30
the few frames of gain ×1.4 it lets through catch no crack (docs/benchmarks.md, "Levelling
against the training frames' reference"). The mean is a looser sanity check
(×4 or ÷4: a failed lamp, a shutter left open): a frame that is merely brighter or darker than
the training images is the lighting normalisation's job, not the gate's (docs/benchmarks.md,
light stress: e.g. gamma 0.6 on the dark tire images triples the mean and loses nothing).

The training side records those figures in ``model.json`` under ``preprocess.train_stats.exposure``
(``exposure_stats``, written by ``edge-inspector train``). A bundle without them (older bundles)
is gated by the absolute limits alone, plus the mean-luma ratio against the training mean taken
from ``preprocess.train_stats`` when present.

Measures are taken on a strided subsample (≤ ``SAMPLE_SIDE``² pixels): an unbiased estimate of
the fractions, and a fixed cost per frame whatever the camera's resolution.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Optional, Sequence

import cv2
import numpy as np

from edge_inspector.preprocess.levelling import DEFAULT_LEVELLING, Reference, coarse_luma, fit_ratio_slope, slope_band
from edge_inspector.preprocess.tone import DEFAULT_TONE_CURVE

SAMPLE_SIDE = 256
# BT.601 luma weights in BGR order (what cv2.COLOR_BGR2GRAY uses).
LUMA_BGR = (0.114, 0.587, 0.299)
SATURATED_LEVEL = 250
# Mean share of clipped pixels in the training frames above which the training set counts as
# overexposed: `train` warns (training/features.py) and match_hist re-clips that share
# (reclip_percentile). Under clipped pixels the model learns a flat white, and a darker frame
# un-clips them into a structure it has never seen (bottle, 35 % clipped: FAR 65-90 % at gain
# x0.6-x0.8 under match_hist without the re-clipping; docs/benchmarks.md "Light stress").
# kolektorsdd's bright texture clips at most 3 % of a frame.
OVEREXPOSED_TRAINING_FRACTION = 0.05
# match_hist on such a model maps the share the training frames clipped, and this many percentile
# points more, to 255 (reclip_percentile; Preprocessor._match_hist).
CLIP_MARGIN_PERCENTILES = 3.0
BLACK_LEVEL = 5


@dataclass(frozen=True)
class Exposure:
    mean_luma: float
    saturated_fraction: float
    black_fraction: float


def _sample(image: np.ndarray) -> np.ndarray:
    h, w = image.shape[:2]
    step = max(1, int(np.ceil(max(h, w) / SAMPLE_SIDE)))
    return image[::step, ::step]


def _luma_u8(image: np.ndarray) -> np.ndarray:
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if image.ndim == 2:
        return image
    return cv2.cvtColor(np.ascontiguousarray(image[:, :, :3]), cv2.COLOR_BGR2GRAY)


def sampled_luma(image: np.ndarray) -> np.ndarray:
    """Luma (uint8) of the strided subsample the gate measures: cheap enough for every frame."""
    return _luma_u8(_sample(image))


def _measure_sample(s: np.ndarray, saturated_level: int, black_level: int) -> tuple[Exposure, np.ndarray]:
    """Exposure figures of an already subsampled frame, and its luma (uint8)."""
    luma = _luma_u8(s)
    brightest = luma if s.ndim == 2 or s.shape[2] == 1 else s[:, :, :3].max(axis=2)
    return Exposure(
        mean_luma=float(luma.mean()),
        saturated_fraction=float((brightest >= saturated_level).mean()),
        black_fraction=float((luma <= black_level).mean()),
    ), luma


def measure(image: np.ndarray, saturated_level: int = SATURATED_LEVEL, black_level: int = BLACK_LEVEL) -> Exposure:
    """Exposure figures of one uint8 frame (H×W grey or H×W×3 BGR)."""
    return _measure_sample(_sample(image), saturated_level, black_level)[0]


def reclip_percentile(train_percentiles) -> Optional[float]:
    """The frame position (percentile) from which match_hist's tone curve maps to 255, or None.

    Only for training frames that clipped a large area (the pooled luma reaches the saturated
    level at or below percentile 100 − 100·OVEREXPOSED_TRAINING_FRACTION): under it the model
    learnt a flat white, and a frame with less light un-clips a structure it has never seen (the
    lamp's falloff across bottle's white background). Re-clipping the share the training frames
    clipped, plus CLIP_MARGIN_PERCENTILES for its spread from frame to frame, gives the model back
    the white it knows. A texture with a few clipped highlights (kolektorsdd: its pooled luma
    reaches 255 only at percentile 100) is left alone."""
    onset = np.flatnonzero(np.asarray(train_percentiles) >= SATURATED_LEVEL)
    if not onset.size or onset[0] > 100.0 - 100.0 * OVEREXPOSED_TRAINING_FRACTION:
        return None
    return float(onset[0]) - CLIP_MARGIN_PERCENTILES


def exposure_stats(images: Iterable[np.ndarray]) -> dict:
    """Training-set exposure figures for model.json ``preprocess.exposure`` (images: uint8 BGR or grey)."""
    figures, coarse, histogram = [], [], np.zeros(256, dtype=np.float64)
    for img in images:
        sample = _sample(img)
        figure, luma = _measure_sample(sample, SATURATED_LEVEL, BLACK_LEVEL)
        figures.append(figure)
        # 2 × 32² float16 per frame (4 KB): the ratio slopes need the finished reference
        coarse.append(tuple(c.astype(np.float16) for c in coarse_luma(img)))
        histogram += np.bincount(luma.ravel(), minlength=256)
    if not figures:
        raise ValueError("exposure_stats needs at least one image")
    coarse = [tuple(c.astype(np.float32) for c in pair) for pair in coarse]
    reference = Reference.of_frames(coarse)
    slopes = [fit_ratio_slope(None, reference, pair)[1:] for pair in coarse]
    means = [f.mean_luma for f in figures]
    cdf = np.cumsum(histogram) / histogram.sum()
    # Percentiles 0..100 of the training luma: the target of 'match_hist' lighting (core.py).
    levels = np.linspace(0.0, 1.0, 101)
    levels[0] = 1e-9  # percentile 0 = the darkest level present, not level 0
    quantiles = np.searchsorted(cdf, levels, side="left").clip(0, 255)
    return {
        "saturated_level": SATURATED_LEVEL,
        "black_level": BLACK_LEVEL,
        "mean_luma": {"min": round(min(means), 3), "max": round(max(means), 3), "mean": round(float(np.mean(means)), 3)},
        "saturated_fraction_max": round(max(f.saturated_fraction for f in figures), 5),
        "saturated_fraction_mean": round(float(np.mean([f.saturated_fraction for f in figures])), 5),
        "black_fraction_max": round(max(f.black_fraction for f in figures), 5),
        "luma_percentiles": [int(v) for v in quantiles],
        "reclip_from": reclip_percentile(quantiles),
        # the band of illumination slopes match_hist leaves alone, measured against the reference
        # (preprocess/levelling.py)
        "slope_band": slope_band(slopes),
        "levelling": DEFAULT_LEVELLING,
        "reference": reference.to_json(),
        # which tone curve match_tone / match_hist fit to these percentiles (preprocess/tone.py)
        "tone_curve": DEFAULT_TONE_CURVE,
        "n_images": len(figures),
    }


def _training_mean_range(exposure: Optional[dict], train_stats: Optional[dict]) -> Optional[tuple[float, float]]:
    if exposure and isinstance(exposure.get("mean_luma"), dict):
        m = exposure["mean_luma"]
        return float(m["min"]), float(m["max"])
    if train_stats and train_stats.get("mean") and len(train_stats["mean"]) == 3:
        luma = float(np.dot(LUMA_BGR, [float(v) for v in train_stats["mean"]]))
        return luma, luma
    return None


@dataclass(frozen=True)
class QualityGate:
    """Built once per model generation (limits from config, reference from the bundle)."""

    enabled: bool = True
    saturated_level: int = SATURATED_LEVEL
    black_level: int = BLACK_LEVEL
    max_saturated_fraction: float = 0.6
    max_black_fraction: float = 0.6
    saturated_margin: float = 0.20
    black_margin: float = 0.10
    mean_ratio: float = 4.0
    min_mean: float = 2.0
    max_mean: float = 250.0
    roi: Optional[tuple[int, int, int, int]] = None
    # From the bundle (None = not recorded).
    train_saturated_max: Optional[float] = None
    train_black_max: Optional[float] = None
    train_mean_range: Optional[tuple[float, float]] = None

    @classmethod
    def from_settings(cls, settings, bundle_preprocess: Optional[dict], roi: Optional[Sequence[int]] = None) -> "QualityGate":
        """``settings``: config ``preprocess.quality``; ``bundle_preprocess``: model.json ``preprocess``."""
        pre = bundle_preprocess or {}
        exposure = (pre.get("train_stats") or {}).get("exposure")
        exposure = exposure if isinstance(exposure, dict) else None
        return cls(
            enabled=settings.enabled,
            saturated_level=settings.saturated_level,
            black_level=settings.black_level,
            max_saturated_fraction=settings.max_saturated_fraction,
            max_black_fraction=settings.max_black_fraction,
            saturated_margin=settings.saturated_margin,
            black_margin=settings.black_margin,
            mean_ratio=settings.mean_ratio,
            min_mean=settings.min_mean,
            max_mean=settings.max_mean,
            roi=tuple(int(v) for v in roi) if roi is not None else None,
            train_saturated_max=float(exposure["saturated_fraction_max"]) if exposure and "saturated_fraction_max" in exposure else None,
            train_black_max=float(exposure["black_fraction_max"]) if exposure and "black_fraction_max" in exposure else None,
            train_mean_range=_training_mean_range(exposure, pre.get("train_stats")),
        )

    def _crop(self, image: np.ndarray) -> np.ndarray:
        if self.roi is None:
            return image
        x, y, w, h = self.roi
        crop = image[y : y + h, x : x + w]
        return crop if crop.size else image  # an ROI outside the frame is the preprocessor's error to name

    def check(self, image: np.ndarray) -> Optional[tuple[str, str]]:
        """None for a usable frame, else (kind, one-line reason); kind is 'overexposed' or
        'underexposed' and the reason starts with it."""
        if not self.enabled:
            return None
        e = measure(self._crop(image), self.saturated_level, self.black_level)
        key = "preprocess.quality"
        clipped = (
            ("overexposed", e.saturated_fraction, self.max_saturated_fraction, self.train_saturated_max, "saturated",
             f"saturated (≥ {self.saturated_level})"),
            ("underexposed", e.black_fraction, self.max_black_fraction, self.train_black_max, "black",
             f"black (≤ {self.black_level})"),
        )
        for kind, fraction, hard_max, train_max, name, what in clipped:
            limit, basis = hard_max, f"{key}.max_{name}_fraction"
            margin = self.saturated_margin if name == "saturated" else self.black_margin
            if train_max is not None and train_max + margin < hard_max:
                limit, basis = train_max + margin, f"training max {train_max:.1%} + {key}.{name}_margin"
            if fraction > limit:
                return kind, f"{kind}: {fraction:.1%} of pixels {what}, limit {limit:.1%} ({basis})"
        if e.mean_luma > self.max_mean:
            return "overexposed", f"overexposed: mean brightness {e.mean_luma:.0f} above {key}.max_mean={self.max_mean:g}"
        if e.mean_luma < self.min_mean:
            return "underexposed", f"underexposed: mean brightness {e.mean_luma:.1f} below {key}.min_mean={self.min_mean:g}"
        if self.train_mean_range is not None:
            lo, hi = self.train_mean_range
            if e.mean_luma > hi * self.mean_ratio:
                return "overexposed", (f"overexposed: mean brightness {e.mean_luma:.0f} is more than {key}.mean_ratio={self.mean_ratio:g}"
                                       f" × the training images' {hi:.0f}")
            if e.mean_luma * self.mean_ratio < lo:
                return "underexposed", (f"underexposed: mean brightness {e.mean_luma:.1f} is less than 1/{key}.mean_ratio"
                                        f" (1/{self.mean_ratio:g}) of the training images' {lo:.0f}")
        return None
