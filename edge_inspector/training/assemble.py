"""One head from trained parts: load them into an :class:`InspectionModel`, fit score statistics
and fusion weights, calibrate the threshold on the hold-out, write the bundle."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from edge_inspector.datasets import list_test_items, load_images
from edge_inspector.drift import drift_reference
from edge_inspector.inference.bundle import write_meta
from edge_inspector.logging import get_logger
from edge_inspector.preprocess import Preprocessor
from edge_inspector.training.backbone import DEFAULT_TAPS
from edge_inspector.training.calibrate import f1_threshold
from edge_inspector.training.crossfit import threshold_rules
from edge_inspector.training.components import Components
from edge_inspector.training.export import CHECKPOINT_NAME, export_bundle
from edge_inspector.training.features import TrainingData
from edge_inspector.training.fusion import fixed_fusion, full_weights, select_fusion_weights
from edge_inspector.training.knn import KnnScorer
from edge_inspector.training.meta import build_meta, save_checkpoint
from edge_inspector.training.scoring import AE_HEADS, GAN_HEADS, KNN_HEADS, InspectionModel, ModelConfig
from edge_inspector.training.settings import TrainSettings
from edge_inspector.training.term_stats import fit_term_statistics, normalised_scores, raw_image_scores

log = get_logger(__name__)

CURVE_NAME = "training_curve.json"


def assemble(head: str, data: TrainingData, parts: Components, settings: TrainSettings, out_dir: Path,
             name: Optional[str] = None) -> Path:
    """Build the ``head`` model from trained parts, calibrate it on the hold-out and write the bundle."""
    started = time.perf_counter()
    if head in AE_HEADS and parts.ae is None:
        raise ValueError(f"head {head} needs a trained autoencoder")
    if head in KNN_HEADS and parts.bank is None:
        raise ValueError(f"head {head} needs a memory bank")
    device = settings.device
    fixed_w = settings.fusion_ae_weight
    config = ModelConfig(head=head, image_size=settings.image_size, taps=DEFAULT_TAPS,
                         input_shape=(data.preprocessor.input_h, data.preprocessor.input_w),
                         mdaae=parts.ae_config if head in AE_HEADS else None,
                         bank_size=int(parts.bank.shape[0]) if head in KNN_HEADS else 0,
                         fusion_weights={"ae": fixed_w if fixed_w is not None else 0.5,
                                         "knn": 1.0 - (fixed_w if fixed_w is not None else 0.5)},
                         knn_features=settings.knn_features,
                         subspace_dim=int(parts.subspace.shape[1]) if head == "default" and parts.subspace is not None else 0,
                         subspace_bank_size=(int(parts.sub_index.numel())
                                             if head == "default" and parts.subspace is not None and parts.sub_index is not None else 0),
                         critic_width=parts.critic.width if head == "default" and parts.critic is not None else 0)
    model = InspectionModel(config)
    model.feature_mean.copy_(data.feature_mean)
    model.feature_std.copy_(data.feature_std)
    if head in AE_HEADS:
        model.mdaae.load_state_dict(parts.ae.state_dict())
    if model.critic is not None:
        model.critic.load_state_dict(parts.critic.state_dict())
    if head in KNN_HEADS:
        model.knn = KnnScorer(parts.bank)
    if model.subspace is not None:
        model.subspace.copy_(parts.subspace)
        projected = parts.bank @ parts.subspace
        model.knn_sub = KnnScorer(projected if parts.sub_index is None else projected[parts.sub_index])
    model = model.to(device).eval()
    score_stats = fit_term_statistics(model, data.z_clean, data.z_hold, device)
    if head == "default":
        if settings.fusion_weights is not None:
            weights = full_weights(fixed_fusion(settings.fusion_weights, model.available_terms()))
            selection = {"rule": "fixed by the caller (fusion_weights)", "weights": weights}
        elif fixed_w is None:
            weights, selection = select_fusion_weights(model, data.hold_images, device, seed=settings.seed + 4,
                                                       good_features=data.z_hold)
        else:
            weights = full_weights({"ae": float(fixed_w), "knn": 1.0 - float(fixed_w)})
            selection = {"rule": "fixed by the caller (fusion_ae_weight)", "weights": weights}
        model.config.fusion_weights = weights
        score_stats["fusion"] = {"weights": dict(model.config.fusion_weights), "selection": selection}
    raw_hold = raw_image_scores(model, data.hold_images, device)
    offset = float(raw_hold.mean())
    scale = float(raw_hold.std(ddof=1)) if raw_hold.size > 1 else 0.0
    # Floor the scale: a handful of near-identical hold-out scores must not blow the units up.
    scale = max(scale, 0.05 * abs(offset), 1e-6)
    model.score_offset.fill_(offset)
    model.score_scale.fill_(scale)
    hold_scores = (raw_hold - offset) / scale
    curve = parts.curve if head in AE_HEADS else []
    calibration = threshold_rules(model, data.z_clean, parts.bank_source if head in KNN_HEADS else None,
                                  hold_scores, offset, scale, settings.calibration, settings.far_target,
                                  device, hold_is_train=bool(np.array_equal(data.hold_idx, data.train_idx)),
                                  sub_index=parts.sub_index, n_extra_good=data.n_extra_good)
    threshold_f1 = _validation_threshold(model, data.preprocessor, settings, device) if settings.validation else None
    timing = {**data.timing, **parts.timing, "calibration_s": round(time.perf_counter() - started, 2)}
    head_settings = TrainSettings(**{**settings.__dict__, "head": head})
    meta = build_meta(model, head_settings, name or f"{head}", data.paths, int(data.train_idx.size), int(data.hold_idx.size),
                      data.train_stats, calibration, threshold_f1, score_stats,
                      curve, timing,
                      drift=drift_reference(hold_scores, data.image_stats), n_extra_good=data.n_extra_good)
    out_dir.mkdir(parents=True, exist_ok=True)
    model = model.cpu()
    save_checkpoint(model, meta, out_dir / CHECKPOINT_NAME)
    (out_dir / CURVE_NAME).write_text(json.dumps({"head": head, "gan": parts.used_gan and head in GAN_HEADS,
                                                   "points": curve}, indent=1), encoding="utf-8")
    if settings.export:
        meta = export_bundle(model, meta, out_dir, sample_images=data.hold_images[:4])
    else:
        write_meta(out_dir, meta)
    log.info("bundle written", out=str(out_dir), head=head, threshold=meta["threshold"])
    return out_dir


def _validation_threshold(model: InspectionModel, pre: Preprocessor, settings: TrainSettings, device: str) -> dict:
    items = list_test_items(settings.validation)
    paths, images = load_images([it.path for it in items], "validation images")
    kept = set(paths)
    labels = np.array([it.label for it in items if it.path in kept])
    tensors = torch.from_numpy(np.stack([pre.prepare(img)[0] for img in images]))
    scores = normalised_scores(model, tensors, device)
    return f1_threshold(scores, labels)
