"""Photometric perturbations: training augmentation and the strong-light robustness check.

Both act on H×W×3 uint8 images (BGR or RGB: they treat channels alike).
"""

from __future__ import annotations

import numpy as np


def _gamma(img: np.ndarray, gamma: float) -> np.ndarray:
    lut = np.clip(((np.arange(256) / 255.0) ** gamma) * 255.0, 0, 255).astype(np.uint8)
    return lut[img]


def _specular_blob(img: np.ndarray, cx: float, cy: float, radius: float, strength: float) -> np.ndarray:
    h, w = img.shape[:2]
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    blob = np.exp(-(((xx - cx) ** 2 + (yy - cy) ** 2) / (2.0 * radius**2)))
    if img.ndim == 3:
        blob = blob[..., None]  # same highlight on every channel; grey images stay 2-D
    out = img.astype(np.float32) + strength * 255.0 * blob
    return np.clip(out, 0, 255).astype(np.uint8)


def strong_light(img: np.ndarray) -> np.ndarray:
    """The fixed 'strong light' condition of the robustness check: gain ×1.6, gamma 0.6 and a
    specular blob (centre at 35 %/30 % of the frame, radius 12 % of the short side)."""
    out = np.clip(img.astype(np.float32) * 1.6, 0, 255).astype(np.uint8)
    out = _gamma(out, 0.6)
    h, w = out.shape[:2]
    return _specular_blob(out, 0.35 * w, 0.30 * h, 0.12 * min(h, w), 0.6)


def random_photometric(img: np.ndarray, rng: np.random.Generator, strength: float = 1.0) -> np.ndarray:
    """Random brightness, contrast, gamma and (sometimes) a specular highlight, for training."""
    f = img.astype(np.float32)
    gain = 1.0 + strength * rng.uniform(-0.25, 0.6)
    bias = strength * rng.uniform(-20, 20)
    contrast = 1.0 + strength * rng.uniform(-0.25, 0.25)
    mean = f.mean()
    f = (f - mean) * contrast + mean
    f = f * gain + bias
    out = np.clip(f, 0, 255).astype(np.uint8)
    gamma = float(np.exp(strength * rng.uniform(np.log(0.55), np.log(1.5))))
    out = _gamma(out, gamma)
    if rng.random() < 0.4 * strength:
        h, w = out.shape[:2]
        out = _specular_blob(
            out,
            rng.uniform(0.1, 0.9) * w,
            rng.uniform(0.1, 0.9) * h,
            rng.uniform(0.05, 0.2) * min(h, w),
            rng.uniform(0.2, 0.7),
        )
    return out
