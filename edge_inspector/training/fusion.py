"""Choosing the default head's fusion weight from good images only.

The default head adds the AE-GAN discrepancy and the kNN distance, each standardised by its mean/std
on held-out good images: ``w·AE + (1 − w)·kNN``. Which ``w`` is right depends on the part (the AE
term helps on bottle and hurts on tire), and the test set must not be used to find out. So the
weight is picked on *synthetic* anomalies drawn on the held-out good images:

- ``cutpaste``: a rectangle cut from another held-out good image (random position, flipped) and
  pasted elsewhere — a plausible, locally realistic texture in the wrong place;
- ``scratch``: a thin bright or dark polyline;
- ``dent``: a shaded ellipse (dark on one side, bright on the other, like a depression under a
  directional light).

Each candidate weight's map is scored by pixel AUROC over the synthetic images' masks (the
acceptance metric this choice is meant to serve); ties (within ``TIE``) are broken by image AUROC of
the synthetic images against the clean held-out images, then by the smaller AE weight. Nothing under
``test/`` is read: the function only sees the hold-out tensors it is given.
"""

from __future__ import annotations

import cv2
import numpy as np
import torch

from edge_inspector.training.metrics import image_auroc, pixel_auroc

CANDIDATE_AE_WEIGHTS = (0.0, 0.1, 0.25, 0.5)
TIE = 0.001  # pixel AUROC differences below this count as ties
KINDS = ("cutpaste", "scratch", "dent")


def _cutpaste(img: np.ndarray, donor: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    s = img.shape[1]
    h, w = (int(rng.uniform(0.08, 0.2) * s) for _ in range(2))
    h, w = max(h, 2), max(w, 2)
    sy, sx = int(rng.integers(0, s - h)), int(rng.integers(0, s - w))
    patch = donor[:, sy : sy + h, sx : sx + w].copy()
    if rng.random() < 0.5:
        patch = patch[:, :, ::-1]
    if rng.random() < 0.5:
        patch = patch[:, ::-1, :]
    lo, hi = int(0.15 * s), int(0.85 * s)
    ty, tx = int(rng.integers(lo, max(lo + 1, hi - h))), int(rng.integers(lo, max(lo + 1, hi - w)))
    out = img.copy()
    out[:, ty : ty + h, tx : tx + w] = patch
    mask = np.zeros((s, s), bool)
    mask[ty : ty + h, tx : tx + w] = True
    return out, mask


def _scratch(img: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    s = img.shape[1]
    length = rng.uniform(0.15, 0.4) * s
    angle = rng.uniform(0, np.pi)
    cx, cy = rng.uniform(0.25, 0.75, size=2) * s
    t = np.linspace(-0.5, 0.5, 12)
    bend = rng.uniform(-0.05, 0.05) * s * np.sin(np.pi * (t + 0.5))
    xs = cx + t * length * np.cos(angle) - bend * np.sin(angle)
    ys = cy + t * length * np.sin(angle) + bend * np.cos(angle)
    canvas = np.zeros((s, s), np.uint8)
    thickness = max(1, int(round(rng.uniform(1.0, 3.0) * s / 256)))
    cv2.polylines(canvas, [np.stack([xs, ys], 1).round().astype(np.int32)], False, 255, thickness)
    mask = canvas > 0
    delta = rng.choice([-1.0, 1.0]) * rng.uniform(0.4, 0.8)
    out = img.copy()
    out[:, mask] = np.clip(out[:, mask] + delta, -1.0, 1.0)
    return out, mask


def _dent(img: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    s = img.shape[1]
    ax, ay = rng.uniform(0.03, 0.08, size=2) * s
    cx, cy = rng.uniform(0.25, 0.75, size=2) * s
    rot = rng.uniform(0, np.pi)
    light = rng.uniform(0, 2 * np.pi)
    yy, xx = np.mgrid[0:s, 0:s].astype(np.float32)
    dx, dy = xx - cx, yy - cy
    u = (dx * np.cos(rot) + dy * np.sin(rot)) / ax
    v = (-dx * np.sin(rot) + dy * np.cos(rot)) / ay
    r2 = u**2 + v**2
    mask = r2 <= 1.0
    # shading: gradient along the light direction inside the ellipse, faded towards the rim
    along = (dx * np.cos(light) + dy * np.sin(light)) / max(ax, ay)
    shade = np.where(mask, -0.6 * along * (1.0 - 0.5 * r2) - 0.15, 0.0).astype(np.float32)
    shade = cv2.GaussianBlur(shade, (0, 0), max(0.8, s / 256))
    out = np.clip(img + shade[None], -1.0, 1.0)
    return out, mask


def synthetic_anomalies(images: torch.Tensor, seed: int = 0) -> tuple[torch.Tensor, np.ndarray, list[str]]:
    """Defective copies of good model inputs (N×3×S×S, TF-normalised): (images, masks N×S×S, kinds)."""
    rng = np.random.default_rng(seed)
    base = images.detach().cpu().numpy().astype(np.float32)
    n = base.shape[0]
    outs, masks, kinds = [], [], []
    for i in range(n):
        kind = KINDS[i % len(KINDS)]
        if kind == "cutpaste" and n > 1:
            j = int(rng.integers(0, n - 1))
            img, mask = _cutpaste(base[i], base[j + (j >= i)], rng)
        elif kind == "cutpaste":
            img, mask = _cutpaste(base[i], base[i], rng)
        elif kind == "scratch":
            img, mask = _scratch(base[i], rng)
        else:
            img, mask = _dent(base[i], rng)
        outs.append(img)
        masks.append(mask)
        kinds.append(kind)
    return torch.from_numpy(np.stack(outs)), np.stack(masks), kinds


@torch.no_grad()
def _standardised_terms(model, images: torch.Tensor, device: str, batch: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    ae, knn = [], []
    for i in range(0, images.shape[0], batch):
        z = model.standardised_features(images[i : i + batch].to(device))
        ae.append(((model.ae_term(z) - model.term_mean[0]) / model.term_std[0]).cpu())
        knn.append(((model.knn_term(z) - model.term_mean[1]) / model.term_std[1]).cpu())
    return torch.cat(ae), torch.cat(knn)


@torch.no_grad()
def _maps(model, ae: torch.Tensor, knn: torch.Tensor, w: float, size: int) -> np.ndarray:
    grid = w * ae + (1.0 - w) * knn
    out = [model.upsample_and_smooth(grid[i : i + 8], size) for i in range(0, grid.shape[0], 8)]
    return torch.cat(out)[:, 0].numpy()


def choose(table: list[dict]) -> float:
    """The rule: best pixel AUROC; within TIE, best image AUROC; then the smaller AE weight."""
    best = max(v["pixel_auroc"] for v in table)
    near = [v for v in table if v["pixel_auroc"] >= best - TIE]
    best_img = max(v["image_auroc"] for v in near)
    near = [v for v in near if v["image_auroc"] >= best_img - TIE]
    return float(min(v["ae_weight"] for v in near))


@torch.no_grad()
def select_fusion_weight(model, good_images: torch.Tensor, device: str = "cpu", seed: int = 0,
                         candidates=CANDIDATE_AE_WEIGHTS) -> tuple[float, dict]:
    """Pick the default head's AE weight on synthetic anomalies over held-out good images.

    ``model`` is a default-head InspectionModel whose term statistics are already fitted."""
    size = good_images.shape[-1]
    defective, masks, kinds = synthetic_anomalies(good_images, seed=seed)
    ae_good, knn_good = _standardised_terms(model, good_images, device)
    ae_bad, knn_bad = _standardised_terms(model, defective, device)
    labels = np.r_[np.zeros(good_images.shape[0]), np.ones(defective.shape[0])]
    table = []
    for w in candidates:
        bad_maps = _maps(model, ae_bad, knn_bad, float(w), size)
        good_maps = _maps(model, ae_good, knn_good, float(w), size)
        scores = np.r_[good_maps.reshape(len(good_maps), -1).max(1), bad_maps.reshape(len(bad_maps), -1).max(1)]
        table.append({
            "ae_weight": float(w),
            "pixel_auroc": round(pixel_auroc(list(bad_maps), list(masks)), 4),
            "image_auroc": round(image_auroc(labels, scores), 4),
        })
    chosen = choose(table)
    return chosen, {
        "rule": "max pixel AUROC on synthetic anomalies (cutpaste, scratch, dent) drawn on the held-out good "
                f"images; ties within {TIE} broken by image AUROC vs the clean hold-out, then the smaller AE weight",
        "n_good": int(good_images.shape[0]),
        "n_synthetic": int(defective.shape[0]),
        "kinds": {k: kinds.count(k) for k in KINDS},
        "candidates": table,
        "ae_weight": chosen,
    }
