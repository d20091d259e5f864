"""Self-attention GAN parts: the SAGAN attention block, a spectrally normalised discriminator,
the non-saturating losses, the schedule that keeps the adversarial term from hurting, and the
Fréchet distance tracked during training.

GAN balance (the prototype's discriminator won at once — D loss ~0.12, G loss ~3.5 — and its
gradient pushed reconstruction error up). What this module does about it:
- D warm-up: D starts learning at ``d_start`` of the run, while the generator (the autoencoder)
  still trains on reconstruction alone; the adversarial term only reaches G from ``g_start`` on,
  once D's gradient carries information about the real feature distribution.
- λ schedule: λ ramps linearly from 0 to ``lambda_max`` over ``ramp`` of the run, and
  ``lambda_max`` is small (reconstruction is what the anomaly map is made of; the GAN is a
  regulariser of the reconstruction's realism, not its objective).
- learning-rate ratio: D learns at half G's rate (a D that outruns G saturates ``-log D(F̂)``).
- instance noise on both D inputs (annealed to 0), so real and reconstructed distributions overlap
  and D cannot separate them perfectly from the first steps.
- feature matching: G also matches the mean of D's intermediate features on real vs
  reconstructed maps, a gradient that stays informative when D is confident.
- adaptive D steps: D skips its update while its loss is below ``d_loss_floor`` (it is already
  winning; more steps would only sharpen its logits).
"""

from __future__ import annotations

import math
from copy import deepcopy as copy_module
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


class Discriminator(nn.Module):
    """Judges real standardised feature maps F against reconstructions F̂ (patch logits).

    Spectral norm on every layer (Lipschitz-bounded D, the SAGAN recipe) and a self-attention
    block at the middle resolution so D can judge global consistency, not only local texture.
    """

    def __init__(self, in_channels: int, width: int = 64) -> None:
        super().__init__()
        # 1×1 stem: a 3×3 conv over 344 channels at the full grid would cost more than the whole
        # autoencoder; spatial context comes from the strided 4×4 convs and the attention block.
        self.stem = nn.Sequential(spectral_norm(nn.Conv2d(in_channels, width, 1)), nn.LeakyReLU(0.2))
        self.down1 = nn.Sequential(spectral_norm(nn.Conv2d(width, width, 4, stride=2, padding=1)), nn.LeakyReLU(0.2))
        self.attention = SelfAttention2d(width, spectral=True)
        self.down2 = nn.Sequential(spectral_norm(nn.Conv2d(width, width, 4, stride=2, padding=1)), nn.LeakyReLU(0.2))
        self.logits = spectral_norm(nn.Conv2d(width, 1, 3, padding=1))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        h1 = self.stem(x)
        h2 = self.attention(self.down1(h1))
        h3 = self.down2(h2)
        return self.logits(h3), [h1, h2, h3]


class Critic(nn.Module):
    """The discriminator's scoring part at inference: its stem, first strided conv and
    self-attention block (D's features after attention, ``h2``), with the spectral norm folded
    into plain weights so the exported graph holds ordinary convolutions.

    Anomaly term (``discrepancy``): per position of the (G/2) grid, the mean squared difference
    between the critic's features of the real map Z and of its reconstruction Ẑ, upsampled to G.
    This is f-AnoGAN's discriminator-feature residual (Schlegl et al. 2019). D was trained to tell
    real features from reconstructions, so its features weigh the directions in which a
    reconstruction betrays itself, with the non-local context of the attention block: a defect
    the autoencoder cannot rebuild differs there more than in plain feature space. The logits are
    not used: D was trained to call reconstructions fake, not anomalies, and its real/fake logit on
    test features ranked defects below good parts (a scratch experiment, docs/model.md)."""

    def __init__(self, in_channels: int, width: int = 64) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, width, 1), nn.LeakyReLU(0.2))
        self.down1 = nn.Sequential(nn.Conv2d(width, width, 4, stride=2, padding=1), nn.LeakyReLU(0.2))
        self.attention = SelfAttention2d(width)
        self.width = width

    @classmethod
    def from_discriminator(cls, disc: Discriminator) -> "Critic":
        was_training = disc.training
        disc.eval()  # eval: the spectral norm uses its current estimate, without a power iteration
        with torch.no_grad():
            # sets each layer's normalised weight as a plain tensor (after a training step it is
            # part of an autograd graph, which cannot be copied)
            disc(torch.zeros(1, disc.stem[0].in_channels, 4, 4, device=next(disc.parameters()).device))
        copy = copy_module(disc).cpu()
        disc.train(was_training)
        for module in copy.modules():
            if hasattr(module, "weight_orig"):
                torch.nn.utils.remove_spectral_norm(module)
        critic = cls(copy.stem[0].in_channels, copy.stem[0].out_channels)
        critic.stem.load_state_dict(copy.stem.state_dict())
        critic.down1.load_state_dict(copy.down1.state_dict())
        critic.attention.load_state_dict(copy.attention.state_dict())
        return critic.eval()

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.attention(self.down1(self.stem(x)))

    def discrepancy(self, z: torch.Tensor, z_hat: torch.Tensor) -> torch.Tensor:
        """N×1×G×G: critic-feature residual of Z against Ẑ, on Z's grid."""
        residual = (self.features(z) - self.features(z_hat)).pow(2).mean(dim=1, keepdim=True)
        return F.interpolate(residual, size=z.shape[-2:], mode="bilinear", align_corners=False)


def discriminator_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """Standard GAN D loss: −log D(F) − log(1 − D(F̂)), written with softplus for stability."""
    return F.softplus(-real_logits).mean() + F.softplus(fake_logits).mean()


def generator_adversarial_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    """Non-saturating generator loss −log D(F̂)."""
    return F.softplus(-fake_logits).mean()


def feature_matching_loss(real_feats: list[torch.Tensor], fake_feats: list[torch.Tensor]) -> torch.Tensor:
    """Match per-channel means of D's intermediate activations (Salimans et al. 2016)."""
    loss = real_feats[0].new_zeros(())
    for real, fake in zip(real_feats, fake_feats):
        loss = loss + F.mse_loss(fake.mean(dim=(0, 2, 3)), real.detach().mean(dim=(0, 2, 3)))
    return loss / len(real_feats)


@dataclass(frozen=True)
class GanSchedule:
    """When and how strongly the adversarial term acts, as fractions of the training run."""

    d_start: float = 0.15  # D begins learning (warm-up) while G trains on reconstruction only
    g_start: float = 0.30  # adversarial gradient starts reaching G
    ramp: float = 0.30  # λ rises linearly from 0 to lambda_max over this fraction
    lambda_max: float = 0.02
    feature_matching_weight: float = 1.0
    d_lr_ratio: float = 0.5  # D learning rate = ratio × G learning rate
    instance_noise: float = 0.3  # std of noise added to D inputs at d_start, annealed to 0 at the end
    d_loss_floor: float = 0.3  # skip the D step while its loss is below this (D already winning)

    def adv_weight(self, progress: float) -> float:
        if progress < self.g_start:
            return 0.0
        return self.lambda_max * min(1.0, (progress - self.g_start) / max(self.ramp, 1e-6))

    def noise_std(self, progress: float) -> float:
        if progress < self.d_start:
            return self.instance_noise
        return self.instance_noise * max(0.0, 1.0 - (progress - self.d_start) / max(1.0 - self.d_start, 1e-6))

    def as_dict(self) -> dict:
        return dict(self.__dict__)


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
