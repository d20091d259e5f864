"""Photometric perturbations: training augmentation, the strong-light robustness check and the
light-stress conditions of benchmarks/light_benchmark.py.

All act on H×W or H×W×3 uint8 images (BGR or RGB: they treat channels alike).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np


def _gamma(img: np.ndarray, gamma: float) -> np.ndarray:
    lut = np.clip(((np.arange(256) / 255.0) ** gamma) * 255.0, 0, 255).astype(np.uint8)
    return lut[img]


def _blob_field(img: np.ndarray, cx: float, cy: float, radius: float) -> np.ndarray:
    """A Gaussian spot (peak 1 at (cx, cy) pixels), shaped to broadcast over ``img``."""
    h, w = img.shape[:2]
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    blob = np.exp(-(((xx - cx) ** 2 + (yy - cy) ** 2) / (2.0 * radius**2)))
    return blob[..., None] if img.ndim == 3 else blob  # same highlight on every channel; grey stays 2-D


def _specular_blob(img: np.ndarray, cx: float, cy: float, radius: float, strength: float) -> np.ndarray:
    out = img.astype(np.float32) + strength * 255.0 * _blob_field(img, cx, cy, radius)
    return np.clip(out, 0, 255).astype(np.uint8)


def strong_light(img: np.ndarray) -> np.ndarray:
    """The fixed 'strong light' condition of the robustness check: gain ×1.6, gamma 0.6 and a
    specular blob (centre at 35 %/30 % of the frame, radius 12 % of the short side)."""
    out = _gamma(apply_gain(img, 1.6), 0.6)
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


# -- the light-stress conditions (benchmarks/light_benchmark.py, tests) ---------------------------
# Each primitive is one physical effect on an H×W or H×W×3 uint8 frame. ``LightCondition.apply``
# chains them in the order light reaches the sensor: the illumination level (gain), its spatial
# shape (gradient) and a stray reflection (highlight) compose in the scene and are clipped once, by
# the sensor; then the camera's own response: black-level offset and tone curve (gamma).


def apply_gain(img: np.ndarray, gain: float) -> np.ndarray:
    """More or less light on the whole scene (lamp ageing, exposure time): every pixel × gain."""
    return np.clip(img.astype(np.float32) * gain, 0, 255).astype(np.uint8)


def apply_gamma(img: np.ndarray, gamma: float) -> np.ndarray:
    """Tone curve 255·(x/255)^gamma: < 1 lifts the shadows, > 1 darkens them."""
    return _gamma(img, gamma)


def apply_offset(img: np.ndarray, offset: float) -> np.ndarray:
    """Black-level shift (ambient light, camera black level): + offset grey levels everywhere."""
    return np.clip(img.astype(np.float32) + offset, 0, 255).astype(np.uint8)


def apply_gradient(img: np.ndarray, strength: float, angle_deg: float = 0.0) -> np.ndarray:
    """Smooth illumination ramp (a lamp to one side, sun through a skylight): the frame is
    multiplied by 1 − strength at one edge rising linearly to 1 + strength at the opposite edge,
    along ``angle_deg`` (0 = left → right, 90 = top → bottom)."""
    return np.clip(img.astype(np.float32) * _gradient_field(img, strength, angle_deg), 0, 255).astype(np.uint8)


def _gradient_field(img: np.ndarray, strength: float, angle_deg: float) -> np.ndarray:
    h, w = img.shape[:2]
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    a = np.deg2rad(angle_deg)
    proj = (xx / max(w - 1, 1) - 0.5) * np.cos(a) + (yy / max(h - 1, 1) - 0.5) * np.sin(a)
    proj /= max(abs(np.cos(a)), abs(np.sin(a))) * 0.5 + 1e-9  # −1 … +1 edge to edge
    field = 1.0 + strength * proj
    return field[..., None] if img.ndim == 3 else field


def apply_highlight(img: np.ndarray, cx: float, cy: float, radius_frac: float, add_grey: float) -> np.ndarray:
    """A specular reflection: a Gaussian spot adding ``add_grey`` grey levels at its centre
    (cx, cy as fractions of width/height), standard deviation ``radius_frac`` of the frame's
    short side."""
    h, w = img.shape[:2]
    return _specular_blob(img, cx * w, cy * h, radius_frac * min(h, w), add_grey / 255.0)


@dataclass(frozen=True)
class LightCondition:
    """One cell of the light-stress grid. Neutral values leave the frame unchanged.

    The highlight's position is drawn per image from ``seed`` and the image index (centre within
    the middle 60 % of the frame, where the part is), so a grid run is reproducible and every image
    gets its own reflection."""

    name: str
    gain: float = 1.0
    gamma: float = 1.0
    offset: float = 0.0
    gradient: float = 0.0
    gradient_angle_deg: float = 0.0
    highlight_radius: float = 0.0  # fraction of the short side; 0 = no highlight
    highlight_add: float = 0.0  # grey levels at the highlight's centre
    seed: int = 0

    @property
    def is_clean(self) -> bool:
        return self == LightCondition(self.name, seed=self.seed)

    @property
    def has_highlight(self) -> bool:
        return self.highlight_radius > 0 and self.highlight_add > 0

    def apply(self, img: np.ndarray, index: int = 0) -> np.ndarray:
        out = img
        if self.gain != 1.0 or self.gradient or self.has_highlight:
            # Light adds up in the scene and the sensor clips once: the lamp's level, its ramp and a
            # reflection compose before the clip, as on a real sensor. (Clipping after each one, as
            # this did before, turned a white background that a brighter lamp had clipped into a grey
            # wedge wherever the ramp then darkened it: a scene no camera records.)
            light = img.astype(np.float32)
            if self.gain != 1.0:
                light *= self.gain
            if self.gradient:
                light *= _gradient_field(img, self.gradient, self.gradient_angle_deg)
            if self.has_highlight:
                rng = np.random.default_rng([self.seed, index])
                cx, cy = rng.uniform(0.2, 0.8, size=2)
                h, w = img.shape[:2]
                light += self.highlight_add * _blob_field(img, float(cx) * w, float(cy) * h, self.highlight_radius * min(h, w))
            out = np.clip(light, 0, 255).astype(np.uint8)
        if self.offset:
            out = apply_offset(out, self.offset)
        if self.gamma != 1.0:
            out = apply_gamma(out, self.gamma)
        return out

    def describe(self) -> dict:
        return {k: v for k, v in asdict(self).items() if k != "name"}
