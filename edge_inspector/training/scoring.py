"""The whole inspection graph — image in, anomaly map and image score out — as one torch module,
exported as is to ONNX so the runtime needs nothing but onnxruntime.

Heads (``model.json: head``):
  ae       autoencoder discrepancy (MDAAE trained on reconstruction only)
  aegan    the paper's model: MDAAE trained with the self-attention GAN, same discrepancy map
  knn      PatchCore-style nearest-neighbour distance to a coreset memory bank, on the raw
           (mean-centred, not standardised) backbone features by default, as in PatchCore
  default  what a station runs: a weighted sum of terms, each put in the unit of its upper tail on
           held-out good images (term_stats.py: median and 99.9th percentile); the weights are chosen at training time on faint synthetic
           anomalies drawn on held-out good images (fusion.py). Terms (``TERMS``):
             ae   the AE-GAN discrepancy below
             knn  the kNN distance (as the knn head)
             sub  the kNN distance inside the top-d principal subspace of the good patch features
                  (``subspace_dim``): drops the low-variance directions, where noise lives on
                  some parts; also the cheapest term (a d-dimensional matmul instead of C)
             res  the energy outside that subspace, ‖x‖² − ‖Vᵀx‖² — a linear autoencoder's
                  reconstruction error: faint defects on textured parts live there
             gan  the SA-GAN critic's feature residual between Z and the AE's reconstruction Ẑ
                  (sagan.Critic; the discriminator's scoring part, spectral norm folded)
           Only the terms with a non-zero weight are in the exported graph.

Autoencoder discrepancy per grid cell: ``0.5·L2/mean(L2) + 0.5·(1−cos)/mean(1−cos)`` on the
standardised features, each term divided by its mean on good training images (the prototype's
best image-level definition: plain ``1 − cos`` was worst on textures, L2 alone best at pixel level,
the balanced sum best overall).

Map → score: separable Gaussian smoothing on the stride-8 grid (σ = 4 px at 256², scaled with
√(H·W), i.e. half a grid cell) with reflect padding, bilinear upsampling to the input's H×W (bundles
from before ``smooth_on_grid`` upsampled first and smoothed the H×W map), then the affine score normalisation fitted
on held-out good images; the image score is the map's maximum. The map and the score share units,
so the runtime can threshold the map at the image threshold to find defect regions, and an image
with score ≥ threshold always has at least one map pixel ≥ threshold.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from edge_inspector.preprocess.core import input_shape
from edge_inspector.training.backbone import DEFAULT_TAPS, FeatureExtractor, Tap
from edge_inspector.training.knn import KnnScorer
from edge_inspector.training.mdaae import Mdaae, MdaaeConfig, reconstruction_terms
from edge_inspector.training.sagan import Critic

HEADS = ("default", "aegan", "ae", "knn")
GRID_STRIDE = 8  # input pixels per grid cell (the backbone's finest tap)
AE_HEADS = ("default", "aegan", "ae")
KNN_HEADS = ("default", "knn")
GAN_HEADS = ("default", "aegan")
KNN_FEATURES = ("raw", "standardised")
TERMS = ("ae", "knn", "sub", "res", "gan")  # order of term_mean / term_std


@dataclass
class ModelConfig:
    head: str
    image_size: int  # the size budget S (the input side of square models)
    taps: tuple[Tap, ...] = DEFAULT_TAPS
    mdaae: MdaaeConfig | None = None
    bank_size: int = 0
    smoothing_sigma_px: float | None = None  # None: 4 px at 256², scaled with the image size
    fusion_weights: dict = field(default_factory=lambda: {"ae": 0.5, "knn": 0.5})
    # kNN feature space: "raw" = backbone features minus the mean (PatchCore's space; the bank holds
    # (f − μ) and the query is z·σ), "standardised" = the AE's per-channel standardised features.
    knn_features: str = "raw"
    # default head: dimension of the principal subspace behind the "sub" and "res" terms (0 = none)
    subspace_dim: int = 0
    # model input (height, width); None = image_size × image_size (square, bundles before the option)
    input_shape: tuple[int, int] | None = None
    # entries of the "sub" term's bank (a coreset of the projected memory bank); 0 = bank_size
    # (bundles from before the option projected the whole bank)
    subspace_bank_size: int = 0
    # width of the GAN critic (the discriminator's scoring part, sagan.Critic) behind the default
    # head's "gan" term; 0 = no critic in the model
    critic_width: int = 0
    # Smooth the grid map before upsampling it (σ in grid cells = σ_px / GRID_STRIDE) instead of the
    # upsampled map: on 1/64 of the values, nearly the same map (peaks a few pixels apart; a
    # one-cell defect is flattened less). Bundles from before the option smoothed the upsampled
    # map (False).
    smooth_on_grid: bool = True

    @property
    def shape(self) -> tuple[int, int]:
        return input_shape(self.input_shape or self.image_size)

    @property
    def sigma(self) -> float:
        h, w = self.shape
        return self.smoothing_sigma_px if self.smoothing_sigma_px else 4.0 * math.sqrt(h * w) / 256.0

    def as_dict(self) -> dict:
        return {
            "head": self.head,
            "image_size": self.image_size,
            "taps": [t.as_dict() for t in self.taps],
            "mdaae": self.mdaae.as_dict() if self.mdaae else None,
            "bank_size": self.bank_size,
            "smoothing_sigma_px": self.smoothing_sigma_px,
            "fusion_weights": dict(self.fusion_weights),
            "knn_features": self.knn_features,
            "subspace_dim": self.subspace_dim,
            "subspace_bank_size": self.subspace_bank_size,
            "input_shape": list(self.shape),
            "critic_width": self.critic_width,
            "smooth_on_grid": self.smooth_on_grid,
        }

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        mdaae = d.get("mdaae")
        return cls(
            head=d["head"],
            image_size=int(d["image_size"]),
            taps=tuple(Tap(**t) for t in d["taps"]),
            mdaae=MdaaeConfig(**{**mdaae, "level_channels": tuple(mdaae["level_channels"])}) if mdaae else None,
            bank_size=int(d.get("bank_size", 0)),
            smoothing_sigma_px=d.get("smoothing_sigma_px"),
            fusion_weights=dict(d.get("fusion_weights") or {"ae": 0.5, "knn": 0.5}),
            knn_features=d.get("knn_features", "standardised"),  # bundles from before the option
            subspace_dim=int(d.get("subspace_dim", 0)),
            subspace_bank_size=int(d.get("subspace_bank_size", 0)),
            input_shape=tuple(int(v) for v in d["input_shape"]) if d.get("input_shape") else None,
            critic_width=int(d.get("critic_width", 0)),
            smooth_on_grid=bool(d.get("smooth_on_grid", False)),
        )


def gaussian_kernel_1d(sigma: float) -> torch.Tensor:
    radius = max(1, int(3.0 * sigma + 0.5))
    xs = torch.arange(-radius, radius + 1, dtype=torch.float32)
    kernel = torch.exp(-(xs**2) / (2.0 * sigma**2))
    return kernel / kernel.sum()


class InspectionModel(nn.Module):
    """Image N×3×H×W (TF-normalised RGB from Preprocessor.prepare) → (map N×1×H×W, score N)."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        if config.head not in HEADS:
            raise ValueError(f"unknown head {config.head!r}")
        if config.knn_features not in KNN_FEATURES:
            raise ValueError(f"unknown kNN feature space {config.knn_features!r}")
        self.config = config
        self.backbone = FeatureExtractor(config.taps)
        channels = self.backbone.out_channels
        self.register_buffer("feature_mean", torch.zeros(1, channels, 1, 1))
        self.register_buffer("feature_std", torch.ones(1, channels, 1, 1))
        # Heads are attached empty here and filled by training or by load_state_dict from a checkpoint.
        self.mdaae = Mdaae(config.mdaae) if config.head in AE_HEADS and config.mdaae else None
        self.knn = (
            KnnScorer(torch.zeros(config.bank_size, channels)) if config.head in KNN_HEADS and config.bank_size > 0 else None
        )
        self.critic = (Critic(channels, config.critic_width)
                       if config.head == "default" and self.mdaae is not None and config.critic_width > 0 else None)
        # Fitted on good images after training (term_stats.py): AE term scales, per-term
        # standardisation for the default head, and the final score normalisation.
        self.register_buffer("ae_term_scales", torch.ones(2))  # mean L2, mean (1 − cos) on good images
        # per term (TERMS order) on held-out good positions: location and scale (median and tail
        # since term_stats.TERM_SCALING; mean and std in bundles from before, read the same way)
        self.register_buffer("term_mean", torch.zeros(len(TERMS)))
        self.register_buffer("term_std", torch.ones(len(TERMS)))
        dim = config.subspace_dim if config.head == "default" else 0
        # Principal subspace of the good patch features (in the kNN feature space), C×d, and the
        # memory bank projected onto it.
        self.register_buffer("subspace", torch.zeros(channels, dim) if dim else None)
        sub_size = config.subspace_bank_size or config.bank_size
        self.knn_sub = KnnScorer(torch.zeros(sub_size, dim)) if dim and config.bank_size > 0 else None
        self.register_buffer("score_offset", torch.zeros(()))
        self.register_buffer("score_scale", torch.ones(()))
        kernel = gaussian_kernel_1d(config.sigma / GRID_STRIDE if config.smooth_on_grid else config.sigma)
        self.register_buffer("smooth_x", kernel.view(1, 1, 1, -1))
        self.register_buffer("smooth_y", kernel.view(1, 1, -1, 1))
        self.smooth_radius = (kernel.numel() - 1) // 2
        h, w = config.shape
        smoothed = (h // GRID_STRIDE, w // GRID_STRIDE) if config.smooth_on_grid else (h, w)
        # reflect padding needs a map wider than the radius; a tiny grid (tests' 64² inputs) replicates
        self.smooth_padding = "reflect" if min(smoothed) > self.smooth_radius else "replicate"
        # Unit weights of the 1×1 convolution that sums a map over its channels (sum_channels);
        # not persistent: it is not learnt, and checkpoints from before it load unchanged.
        self.register_buffer("channel_ones", torch.ones(1, channels, 1, 1), persistent=False)

    # -- features -------------------------------------------------------------------------
    def standardised_features(self, image: torch.Tensor) -> torch.Tensor:
        return (self.backbone(image) - self.feature_mean) / self.feature_std

    # -- per-term grid maps ---------------------------------------------------------------
    def sum_channels(self, x: torch.Tensor) -> torch.Tensor:
        """N×C×G×G → N×1×G×G channel sum, as a 1×1 convolution (see reconstruction_terms)."""
        return F.conv2d(x, self.channel_ones)

    def ae_term(self, z: torch.Tensor, z_hat: torch.Tensor | None = None) -> torch.Tensor:
        l2, cos = reconstruction_terms(z, self.mdaae(z) if z_hat is None else z_hat, self.sum_channels)
        return 0.5 * l2 / self.ae_term_scales[0] + 0.5 * cos / self.ae_term_scales[1]

    def knn_space(self, z: torch.Tensor) -> torch.Tensor:
        if self.config.knn_features == "raw":
            return z * self.feature_std  # = f − μ: distances in the backbone's own units
        return z

    def knn_term(self, z: torch.Tensor) -> torch.Tensor:
        return self.knn(self.knn_space(z))

    def available_terms(self) -> tuple[str, ...]:
        have = {"ae": self.mdaae is not None, "knn": self.knn is not None,
                "sub": self.knn_sub is not None, "res": self.subspace is not None, "gan": self.critic is not None}
        return tuple(t for t in TERMS if have[t])

    def term_grids(self, z: torch.Tensor, names) -> dict[str, torch.Tensor]:
        """The requested terms' grid maps N×1×G×G (unstandardised)."""
        out: dict[str, torch.Tensor] = {}
        if "ae" in names or "gan" in names:
            z_hat = self.mdaae(z)  # one autoencoder pass serves both terms
            if "ae" in names:
                out["ae"] = self.ae_term(z, z_hat)
            if "gan" in names:
                out["gan"] = self.critic.discrepancy(z, z_hat)
        if "knn" in names:
            out["knn"] = self.knn_term(z)
        if "sub" in names or "res" in names:
            x = self.knn_space(z)
            # A 1×1 convolution: the projection onto the subspace exports as one plain Conv.
            q = F.conv2d(x, self.subspace.t()[:, :, None, None])
            if "sub" in names:
                out["sub"] = self.knn_sub(q)
            if "res" in names:
                energy = x.pow(2).sum(dim=1, keepdim=True) - q.pow(2).sum(dim=1, keepdim=True)
                out["res"] = energy.clamp_min(0.0).sqrt()
        return out

    def standardised_term(self, name: str, grid: torch.Tensor) -> torch.Tensor:
        i = TERMS.index(name)
        return (grid - self.term_mean[i]) / self.term_std[i]

    def raw_grid_map(self, z: torch.Tensor) -> torch.Tensor:
        head = self.config.head
        if head in ("ae", "aegan"):
            return self.ae_term(z)
        if head == "knn":
            return self.knn_term(z)
        # The weights are Python floats, so which terms are computed is fixed at export time: a
        # term the good-only selection dropped is not in the ONNX graph at all.
        weights = {t: float(v) for t, v in self.config.fusion_weights.items() if float(v) != 0.0}
        grids = self.term_grids(z, weights)
        total = None
        for name in TERMS:
            if name in weights:
                part = weights[name] * self.standardised_term(name, grids[name])
                total = part if total is None else total + part
        return total

    # -- grid → image-size map ------------------------------------------------------------
    def upsample_and_smooth(self, grid_map: torch.Tensor, size: int | tuple[int, int]) -> torch.Tensor:
        """Grid map → ``size`` map (a side, or (height, width)), Gaussian-smoothed: on the grid
        before the bilinear upsampling (``smooth_on_grid``) or on the upsampled map."""
        if self.config.smooth_on_grid:
            return F.interpolate(self.smooth(grid_map), size=input_shape(size), mode="bilinear", align_corners=False)
        return self.smooth(F.interpolate(grid_map, size=input_shape(size), mode="bilinear", align_corners=False))

    def smooth(self, m: torch.Tensor) -> torch.Tensor:
        """Separable Gaussian, padded as ``smooth_padding``."""
        r, mode = self.smooth_radius, self.smooth_padding
        m = F.conv2d(F.pad(m, (r, r, 0, 0), mode=mode), self.smooth_x)
        return F.conv2d(F.pad(m, (0, 0, r, r), mode=mode), self.smooth_y)

    def raw_map(self, image: torch.Tensor) -> torch.Tensor:
        """Smoothed H×W map before the final score normalisation (used for calibration)."""
        z = self.standardised_features(image)
        return self.upsample_and_smooth(self.raw_grid_map(z), tuple(image.shape[-2:]))

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        anomaly_map = (self.raw_map(image) - self.score_offset) / self.score_scale
        score = anomaly_map.amax(dim=(1, 2, 3))
        return anomaly_map, score


def score_units_note() -> str:
    return (
        "map and score = (smoothed raw map - offset) / scale, offset/scale = mean/std of the raw image "
        "scores of held-out good training images: 0 is a typical good part, units are standard deviations"
    )


def finite_or(value: float, fallback: float) -> float:
    return value if math.isfinite(value) and value > 0 else fallback
