"""``edge-inspector train``: good images → model bundle (model.onnx + model.json + checkpoint.pt).

Steps:
 1. read ``train/good`` only (unreadable files skipped with a counted warning), split off a
    seeded hold-out for calibration;
 2. run the frozen backbone once over the training images and ``augmented_copies`` photometric
    variants of each (brightness/contrast/gamma/specular, the runtime's own preprocessing), so
    training iterates over cached features and costs no backbone passes;
 3. fit per-channel feature standardisation;
 4. train the MDAAE (and the SA-GAN for ``aegan``/``default``), tracking the Fréchet distance
    between real and reconstructed pooled features on the hold-out set;
 5. build the kNN memory bank (``knn``/``default``) by greedy coreset over the clean training
    patches (raw mean-centred features by default, ``knn_features``) and the principal subspace
    of those patches (``default``: its ``sub`` and ``res`` terms; ``sub`` searches a coreset of at
    most ``subspace_bank_size`` projected bank entries);
 6. fit term and score normalisation and the threshold on the hold-out images; for ``default``,
    choose the term weights on faint synthetic anomalies drawn on the hold-out (fusion.py);
 7. export ONNX with a parity check and write the bundle.

Module map (one job each): ``settings`` (TrainSettings, validation, determinism) → ``features``
(steps 1–3) → ``ae_loop`` (4) and ``components`` (the trained parts; 5) → ``assemble`` (6–7, with
``term_stats``, ``calibrate``, ``fusion``, ``meta`` and ``export``). This module is the entry point:
the public :func:`train_bundle`, the one-head pipeline :func:`fit` and the CLI.

Deterministic on CPU for a given seed: every random draw comes from seeded generators, the
thread count is fixed and torch's deterministic-algorithms mode is on.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Optional

from edge_inspector.errors import InputError
from edge_inspector.logging import get_logger
from edge_inspector.training.ae_loop import train_autoencoder
from edge_inspector.training.assemble import assemble
from edge_inspector.training.backbone import DEFAULT_TAPS, FeatureExtractor
from edge_inspector.training.components import fit_components
from edge_inspector.training.features import prepare_data
from edge_inspector.training.scoring import AE_HEADS, GAN_HEADS, KNN_HEADS
from edge_inspector.training.settings import TrainSettings, check_settings, set_determinism

log = get_logger(__name__)

# TrainSettings and train_autoencoder are imported from here by the tests.
__all__ = ["TrainSettings", "cli_train", "fit", "train_autoencoder", "train_bundle"]


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
    lighting: str = TrainSettings.lighting,
    progress: bool = True,
    **overrides,
) -> Path:
    """Train a model bundle from ``data_dir/train/good`` into ``out_dir``; returns ``out_dir``.

    ``overrides`` are further :class:`TrainSettings` fields (e.g. ``export=False``,
    ``augmented_copies=1``, ``gan=GanSchedule(...)``)."""
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
    parts = fit_components(data, settings, train_ae=head in AE_HEADS, use_gan=head in GAN_HEADS, build_bank=head in KNN_HEADS)
    parts.timing["total_train_s"] = round(time.perf_counter() - started, 2)  # calibration+export excluded
    name = settings.name or f"{Path(data_dir).resolve().name}-{head}"
    return assemble(head, data, parts, settings, out_dir, name=name)


# ----------------------------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------------------------
def cli_train(args) -> int:
    out = train_bundle(
        args.data, args.out, head=args.head, iterations=args.iterations, image_size=args.image_size,
        seed=args.seed, device=args.device, far_target=args.far_target, holdout=args.holdout,
        validation=args.validation, lighting=args.lighting, progress=True,
        export=not getattr(args, "no_export", False), extra_good=args.extra_good,
        calibration=getattr(args, "calibration", TrainSettings.calibration), geometry=getattr(args, "geometry", "keep_aspect"),
    )
    meta = json.loads((out / "model.json").read_text(encoding="utf-8"))
    summary = {"model": str(out), "head": meta["head"], "threshold": meta["threshold"],
               "train_seconds": meta["training"]["timing"].get("total_train_s")}
    calib = meta.get("threshold_calibration") or {}
    summary["threshold_rule"] = calib.get("rule")
    requested = (calib.get("rules") or {}).get(calib.get("rule_requested")) or {}
    if "unavailable" in requested:
        # the station engineer asked for (or defaulted to) a rule training could not apply: say why
        summary["threshold_rule_refused"] = f"{calib['rule_requested']}: {requested['unavailable']}"
    if meta.get("fusion_weights"):
        # which terms the station will run: chosen on the hold-out, so worth seeing at once
        summary["terms"] = {t: w for t, w in meta["fusion_weights"].items() if w}
    print(json.dumps(summary))
    return 0
