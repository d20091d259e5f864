"""PatchCore-style nearest-neighbour scoring on the same standardised features as the autoencoder.

Memory bank: a greedy (k-center) coreset of ~1 % of the good training patch features. Selection
runs on a random projection to 128 dimensions (Johnson–Lindenstrauss: pairwise distances are
preserved well enough to pick covering points, at a third of the cost); the bank stores the full
features. Scoring is a matmul-based squared distance ‖z‖² − 2 z·mᵀ + ‖m‖² and a min over the
bank, which exports to plain ONNX MatMul/ReduceMin — no search structure needed at this size.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from edge_inspector.errors import DatasetError


def greedy_coreset(
    features: torch.Tensor,
    n_select: int,
    seed: int = 0,
    projection_dim: int = 128,
    progress=None,
) -> torch.Tensor:
    """Indices of ``n_select`` rows of ``features`` (M×C) chosen by greedy k-center selection."""
    m = features.shape[0]
    if m == 0:
        raise DatasetError("no patch features to build the memory bank from")
    n_select = max(1, min(int(n_select), m))
    generator = torch.Generator().manual_seed(seed)
    if features.shape[1] > projection_dim:
        projection = torch.randn(features.shape[1], projection_dim, generator=generator) / math.sqrt(projection_dim)
        reduced = features.float() @ projection
    else:
        reduced = features.float()
    squared_norms = reduced.pow(2).sum(dim=1)
    selected = torch.empty(n_select, dtype=torch.long)
    current = int(torch.randint(m, (1,), generator=generator))
    min_dist = torch.full((m,), float("inf"))
    for i in range(n_select):
        selected[i] = current
        centre = reduced[current]
        dist = squared_norms - 2.0 * (reduced @ centre) + centre.pow(2).sum()
        torch.minimum(min_dist, dist, out=min_dist)
        current = int(torch.argmax(min_dist))
        if progress is not None:
            progress(i + 1, n_select)
    return selected


class KnnScorer(nn.Module):
    """Features N×C×G×G → distance to the nearest memory-bank entry, N×1×G×G."""

    def __init__(self, bank: torch.Tensor) -> None:
        super().__init__()
        bank = bank.float().contiguous()
        self.register_buffer("bank_t", bank.t().contiguous())  # C×M, laid out for the matmul
        self.register_buffer("bank_sq", bank.pow(2).sum(dim=1))  # M

    @property
    def size(self) -> int:
        return int(self.bank_sq.shape[0])

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        n, c, h, w = z.shape
        flat = z.flatten(2).transpose(1, 2)  # N × HW × C
        # ‖z − m‖² = ‖z‖² + (‖m‖² − 2 z·m): the query's own norm is the same for every bank entry,
        # so it is added after the min, and ‖m‖² − 2 z·m is one matmul of [z, 1] with [−2m; ‖m‖²]
        # (folded into one constant at export). The HW × M matrix is then written once and read
        # once by the min, where the textbook form made three more passes over it (scale, add,
        # subtract; onnxruntime fuses only the scale).
        ones = torch.ones_like(flat[..., :1])
        bank = torch.cat([-2.0 * self.bank_t, self.bank_sq[None]], dim=0)  # (C+1) × M
        partial = torch.matmul(torch.cat([flat, ones], dim=2), bank)  # N × HW × M
        squared = flat.pow(2).sum(dim=2) + partial.amin(dim=2)
        return squared.clamp_min(0.0).sqrt().view(n, 1, h, w)
