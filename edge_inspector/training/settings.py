"""What one ``train`` run is asked to do: the settings and their validation (bad values → InputError)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from edge_inspector.errors import InputError

HEAD_NAMES = ("default", "aegan", "ae", "gan", "knn")


@dataclass
class TrainSettings:
    head: str = "default"
    iterations: Optional[int] = None  # MDAAE steps; the GAN scorer runs gan_iterations
    gan_iterations: Optional[int] = None
    image_size: int = 256
    seed: int = 0
    device: str = "cpu"
    far_target: float = 0.01
    holdout: float = 0.15
    validation: Optional[str] = None
    lighting: str = "none"
    progress: bool = True
    export: bool = True
    augmented_copies: int = 1
    # Memory bound: at most this many images' features are cached (clean + augmented); beyond it a
    # seeded subset is kept. Native-level float16 features are 160 kB per 256² image.
    max_cached_images: int = 2000
    batch_size: int = 8
    learning_rate: float = 2e-3
    gan_learning_rate: float = 1e-3
    coreset_fraction: float = 0.01
    max_bank_candidates: int = 200_000  # kNN reference: patches the coreset is drawn from (memory bound)
    # fused heads: weight of the AE term (the GAN term gets 1 − this); 0.7 from the cached-feature
    # study (docs/model.md): on tire 0.5 lowered pixel AUROC below the AE alone, 0.7 raised both
    fusion_ae_weight: float = 0.7
    threads: int = 2
    curve_points: int = 10  # Fréchet-distance points tracked over a GAN run
    name: Optional[str] = None

    def resolved_iterations(self) -> int:
        if self.iterations is not None:
            if self.iterations < 0:
                raise InputError(f"--iterations {self.iterations} must be ≥ 0")
            return int(self.iterations)
        return 600 if self.image_size >= 192 else 300

    def resolved_gan_iterations(self) -> int:
        if self.gan_iterations is not None:
            if self.gan_iterations < 0:
                raise InputError(f"gan_iterations {self.gan_iterations} must be ≥ 0")
            return int(self.gan_iterations)
        if self.iterations is not None:  # --iterations scales both parts (tests use tiny runs)
            return max(1, self.resolved_iterations() // 2) if self.resolved_iterations() else 0
        return 200 if self.image_size >= 192 else 100


def check_settings(settings: TrainSettings) -> None:
    if settings.head not in HEAD_NAMES:
        raise InputError(f"unknown head '{settings.head}' (use {', '.join(HEAD_NAMES)})")
    if settings.image_size < 32 or settings.image_size % 8:
        raise InputError(f"--image-size {settings.image_size} must be a multiple of 8 and ≥ 32")
    if not 0.0 < settings.far_target < 1.0:
        raise InputError(f"--far-target {settings.far_target} must be between 0 and 1 (exclusive)")
    if settings.lighting not in ("none", "clahe", "match_train", "match_hist"):
        raise InputError(f"--lighting {settings.lighting}: use none, clahe, match_train or match_hist")
    if not 0.0 <= settings.fusion_ae_weight <= 1.0:
        raise InputError(f"fusion_ae_weight {settings.fusion_ae_weight} must be in [0, 1]")
    if settings.max_cached_images < 1:
        raise InputError(f"max_cached_images {settings.max_cached_images} must be ≥ 1")
    if settings.device == "cuda" and not torch.cuda.is_available():
        raise InputError("--device cuda: no CUDA device available to torch on this machine")
    settings.resolved_iterations()
    settings.resolved_gan_iterations()
