"""Training data: read ``train/good``, split the calibration hold-out, and cache the frozen
backbone's standardised multi-level features once, so training iterates over the cache and costs
no backbone passes.

Memory is bounded: the cache holds each level on its own grid (not all levels upsampled to the
finest one — 4.3× smaller) in float16, images are featurised in batches as they are prepared (the
decoded frames are reduced right away), and at most ``max_cached_images`` images (clean +
photometrically augmented) are cached; a larger training set is sub-sampled with a seed.
Per 256² image the cache costs 160 kB, so 2 000 cached images are 320 MB.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from edge_inspector.datasets import load_train_good
from edge_inspector.errors import InputError
from edge_inspector.logging import get_logger
from edge_inspector.preprocess import Preprocessor, random_photometric, to_bgr_uint8
from edge_inspector.preprocess.quality import exposure_stats
from edge_inspector.training.settings import TrainSettings

log = get_logger(__name__)


@dataclass
class TrainingData:
    """Everything later stages need from the dataset, computed once (shared across heads)."""

    paths: list[Path]
    train_idx: np.ndarray
    hold_idx: np.ndarray
    train_stats: dict
    preprocessor: Preprocessor
    feature_mean: torch.Tensor  # 1×ΣC×1×1, over the cached training features
    feature_std: torch.Tensor
    train_levels: list[torch.Tensor]  # standardised, float16, clean + augmented training images
    n_clean: int  # the first n_clean rows of train_levels are the un-augmented training images
    hold_levels: list[torch.Tensor]  # standardised, float32, hold-out images
    hold_images: torch.Tensor  # hold-out model inputs (N×3×S×S)
    timing: dict

    def clean_levels(self) -> list[torch.Tensor]:
        return [z[: self.n_clean].float() for z in self.train_levels]


def split_holdout(n: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded split of n images into (train indices, hold-out indices)."""
    if not 0.0 <= fraction < 1.0:
        raise InputError(f"--holdout {fraction} must be in [0, 1)")
    order = np.random.default_rng(seed).permutation(n)
    n_hold = int(round(fraction * n)) if n >= 2 else 0
    if fraction > 0 and n >= 2:
        n_hold = min(max(n_hold, 1), n - 1)
    return np.sort(order[n_hold:]), np.sort(order[:n_hold])


def bgr_channel_stats(images: list[np.ndarray]) -> dict:
    """Per-channel mean/std (BGR) of the training images, for the runtime's 'match_train' lighting."""
    from edge_inspector.preprocess import to_bgr_uint8

    sums = np.zeros(3)
    sq = np.zeros(3)
    count = 0
    for img in images:
        f = to_bgr_uint8(img).reshape(-1, 3).astype(np.float64)
        sums += f.sum(axis=0)
        sq += (f**2).sum(axis=0)
        count += f.shape[0]
    mean = sums / count
    std = np.sqrt(np.maximum(sq / count - mean**2, 0.0))
    return {"mean": [round(float(v), 4) for v in mean], "std": [round(float(v), 4) for v in std]}


def _reduce_for_augmentation(image: np.ndarray, limit: int) -> np.ndarray:
    import cv2

    h, w = image.shape[:2]
    factor = limit / max(h, w)
    if factor >= 1.0:
        return image
    return cv2.resize(image, (max(1, round(w * factor)), max(1, round(h * factor))), interpolation=cv2.INTER_AREA)


@torch.no_grad()
def extract_levels(backbone, tensors: list[np.ndarray], device: str, batch: int = 16, bar=None,
                   dtype: torch.dtype = torch.float16) -> list[torch.Tensor]:
    """Native-grid backbone levels of ``tensors`` (model inputs), one tensor per level."""
    parts: list[list[torch.Tensor]] = []
    for i in range(0, len(tensors), batch):
        x = torch.from_numpy(np.stack(tensors[i : i + batch])).to(device)
        for k, level in enumerate(backbone.native_levels(x)):
            if len(parts) <= k:
                parts.append([])
            parts[k].append(level.to("cpu", dtype))
        if bar is not None:
            bar.update(x.shape[0])
    return [torch.cat(p) for p in parts]


def _level_moments(levels: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean/std over images and positions of every level, concatenated (1×ΣC×1×1)."""
    means, stds = [], []
    for z in levels:
        f = z.float()
        means.append(f.mean(dim=(0, 2, 3), keepdim=True))
        stds.append(f.std(dim=(0, 2, 3), keepdim=True).clamp_min(1e-4))
    return torch.cat(means, dim=1), torch.cat(stds, dim=1)


def standardise(levels: list[torch.Tensor], mean: torch.Tensor, std: torch.Tensor, dtype=torch.float32) -> list[torch.Tensor]:
    sizes = [z.shape[1] for z in levels]
    return [((z.float() - m) / s).to(dtype) for z, m, s in zip(levels, torch.split(mean, sizes, 1), torch.split(std, sizes, 1))]


def prepare_data(data_dir: Path, settings: TrainSettings, backbone) -> TrainingData:
    """Read train/good, split the hold-out, cache standardised backbone features."""
    started = time.perf_counter()
    paths, images = load_train_good(data_dir)
    train_idx, hold_idx = split_holdout(len(images), settings.holdout, settings.seed)
    if hold_idx.size == 0:
        log.warning("no hold-out images: calibrating on training images (threshold will be optimistic)", n_images=len(images))
        hold_idx = train_idx
    train_stats = bgr_channel_stats(images)
    # Exposure figures of train/good for the station's image-quality gate (preprocess/quality.py).
    train_stats["exposure"] = exposure_stats(to_bgr_uint8(img) for img in images)
    pre = Preprocessor(settings.image_size, lighting=settings.lighting, train_stats=train_stats)
    rng = np.random.default_rng(settings.seed + 2)
    # Memory bound: clean images first, then as many augmented copies as the cap leaves room for.
    cached_train = train_idx
    if cached_train.size > settings.max_cached_images:
        cached_train = np.sort(rng.choice(train_idx, settings.max_cached_images, replace=False))
    room = max(0, settings.max_cached_images - cached_train.size)
    augment = [int(i) for _ in range(settings.augmented_copies) for i in cached_train][:room]
    log.info("training data", n_images=len(images), n_train=int(train_idx.size), n_holdout=int(hold_idx.size),
             n_cached=int(cached_train.size + len(augment)), image_size=settings.image_size)
    clean = [pre.prepare(images[i])[0] for i in cached_train]
    hold_tensors = [pre.prepare(images[i])[0] for i in hold_idx]
    # Augment a copy reduced to 2×S (not the full frame): the photometric ops are pointwise or
    # smooth, so the result after the final resize is the same at a fraction of the cost.
    reduced = {i: _reduce_for_augmentation(images[i], 2 * settings.image_size) for i in set(augment)}
    del images
    total = len(clean) + len(augment) + len(hold_tensors)
    with tqdm(total=total, desc="backbone features", disable=not settings.progress, unit="img") as bar:
        parts = [extract_levels(backbone, clean, settings.device, bar=bar)]
        del clean
        for start in range(0, len(augment), 64):  # prepared and featurised in chunks: bounded memory
            chunk = [pre.prepare(random_photometric(reduced[i], rng))[0] for i in augment[start : start + 64]]
            parts.append(extract_levels(backbone, chunk, settings.device, bar=bar))
        hold_raw = extract_levels(backbone, hold_tensors, settings.device, bar=bar, dtype=torch.float32)
    del reduced
    train_raw = [torch.cat([p[k] for p in parts]) for k in range(len(parts[0]))]
    del parts
    mean, std = _level_moments(train_raw)
    train_levels = standardise(train_raw, mean, std, dtype=torch.float16)
    del train_raw
    elapsed = time.perf_counter() - started
    return TrainingData(
        paths=paths,
        train_idx=train_idx,
        hold_idx=hold_idx,
        train_stats=train_stats,
        preprocessor=pre,
        feature_mean=mean,
        feature_std=std,
        train_levels=train_levels,
        n_clean=int(cached_train.size),
        hold_levels=standardise(hold_raw, mean, std),
        hold_images=torch.from_numpy(np.stack(hold_tensors)),
        timing={"features_s": round(elapsed, 2), "n_backbone_passes": total,
                "features_ms_per_image": round(1000 * elapsed / max(total, 1), 1)},
    )
