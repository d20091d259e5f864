"""Self-attention GAN whose discriminator is an anomaly scorer at inference (SimpleNet-shaped).

Parts:
- ``FeatureAdaptor``: a 1×1 convolution that maps the standardised multi-level features (all levels
  on the 32² grid, 344 channels) to a compact space (``adapted_channels``) where the discriminator
  works; trained with it (SimpleNet's feature adaptor).
- ``Discriminator``: per-position MLP (1×1 convs) with a SAGAN self-attention block on the 4×-pooled
  grid whose context is added back at full resolution, so a position is judged against the whole
  part, not only its own descriptor. Output: an *anomaly* logit per position. **This is the scorer
  the station runs** (the GAN term of the default head).
- ``PerturbationGenerator``: produces pseudo-anomalous inputs x + δ, δ from a small 1×1 network of
  (input, noise), rescaled to a norm drawn in [lo, hi]·σ√C. The fixed norm band
  keeps it from collapsing onto normal features (δ = 0) or drifting to trivial, far-away ones.
  It is trained with the **non-saturating** loss −log(1 − D_anomalous(a + δ)), i.e. to make D call
  its features normal: it hunts for the directions D is least sure about, the hard negatives.
- Gaussian perturbation x + N(0, σ²) (SimpleNet's generator) stays as the base negative: it covers
  every direction, the generator sharpens the boundary where it matters.

Negatives are drawn inside random smooth blobs of the grid (5–40 % of positions), the rest of the
map stays real: defects are local, and the self-attention context then has to tell a region from
its surroundings instead of reading a global shift.

Convergence is tracked with the Fréchet distance between the generator's (adapted) inputs and the
real adapted inputs of the held-out good images (``FrechetReference``): it falls while the generator
moves from its initial random directions towards the normal distribution's boundary and flattens when
the game settles; the curve goes into ``training_curve.json`` and ``model.json``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import spectral_norm


class SelfAttention2d(nn.Module):
    """SAGAN self-attention (Zhang et al. 2019): every position attends to every other one.

    ``out = x + γ · W_o(softmax(Q Kᵀ) V)`` with γ initialised to 0, so the block starts as the
    identity and the network learns how much non-local context to mix in. Optional spectral norm
    on the 1×1 projections (used in the discriminator).
    """

    def __init__(self, channels: int, spectral: bool = False) -> None:
        super().__init__()
        wrap = spectral_norm if spectral else (lambda m: m)
        inner = max(channels // 8, 4)
        self.query = wrap(nn.Conv2d(channels, inner, 1, bias=False))
        self.key = wrap(nn.Conv2d(channels, inner, 1, bias=False))
        self.value = wrap(nn.Conv2d(channels, channels // 2, 1, bias=False))
        self.out = wrap(nn.Conv2d(channels // 2, channels, 1, bias=False))
        self.gamma = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        q = self.query(x).flatten(2).transpose(1, 2)  # N × HW × c'
        k = self.key(x).flatten(2)  # N × c' × HW
        v = self.value(x).flatten(2)  # N × c/2 × HW
        attention = torch.softmax(torch.bmm(q, k), dim=-1)  # N × HW × HW
        mixed = torch.bmm(v, attention.transpose(1, 2)).view(n, c // 2, h, w)
        return x + self.gamma * self.out(mixed)


@dataclass(frozen=True)
class GanConfig:
    in_channels: int
    adapted_channels: int = 128
    hidden_channels: int = 128
    noise_channels: int = 16
    # negatives: per-channel strength in [lo, hi]·sigma (standardised units of the residual input);
    # the generator's perturbation norm is strength·√C
    sigma: float = 1.0
    generator_norm: tuple[float, float] = (0.5, 1.5)
    attention_pool: int = 4

    def as_dict(self) -> dict:
        return {**self.__dict__, "generator_norm": list(self.generator_norm)}


class FeatureAdaptor(nn.Module):
    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_channels, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)


class Discriminator(nn.Module):
    """Adapted features N×A×G×G → anomaly logits N×1×G×G (high = anomalous)."""

    def __init__(self, channels: int, hidden: int, pool: int) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(channels, hidden, 1), nn.LeakyReLU(0.2))
        self.attention = SelfAttention2d(hidden)
        self.pool = pool
        self.head = nn.Conv2d(hidden, 1, 1)

    def forward(self, a: torch.Tensor) -> torch.Tensor:
        h = self.body(a)
        # Attention over the pooled grid (every region against every other one) at 1/pool² of the
        # cost of full-resolution attention; its context is added back at every position.
        pooled = F.avg_pool2d(h, self.pool)
        context = self.attention(pooled) - pooled
        h = h + F.interpolate(context, size=h.shape[-2:], mode="bilinear", align_corners=False)
        return self.head(h)


class GanScorer(nn.Module):
    """Standardised 32²-grid features → anomaly logit map: the GAN's part in the inference graph."""

    def __init__(self, config: GanConfig) -> None:
        super().__init__()
        self.config = config
        self.adaptor = FeatureAdaptor(config.in_channels, config.adapted_channels)
        self.discriminator = Discriminator(config.adapted_channels, config.hidden_channels, config.attention_pool)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.discriminator(self.adaptor(z))


class PerturbationGenerator(nn.Module):
    """(adapted features, noise) → perturbation δ with ‖δ‖ = radius per position."""

    def __init__(self, channels: int, noise_channels: int) -> None:
        super().__init__()
        self.noise_channels = noise_channels
        self.net = nn.Sequential(nn.Conv2d(channels + noise_channels, 128, 1), nn.LeakyReLU(0.2), nn.Conv2d(128, channels, 1))

    def forward(self, a: torch.Tensor, radius: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        noise = torch.randn(a.shape[0], self.noise_channels, *a.shape[2:], generator=generator)
        direction = self.net(torch.cat([a.detach(), noise.to(a.device)], dim=1))
        return radius * direction / direction.norm(dim=1, keepdim=True).clamp_min(1e-6)


def blob_masks(n: int, grid: int, generator: torch.Generator, low: float = 0.05, high: float = 0.4) -> torch.Tensor:
    """``n`` random smooth blobs on a grid×grid map (a fraction in [low, high] of it), N×1×g×g bool."""
    coarse = max(2, grid // 4)
    noise = F.interpolate(torch.rand(n, 1, coarse, coarse, generator=generator), size=(grid, grid),
                          mode="bicubic", align_corners=False)
    fraction = torch.empty(n).uniform_(low, high, generator=generator)
    cut = torch.stack([torch.quantile(noise[i].flatten(), 1.0 - fraction[i]) for i in range(n)])
    return noise > cut[:, None, None, None]


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (values * mask).sum() / mask.sum().clamp_min(1)


def discriminator_loss(real: torch.Tensor, fakes: list[torch.Tensor], mask: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy on anomaly logits (softplus form): real maps → normal everywhere;
    perturbed maps → anomalous inside the blob, normal outside it."""
    loss = F.softplus(real).mean()
    for fake in fakes:
        loss = loss + masked_mean(F.softplus(-fake), mask) + masked_mean(F.softplus(fake), ~mask)
    return loss


def generator_loss(fake: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Non-saturating generator loss: −log(1 − D_anomalous) = softplus(logit) inside the blob — its
    gradient stays strong exactly when D confidently spots the generated features."""
    return masked_mean(F.softplus(fake), mask)


def pooled_descriptors(features: torch.Tensor, grid: int = 4) -> np.ndarray:
    """N×C×H×W → (N·grid²)×C regional descriptors (average-pooled cells) for the Fréchet distance.

    Pooling to a 4×4 grid instead of one global vector per image gives enough samples for a
    well-conditioned C×C covariance with a few dozen images."""
    pooled = F.adaptive_avg_pool2d(features.float(), grid)
    return pooled.permute(0, 2, 3, 1).reshape(-1, features.shape[1]).double().cpu().numpy()


class FrechetReference:
    """Gaussian fitted to the real descriptors, prepared once so each tracked point costs a single
    symmetric eigendecomposition (the real side does not change during training)."""

    def __init__(self, real: np.ndarray) -> None:
        self.mu = real.mean(axis=0)
        cov = np.cov(real, rowvar=False)
        self.trace = float(np.trace(cov))
        values, vectors = np.linalg.eigh(cov)
        self.sqrt_cov = (vectors * np.sqrt(np.clip(values, 0.0, None))) @ vectors.T

    def distance(self, fake: np.ndarray) -> float:
        """‖μr − μf‖² + Tr(Σr + Σf − 2(Σr Σf)^½), with Tr((Σr Σf)^½) = Σ √λ(Σr^½ Σf Σr^½) — the
        symmetric PSD form has the same eigenvalues as Σr Σf, needs no general matrix square root
        and has no complex round-off."""
        mu_f = fake.mean(axis=0)
        cov_f = np.cov(fake, rowvar=False)
        middle = self.sqrt_cov @ cov_f @ self.sqrt_cov
        trace_sqrt = float(np.sum(np.sqrt(np.clip(np.linalg.eigvalsh((middle + middle.T) / 2.0), 0.0, None))))
        value = float(np.sum((self.mu - mu_f) ** 2) + self.trace + np.trace(cov_f) - 2.0 * trace_sqrt)
        return max(value, 0.0) if math.isfinite(value) else float("nan")


def frechet_distance(real: np.ndarray, fake: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to two sample sets (rows = samples): the FID
    formula on our own features."""
    return FrechetReference(real).distance(fake)
