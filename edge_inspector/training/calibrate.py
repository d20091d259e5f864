"""Threshold calibration from good images only, plus the optional F1-optimal threshold.

Scores here are already in the bundle's normalised units (0 = mean held-out good score, 1 = one
standard deviation), so the returned thresholds apply directly to the ONNX ``score`` output.

FAR threshold: with n held-out good scores and target rate f, the threshold is set just above the
k-th largest score, k = ⌊f·n⌋, so that at most k of the n (a rate ≤ f) would raise an alarm.
When n·f < 1 the data cannot resolve the target (30 held-out images cannot show a 1 % tail), and
the empirical rule degenerates to "just above the maximum"; the threshold is then also floored
at the Gaussian-tail quantile μ + z₁₋f·σ of the held-out scores, the usual conservative estimate
when the tail is unobserved. The method used is recorded in the bundle.

Tail threshold (``tail_threshold``): with more good scores — the hold-out plus out-of-sample
scores of the training images (crossfit.py) — a generalized Pareto fit to the top of the scores
gives the quantile for the target rate (peaks over threshold), instead of a Gaussian guess from
30 scores.
"""

from __future__ import annotations

import math
from statistics import NormalDist

import numpy as np

from edge_inspector.errors import InputError

# Tail model (tail_threshold): the top 20 % of the good scores, and at least 20 of them, so that
# the two GPD parameters rest on a sample that can carry them.
TAIL_FRACTION = 0.2
MIN_TAIL = 20


def far_threshold(good_scores: np.ndarray, far_target: float) -> dict:
    """Threshold for a target false-alarm rate from scores of good images (NG when score ≥ t)."""
    scores = np.sort(np.asarray(good_scores, dtype=np.float64).ravel())[::-1]
    if scores.size == 0 or not np.isfinite(scores).all():
        raise InputError("threshold calibration needs at least one finite good-image score")
    if not 0.0 < far_target < 1.0:
        raise InputError(f"--far-target {far_target} must be between 0 and 1 (exclusive)")
    n = scores.size
    allowed = int(math.floor(far_target * n))  # how many good images may score ≥ threshold
    empirical = float(np.nextafter(scores[allowed], np.inf)) if allowed < n else float(scores[-1])
    method = "empirical"
    threshold = empirical
    if n * far_target < 1.0:
        mean, std = float(scores.mean()), float(scores.std(ddof=1)) if n > 1 else 0.0
        gaussian = mean + NormalDist().inv_cdf(1.0 - far_target) * std
        if gaussian > threshold:
            threshold, method = gaussian, "gaussian_tail_floor"
    far_on_calibration = float(np.mean(scores >= threshold))
    return {
        "threshold": float(threshold),
        "method": method,
        "n_calibration": int(n),
        "far_target": float(far_target),
        "far_on_calibration": far_on_calibration,
    }


def f1_threshold(scores: np.ndarray, labels: np.ndarray) -> dict:
    """Threshold maximising F1 on a labelled set (labels 1 = defective)."""
    scores = np.asarray(scores, dtype=np.float64).ravel()
    labels = np.asarray(labels).astype(bool).ravel()
    if scores.size != labels.size or scores.size == 0:
        raise InputError("F1 threshold needs one label per score")
    if labels.all() or not labels.any():
        raise InputError("validation set needs both good and defective images for an F1 threshold")
    order = np.argsort(-scores, kind="stable")
    sorted_scores, sorted_labels = scores[order], labels[order]
    true_pos = np.cumsum(sorted_labels)
    predicted = np.arange(1, scores.size + 1)
    precision = true_pos / predicted
    recall = true_pos / labels.sum()
    f1 = np.where(precision + recall > 0, 2 * precision * recall / np.maximum(precision + recall, 1e-12), 0.0)
    # Only cut between distinct scores: thresholding at a score flags every tie too.
    distinct_end = np.r_[sorted_scores[1:] != sorted_scores[:-1], True]
    f1 = np.where(distinct_end, f1, -1.0)
    best = int(np.argmax(f1))
    return {"threshold": float(sorted_scores[best]), "f1": float(f1[best]), "n_validation": int(scores.size)}


def tail_threshold(good_scores: np.ndarray, far_target: float, tail_fraction: float = TAIL_FRACTION,
                   min_tail: int = MIN_TAIL) -> dict:
    """Threshold for a target false-alarm rate from a generalized Pareto fit to the top
    ``tail_fraction`` of the good scores (peaks over threshold): P(S ≥ t) = ζ·(1 − G(t − u)) with u
    the (1 − ζ) quantile, G the fitted GPD of the excesses. Smoother than the k-th largest score
    and able to extrapolate a little past the largest one. Needs ``min_tail`` excesses; with fewer
    it returns :func:`far_threshold`'s rule (``method`` says which)."""
    from scipy.stats import genpareto

    scores = np.sort(np.asarray(good_scores, dtype=np.float64).ravel())
    if scores.size == 0 or not np.isfinite(scores).all():
        raise InputError("threshold calibration needs at least one finite good-image score")
    n = scores.size
    n_tail = int(math.floor(tail_fraction * n))
    if n_tail < min_tail or far_target >= tail_fraction:
        return {**far_threshold(scores, far_target), "tail_fit": f"skipped: {n_tail} tail scores < {min_tail}"
                if n_tail < min_tail else "skipped: target FAR within the empirical body"}
    u = float(scores[n - n_tail - 1])
    excess = scores[n - n_tail :] - u
    zeta = n_tail / n
    shape, _, scale = genpareto.fit(excess, floc=0.0)
    threshold = u + float(genpareto.ppf(1.0 - far_target / zeta, shape, loc=0.0, scale=scale))
    if not math.isfinite(threshold):
        return {**far_threshold(scores, far_target), "tail_fit": "failed: non-finite quantile"}
    return {
        "threshold": float(threshold),
        "method": "gpd_tail",
        "n_calibration": int(n),
        "far_target": float(far_target),
        "far_on_calibration": float(np.mean(scores >= threshold)),
        "tail": {"fraction": round(zeta, 4), "n": n_tail, "u": round(u, 6), "shape_xi": round(float(shape), 4),
                 "scale": round(float(scale), 6)},
    }
