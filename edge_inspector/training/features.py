"""Training data: read ``train/good``, split the calibration hold-out, and cache standardised
backbone features of the clean images and their photometric copies (computed once per run and
shared by every head)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from tqdm import tqdm

from edge_inspector.datasets import check_readable, extra_good_paths, iter_images, train_good_paths
from edge_inspector.drift import image_stats
from edge_inspector.errors import InputError
from edge_inspector.imageio import read_image
from edge_inspector.logging import get_logger
from edge_inspector.preprocess import Preprocessor, aspect_input_shape, random_photometric, to_bgr_uint8
from edge_inspector.preprocess.quality import OVEREXPOSED_TRAINING_FRACTION, exposure_stats
from edge_inspector.training.settings import TrainSettings

log = get_logger(__name__)

# Standardised features are cached at half precision: half the memory of the run's largest
# allocation; consumers compute in float32 on the slices they read.
CACHE_DTYPE = torch.float16


def split_holdout(n: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded split of n images into (train indices, hold-out indices)."""
    if not 0.0 <= fraction < 1.0:
        raise InputError(f"--holdout {fraction} must be in [0, 1)")
    order = np.random.default_rng(seed).permutation(n)
    n_hold = int(round(fraction * n)) if n >= 2 else 0
    if fraction > 0 and n >= 2:
        n_hold = min(max(n_hold, 1), n - 1)
    return np.sort(order[n_hold:]), np.sort(order[:n_hold])


class ChannelStats:
    """Per-channel mean/std (BGR) of the training images, for the runtime's 'match_train' lighting;
    accumulated one image at a time."""

    def __init__(self) -> None:
        self.sums, self.sq, self.count = np.zeros(3), np.zeros(3), 0

    def add(self, bgr: np.ndarray) -> None:
        # From per-channel histograms of the uint8 levels: exact, and no float copy of the frame
        # (a float64 copy and its square are 16× the frame, transiently, for every image; np.bincount
        # would convert to int64).
        levels = np.arange(256, dtype=np.float64)
        for c in range(3):
            counts = cv2.calcHist([bgr], [c], None, [256], [0, 256]).ravel().astype(np.float64)
            self.sums[c] += counts @ levels
            self.sq[c] += counts @ levels**2
        self.count += bgr.shape[0] * bgr.shape[1]

    def result(self) -> dict:
        mean = self.sums / self.count
        std = np.sqrt(np.maximum(self.sq / self.count - mean**2, 0.0))
        return {"mean": [round(float(v), 4) for v in mean], "std": [round(float(v), 4) for v in std]}


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
    z_train: torch.Tensor  # standardised features (CACHE_DTYPE), clean training images first, then augmented copies
    z_clean: torch.Tensor  # the clean rows of z_train (a view)
    z_hold: torch.Tensor  # standardised features of the hold-out images
    hold_images: torch.Tensor  # hold-out model inputs (N×3×H×W)
    timing: dict


def model_input_shape(settings, frame_size) -> tuple[int, int]:
    """(height, width) of the model input: ``image_size`` square, or about ``image_size²`` pixels
    in the training frames' aspect ratio (``geometry: keep_aspect``, the default)."""
    if settings.geometry == "square":
        return settings.image_size, settings.image_size
    return aspect_input_shape(frame_size[0], frame_size[1], settings.image_size)


def _reduce_for_augmentation(image: np.ndarray, limit: int) -> np.ndarray:
    h, w = image.shape[:2]
    factor = limit / max(h, w)
    if factor >= 1.0:
        return image
    return cv2.resize(image, (max(1, round(w * factor)), max(1, round(h * factor))), interpolation=cv2.INTER_AREA)


def scan_images(groups: list[tuple[list[Path], str]]) -> tuple[list[list[Path]], list, dict]:
    """One pass over the files of each (paths, what) group, one decoded image at a time: (the
    readable paths per group, per-image drift statistics, train_stats with BGR channel and
    exposure figures over all groups)."""
    kept: list[list[Path]] = []
    per_image, channels, sizes = [], ChannelStats(), []

    def frames():
        for paths, what in groups:
            kept.append([])
            skipped: list = []
            for path, image in iter_images(paths, what, skipped):
                kept[-1].append(path)
                per_image.append(image_stats(image))
                bgr = to_bgr_uint8(image)
                channels.add(bgr)
                if len(kept) == 1:
                    sizes.append(bgr.shape[:2])
                yield bgr
            check_readable(len(kept[-1]), skipped, what)

    # Exposure figures of train/good for the station's image-quality gate (preprocess/quality.py).
    exposure = exposure_stats(frames())
    warn_if_overexposed(exposure)
    # The training frames' typical (height, width): a keep-aspect model input follows it.
    frame_size = [int(v) for v in np.median(np.asarray(sizes), axis=0)]
    return kept, per_image, {**channels.result(), "exposure": exposure, "frame_size": frame_size}


def warn_if_overexposed(exposure: dict) -> bool:
    """Log a one-line warning when the training frames are clipped over a large area."""
    share = float(exposure.get("saturated_fraction_mean", 0.0))
    if share <= OVEREXPOSED_TRAINING_FRACTION:
        return False
    log.warning(
        f"training images are overexposed: {100 * share:.0f} % of a typical frame is at or above grey level "
        f"{exposure.get('saturated_level')}; the model cannot see detail there and will alarm when less light "
        "un-clips it. Lower the camera's exposure or gain until under 1 % and retake the images",
        saturated_fraction_mean=round(share, 4),
    )
    return True


class FeatureWriter:
    """Backbone features of a stream of model inputs, written batch by batch into a preallocated
    cache, with running float64 per-channel sums for the standardisation."""

    def __init__(self, backbone, cache: torch.Tensor, device: str, bar=None, batch: int = 16) -> None:
        self.backbone, self.cache, self.device, self.bar, self.batch = backbone, cache, device, bar, batch
        self.pending: list[np.ndarray] = []
        self.filled = 0
        self.sums = torch.zeros(cache.shape[1], dtype=torch.float64)
        self.squares = torch.zeros(cache.shape[1], dtype=torch.float64)
        self.positions = 0

    def add(self, tensor: np.ndarray) -> None:
        self.pending.append(tensor)
        if len(self.pending) == self.batch:
            self.flush()

    @torch.no_grad()
    def flush(self) -> None:
        if not self.pending:
            return
        feats = self.backbone(torch.from_numpy(np.stack(self.pending)).to(self.device)).cpu()
        n = feats.shape[0]
        self.cache[self.filled : self.filled + n] = feats.to(self.cache.dtype)
        wide = feats.double()
        self.sums += wide.sum(dim=(0, 2, 3))
        self.squares += wide.pow(2).sum(dim=(0, 2, 3))
        self.positions += n * feats.shape[2] * feats.shape[3]
        self.filled += n
        self.pending.clear()
        if self.bar is not None:
            self.bar.update(n)

    def mean_std(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-channel mean and (unbiased) std of everything written, as 1×C×1×1 float32."""
        mean = self.sums / self.positions
        var = (self.squares - self.positions * mean**2) / max(self.positions - 1, 1)
        std = var.clamp_min(0.0).sqrt()
        shape = (1, -1, 1, 1)
        return mean.float().view(shape), std.float().clamp_min(1e-4).view(shape)


def augmentation_jobs(train_idx: np.ndarray, copies: int, limit: int, seed: int) -> list[tuple[int, int]]:
    """(copy, image index) of the photometric copies to cache: every training image ``copies``
    times, in copy-major order, unless that exceeds ``limit`` — then a seeded uniform subset of
    ``limit`` of them, order kept, so the cache stops growing with the training set."""
    jobs = [(c, int(i)) for c in range(copies) for i in train_idx]
    if len(jobs) <= limit:
        return jobs
    keep = np.sort(np.random.default_rng(seed).choice(len(jobs), size=max(limit, 0), replace=False))
    return [jobs[k] for k in keep]


def prepare_data(data_dir: Path, settings: TrainSettings, backbone) -> TrainingData:
    """Read train/good, split the hold-out, cache standardised backbone features.

    Memory is bounded by the cache, not by the image files: images are decoded one at a time (a
    first pass for statistics, then once per cached copy), their features go straight into a
    preallocated float16 cache of at most ``feature_cache_images`` maps (clean training images
    first, then photometric copies) and are standardised there in place."""
    started = time.perf_counter()
    groups = [(train_good_paths(data_dir), "training images")]
    if settings.extra_good:
        groups.append((extra_good_paths(settings.extra_good), "extra good images"))
    kept, stats, train_stats = scan_images(groups)
    paths, n_good = kept[0], len(kept[0])
    train_idx, hold_idx = split_holdout(n_good, settings.holdout, settings.seed)
    if hold_idx.size == 0:
        log.warning("no hold-out images: calibrating on training images (threshold will be optimistic)", n_images=n_good)
        hold_idx = train_idx
    n_extra = 0
    if settings.extra_good:
        # always trained on, never held out
        n_extra = len(kept[1])
        train_idx = np.concatenate([train_idx, np.arange(n_good, n_good + n_extra)])
        paths = paths + kept[1]
        log.info("extra good images", folder=settings.extra_good, n_images=n_extra)
    shape = model_input_shape(settings, train_stats["frame_size"])
    pre = Preprocessor(shape, lighting=settings.lighting, train_stats=train_stats)
    n_train = int(train_idx.size)
    jobs = augmentation_jobs(train_idx, settings.augmented_copies, max(settings.feature_cache_images - n_train, 0),
                             settings.seed + 5)
    log.info("training data", n_images=len(paths), n_train=n_train, n_holdout=int(hold_idx.size),
             input_shape=list(shape), augmented_copies=settings.augmented_copies, n_augmented=len(jobs))
    grid = (shape[0] // 8, shape[1] // 8)
    channels = backbone.out_channels
    cache = torch.empty((n_train + len(jobs), channels, *grid), dtype=CACHE_DTYPE)
    hold_feats = torch.empty((int(hold_idx.size), channels, *grid), dtype=torch.float32)
    hold_tensors = []
    aug_rng = np.random.default_rng(settings.seed + 2)
    total = cache.shape[0] + hold_feats.shape[0]
    with tqdm(total=total, desc="backbone features", disable=not settings.progress, unit="img") as bar:
        writer = FeatureWriter(backbone, cache, settings.device, bar=bar)
        for i in train_idx:
            writer.add(pre.prepare(read_image(paths[i]))[0])
        for _, i in jobs:
            # Augment a copy reduced to 2×S (not the full 900² frame): the photometric ops are
            # pointwise or smooth, so the result after the final resize is the same at a fraction
            # of the cost.
            reduced = _reduce_for_augmentation(read_image(paths[i]), 2 * max(shape))
            writer.add(pre.prepare(random_photometric(reduced, aug_rng))[0])
        writer.flush()
        hold_writer = FeatureWriter(backbone, hold_feats, settings.device, bar=bar)
        for i in hold_idx:
            hold_tensors.append(pre.prepare(read_image(paths[i]))[0])
            hold_writer.add(hold_tensors[-1])
        hold_writer.flush()
    mean, std = writer.mean_std()
    for k in range(0, cache.shape[0], 64):  # in place, in blocks: the cache is the run's largest allocation
        cache[k : k + 64] = ((cache[k : k + 64].float() - mean) / std).to(CACHE_DTYPE)
    hold_feats.sub_(mean).div_(std)
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
        z_train=cache,
        z_clean=cache[:n_train],
        z_hold=hold_feats,
        hold_images=torch.from_numpy(np.stack(hold_tensors)),
        timing={"features_s": round(elapsed, 2), "n_backbone_passes": total,
                "features_ms_per_image": round(1000 * elapsed / max(total, 1), 1)},
    )

