"""Statistics of good images a bundle's scores are expressed in: AE term scales, per-term location
and scale for the default head's fusion, and image scores over a batch of model inputs.

Fusion scaling (``TERM_SCALING``): each term is expressed as (term − median) / (q − median) over
all positions of the held-out good images, q its ``TAIL_QUANTILE`` quantile, so 1 is the height a
term reaches at the top of good parts. The image score is the map's maximum, so what a weight
must weigh is how far each term rises above good parts' peaks: a term with a heavy tail on good
parts (a network's residual) counts for less at the same weight, a light-tailed memory term for
more. Mean and standard deviation, used before (``mean_std``), measure the bulk and let a heavy
tail through (docs/model.md, "Heads"). The location and scale fill the ``term_mean`` and
``term_std`` buffers, so the graph and bundles written before are unchanged."""

from __future__ import annotations

import numpy as np
import torch

from edge_inspector.training.mdaae import reconstruction_terms
from edge_inspector.training.scoring import TERMS, InspectionModel

TERM_SCALING = "median_tail"
TAIL_QUANTILE = 0.999


def location_scale(values: torch.Tensor, rule: str = TERM_SCALING) -> tuple[torch.Tensor, torch.Tensor]:
    """(location, scale) of a term's values over good positions: median and distance to the
    TAIL_QUANTILE quantile (``median_tail``), or mean and standard deviation (``mean_std``, the
    rule of bundles from before). The scale is floored so a flat term cannot blow up the sum."""
    v = values.flatten().double()
    if rule == "median_tail":
        median = v.median()
        return median, (torch.quantile(v, TAIL_QUANTILE) - median).clamp_min(1e-6)
    if rule == "mean_std":
        return v.mean(), v.std().clamp_min(1e-6)
    raise ValueError(f"unknown term scaling {rule!r} (median_tail or mean_std)")


@torch.no_grad()
def fit_term_statistics(model: InspectionModel, z_train_clean: torch.Tensor, z_hold: torch.Tensor, device: str) -> dict:
    """AE term scales (mean L2, mean 1−cos on good training features) and each term's location
    and scale over the positions of the held-out good features (TERM_SCALING, for the default
    head's fusion)."""
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
        stats["term_scaling"] = {"rule": TERM_SCALING, "tail_quantile": TAIL_QUANTILE}
        stats["term_mean"], stats["term_std"] = {}, {}  # location, scale (names kept for readers)
        for name in names:
            k = TERMS.index(name)
            location, scale = location_scale(torch.cat(values[name]))
            model.term_mean[k], model.term_std[k] = location.float(), scale.float()
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
