"""The tone curve of lighting ``match_tone`` / ``match_hist``: which grey level of this frame is
which grey level of the training images.

Two curves, chosen by what the bundle recorded (``exposure.tone_curve``):

* ``gain_gamma_offset`` (bundles trained from this version on): the inverse of a global change of
  light, ``y = o + s·255·(x/255)^g`` — three numbers fitted by least squares to the pairs (frame
  luma percentile, training luma percentile), the unclipped percentiles only. Gain, gamma and a
  black-level offset applied to a frame (``photometric.LightCondition``, in that order) invert
  exactly to this form, and a smooth three-parameter curve cannot reshape a frame's histogram.
* ``histogram`` (bundles from before the key): full histogram matching, a LUT that maps each grey
  level to the training percentile at its rank. It also matched what light had not changed: where
  a frame's histogram has a narrower dense band than the pooled training histogram (a flat belt
  under light that varies a little from frame to frame), the LUT is steep there and sensor noise
  grows with it (``tests/test_quality.py``: more than doubled on such frames). On the demo's parts
  the held-out good scores spread 2.4× wider (``score_normalisation.scale`` 5.65 against 2.35 of
  the fitted curve), the calibrated threshold rose with them, and the demo caught 4 of 20
  defective parts against 20 of 20 (docs/benchmarks.md, "Light stress", "Fitted tone curve").
"""

from __future__ import annotations

from typing import Optional

import numpy as np

TONE_CURVES = ("histogram", "gain_gamma_offset")
# The curve new bundles record (quality.exposure_stats).
DEFAULT_TONE_CURVE = "gain_gamma_offset"
# Percentiles the fit uses: the tails are where clipping and single hot pixels sit.
FIT_PERCENTILES = np.arange(2, 99)
# Exponents searched (the family's gamma): the inverses of the light benchmark's gammas (0.5 … 1.6)
# lie well inside.
GAMMAS = np.geomspace(1.0 / 3.0, 3.0, 89)
# Fewer unclipped percentile pairs than this: the frame says too little about its light (mostly
# clipped or black; the quality gate judges such a frame), and the curve stays the identity.
MIN_PAIRS = 10


def rank_positions(luma: np.ndarray) -> np.ndarray:
    """Each grey level's percentile position in this frame (mid-rank of its histogram bin)."""
    counts = np.bincount(luma.ravel(), minlength=256).astype(np.float64)
    cdf = np.cumsum(counts)
    return 100.0 * (cdf - 0.5 * counts) / cdf[-1]


def histogram_lut(positions: np.ndarray, train_percentiles: np.ndarray) -> np.ndarray:
    """Full histogram matching (bundles without ``tone_curve``): grey level → float level, from the
    frame's ``rank_positions``."""
    return np.interp(positions, np.linspace(0.0, 100.0, 101), train_percentiles)


def fit_gain_gamma_offset(frame_levels: np.ndarray, train_levels: np.ndarray, low: float, high: float
                          ) -> Optional[tuple[float, float, float]]:
    """(s, g, o) of ``y = o + s·255·(x/255)^g`` minimising the squared error over the pairs whose
    frame and training levels both lie strictly inside (low, high); None with too few pairs."""
    x = np.asarray(frame_levels, dtype=np.float64)
    y = np.asarray(train_levels, dtype=np.float64)
    keep = (x > low) & (x < high) & (y > low) & (y < high)
    if keep.sum() < MIN_PAIRS:
        return None
    x, y = x[keep] / 255.0, y[keep]
    basis = 255.0 * x[None, :] ** GAMMAS[:, None]  # gammas × pairs
    # For each exponent the best (s, o) is a two-column linear least squares, solved in closed form.
    bm = basis.mean(axis=1)
    ym = y.mean()
    cov = ((basis - bm[:, None]) * (y - ym)[None, :]).sum(axis=1)
    var = ((basis - bm[:, None]) ** 2).sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        s = np.where(var > 1e-9, cov / var, 0.0)
    o = ym - s * bm
    sse = ((s[:, None] * basis + o[:, None] - y[None, :]) ** 2).sum(axis=1)
    best = int(np.argmin(sse))
    if s[best] <= 0.0:  # a falling curve is no change of light
        return None
    return float(s[best]), float(GAMMAS[best]), float(o[best])


def gain_gamma_offset_lut(luma: np.ndarray, train_percentiles: np.ndarray, low: float, high: float) -> np.ndarray:
    """The fitted global curve as a grey level → float level table (the identity when the frame
    has too few unclipped levels to fit)."""
    frame_levels = np.percentile(luma, FIT_PERCENTILES)
    fitted = fit_gain_gamma_offset(frame_levels, np.asarray(train_percentiles, dtype=np.float64)[FIT_PERCENTILES], low, high)
    levels = np.arange(256, dtype=np.float64)
    if fitted is None:
        return levels
    s, g, o = fitted
    return o + s * 255.0 * (levels / 255.0) ** g
