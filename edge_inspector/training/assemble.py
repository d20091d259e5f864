"""From trained parts to a calibrated bundle: build the head's inference graph, fit its term and
score statistics and threshold on held-out good images, write checkpoint + model.json (+ ONNX).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from tqdm import tqdm

from edge_inspector import BUNDLE_FORMAT_VERSION, __version__
from edge_inspector.datasets import fingerprint, list_test_items, load_images
from edge_inspector.inference.bundle import io_spec, write_meta
from edge_inspector.logging import get_logger
from edge_inspector.training.backbone import BACKBONE_NAME, DEFAULT_TAPS
from edge_inspector.training.calibrate import f1_threshold, far_threshold
from edge_inspector.training.export import CHECKPOINT_FORMAT, CHECKPOINT_NAME, export_bundle
from edge_inspector.training.features import TrainingData
from edge_inspector.training.knn import KnnScorer, greedy_coreset
from edge_inspector.training.mdaae import Mdaae, MdaaeConfig, reconstruction_terms
from edge_inspector.training.sagan import GanConfig, GanScorer
from edge_inspector.training.scoring import (
    AE_HEADS,
    FUSED_HEADS,
    GAN_HEADS,
    KNN_HEADS,
    TERMS,
    InspectionModel,
    ModelConfig,
    concat_levels,
    score_units_note,
)
from edge_inspector.training.settings import TrainSettings

log = get_logger(__name__)

CURVE_NAME = "training_curve.json"


@dataclass
class Components:
    """Trained parts a head is assembled from."""

    ae: Optional[Mdaae] = None
    ae_curve: list = field(default_factory=list)
    gan: Optional[GanScorer] = None
    gan_curve: list = field(default_factory=list)
    bank: Optional[torch.Tensor] = None
    timing: dict = field(default_factory=dict)


def fit_components(data: TrainingData, settings: TrainSettings, train_ae: bool, train_gan: bool,
                   build_bank: bool) -> Components:
    """Train the MDAAE and/or the GAN scorer, and/or build the kNN reference's memory bank."""
    from edge_inspector.training.fit_gan import train_gan as fit_gan
    from edge_inspector.training.fit_mdaae import train_mdaae

    parts = Components()
    channels = tuple(t.channels for t in DEFAULT_TAPS)
    if train_ae or train_gan:  # the GAN scorer reads the MDAAE's residual
        parts.ae, parts.ae_curve, timing = train_mdaae(
            data.train_levels, data.hold_levels, MdaaeConfig(level_channels=channels), settings,
            settings.resolved_iterations(), settings.device)
        parts.ae = parts.ae.cpu()
        parts.timing.update(timing)
    if train_gan:
        parts.gan, parts.gan_curve, timing = fit_gan(
            parts.ae, data.train_levels, data.hold_levels, GanConfig(in_channels=sum(channels)), settings,
            settings.resolved_gan_iterations(), settings.device)
        parts.gan = parts.gan.cpu()
        parts.timing.update(timing)
    if build_bank:
        t0 = time.perf_counter()
        # Candidates: the clean training patches, raw (mean-centred) as in PatchCore, sub-sampled to
        # max_bank_candidates (memory bound; the coreset keeps ~1 % of them anyway).
        clean = [z.float() for z in data.clean_levels()]
        patches = (concat_levels(clean) * data.feature_std).permute(0, 2, 3, 1).reshape(-1, data.feature_std.shape[1])
        if patches.shape[0] > settings.max_bank_candidates:
            pick = torch.randperm(patches.shape[0], generator=torch.Generator().manual_seed(settings.seed + 5))
            patches = patches[pick[: settings.max_bank_candidates]]
        n_select = max(1, int(round(settings.coreset_fraction * patches.shape[0])))
        bar = tqdm(total=n_select, desc="coreset", disable=not settings.progress, unit="pt")
        chosen = greedy_coreset(patches, n_select, seed=settings.seed + 3, progress=lambda i, n: bar.update(1))
        bar.close()
        parts.bank = patches[chosen].clone()
        parts.timing["coreset_s"] = round(time.perf_counter() - t0, 2)
        parts.timing["bank_size"] = int(chosen.numel())
    return parts


@torch.no_grad()
def fit_term_statistics(model: InspectionModel, data: TrainingData, device: str) -> dict:
    """AE per-level term means on the clean training features, and the per-term mean/std of the
    grid maps on the hold-out (for the fused heads)."""
    stats: dict = {}
    if model.mdaae is not None:
        clean = data.clean_levels()
        sums = torch.zeros(2 * len(clean))
        for i in range(0, data.n_clean, 16):
            z = [x[i : i + 16].to(device) for x in clean]
            cos, l2 = reconstruction_terms(z, model.mdaae(z))
            sums += torch.stack([t.mean() * z[0].shape[0] for t in cos + l2]).cpu()
        scales = (sums / max(data.n_clean, 1)).clamp_min(1e-8)
        model.ae_term_scales.copy_(scales)
        stats["ae_term_scales"] = [round(float(v), 6) for v in scales]
    if model.config.head in FUSED_HEADS:
        values: dict[str, list] = {n: [] for n in TERMS}
        for i in range(0, data.hold_levels[0].shape[0], 16):
            z = [x[i : i + 16].to(device) for x in data.hold_levels]
            for name, grid in model.term_grids(z, TERMS).items():
                values[name].append(grid.flatten().cpu())
        stats["term_mean"], stats["term_std"] = {}, {}
        for k, name in enumerate(TERMS):
            v = torch.cat(values[name])
            model.term_mean[k] = v.mean()
            model.term_std[k] = v.std().clamp_min(1e-6)
            stats["term_mean"][name] = float(model.term_mean[k])
            stats["term_std"][name] = float(model.term_std[k])
    return stats


@torch.no_grad()
def raw_image_scores(model: InspectionModel, images: torch.Tensor, device: str, batch: int = 8) -> np.ndarray:
    out = [model.raw_map(images[i : i + batch].to(device)).amax(dim=(1, 2, 3)).cpu() for i in range(0, images.shape[0], batch)]
    return torch.cat(out).numpy().astype(np.float64)


@torch.no_grad()
def normalised_scores(model: InspectionModel, images: torch.Tensor, device: str, batch: int = 8) -> np.ndarray:
    out = [model(images[i : i + batch].to(device))[1].cpu() for i in range(0, images.shape[0], batch)]
    return torch.cat(out).numpy().astype(np.float64)


def curve_summary(ae_curve: list[dict], gan_curve: list[dict]) -> dict:
    if not ae_curve and not gan_curve:
        return {"points": [], "final": None}
    summary: dict = {"points": gan_curve, "mdaae_points": ae_curve, "final": (gan_curve or ae_curve)[-1]}
    if gan_curve:
        summary["frechet_initial"] = gan_curve[0]["frechet"]
        summary["frechet_final"] = gan_curve[-1]["frechet"]
    return summary


def build_meta(model: InspectionModel, settings: TrainSettings, name: str, data: TrainingData, calibration: dict,
               threshold_f1: Optional[dict], score_stats: dict, parts: Components, timing: dict) -> dict:
    cfg = model.config
    ae_curve = parts.ae_curve if cfg.head in AE_HEADS else []
    gan_curve = parts.gan_curve if cfg.head in GAN_HEADS else []
    meta = {
        "format_version": BUNDLE_FORMAT_VERSION,
        "package_version": __version__,
        "name": name,
        "head": cfg.head,
        "backbone": BACKBONE_NAME,
        "image_size": cfg.image_size,
        "input": io_spec()[0],
        "outputs": io_spec()[1],
        "fusion_levels": [t.as_dict() for t in cfg.taps],
        "fusion_weights": dict(cfg.fusion_weights) if cfg.head in FUSED_HEADS else None,
        "threshold": round(float(calibration["threshold"]), 6),
        "threshold_far_target": settings.far_target,
        "threshold_calibration": calibration,
        "score_normalisation": {
            "kind": "affine_on_good_holdout",
            "offset": float(model.score_offset),
            "scale": float(model.score_scale),
            "note": score_units_note(),
            "image_score": "max of the map (smoothed on the coarse grid, then upsampled)",
            "smoothing_sigma_cells": cfg.smoothing_sigma_cells,
            **score_stats,
        },
        "preprocess": {"lighting": settings.lighting, "train_stats": data.train_stats},
        "training_set": {
            "fingerprint": fingerprint(data.paths),
            "n_images": len(data.paths),
            "n_train": int(data.train_idx.size),
            "n_holdout": int(data.hold_idx.size),
            "augmented_copies": settings.augmented_copies,
            "n_cached": int(data.train_levels[0].shape[0]),
        },
        "training": {
            "seed": settings.seed,
            "iterations": settings.resolved_iterations() if cfg.head in AE_HEADS else 0,
            "gan_iterations": settings.resolved_gan_iterations() if cfg.head in GAN_HEADS else 0,
            "batch_size": settings.batch_size,
            "learning_rate": settings.learning_rate,
            "mdaae": cfg.mdaae.as_dict() if cfg.mdaae else None,
            "gan": cfg.gan.as_dict() if cfg.gan else None,
            "knn_bank_size": cfg.bank_size if cfg.head in KNN_HEADS else None,
            "coreset_fraction": settings.coreset_fraction if cfg.head in KNN_HEADS else None,
            "timing": timing,
        },
        "training_curve": curve_summary(ae_curve, gan_curve),
    }
    if threshold_f1 is not None:
        meta["threshold_f1"] = round(float(threshold_f1["threshold"]), 6)
        meta["threshold_f1_detail"] = threshold_f1
    return meta


def save_checkpoint(model: InspectionModel, meta: dict, path: Path) -> None:
    torch.save({"format": CHECKPOINT_FORMAT, "config": model.config.as_dict(), "state_dict": model.state_dict(),
                "meta": meta}, path)


def build_model(head: str, data: TrainingData, parts: Components, settings: TrainSettings) -> InspectionModel:
    if head in AE_HEADS and parts.ae is None:
        raise ValueError(f"head {head} needs a trained MDAAE")
    if head in GAN_HEADS and parts.gan is None:
        raise ValueError(f"head {head} needs a trained GAN scorer")
    if head in KNN_HEADS and parts.bank is None:
        raise ValueError(f"head {head} needs a memory bank")
    w = float(settings.fusion_ae_weight)
    config = ModelConfig(head=head, image_size=settings.image_size, taps=DEFAULT_TAPS,
                         mdaae=parts.ae.config if head in AE_HEADS else None,
                         gan=parts.gan.config if head in GAN_HEADS else None,
                         bank_size=int(parts.bank.shape[0]) if head in KNN_HEADS else 0,
                         fusion_weights={"ae": w, "gan": round(1.0 - w, 6)})
    model = InspectionModel(config)
    model.feature_mean.copy_(data.feature_mean)
    model.feature_std.copy_(data.feature_std)
    if head in AE_HEADS:
        model.mdaae.load_state_dict(parts.ae.state_dict())
    if head in GAN_HEADS:
        model.gan.load_state_dict(parts.gan.state_dict())
    if head in KNN_HEADS:
        model.knn = KnnScorer(parts.bank)
    return model.eval()


def assemble(head: str, data: TrainingData, parts: Components, settings: TrainSettings, out_dir: Path,
             name: Optional[str] = None) -> Path:
    """Build the ``head`` model from trained parts, calibrate it on the hold-out and write the bundle."""
    started = time.perf_counter()
    device = settings.device
    model = build_model(head, data, parts, settings).to(device)
    score_stats = fit_term_statistics(model, data, device)
    raw_hold = raw_image_scores(model, data.hold_images, device)
    offset = float(raw_hold.mean())
    scale = float(raw_hold.std(ddof=1)) if raw_hold.size > 1 else 0.0
    # Floor the scale: a handful of near-identical hold-out scores must not blow the units up.
    scale = max(scale, 0.05 * abs(offset), 1e-6)
    model.score_offset.fill_(offset)
    model.score_scale.fill_(scale)
    calibration = far_threshold((raw_hold - offset) / scale, settings.far_target)
    threshold_f1 = _validation_threshold(model, data, settings, device) if settings.validation else None
    timing = {**data.timing, **parts.timing, "calibration_s": round(time.perf_counter() - started, 2)}
    head_settings = TrainSettings(**{**settings.__dict__, "head": head})
    meta = build_meta(model, head_settings, name or head, data, calibration, threshold_f1, score_stats, parts, timing)
    out_dir.mkdir(parents=True, exist_ok=True)
    model = model.cpu()
    save_checkpoint(model, meta, out_dir / CHECKPOINT_NAME)
    (out_dir / CURVE_NAME).write_text(json.dumps({
        "head": head, "gan": head in GAN_HEADS,
        "points": parts.gan_curve if head in GAN_HEADS else [],
        "mdaae_points": parts.ae_curve if head in AE_HEADS else []}, indent=1), encoding="utf-8")
    if settings.export:
        meta = export_bundle(model, meta, out_dir, sample_images=data.hold_images[:4])
    else:
        write_meta(out_dir, meta)
    log.info("bundle written", out=str(out_dir), head=head, threshold=meta["threshold"])
    return out_dir


def _validation_threshold(model: InspectionModel, data: TrainingData, settings: TrainSettings, device: str) -> dict:
    items = list_test_items(settings.validation)
    paths, images = load_images([it.path for it in items], "validation images")
    kept = set(paths)
    labels = np.array([it.label for it in items if it.path in kept])
    tensors = torch.from_numpy(np.stack([data.preprocessor.prepare(img)[0] for img in images]))
    return f1_threshold(normalised_scores(model, tensors, device), labels)
