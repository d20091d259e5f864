"""model.json content of a trained bundle, and the torch checkpoint beside it."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch

from edge_inspector import BUNDLE_FORMAT_VERSION, __version__
from edge_inspector.datasets import fingerprint
from edge_inspector.inference.bundle import io_spec
from edge_inspector.training.backbone import BACKBONE_NAME
from edge_inspector.training.export import CHECKPOINT_FORMAT
from edge_inspector.training.scoring import GAN_HEADS, KNN_HEADS, InspectionModel, score_units_note
from edge_inspector.training.settings import TrainSettings


def build_meta(
    model: InspectionModel,
    settings: TrainSettings,
    name: str,
    train_paths: list[Path],
    n_train: int,
    n_holdout: int,
    train_stats: dict,
    calibration: dict,
    threshold_f1: Optional[dict],
    score_stats: dict,
    curve: list[dict],
    timing: dict,
    drift: Optional[dict] = None,
    n_extra_good: int = 0,
) -> dict:
    cfg = model.config
    meta = {
        "format_version": BUNDLE_FORMAT_VERSION,
        "package_version": __version__,
        "name": name,
        "head": cfg.head,
        "backbone": BACKBONE_NAME,
        "image_size": cfg.image_size,
        "input_shape": list(cfg.shape),
        "input": io_spec()[0],
        "outputs": io_spec()[1],
        "fusion_levels": [t.as_dict() for t in cfg.taps],
        "fusion_weights": dict(cfg.fusion_weights) if cfg.head == "default" else None,
        "knn_features": cfg.knn_features if cfg.head in KNN_HEADS else None,
        "subspace_dim": cfg.subspace_dim if cfg.head == "default" else None,
        "subspace_bank_size": (cfg.subspace_bank_size or cfg.bank_size) if cfg.head == "default" and cfg.subspace_dim else None,
        # the GAN critic behind the "gan" term (0: none; in the graph only if that term's weight ≠ 0)
        "critic_width": cfg.critic_width if cfg.head == "default" else None,
        "threshold": round(float(calibration["threshold"]), 6),
        "threshold_far_target": settings.far_target,
        "threshold_calibration": calibration,
        "score_normalisation": {
            "kind": "affine_on_good_holdout",
            "offset": float(model.score_offset),
            "scale": float(model.score_scale),
            "note": score_units_note(),
            "image_score": "max of the smoothed map",
            "smoothing_sigma_px": cfg.sigma,
            # where the Gaussian runs: on the stride-8 grid before upsampling, or on the upsampled map
            "smoothed_on": "grid" if cfg.smooth_on_grid else "image",
            **score_stats,
        },
        "preprocess": {"lighting": settings.lighting, "train_stats": train_stats},
        "training_set": {
            "fingerprint": fingerprint(train_paths),
            "n_images": len(train_paths),
            "n_train": n_train,
            "n_holdout": n_holdout,
            "augmented_copies": settings.augmented_copies,
            "extra_good": {"folder": settings.extra_good, "n_images": n_extra_good} if settings.extra_good else None,
        },
        # calibration scores and image statistics for the station's drift monitor (drift.py)
        "drift_reference": drift,
        "training": {
            "seed": settings.seed,
            "iterations": settings.resolved_iterations(),
            "batch_size": settings.batch_size,
            "learning_rate": settings.learning_rate,
            "gan": settings.gan.as_dict() if cfg.head in GAN_HEADS else None,
            "mdaae": cfg.mdaae.as_dict() if cfg.mdaae else None,
            "knn_bank_size": cfg.bank_size if cfg.head in KNN_HEADS else None,
            "coreset_fraction": settings.coreset_fraction if cfg.head in KNN_HEADS else None,
            "timing": timing,
        },
        "training_curve": curve_summary(curve),
    }
    if threshold_f1 is not None:
        meta["threshold_f1"] = round(float(threshold_f1["threshold"]), 6)
        meta["threshold_f1_detail"] = threshold_f1
    return meta


def curve_summary(curve: list[dict]) -> dict:
    if not curve:
        return {"points": [], "final": None}
    return {
        "points": [{"iteration": p["iteration"], "frechet": p["frechet"], "eval_l2": p["eval_l2"]} for p in curve],
        "final": curve[-1],
        "frechet_initial": curve[0]["frechet"],
        "frechet_final": curve[-1]["frechet"],
    }


def save_checkpoint(model: InspectionModel, meta: dict, path: Path) -> None:
    torch.save(
        {"format": CHECKPOINT_FORMAT, "config": model.config.as_dict(), "state_dict": model.state_dict(), "meta": meta},
        path,
    )
