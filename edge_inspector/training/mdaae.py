"""MDAAE: multi-level adaptive-attention autoencoder in the reverse-distillation shape (RD4AD).

Data flow (256² input; the frozen backbone's taps at stride 8/16/32 give 32², 16² and 8² grids):
    standardised levels Z_l (N×C_l×G_l×G_l; C = 40, 112, 192)
      → per-level 1×1 projection to D channels, average-pooled to the coarsest (8×8) grid: P_l
      → attention computed from the features themselves:
          level weights   w_l = softmax_l(MLP(GAP(P_l)) + s_l(x, y))   (a different mix per image,
                          and with ``spatial`` per position: s_l is a 3×3 conv scorer on P_l)
          channel weights c = SE(GAP(Σ_l w_l P_l))                       (squeeze-excitation)
      → fused map F = c ⊙ Σ_l w_l P_l                                    (N×D×8×8)
      → one-class bottleneck: 3×3 conv, stride-2 3×3 conv to B channels at 4×4, SAGAN
        self-attention → the compact embedding
      → decoder: ×2 upsample + 3×3 conv per step (8×8, 16×16, 32×32), each step followed by a 1×1
        head reconstructing that level: Ẑ_3 (8×8), Ẑ_2 (16×16), Ẑ_1 (32×32)

Why this shape: the decoder never sees the encoder's features, only the 4×4 embedding, so it cannot
copy the input through (the identity shortcut); it has to rebuild every level from what normal parts
have in common, and a defect it has never seen comes back as normal appearance — the discrepancy is
the anomaly map. Reconstructing the *fixed* standardised backbone levels (not a learned fused map,
which could drift towards something trivial) keeps the target honest.

Anomaly map per position: Σ_levels (1 − cos(Z_l, Ẑ_l)) and Σ_levels ‖Z_l − Ẑ_l‖²/C_l, each level's
term upsampled to the 32² grid and divided by its mean on good training images (scoring.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from edge_inspector.training.sagan import SelfAttention2d


@dataclass(frozen=True)
class MdaaeConfig:
    level_channels: tuple[int, ...]
    fused_channels: int = 64
    bottleneck_channels: int = 64
    decoder_channels: int = 64
    spatial_attention: bool = True

    def as_dict(self) -> dict:
        return {**self.__dict__, "level_channels": list(self.level_channels)}


def _act() -> nn.Module:
    return nn.LeakyReLU(0.1)


class AdaptiveFusion(nn.Module):
    """Per-level projections fused with level (optionally per-position) and channel weights."""

    def __init__(self, level_channels: tuple[int, ...], dim: int, spatial: bool) -> None:
        super().__init__()
        self.projections = nn.ModuleList(nn.Sequential(nn.Conv2d(c, dim, 1), _act()) for c in level_channels)
        # One scorer shared by all levels: a level's weight depends on what its features contain
        # for this image, not on which level it is.
        self.level_scorer = nn.Sequential(nn.Linear(dim, dim // 4), nn.ReLU(), nn.Linear(dim // 4, 1))
        self.spatial_scorer = nn.Conv2d(dim, 1, 3, padding=1) if spatial else None
        self.channel_gate = nn.Sequential(nn.Linear(dim, dim // 4), nn.ReLU(), nn.Linear(dim // 4, dim), nn.Sigmoid())

    def forward(self, levels: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """levels → (fused N×D×g×g on the coarsest grid, level weights N×L×1×1 or N×L×g×g)."""
        grid = levels[-1].shape[-2:]
        pooled = []
        for k, (proj, z) in enumerate(zip(self.projections, levels)):
            p = proj(z)
            factor = 2 ** (len(levels) - 1 - k)  # taps are one stride doubling apart (8, 16, 32)
            if factor > 1:
                p = F.avg_pool2d(p, factor)  # a constant kernel: exports to a plain AveragePool
            if p.shape[-2:] != grid:  # image sizes that are not a multiple of 32
                p = F.interpolate(p, size=grid, mode="bilinear", align_corners=False)
            pooled.append(p)
        projected = torch.stack(pooled, dim=1)  # N×L×D×g×g
        logits = self.level_scorer(projected.mean(dim=(3, 4)))[..., None]  # N×L×1×1
        if self.spatial_scorer is not None:
            n, lv, d, h, w = projected.shape
            logits = logits + self.spatial_scorer(projected.reshape(n * lv, d, h, w)).reshape(n, lv, h, w)
        weights = torch.softmax(logits, dim=1)  # N×L×1×1, or N×L×g×g with the spatial scorer
        mixed = (projected * weights[:, :, None]).sum(dim=1)
        mixed = mixed * self.channel_gate(mixed.mean(dim=(2, 3)))[:, :, None, None]
        return mixed, weights


class Mdaae(nn.Module):
    """Standardised levels [Z_1 (G), Z_2 (G/2), Z_3 (G/4)] → reconstructions of the same shapes."""

    def __init__(self, config: MdaaeConfig) -> None:
        super().__init__()
        self.config = config
        d, b, h = config.fused_channels, config.bottleneck_channels, config.decoder_channels
        c1, c2, c3 = config.level_channels
        self.fusion = AdaptiveFusion(config.level_channels, d, config.spatial_attention)
        self.bottleneck = nn.Sequential(
            nn.Conv2d(d, b, 3, padding=1), _act(), nn.Conv2d(b, b, 3, stride=2, padding=1), _act()
        )
        self.bottleneck_attention = SelfAttention2d(b)

        def up(cin: int, cout: int) -> nn.Module:
            return nn.Sequential(nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
                                 nn.Conv2d(cin, cout, 3, padding=1), _act())

        self.up3, self.up2, self.up1 = up(b, h), up(h, h), up(h, h)
        self.out3, self.out2, self.out1 = nn.Conv2d(h, c3, 1), nn.Conv2d(h, c2, 1), nn.Conv2d(h, c1, 1)
        self.last_level_weights: torch.Tensor | None = None

    def forward(self, levels: list[torch.Tensor]) -> list[torch.Tensor]:
        fused, weights = self.fusion(levels)
        if self.training:
            self.last_level_weights = weights.detach().mean(dim=(2, 3))
        h3 = self.up3(self.bottleneck_attention(self.bottleneck(fused)))
        h2 = self.up2(h3)
        h1 = self.up1(h2)
        outs = [self.out1(h1), self.out2(h2), self.out3(h3)]
        # odd grid sizes: stride 2 then ×2 can be one cell off
        return [o if o.shape[-2:] == z.shape[-2:] else F.interpolate(o, size=z.shape[-2:], mode="bilinear", align_corners=False)
                for o, z in zip(outs, levels)]


def reconstruction_terms(levels: list[torch.Tensor], recon: list[torch.Tensor]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Per level, on its own grid: (1 − cos) maps and mean-squared-error maps, each N×1×g×g."""
    cos = [(1.0 - F.cosine_similarity(z, r, dim=1, eps=1e-6)).unsqueeze(1) for z, r in zip(levels, recon)]
    l2 = [(z - r).pow(2).mean(dim=1, keepdim=True) for z, r in zip(levels, recon)]
    return cos, l2


def reconstruction_loss(levels: list[torch.Tensor], recon: list[torch.Tensor]) -> torch.Tensor:
    """Σ_levels mean(1 − cos) + mean(L2): the cosine term aligns directions (RD4AD's loss), the L2
    term also the magnitudes (the prototype's best pixel-level map)."""
    cos, l2 = reconstruction_terms(levels, recon)
    return sum(c.mean() for c in cos) + sum(e.mean() for e in l2)
