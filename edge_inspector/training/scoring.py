"""The whole inspection graph — image in, anomaly map and image score out — as one torch module,
exported as is to ONNX so the runtime needs nothing but onnxruntime.

Heads (``model.json: head``):
  default  what a station runs: the paper's model, MDAAE + self-attention GAN. Two terms, each
           standardised by its mean/std on held-out good images and summed with the weights in
           ``fusion_weights``:
             ae   the MDAAE reconstruction discrepancy (mdaae.py)
             gan  the GAN discriminator's anomaly logit on the adapted MDAAE residual (sagan.py)
  aegan    the same model as ``default`` (the name the paper's model has always had)
  ae       the MDAAE term alone (ablation)
  gan      the GAN scorer alone (ablation; it still runs the MDAAE, whose residual it reads)
  knn      PatchCore-style nearest-neighbour distance to a coreset memory bank on the raw
           (mean-centred) backbone features: the reference, not run by stations

Autoencoder discrepancy per 32² grid cell: Σ_levels (1 − cos)/mean + ‖·‖²/mean, each level's term
upsampled from its own grid and divided by its mean on good training images (``ae_term_scales``).

Map → score: the fused grid map is smoothed on the coarse grid (σ = 1 cell: cheap, and it removes
single-cell noise before it is blown up 8×), upsampled bilinearly to S×S, then the affine score
normalisation fitted on held-out good images; the image score is the map's maximum. The map and
the score share units, so the runtime can threshold the map at the image threshold to find defect
regions, and an image with score ≥ threshold always has at least one map pixel ≥ threshold.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from edge_inspector.training.backbone import DEFAULT_TAPS, FeatureExtractor, Tap
from edge_inspector.training.knn import KnnScorer
from edge_inspector.training.mdaae import Mdaae, MdaaeConfig, reconstruction_terms
from edge_inspector.training.sagan import GanConfig, GanScorer

HEADS = ("default", "aegan", "ae", "gan", "knn")
AE_HEADS = ("default", "aegan", "ae", "gan")  # the GAN scorer reads the MDAAE's residual
GAN_HEADS = ("default", "aegan", "gan")
KNN_HEADS = ("knn",)
FUSED_HEADS = ("default", "aegan")
TERMS = ("ae", "gan")  # order of term_mean / term_std
DEFAULT_FUSION = {"ae": 0.7, "gan": 0.3}


@dataclass
class ModelConfig:
    head: str
    image_size: int
    taps: tuple[Tap, ...] = DEFAULT_TAPS
    mdaae: MdaaeConfig | None = None
    gan: GanConfig | None = None
    bank_size: int = 0
    # Gaussian smoothing of the grid map before upsampling, in grid cells (stride-8 cells)
    smoothing_sigma_cells: float = 0.5
    fusion_weights: dict = field(default_factory=lambda: dict(DEFAULT_FUSION))

    def as_dict(self) -> dict:
        return {
            "head": self.head,
            "image_size": self.image_size,
            "taps": [t.as_dict() for t in self.taps],
            "mdaae": self.mdaae.as_dict() if self.mdaae else None,
            "gan": self.gan.as_dict() if self.gan else None,
            "bank_size": self.bank_size,
            "smoothing_sigma_cells": self.smoothing_sigma_cells,
            "fusion_weights": dict(self.fusion_weights),
        }

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        mdaae, gan = d.get("mdaae"), d.get("gan")
        return cls(
            head=d["head"],
            image_size=int(d["image_size"]),
            taps=tuple(Tap(**t) for t in d["taps"]),
            mdaae=MdaaeConfig(**{**mdaae, "level_channels": tuple(mdaae["level_channels"])}) if mdaae else None,
            gan=GanConfig(**{**gan, "generator_norm": tuple(gan["generator_norm"])}) if gan else None,
            bank_size=int(d.get("bank_size", 0)),
            smoothing_sigma_cells=float(d.get("smoothing_sigma_cells", 0.5)),
            fusion_weights=dict(d.get("fusion_weights") or DEFAULT_FUSION),
        )


def gaussian_kernel_1d(sigma: float) -> torch.Tensor:
    radius = max(1, int(3.0 * sigma + 0.5))
    xs = torch.arange(-radius, radius + 1, dtype=torch.float32)
    kernel = torch.exp(-(xs**2) / (2.0 * sigma**2))
    return kernel / kernel.sum()


def upsample_to(grid: torch.Tensor, size) -> torch.Tensor:
    if grid.shape[-2:] == tuple(size):
        return grid
    return F.interpolate(grid, size=tuple(size), mode="bilinear", align_corners=False)


def concat_levels(levels: list[torch.Tensor]) -> torch.Tensor:
    """All levels on the finest grid, concatenated (N×ΣC×G×G): the GAN scorer's and kNN's input."""
    size = levels[0].shape[-2:]
    return torch.cat([upsample_to(z, size) for z in levels], dim=1)


def residual_map(levels: list[torch.Tensor], recon: list[torch.Tensor]) -> torch.Tensor:
    """The MDAAE's per-level residuals Z − Ẑ on the finest grid (N×ΣC×G×G): the GAN scorer's input."""
    return concat_levels([z - r for z, r in zip(levels, recon)])


class InspectionModel(nn.Module):
    """Image N×3×S×S (TF-normalised RGB from Preprocessor.prepare) → (map N×1×S×S, score N)."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        if config.head not in HEADS:
            raise ValueError(f"unknown head {config.head!r}")
        self.config = config
        self.backbone = FeatureExtractor(config.taps)
        channels = self.backbone.out_channels
        self.level_channels = [t.channels for t in config.taps]
        self.register_buffer("feature_mean", torch.zeros(1, channels, 1, 1))
        self.register_buffer("feature_std", torch.ones(1, channels, 1, 1))
        # Heads are attached empty here and filled by training or by load_state_dict from a checkpoint.
        self.mdaae = Mdaae(config.mdaae) if config.head in AE_HEADS and config.mdaae else None
        self.gan = GanScorer(config.gan) if config.head in GAN_HEADS and config.gan else None
        self.knn = KnnScorer(torch.zeros(config.bank_size, channels)) if config.head in KNN_HEADS and config.bank_size > 0 else None
        n_levels = len(config.taps)
        # Fitted on good images after training (assemble.py): per-level AE term means (cos then L2),
        # per-term standardisation for the fused heads, and the final score normalisation.
        self.register_buffer("ae_term_scales", torch.ones(2 * n_levels))
        self.register_buffer("term_mean", torch.zeros(len(TERMS)))
        self.register_buffer("term_std", torch.ones(len(TERMS)))
        self.register_buffer("score_offset", torch.zeros(()))
        self.register_buffer("score_scale", torch.ones(()))
        kernel = gaussian_kernel_1d(config.smoothing_sigma_cells) if config.smoothing_sigma_cells > 0 else torch.ones(1)
        self.register_buffer("smooth_x", kernel.view(1, 1, 1, -1))
        self.register_buffer("smooth_y", kernel.view(1, 1, -1, 1))
        self.smooth_radius = (kernel.numel() - 1) // 2

    # -- features -------------------------------------------------------------------------
    def standardised_levels(self, image: torch.Tensor) -> list[torch.Tensor]:
        levels = self.backbone.native_levels(image)
        means = torch.split(self.feature_mean, self.level_channels, dim=1)
        stds = torch.split(self.feature_std, self.level_channels, dim=1)
        return [(z - m) / s for z, m, s in zip(levels, means, stds)]

    # -- per-term grid maps (N×1×G×G on the finest grid) -------------------------------------
    def ae_term(self, levels: list[torch.Tensor], recon: list[torch.Tensor]) -> torch.Tensor:
        cos, l2 = reconstruction_terms(levels, recon)
        size = levels[0].shape[-2:]
        total = None
        for k, term in enumerate(cos + l2):
            part = upsample_to(term, size) / self.ae_term_scales[k]
            total = part if total is None else total + part
        return total

    def gan_term(self, levels: list[torch.Tensor], recon: list[torch.Tensor]) -> torch.Tensor:
        return self.gan(residual_map(levels, recon))

    def knn_term(self, levels: list[torch.Tensor]) -> torch.Tensor:
        return self.knn(concat_levels(levels) * self.feature_std)  # = f − μ: PatchCore's own units

    def term_grids(self, levels: list[torch.Tensor], names) -> dict[str, torch.Tensor]:
        recon = self.mdaae(levels)  # one MDAAE pass feeds both terms
        out: dict[str, torch.Tensor] = {}
        if "ae" in names:
            out["ae"] = self.ae_term(levels, recon)
        if "gan" in names:
            out["gan"] = self.gan_term(levels, recon)
        return out

    def raw_grid_map(self, levels: list[torch.Tensor]) -> torch.Tensor:
        head = self.config.head
        if head == "knn":
            return self.knn_term(levels)
        if head in ("ae", "gan"):
            return self.term_grids(levels, (head,))[head]
        # The weights are Python floats, so which terms are computed is fixed at export time.
        weights = {t: float(v) for t, v in self.config.fusion_weights.items() if float(v) != 0.0}
        grids = self.term_grids(levels, weights)
        total = None
        for name in TERMS:
            if name in weights:
                i = TERMS.index(name)
                part = weights[name] * (grids[name] - self.term_mean[i]) / self.term_std[i]
                total = part if total is None else total + part
        return total

    # -- grid → image-size map ------------------------------------------------------------
    def smooth_and_upsample(self, grid_map: torch.Tensor, size: int) -> torch.Tensor:
        r = self.smooth_radius
        if r > 0:  # on the coarse grid: 64× fewer pixels than smoothing the upsampled map
            grid_map = F.conv2d(F.pad(grid_map, (r, r, 0, 0), mode="replicate"), self.smooth_x)
            grid_map = F.conv2d(F.pad(grid_map, (0, 0, r, r), mode="replicate"), self.smooth_y)
        return F.interpolate(grid_map, size=(size, size), mode="bilinear", align_corners=False)

    def raw_map(self, image: torch.Tensor) -> torch.Tensor:
        """S×S map before the final score normalisation (used for calibration)."""
        return self.smooth_and_upsample(self.raw_grid_map(self.standardised_levels(image)), image.shape[-1])

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        anomaly_map = (self.raw_map(image) - self.score_offset) / self.score_scale
        score = anomaly_map.amax(dim=(1, 2, 3))
        return anomaly_map, score


def score_units_note() -> str:
    return (
        "map and score = (raw map - offset) / scale, offset/scale = mean/std of the raw image "
        "scores of held-out good training images: 0 is a typical good part, units are standard deviations"
    )


def finite_or(value: float, fallback: float) -> float:
    return value if math.isfinite(value) and value > 0 else fallback
