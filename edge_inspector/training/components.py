"""Trained parts a head is assembled from: the MDAAE (with or without the GAN), the GAN's critic,
and the kNN memory bank with its principal subspace."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import torch
from tqdm import tqdm

from edge_inspector.training.ae_loop import train_autoencoder
from edge_inspector.training.backbone import DEFAULT_TAPS
from edge_inspector.training.features import TrainingData
from edge_inspector.training.knn import KnnScorer, greedy_coreset
from edge_inspector.training.mdaae import Mdaae, MdaaeConfig
from edge_inspector.training.sagan import Critic
from edge_inspector.training.settings import TrainSettings


@dataclass
class Components:
    """Trained parts a head is assembled from."""

    ae: Optional[Mdaae] = None
    ae_config: Optional[MdaaeConfig] = None
    used_gan: bool = False
    critic: Optional[Critic] = None  # the trained discriminator's scoring part (GAN runs only)
    bank: Optional[torch.Tensor] = None
    subspace: Optional[torch.Tensor] = None  # C×d principal directions of the bank's feature space
    bank_source: Optional[torch.Tensor] = None  # row of TrainingData.z_clean each bank entry was drawn from
    sub_index: Optional[torch.Tensor] = None  # bank rows kept, projected, as the subspace term's bank
    curve: list = field(default_factory=list)
    timing: dict = field(default_factory=dict)


def fit_components(data: TrainingData, settings: TrainSettings, train_ae: bool, use_gan: bool, build_bank: bool) -> Components:
    """Train the MDAAE (with or without the GAN) and/or build the kNN memory bank."""
    parts = Components()
    if train_ae:
        torch.manual_seed(settings.seed)
        parts.ae_config = MdaaeConfig(level_channels=tuple(t.channels for t in DEFAULT_TAPS))
        t0 = time.perf_counter()
        ae, curve, ae_timing, critic = train_autoencoder(
            data.z_train, data.z_hold, parts.ae_config, settings, settings.resolved_iterations(), use_gan, settings.device
        )
        parts.ae, parts.curve, parts.used_gan, parts.critic = ae.cpu(), curve, use_gan, critic
        parts.timing.update(ae_timing)
        parts.timing["autoencoder_s"] = round(time.perf_counter() - t0, 2)
    if build_bank:
        t0 = time.perf_counter()
        # Candidates are the clean training patches only. Adding the photometrically augmented
        # copies (to cover other lighting) was measured to hurt badly — tire pixel AUROC 0.901 vs
        # 0.967, image 0.637 vs 0.722: greedy k-center selection spends the bank on the augmented
        # outliers and leaves the normal appearance sparsely covered.
        scale = data.feature_std if settings.knn_features == "raw" else None
        patches, rows = bank_candidates(data.z_clean, scale, settings.coreset_max_patches, settings.seed + 6)
        n_select = max(1, int(round(settings.coreset_fraction * patches.shape[0])))
        bar = tqdm(total=n_select, desc="coreset", disable=not settings.progress, unit="pt")
        chosen = greedy_coreset(patches, n_select, seed=settings.seed + 3, progress=lambda i, n: bar.update(1))
        bar.close()
        parts.bank = patches[chosen].clone()
        parts.bank_source = rows[chosen].clone()  # the clean training image behind each entry (crossfit.py)
        n_added = 0
        if data.n_extra_good:
            # Images an operator marked "good — false alarm" (--extra-good) must pass afterwards: a
            # 1 % coreset covers a single unusual image only as loosely as the sparsest region of
            # the training set, so its own unusual patches keep scoring near the coverage radius.
            first_extra = data.z_clean.shape[0] - data.n_extra_good
            extra, extra_rows = bank_candidates(data.z_clean[first_extra:], scale, settings.coreset_max_patches,
                                                settings.seed + 8)
            reach = typical_bank_distance(patches[rows < first_extra], parts.bank, settings.seed + 9)
            added = cover_patches(extra, parts.bank, reach)
            n_added = int(added.numel())
            parts.bank = torch.cat([parts.bank, extra[added]])
            parts.bank_source = torch.cat([parts.bank_source, extra_rows[added] + first_extra])
            parts.timing["extra_good_bank_entries"] = n_added
        if settings.head == "default":  # only the default head has the subspace terms
            parts.subspace = principal_subspace(patches, settings.subspace_dim)
            if parts.subspace is not None:
                parts.sub_index = subspace_bank_index(parts.bank @ parts.subspace, settings.subspace_bank_size,
                                                      settings.seed + 7, keep_last=n_added)
        parts.timing["coreset_s"] = round(time.perf_counter() - t0, 2)
        parts.timing["bank_size"] = int(parts.bank.shape[0])
        parts.timing["coreset_candidates"] = int(patches.shape[0])
    return parts


def bank_candidates(z: torch.Tensor, scale: Optional[torch.Tensor], limit: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Patch features (M×C, float32) of the cached maps ``z`` (N×C×G×G), times ``scale`` when
    given (raw features). Beyond ``limit`` patches, a seeded uniform sample of ``limit`` of them
    (kept in image order), gathered a block of images at a time: the coreset's memory and time
    and the bank size (``coreset_fraction`` of the candidates) stop growing with the training set.
    Returns (patches, the row of ``z`` each patch comes from)."""
    n, c, h, w = z.shape
    total = n * h * w
    keep = None if total <= limit else torch.from_numpy(np.sort(np.random.default_rng(seed).choice(total, limit, replace=False)))
    blocks, rows = [], []
    for start in range(0, n, 64):
        block = z[start : start + 64].float()
        if scale is not None:
            block = block * scale
        block = block.permute(0, 2, 3, 1).reshape(-1, c)
        first = start * h * w
        if keep is not None:
            chosen = keep[(keep >= first) & (keep < first + block.shape[0])] - first
            block = block[chosen]
        else:
            chosen = torch.arange(block.shape[0])
        blocks.append(block)
        rows.append((chosen + first) // (h * w))
    return torch.cat(blocks), torch.cat(rows)


def subspace_bank_index(projected_bank: torch.Tensor, size: int, seed: int, keep_last: int = 0) -> torch.Tensor:
    """Rows of the memory bank the subspace term keeps: the last ``keep_last`` rows (the entries
    that cover operator-marked good images) and a k-center coreset of the others up to ``size`` in
    all, so the kept ones still cover the rest; all rows when ``size`` is 0 or at least M. In bank
    order (sorted), so a bundle's bank is deterministic in layout too."""
    m = projected_bank.shape[0]
    if size <= 0 or size >= m:
        return torch.arange(m)
    first_kept = m - keep_last
    n_coreset = max(size - keep_last, 1)
    chosen = greedy_coreset(projected_bank[:first_kept], n_coreset, seed=seed)
    return torch.sort(torch.cat([chosen, torch.arange(first_kept, m)])).values


def _nearest_distance(points: torch.Tensor, bank: torch.Tensor) -> torch.Tensor:
    """Euclidean distance of each row of ``points`` (M×C) to its nearest row of ``bank``: the
    model's own kNN scorer, on blocks of rows laid out as a C×rows×1 map."""
    scorer = KnnScorer(bank)
    return torch.cat([scorer(block.t()[None, :, :, None]).flatten() for block in points.split(4096)])


def typical_bank_distance(patches: torch.Tensor, bank: torch.Tensor, seed: int, sample: int = 4096) -> float:
    """Median distance of the training patches (a seeded sample of them) to the memory bank."""
    if patches.shape[0] > sample:
        patches = patches[torch.randperm(patches.shape[0], generator=torch.Generator().manual_seed(seed))[:sample]]
    return float(_nearest_distance(patches.float(), bank.float()).median())


def cover_patches(patches: torch.Tensor, bank: torch.Tensor, reach: float) -> torch.Tensor:
    """Indices of ``patches`` to add to ``bank`` so that every patch is within ``reach`` of it:
    farthest-first, the same greedy k-center rule as the coreset, stopped at the reach instead of
    at a count."""
    distance = _nearest_distance(patches.float(), bank.float())
    added: list[int] = []
    while distance.numel() and float(distance.max()) > reach:
        pick = int(distance.argmax())
        added.append(pick)
        distance = torch.minimum(distance, torch.linalg.vector_norm(patches.float() - patches[pick].float(), dim=1))
    return torch.tensor(added, dtype=torch.long)


def principal_subspace(patches: torch.Tensor, dim: int) -> Optional[torch.Tensor]:
    """The top-``dim`` eigenvectors (C×dim) of the second-moment matrix of the patch features
    (mean-centred already). Exact and deterministic: a C×C eigendecomposition."""
    channels = patches.shape[1]
    if dim <= 0 or dim >= channels:
        return None
    second = torch.zeros(channels, channels, dtype=torch.float64)
    for i in range(0, patches.shape[0], 65536):
        block = patches[i : i + 65536].float()
        second += (block.t() @ block).double()
    _, vectors = torch.linalg.eigh(second / patches.shape[0])
    return vectors[:, -dim:].flip(1).float().contiguous()  # largest first
