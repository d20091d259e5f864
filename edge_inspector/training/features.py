"""Training data: read ``train/good``, split the calibration hold-out, and cache standardised
backbone features of the clean images and their photometric copies (computed once per run and
shared by every head)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from edge_inspector.datasets import extra_good_paths, load_images, load_train_good
from edge_inspector.drift import image_stats
from edge_inspector.errors import InputError
from edge_inspector.logging import get_logger
from edge_inspector.preprocess import Preprocessor, random_photometric, to_bgr_uint8
from edge_inspector.preprocess.quality import exposure_stats
from edge_inspector.training.settings import TrainSettings

log = get_logger(__name__)


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


@torch.no_grad()
def extract(backbone, tensors: list[np.ndarray], device: str, batch: int = 16, bar=None) -> torch.Tensor:
    outs = []
    for i in range(0, len(tensors), batch):
        x = torch.from_numpy(np.stack(tensors[i : i + batch])).to(device)
        outs.append(backbone(x).cpu())
        if bar is not None:
            bar.update(x.shape[0])
    return torch.cat(outs)


@dataclass
class TrainingData:
    """Everything later stages need from the dataset, computed once (shared across heads)."""

    paths: list[Path]
    train_idx: np.ndarray
    hold_idx: np.ndarray
    train_stats: dict
    image_stats: list  # (mean luma, contrast) per image: the drift monitor's reference
    n_extra_good: int
    preprocessor: Preprocessor
    feature_mean: torch.Tensor
    feature_std: torch.Tensor
    z_train: torch.Tensor  # standardised features, clean + augmented copies
    z_clean: torch.Tensor  # standardised features of the clean training images
    z_hold: torch.Tensor  # standardised features of the hold-out images
    hold_images: torch.Tensor  # hold-out model inputs (N×3×S×S)
    timing: dict


def _reduce_for_augmentation(image: np.ndarray, limit: int) -> np.ndarray:
    import cv2

    h, w = image.shape[:2]
    factor = limit / max(h, w)
    if factor >= 1.0:
        return image
    return cv2.resize(image, (max(1, round(w * factor)), max(1, round(h * factor))), interpolation=cv2.INTER_AREA)


def prepare_data(data_dir: Path, settings: TrainSettings, backbone) -> TrainingData:
    """Read train/good, split the hold-out, cache standardised backbone features."""
    started = time.perf_counter()
    paths, images = load_train_good(data_dir)
    train_idx, hold_idx = split_holdout(len(images), settings.holdout, settings.seed)
    if hold_idx.size == 0:
        log.warning("no hold-out images: calibrating on training images (threshold will be optimistic)", n_images=len(images))
        hold_idx = train_idx
    n_extra = 0
    if settings.extra_good:
        extra_paths, extra_images = load_images(extra_good_paths(settings.extra_good), "extra good images")
        n_extra = len(extra_images)
        train_idx = np.concatenate([train_idx, np.arange(len(images), len(images) + n_extra)])
        paths, images = paths + extra_paths, images + extra_images
        log.info("extra good images", folder=settings.extra_good, n_images=n_extra)
    stats = [image_stats(img) for img in images]
    train_stats = bgr_channel_stats(images)
    # Exposure figures of train/good for the station's image-quality gate (preprocess/quality.py).
    train_stats["exposure"] = exposure_stats(to_bgr_uint8(img) for img in images)
    pre = Preprocessor(settings.image_size, lighting=settings.lighting, train_stats=train_stats)
    log.info("training data", n_images=len(images), n_train=int(train_idx.size), n_holdout=int(hold_idx.size),
             image_size=settings.image_size, augmented_copies=settings.augmented_copies)
    aug_rng = np.random.default_rng(settings.seed + 2)
    clean = [pre.prepare(images[i])[0] for i in train_idx]
    # Augment a copy reduced to 2×S (not the full 900² frame): the photometric ops are pointwise
    # or smooth, so the result after the final resize is the same at a fraction of the cost.
    reduced = {int(i): _reduce_for_augmentation(images[i], 2 * settings.image_size) for i in train_idx}
    augmented = [
        pre.prepare(random_photometric(reduced[int(i)], aug_rng))[0]
        for _ in range(settings.augmented_copies)
        for i in train_idx
    ]
    del reduced
    hold_tensors = [pre.prepare(images[i])[0] for i in hold_idx]
    del images
    total = len(clean) + len(augmented) + len(hold_tensors)
    with tqdm(total=total, desc="backbone features", disable=not settings.progress, unit="img") as bar:
        feats_clean = extract(backbone, clean, settings.device, bar=bar)
        feats_aug = extract(backbone, augmented, settings.device, bar=bar) if augmented else feats_clean[:0]
        feats_hold = extract(backbone, hold_tensors, settings.device, bar=bar)
    all_train = torch.cat([feats_clean, feats_aug])
    del feats_aug
    mean = all_train.mean(dim=(0, 2, 3), keepdim=True)
    std = all_train.std(dim=(0, 2, 3), keepdim=True).clamp_min(1e-4)
    all_train.sub_(mean).div_(std)  # in place: the cache is the largest allocation of a run
    elapsed = time.perf_counter() - started
    return TrainingData(
        paths=paths,
        train_idx=train_idx,
        hold_idx=hold_idx,
        train_stats=train_stats,
        image_stats=stats,
        n_extra_good=n_extra,
        preprocessor=pre,
        feature_mean=mean,
        feature_std=std,
        z_train=all_train,
        z_clean=(feats_clean - mean) / std,
        z_hold=(feats_hold - mean) / std,
        hold_images=torch.from_numpy(np.stack(hold_tensors)),
        timing={"features_s": round(elapsed, 2), "n_backbone_passes": total,
                "features_ms_per_image": round(1000 * elapsed / max(total, 1), 1)},
    )
