"""``edge-inspector train``: good images → model bundle (model.onnx + model.json + checkpoint.pt).

The pipeline, one module per step:
  settings.py    what is asked (TrainSettings) and its validation
  features.py    read ``train/good`` (never ``test/``), split the calibration hold-out, cache the
                 frozen backbone's standardised multi-level features (memory-bounded)
  fit_mdaae.py   train the MDAAE on the cache (reconstruction)
  fit_gan.py     train the self-attention GAN scorer on the cache (Fréchet curve tracked)
  assemble.py    build the head's graph, fit term/score statistics and the threshold on the
                 hold-out, write checkpoint + model.json; export.py writes the ONNX with parity
This module wires them together and is the CLI entry point.

Deterministic on CPU for a given seed: every random draw comes from seeded generators, the
thread count is fixed and torch's deterministic-algorithms mode is on.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from edge_inspector.errors import InputError
from edge_inspector.logging import get_logger
from edge_inspector.training.assemble import assemble, fit_components
from edge_inspector.training.backbone import DEFAULT_TAPS, FeatureExtractor
from edge_inspector.training.features import prepare_data
from edge_inspector.training.scoring import AE_HEADS, GAN_HEADS, KNN_HEADS
from edge_inspector.training.settings import TrainSettings, check_settings

log = get_logger(__name__)

__all__ = ["TrainSettings", "fit", "train_bundle", "cli_train"]


def set_determinism(seed: int, threads: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % (2**32))
    torch.set_num_threads(max(1, threads))
    torch.use_deterministic_algorithms(True, warn_only=True)


def fit(data_dir: Path, out_dir: Path, settings: TrainSettings) -> Path:
    """The ``train`` pipeline for one head."""
    check_settings(settings)
    if out_dir.exists() and not out_dir.is_dir():
        raise InputError(f"{out_dir}: --out exists and is not a directory")
    started = time.perf_counter()
    set_determinism(settings.seed, settings.threads)
    backbone = FeatureExtractor(DEFAULT_TAPS).to(settings.device)
    data = prepare_data(data_dir, settings, backbone)
    head = settings.head
    log.info("training", head=head, iterations=settings.resolved_iterations(), seed=settings.seed)
    parts = fit_components(data, settings, train_ae=head in AE_HEADS, train_gan=head in GAN_HEADS,
                           build_bank=head in KNN_HEADS)
    parts.timing["total_train_s"] = round(time.perf_counter() - started, 2)  # calibration+export excluded
    name = settings.name or f"{Path(data_dir).resolve().name}-{head}"
    return assemble(head, data, parts, settings, out_dir, name=name)


def train_bundle(
    data_dir: str | Path,
    out_dir: str | Path,
    head: str = "default",
    iterations: Optional[int] = None,
    image_size: int = 256,
    seed: int = 0,
    device: str = "cpu",
    far_target: float = 0.01,
    holdout: float = 0.15,
    validation: Optional[str | Path] = None,
    lighting: str = "none",
    progress: bool = True,
    **overrides,
) -> Path:
    """Train a model bundle from ``data_dir/train/good`` into ``out_dir``; returns ``out_dir``.

    ``overrides`` are further :class:`TrainSettings` fields (e.g. ``export=False``,
    ``augmented_copies=0``, ``gan_iterations=50``)."""
    settings = TrainSettings(
        head=head,
        iterations=iterations,
        image_size=image_size,
        seed=seed,
        device=device,
        far_target=far_target,
        holdout=holdout,
        validation=str(validation) if validation else None,
        lighting=lighting,
        progress=progress,
        **overrides,
    )
    return fit(Path(data_dir), Path(out_dir), settings)


def cli_train(args) -> int:
    out = train_bundle(
        args.data, args.out, head=args.head, iterations=args.iterations, image_size=args.image_size,
        seed=args.seed, device=args.device, far_target=args.far_target, holdout=args.holdout,
        validation=args.validation, lighting=args.lighting, progress=True,
        export=not getattr(args, "no_export", False),
    )
    meta = json.loads((out / "model.json").read_text(encoding="utf-8"))
    summary = {"model": str(out), "head": meta["head"], "threshold": meta["threshold"],
               "train_seconds": meta["training"]["timing"].get("total_train_s")}
    if meta.get("fusion_weights"):
        summary["terms"] = {t: w for t, w in meta["fusion_weights"].items() if w}
    if meta["training_curve"].get("frechet_final") is not None:
        summary["frechet"] = [meta["training_curve"]["frechet_initial"], meta["training_curve"]["frechet_final"]]
    print(json.dumps(summary))
    return 0
