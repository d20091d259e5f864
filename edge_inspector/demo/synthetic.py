"""Synthetic machined parts with scratches and dents, in MVTec AD layout (our own generator).

Every image is a grey, top-lit machined washer (turned metal disc with a bore) lying on a textured
conveyor belt, with the variation a real station sees: position jitter, a lighting gradient of
random direction and strength, machining marks of varying contrast, belt texture and sensor noise.
Defective parts carry one defect on the metal surface:

- ``scratch``: a thin dark or bright line of random length, angle and width (slightly wavy);
- ``dent``: a small ellipse shaded like a depression under the image's light: dark on the side
  facing the light, a highlight on the other, with a faint rim.

The pixel mask of each defect goes to ``ground_truth/<type>/<stem>_mask.png`` (0/255), as in
MVTec AD. Generation is deterministic: each image is drawn from its own seed derived from
``(seed, split, index)``, so adding more images never changes the ones already there.

    from edge_inspector.demo.synthetic import generate_dataset
    info = generate_dataset("data/parts", n_train=60, n_test_good=20, n_test_scratch=10, n_test_dent=10)

No third-party images or code: this file is the whole generator (numpy + OpenCV drawing).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

import cv2
import numpy as np

DEFECT_TYPES = ("scratch", "dent")

# One stream per purpose, so a change in one split never shifts another split's images.
_SPLIT_CODE = {"train": 1, "test": 2}
_TYPE_CODE = {"good": 0, "scratch": 1, "dent": 2}


@dataclass
class PartImage:
    image: np.ndarray  # H×W uint8 grey
    mask: Optional[np.ndarray]  # H×W uint8 0/255 for a defect, None for a good part
    defect: str  # "good" | "scratch" | "dent"
    bbox: Optional[tuple[int, int, int, int]] = None  # x, y, w, h of the mask


@dataclass
class DatasetInfo:
    root: str
    size: int
    seed: int
    counts: dict = field(default_factory=dict)  # {"train/good": n, "test/good": n, ...}
    test_items: list = field(default_factory=list)  # [{"file", "type", "mask", "bbox"}]

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)


def _rng(seed: int, split: str, defect: str, index: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([int(seed), _SPLIT_CODE[split], _TYPE_CODE[defect], int(index)]))


def _smooth_noise(rng: np.random.Generator, size: int, scale: float) -> np.ndarray:
    """Zero-mean, unit-std smooth noise: white noise blurred at `scale` pixels."""
    n = rng.standard_normal((size, size)).astype(np.float32)
    k = max(3, int(scale * 3) | 1)
    n = cv2.GaussianBlur(n, (k, k), scale)
    return (n - n.mean()) / (n.std() + 1e-6)


def _belt(rng: np.random.Generator, size: int) -> np.ndarray:
    """Conveyor belt: dark rubber with a woven texture along one axis and blotches."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    period = rng.uniform(5.0, 7.0)
    phase = rng.uniform(0, 2 * np.pi)
    weave = 0.5 + 0.5 * np.sin(2 * np.pi * yy / period + phase) * np.sin(2 * np.pi * xx / (period * 2.1))
    base = rng.uniform(48, 62)
    belt = base + 7.0 * weave + 4.0 * _smooth_noise(rng, size, 6.0) + 2.0 * _smooth_noise(rng, size, 1.2)
    return belt


def _part_geometry(rng: np.random.Generator, size: int) -> tuple[float, float, float, float]:
    cx = size / 2 + rng.uniform(-0.035, 0.035) * size
    cy = size / 2 + rng.uniform(-0.035, 0.035) * size
    r_out = size * rng.uniform(0.355, 0.37)
    r_in = size * rng.uniform(0.125, 0.135)
    return cx, cy, r_out, r_in


def _render_good(rng: np.random.Generator, size: int) -> tuple[np.ndarray, tuple, tuple[float, float]]:
    """Float image of a good part, its geometry and the light direction (unit vector)."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    img = _belt(rng, size)
    cx, cy, r_out, r_in = _part_geometry(rng, size)
    dx, dy = xx - cx, yy - cy
    r = np.sqrt(dx * dx + dy * dy)
    theta = np.arctan2(dy, dx)

    # Turned metal: bright, with radial shading, concentric machining marks and an anisotropic sheen.
    level = rng.uniform(160, 180)
    rings = np.sin(2 * np.pi * r / rng.uniform(2.6, 3.4) + rng.uniform(0, 2 * np.pi))
    ring_contrast = rng.uniform(2.0, 4.0)
    sheen_angle = rng.uniform(0, np.pi)
    sheen = np.cos(2 * (theta - sheen_angle))
    rel = (r - r_in) / (r_out - r_in)
    metal = level + ring_contrast * rings + 10.0 * sheen - 14.0 * (rel - 0.5) ** 2 * 4
    metal += 1.5 * _smooth_noise(rng, size, 2.0)

    # Soft (anti-aliased) edges; a chamfer ring darker at the outer edge and the bore.
    outer = np.clip(r_out - r + 0.5, 0, 1)
    inner = np.clip(r - r_in + 0.5, 0, 1)
    part = outer * inner
    chamfer = np.clip(1.0 - np.minimum(np.abs(r - r_out), np.abs(r - r_in)) / 2.5, 0, 1)
    metal -= 35.0 * chamfer
    # Shadow of the part on the belt (light from above, slightly offset).
    shadow = np.clip((r_out + 3.0 - np.sqrt((xx - cx - 2) ** 2 + (yy - cy - 2) ** 2)) / 3.0, 0, 1) * (1 - outer)
    img = img * (1 - 0.35 * shadow)
    # The bore shows the belt (darker, it is in the part's shadow).
    bore = np.clip(r_in - r + 0.5, 0, 1)
    img = img * (1 - 0.3 * bore)
    img = img * (1 - part) + metal * part

    # Lighting gradient across the whole field of view.
    ang = rng.uniform(0, 2 * np.pi)
    lx, ly = float(np.cos(ang)), float(np.sin(ang))
    strength = rng.uniform(0.04, 0.12)
    grad = 1.0 + strength * ((xx - size / 2) * lx + (yy - size / 2) * ly) / (size / 2)
    img = img * grad
    return img, (cx, cy, r_out, r_in), (lx, ly)


def _on_metal(size: int, geom: tuple, margin: float) -> np.ndarray:
    cx, cy, r_out, r_in = geom
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    r = np.sqrt((xx - cx) ** 2 + (yy - cy) ** 2)
    return (r <= r_out - margin) & (r >= r_in + margin)


def _pick_point_on_metal(rng: np.random.Generator, geom: tuple, margin: float) -> tuple[float, float]:
    cx, cy, r_out, r_in = geom
    rad = rng.uniform(r_in + margin, r_out - margin)
    ang = rng.uniform(0, 2 * np.pi)
    return cx + rad * np.cos(ang), cy + rad * np.sin(ang)


def _add_scratch(rng: np.random.Generator, img: np.ndarray, geom: tuple, size: int) -> np.ndarray:
    """Draw a scratch onto `img` (float, in place); return its mask (bool)."""
    metal = _on_metal(size, geom, margin=2.0)
    r_out, r_in = geom[2], geom[3]
    for _ in range(20):
        x0, y0 = _pick_point_on_metal(rng, geom, margin=3.0)
        length = rng.uniform(0.5, 1.0) * (r_out - r_in)
        ang = rng.uniform(0, np.pi)
        # a slightly wavy polyline: real scratches are rarely straight
        n = 8
        t = np.linspace(-0.5, 0.5, n) * length
        bend = rng.uniform(-0.08, 0.08) * length * (1 - (2 * t / length) ** 2)
        xs = x0 + t * np.cos(ang) - bend * np.sin(ang)
        ys = y0 + t * np.sin(ang) + bend * np.cos(ang)
        pts = np.stack([xs, ys], axis=1)
        layer = np.zeros((size, size), np.float32)
        width = max(2, int(round(rng.uniform(2.0, 3.5) * size / 160.0)))
        shift = 4
        cv2.polylines(layer, [np.round(pts * (1 << shift)).astype(np.int32)], False, 1.0, width, cv2.LINE_AA, shift)
        layer *= metal
        if (layer > 0.5).sum() >= 0.18 * length:  # most of it lies on the metal
            break
    # intensity varies along the scratch (pressure of the tool)
    along = 0.75 + 0.25 * _smooth_noise(rng, size, 4.0).clip(-1, 1)
    bright = rng.random() < 0.35
    contrast = rng.uniform(60, 100)
    img += (contrast if bright else -contrast) * layer * along
    mask = cv2.dilate((layer > 0.15).astype(np.uint8), np.ones((3, 3), np.uint8)) > 0
    return mask & metal


def _add_dent(rng: np.random.Generator, img: np.ndarray, geom: tuple, size: int, light: tuple[float, float]) -> np.ndarray:
    """Press a dent into `img` (float, in place); return its mask (bool)."""
    metal = _on_metal(size, geom, margin=1.0)
    scale = size / 160.0
    a = rng.uniform(5.0, 9.0) * scale
    b = a * rng.uniform(0.55, 1.0)
    x0, y0 = _pick_point_on_metal(rng, geom, margin=a + 2)
    rot = rng.uniform(0, np.pi)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    u = (xx - x0) * np.cos(rot) + (yy - y0) * np.sin(rot)
    v = -(xx - x0) * np.sin(rot) + (yy - y0) * np.cos(rot)
    q = (u / a) ** 2 + (v / b) ** 2  # < 1 inside the ellipse
    depth = rng.uniform(0.8, 1.2)
    # Surface slope of a smooth bowl along the light direction: the wall facing the light is
    # lit (highlight), the far wall is in shadow; the floor is a little darker overall.
    lx, ly = light
    gx = (xx - x0) / a
    gy = (yy - y0) / b
    bowl = np.clip(1 - q, 0, 1)
    slope = -(gx * lx + gy * ly) * bowl  # > 0 on the side towards the light
    shade = 90.0 * depth * slope - 35.0 * depth * bowl
    rim = np.exp(-((np.sqrt(q) - 1.05) ** 2) / 0.01) * 12.0 * depth
    layer = (shade + rim) * metal
    img += layer
    mask = (q <= 1.15) & metal
    return mask


def render_part(rng: np.random.Generator, size: int = 160, defect: str = "good") -> PartImage:
    """One grey part image (uint8) and its defect mask."""
    if defect not in ("good",) + DEFECT_TYPES:
        raise ValueError(f"unknown defect type {defect!r} (good, {', '.join(DEFECT_TYPES)})")
    img, geom, light = _render_good(rng, size)
    mask = None
    if defect == "scratch":
        mask = _add_scratch(rng, img, geom, size)
    elif defect == "dent":
        mask = _add_dent(rng, img, geom, size, light)
    # sensor noise last, after the defect, like a camera would see it
    img = img + rng.normal(0.0, rng.uniform(1.5, 3.0), img.shape).astype(np.float32)
    out = np.clip(np.round(img), 0, 255).astype(np.uint8)
    if mask is None:
        return PartImage(out, None, defect)
    m = mask.astype(np.uint8) * 255
    ys, xs = np.nonzero(m)
    bbox = (int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1))
    return PartImage(out, m, defect, bbox)


def _write_png(path: Path, img: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    ok, buf = cv2.imencode(".png", img)
    if not ok:
        raise OSError(f"{path}: PNG encoding failed")
    path.write_bytes(buf.tobytes())


def _as_bgr(grey: np.ndarray) -> np.ndarray:
    # Stored as 3-channel PNG (equal channels), the format most colour and mono cameras' files
    # share; a Mono8 camera (the pylon emulator) still sees the same grey values.
    return cv2.cvtColor(grey, cv2.COLOR_GRAY2BGR)


def generate_dataset(
    out_dir: str | Path,
    n_train: int = 60,
    n_test_good: int = 20,
    n_test_scratch: int = 10,
    n_test_dent: int = 10,
    size: int = 160,
    seed: int = 0,
) -> DatasetInfo:
    """Write an MVTec-layout category folder; return what was written (also saved as dataset.json)."""
    if size < 64:
        raise ValueError("size must be at least 64 pixels")
    root = Path(out_dir)
    info = DatasetInfo(root=str(root), size=int(size), seed=int(seed))
    for i in range(n_train):
        part = render_part(_rng(seed, "train", "good", i), size, "good")
        _write_png(root / "train" / "good" / f"{i:03d}.png", _as_bgr(part.image))
    info.counts["train/good"] = n_train
    for defect, n in (("good", n_test_good), ("scratch", n_test_scratch), ("dent", n_test_dent)):
        for i in range(n):
            part = render_part(_rng(seed, "test", defect, i), size, defect)
            rel = Path("test") / defect / f"{i:03d}.png"
            _write_png(root / rel, _as_bgr(part.image))
            mask_rel = None
            if part.mask is not None:
                mask_rel = Path("ground_truth") / defect / f"{i:03d}_mask.png"
                _write_png(root / mask_rel, part.mask)
            info.test_items.append(
                {"file": str(rel), "type": defect, "mask": str(mask_rel) if mask_rel else None, "bbox": list(part.bbox) if part.bbox else None}
            )
        info.counts[f"test/{defect}"] = n
    (root / "dataset.json").write_text(info.to_json() + "\n")
    return info


def split_test_counts(parts: int) -> tuple[int, int, int]:
    """`parts` test parts → (good, scratch, dent): half good, the rest split between the defects."""
    parts = max(int(parts), 1)
    good = (parts + 1) // 2
    bad = parts - good
    scratch = (bad + 1) // 2
    return good, scratch, bad - scratch
