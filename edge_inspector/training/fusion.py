"""Choosing the default head's term weights from good images only.

The default head is a weighted sum of standardised terms (``scoring.TERMS``: AE-GAN discrepancy,
kNN distance, kNN distance inside the principal subspace, energy outside it, GAN critic residual):
always the AE-GAN's two terms, plus a memory term where it helps. Which memory term, and how much,
depends on the part, and the test set must not be used to find out — measured on the benchmark
sets: bottle is best served by the subspace distance, tire by the full kNN distance plus the
out-of-subspace energy, kolektorsdd by none. So the weights are picked on *synthetic* anomalies
drawn on the held-out good images:

- ``cutpaste``: a rectangle cut from another held-out good image (random position, flipped) and
  pasted elsewhere — a plausible, locally realistic texture in the wrong place;
- ``scratch``: a thin bright or dark polyline;
- ``dent``: a shaded ellipse (dark on one side, bright on the other, like a depression under a
  directional light).

**Faint on purpose** (``SYNTHETIC_CONTRAST`` = 0.3: each anomaly is blended in at 30 % of its
contrast). At full contrast every head finds them, and the ranking rewards projecting onto the
dominant subspace — on tire that picks a mix that loses 0.06 pixel AUROC on real defects, which
are faint. At 30 % the ranking follows the real defects on both benchmark sets (docs/model.md).

Each candidate's map is scored by pixel AUROC over the synthetic masks (the acceptance metric this
choice serves), on ``DRAWS`` independent draws of the anomalies. The rule is the one-standard-error
rule of model selection: the best candidate is the one with the highest mean; every candidate whose
paired difference to it (per draw) is, on average, within one standard error of zero ties with it,
and among ties the cheapest wins (candidate order). One draw is not enough: across draws the
pixel AUROC of one candidate moves by up to 0.06 and close candidates swap places (measured on tire:
kNN + AE and kNN + residual are tied, kNN alone is consistently 0.005 behind). Nothing under
``test/`` is read: the function only sees the hold-out tensors it is given.
"""

from __future__ import annotations

import math

import cv2
import numpy as np
import torch

from edge_inspector.training.metrics import image_auroc, pixel_auroc

# What the station runs when the synthetic draws are uninformative (below): the paper's model, the
# AE-GAN alone — its reconstruction and critic terms, no memory bank. The critic gets a fifth of the
# weight, not half: of the two it is the term that moves from one training to the next (on
# kolektorsdd, the set that takes the prior, the critic alone scored image AUROC 0.70–0.86 over the
# benchmark's trainings where the AE term held 0.89–0.94), and at half the weight one training's
# critic pulled the prior to 0.839, below the PatchCore reference (docs/benchmarks.md, "Critic
# weight of the AE-GAN prior").
PRIOR: dict[str, float] = {"ae": 0.8, "gan": 0.2}
# Every candidate is the fused AE-GAN — the MDAAE's reconstruction term and the GAN critic's
# residual — plus a memory term (the subspace or full kNN distance) at most: the draws choose how
# much memory, never whether the AE-GAN runs. On the three dev sets the draws pick the subspace
# term for bottle, the full kNN term for tire, and no candidate sees kolektorsdd's synthetic
# defects (the prior runs there).
# Cheapest first (ties go to the earlier one): the subspace distance is a 64-d matmul, the full
# kNN a 344-d one. The AE-GAN alone is offered last, so it wins on evidence only, never on a tie.
CANDIDATES: tuple[dict[str, float], ...] = (
    {"sub": 0.8, "ae": 0.1, "gan": 0.1},
    {"sub": 0.6, "ae": 0.2, "gan": 0.2},
    {"knn": 0.8, "ae": 0.1, "gan": 0.1},
    {"knn": 0.7, "res": 0.1, "ae": 0.1, "gan": 0.1},
    PRIOR,
)
SYNTHETIC_CONTRAST = 0.3
# below this best pixel AUROC on the synthetic defects, the draws are uninformative (see below)
MIN_SYNTHETIC_PIXEL_AUROC = 0.6
DRAWS = 6
KINDS = ("cutpaste", "scratch", "dent")


def _cutpaste(img: np.ndarray, donor: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    H, W = img.shape[1:]
    h, w = int(rng.uniform(0.08, 0.2) * H), int(rng.uniform(0.08, 0.2) * W)
    h, w = max(h, 2), max(w, 2)
    sy, sx = int(rng.integers(0, H - h)), int(rng.integers(0, W - w))
    patch = donor[:, sy : sy + h, sx : sx + w].copy()
    if rng.random() < 0.5:
        patch = patch[:, :, ::-1]
    if rng.random() < 0.5:
        patch = patch[:, ::-1, :]
    ty = int(rng.integers(int(0.15 * H), max(int(0.15 * H) + 1, int(0.85 * H) - h)))
    tx = int(rng.integers(int(0.15 * W), max(int(0.15 * W) + 1, int(0.85 * W) - w)))
    out = img.copy()
    out[:, ty : ty + h, tx : tx + w] = patch
    mask = np.zeros((H, W), bool)
    mask[ty : ty + h, tx : tx + w] = True
    return out, mask


def _scratch(img: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    H, W = img.shape[1:]
    s = math.sqrt(H * W)  # lengths scale with the frame's size, positions with each side
    length = rng.uniform(0.15, 0.4) * s
    angle = rng.uniform(0, np.pi)
    cx, cy = rng.uniform(0.25, 0.75, size=2) * (W, H)
    t = np.linspace(-0.5, 0.5, 12)
    bend = rng.uniform(-0.05, 0.05) * s * np.sin(np.pi * (t + 0.5))
    xs = cx + t * length * np.cos(angle) - bend * np.sin(angle)
    ys = cy + t * length * np.sin(angle) + bend * np.cos(angle)
    canvas = np.zeros((H, W), np.uint8)
    thickness = max(1, int(round(rng.uniform(1.0, 3.0) * s / 256)))
    cv2.polylines(canvas, [np.stack([xs, ys], 1).round().astype(np.int32)], False, 255, thickness)
    mask = canvas > 0
    delta = rng.choice([-1.0, 1.0]) * rng.uniform(0.4, 0.8)
    out = img.copy()
    out[:, mask] = np.clip(out[:, mask] + delta, -1.0, 1.0)
    return out, mask


def _dent(img: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    H, W = img.shape[1:]
    s = math.sqrt(H * W)
    ax, ay = rng.uniform(0.03, 0.08, size=2) * s
    cx, cy = rng.uniform(0.25, 0.75, size=2) * (W, H)
    rot = rng.uniform(0, np.pi)
    light = rng.uniform(0, 2 * np.pi)
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float32)
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


def synthetic_anomalies(images: torch.Tensor, seed: int = 0, contrast: float = 1.0) -> tuple[torch.Tensor, np.ndarray, list[str]]:
    """Defective copies of good model inputs (N×3×H×W, TF-normalised): (images, masks N×H×W, kinds).

    ``contrast`` < 1 blends each anomaly in at that fraction of its full contrast."""
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
        outs.append(base[i] + contrast * (img - base[i]))
        masks.append(mask)
        kinds.append(kind)
    return torch.from_numpy(np.stack(outs).astype(np.float32)), np.stack(masks), kinds


@torch.no_grad()
def standardised_terms(model, images: torch.Tensor, names, device: str, batch: int = 8,
                        are_features: bool = False) -> dict[str, torch.Tensor]:
    """Standardised term grids of model inputs, or of their standardised features (``are_features``)."""
    out: dict[str, list] = {n: [] for n in names}
    for i in range(0, images.shape[0], batch):
        x = images[i : i + batch].to(device)
        z = x if are_features else model.standardised_features(x)
        for name, grid in model.term_grids(z, names).items():
            out[name].append(model.standardised_term(name, grid).cpu())
    return {n: torch.cat(v) for n, v in out.items()}


@torch.no_grad()
def fused_maps(model, terms: dict[str, torch.Tensor], weights: dict[str, float], size: tuple[int, int]) -> np.ndarray:
    """N×H×W maps of the weighted sum of standardised term grids, smoothed and upsampled as in the graph."""
    grid = sum(w * terms[name] for name, w in weights.items())
    out = [model.upsample_and_smooth(grid[i : i + 8], size) for i in range(0, grid.shape[0], 8)]
    return torch.cat(out)[:, 0].numpy()


def choose(table: list[dict]) -> dict[str, float]:
    """One-standard-error rule over the per-draw pixel AUROCs (``pixel_auroc_draws``): the cheapest
    (earliest) candidate whose mean paired difference to the best mean is within one standard error."""
    draws = np.array([row["pixel_auroc_draws"] for row in table], dtype=np.float64)  # candidates × draws
    best = int(np.argmax(draws.mean(axis=1)))
    for row, values in zip(table, draws):
        diff = values - draws[best]
        se = diff.std(ddof=1) / np.sqrt(diff.size) if diff.size > 1 else 0.0
        if diff.mean() >= -se:
            return dict(row["weights"])
    return dict(table[best]["weights"])  # unreachable: the best ties with itself


def check_fusion_weights(weights: dict) -> dict[str, float]:
    """Caller-fixed term weights: known terms, none negative, at least one positive. Returns the
    non-zero ones; ValueError naming what is wrong."""
    from edge_inspector.training.scoring import TERMS

    unknown = sorted(set(weights) - set(TERMS))
    if unknown:
        raise ValueError(f"fusion_weights: unknown terms {unknown} (terms: {', '.join(TERMS)})")
    try:
        used = {t: float(w) for t, w in weights.items() if float(w) != 0.0}
    except (TypeError, ValueError):
        raise ValueError(f"fusion_weights {weights}: weights must be numbers") from None
    if not used or any(not w > 0 for w in used.values()):
        raise ValueError(f"fusion_weights {weights}: need at least one positive weight and none negative")
    return used


def fixed_fusion(weights: dict, available) -> dict[str, float]:
    """Caller-fixed term weights (``check_fusion_weights``), checked against the terms the model
    can compute."""
    used = check_fusion_weights(weights)
    missing = sorted(set(used) - set(available))
    if missing:
        raise ValueError(f"fusion_weights: this model cannot compute {missing} (it has {', '.join(available)})")
    return used


def restrict_candidates(candidates, have) -> list[dict[str, float]]:
    """The candidates a model can compute. A candidate naming a term the model lacks is left out —
    except the GAN critic, which checkpoints from before it lack: there it is dropped and the rest
    renormalised to sum 1 (repeats offered once)."""
    out: list[dict[str, float]] = []
    for weights in candidates:
        if set(weights) - set(have) - {"gan"}:
            continue
        kept = {t: w for t, w in weights.items() if t in have}
        total = sum(kept.values())
        if total <= 0:
            continue
        kept = {t: round(w / total, 6) for t, w in kept.items()}
        if kept not in out:
            out.append(kept)
    return out


def full_weights(weights: dict[str, float]) -> dict[str, float]:
    """Every term named (0 for the unused ones), in TERMS order, for model.json."""
    from edge_inspector.training.scoring import TERMS

    return {t: float(weights.get(t, 0.0)) for t in TERMS}


@torch.no_grad()
def select_fusion_weights(model, good_images: torch.Tensor, device: str = "cpu", seed: int = 0,
                          candidates=CANDIDATES, contrast: float = SYNTHETIC_CONTRAST,
                          draws: int = DRAWS, good_features: torch.Tensor | None = None) -> tuple[dict[str, float], dict]:
    """Pick the default head's term weights on faint synthetic anomalies over held-out good images.

    ``model`` is a default-head InspectionModel whose term statistics are already fitted; candidates
    are reduced to the terms the model can compute (``restrict_candidates``). ``good_features``:
    the standardised features of ``good_images`` when the caller has them already (saves a
    backbone pass)."""
    size = tuple(good_images.shape[-2:])
    have = set(model.available_terms())
    usable = restrict_candidates(candidates, have)
    if not usable:
        raise ValueError(f"no fusion candidate uses only the terms this model has ({sorted(have)})")
    names = sorted({t for c in usable for t in c})
    if good_features is not None:
        good_terms = standardised_terms(model, good_features, names, device, are_features=True)
    else:
        good_terms = standardised_terms(model, good_images, names, device)
    good_maps = {i: fused_maps(model, good_terms, w, size) for i, w in enumerate(usable)}
    good_scores = {i: m.reshape(len(m), -1).max(1) for i, m in good_maps.items()}
    pixel = np.zeros((len(usable), draws))
    image = np.zeros((len(usable), draws))
    kinds: list[str] = []
    for k in range(draws):
        defective, masks, kinds = synthetic_anomalies(good_images, seed=seed + k, contrast=contrast)
        bad_terms = standardised_terms(model, defective, names, device)
        labels = np.r_[np.zeros(good_images.shape[0]), np.ones(defective.shape[0])]
        for i, weights in enumerate(usable):
            bad_maps = fused_maps(model, bad_terms, weights, size)
            pixel[i, k] = pixel_auroc(list(bad_maps), list(masks))
            image[i, k] = image_auroc(labels, np.r_[good_scores[i], bad_maps.reshape(len(bad_maps), -1).max(1)])
    table = [{
        "weights": dict(weights),
        "pixel_auroc": round(float(pixel[i].mean()), 4),
        "image_auroc": round(float(image[i].mean()), 4),
        "pixel_auroc_draws": [round(float(v), 4) for v in pixel[i]],
    } for i, weights in enumerate(usable)]
    seen = max(row["pixel_auroc"] for row in table)
    informative = seen >= MIN_SYNTHETIC_PIXEL_AUROC
    # Synthetic defects no candidate can locate carry no evidence for a ranking (on kolektorsdd
    # every candidate scored pixel AUROC 0.36–0.44 and image AUROC ≈ 0.50 on them): take
    # the prior rather than a winner drawn from noise (reduced to the terms the model has, as the
    # candidates are).
    prior = (restrict_candidates([PRIOR], have) or [dict(table[0]["weights"])])[0]
    chosen = choose(table) if informative else dict(prior)
    return full_weights(chosen), {
        "informative": informative,
        "best_synthetic_pixel_auroc": seen,
        "rule": f"one-standard-error rule on pixel AUROC over {draws} draws of faint synthetic anomalies (cutpaste, "
                f"scratch, dent at {contrast:.0%} contrast) on the held-out good images: the cheapest candidate whose "
                "mean paired difference to the best is within one standard error; the AE-GAN prior "
                f"{PRIOR} when no candidate reaches pixel AUROC {MIN_SYNTHETIC_PIXEL_AUROC} on them (uninformative draws)",
        "contrast": contrast,
        "n_good": int(good_images.shape[0]),
        "draws": draws,
        "n_synthetic_per_draw": int(good_images.shape[0]),
        "kinds": {k: kinds.count(k) for k in KINDS},
        "candidates": table,
        "weights": full_weights(chosen),
    }
