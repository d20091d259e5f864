"""Statistics of good images a bundle's scores are expressed in: AE term scales, per-term mean/std
for the default head's fusion, and image scores over a batch of model inputs."""

from __future__ import annotations

import numpy as np
import torch

from edge_inspector.training.mdaae import reconstruction_terms
from edge_inspector.training.scoring import TERMS, InspectionModel


@torch.no_grad()
def fit_term_statistics(model: InspectionModel, z_train_clean: torch.Tensor, z_hold: torch.Tensor, device: str) -> dict:
    """AE term scales (mean L2, mean 1−cos on good training features) and per-position term
    mean/std on held-out good features (for the default head's fusion)."""
    stats: dict = {}
    if model.mdaae is not None:
        l2s, coss = [], []
        for i in range(0, z_train_clean.shape[0], 16):
            z = z_train_clean[i : i + 16].to(device, torch.float32)
            l2, cos = reconstruction_terms(z, model.mdaae(z))
            l2s.append(l2.mean().item() * z.shape[0])
            coss.append(cos.mean().item() * z.shape[0])
        count = z_train_clean.shape[0]
        scales = torch.tensor([max(sum(l2s) / count, 1e-8), max(sum(coss) / count, 1e-8)])
        model.ae_term_scales.copy_(scales)
        stats["ae_term_scales"] = {"l2_mean": float(scales[0]), "cos_mean": float(scales[1])}
    if model.config.head == "default":
        names = model.available_terms()
        values: dict[str, list] = {n: [] for n in names}
        for i in range(0, z_hold.shape[0], 16):
            for name, grid in model.term_grids(z_hold[i : i + 16].to(device, torch.float32), names).items():
                values[name].append(grid.flatten().cpu())
        stats["term_mean"], stats["term_std"] = {}, {}
        for name in names:
            v = torch.cat(values[name])
            k = TERMS.index(name)
            model.term_mean[k] = v.mean()
            model.term_std[k] = v.std().clamp_min(1e-6)
            stats["term_mean"][name] = float(model.term_mean[k])
            stats["term_std"][name] = float(model.term_std[k])
    return stats


@torch.no_grad()
def raw_image_scores(model: InspectionModel, images: torch.Tensor, device: str, batch: int = 8) -> np.ndarray:
    out = []
    for i in range(0, images.shape[0], batch):
        out.append(model.raw_map(images[i : i + batch].to(device)).amax(dim=(1, 2, 3)).cpu())
    return torch.cat(out).numpy().astype(np.float64)


@torch.no_grad()
def normalised_scores(model: InspectionModel, images: torch.Tensor, device: str, batch: int = 8) -> np.ndarray:
    out = []
    for i in range(0, images.shape[0], batch):
        out.append(model(images[i : i + batch].to(device))[1].cpu())
    return torch.cat(out).numpy().astype(np.float64)
