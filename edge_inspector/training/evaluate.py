"""``edge-inspector evaluate``: run the shipped ONNX bundle through the runtime engine on a labelled
MVTec-layout folder and measure it (GUIDE.md: CLI contract, evaluate --json keys).

No torch here: evaluation goes through ``OnnxEngine`` and the runtime ``Preprocessor``, so the
figures are those of what a station runs. Only ``DIR/test`` and ``DIR/ground_truth`` are read,
never ``DIR/train``.

Memory stays bounded: images are decoded one batch at a time; for pixel metrics each anomaly map
is mapped back to its image's geometry (the model input is a resize of the whole frame, or of the
ROI), compared with the mask there, and both are area-reduced to ``PIXEL_GRID``² (128², as the
reference figures in the issue) before being kept.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from edge_inspector.datasets import TestItem, list_test_items, read_mask
from edge_inspector.errors import DatasetError, InputError, ModelBundleError
from edge_inspector.imageio import read_image
from edge_inspector.inference.bundle import load_bundle
from edge_inspector.inference.onnx_engine import OnnxEngine
from edge_inspector.logging import get_logger
from edge_inspector.preprocess import Geometry, Preprocessor, strong_light, to_bgr_uint8
from edge_inspector.training import metrics as M

log = get_logger(__name__)

PIXEL_GRID = 128
LATENCY_RUNS = 30

# The diagnostics of a threshold rule (crossfit.train_pooled_threshold) an evaluation copies.
RULE_CHECKS = ("ks_p", "ks_p_lower", "median_shift", "n_holdout", "n_train", "train_max")


def map_to_image(amap: np.ndarray, geom: Geometry) -> np.ndarray:
    """Model-input-sized map → original-frame-sized map; outside the ROI = map minimum."""
    a = np.asarray(amap, dtype=np.float32)
    roi = cv2.resize(a, (geom.roi_w, geom.roi_h), interpolation=cv2.INTER_LINEAR)
    if (geom.roi_x, geom.roi_y, geom.roi_w, geom.roi_h) == (0, 0, geom.orig_w, geom.orig_h):
        return roi
    full = np.full((geom.orig_h, geom.orig_w), float(a.min()), dtype=np.float32)
    full[geom.roi_y : geom.roi_y + geom.roi_h, geom.roi_x : geom.roi_x + geom.roi_w] = roi
    return full


def make_preprocessor(bundle) -> Preprocessor:
    """The runtime preprocessing recorded in model.json (lighting, training statistics)."""
    pre = bundle.meta.get("preprocess") or {}
    lighting = pre.get("lighting") or "none"
    if lighting == "flat_field":
        raise ModelBundleError(
            f"{bundle.directory / 'model.json'}: lighting 'flat_field' needs the station's reference image; evaluate supports none, clahe, match_train"
        )
    try:
        return Preprocessor(bundle.input_shape, lighting=lighting, train_stats=pre.get("train_stats"))
    except Exception as exc:  # InputError from Preprocessor: name the bundle file
        raise ModelBundleError(f"{bundle.directory / 'model.json'}: preprocess section unusable ({exc})") from None


def _clean(v: Any) -> Any:
    """NaN/inf → None (strict JSON), numpy scalars → Python."""
    if isinstance(v, dict):
        return {k: _clean(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_clean(x) for x in v]
    if isinstance(v, (np.floating, float)):
        f = float(v)
        return f if math.isfinite(f) else None
    if isinstance(v, np.integer):
        return int(v)
    return v


class _Batch:
    def __init__(self) -> None:
        self.items: list[TestItem] = []
        self.tensors: list[np.ndarray] = []
        self.geoms: list[Geometry] = []
        self.shapes: list[tuple[int, int]] = []

    def __len__(self) -> int:
        return len(self.items)


def evaluate_bundle(
    model_dir: str | Path,
    data_dir: str | Path,
    report_dir: str | Path | None = None,
    batch_size: int = 8,
    providers=None,
    threads: int = 0,
) -> dict:
    """Evaluate ``model_dir`` on ``data_dir/test``; returns the ``evaluate --json`` dictionary."""
    t_start = time.perf_counter()
    bundle = load_bundle(model_dir)
    engine = OnnxEngine.from_bundle(bundle, providers=providers, intra_op_threads=threads)
    engine.warm_up(2)
    pre = make_preprocessor(bundle)
    items = list_test_items(data_dir)
    batch_size = max(1, int(batch_size))

    paths: list[Path] = []
    mask_paths: list[Path | None] = []
    types: list[str] = []
    scores: list[float] = []
    red_maps: list[np.ndarray] = []  # PIXEL_GRID² map per image (all images, for the report)
    red_masks: dict[int, np.ndarray] = {}  # index → PIXEL_GRID² mask, images usable for pixel metrics
    strong_scores: list[float] = []
    latency_inputs: list[np.ndarray] = []
    skipped: list[str] = []
    no_mask = 0

    def flush(b: _Batch) -> None:
        nonlocal no_mask
        if not len(b):
            return
        maps, sc = engine.infer(np.stack(b.tensors))
        for item, amap, s, geom, shape in zip(b.items, maps, sc, b.geoms, b.shapes):
            idx = len(paths)
            paths.append(item.path)
            mask_paths.append(item.mask_path)
            types.append(item.defect_type)
            scores.append(float(s))
            full = map_to_image(amap, geom)
            red_maps.append(M.reduce_map(full, PIXEL_GRID))
            if item.label == 1 and item.mask_path is None:
                no_mask += 1  # defect without a mask: image metrics only
            else:
                mask = read_mask(item, shape)  # DatasetError when its size differs from the image
                red_masks[idx] = M.reduce_mask(mask, PIXEL_GRID)
        b.__init__()

    batch = _Batch()
    sl_batch: list[np.ndarray] = []
    for item in items:
        try:
            img = read_image(item.path)
        except DatasetError as exc:
            skipped.append(str(exc))
            log.warning("skipping unreadable test image", error=str(exc))
            continue
        tensor, geom = pre.prepare(img)
        if len(latency_inputs) < 8:
            latency_inputs.append(tensor)
        batch.items.append(item)
        batch.tensors.append(tensor)
        batch.geoms.append(geom)
        batch.shapes.append(img.shape[:2])
        if item.label == 0:
            sl_tensor, _ = pre.prepare(strong_light(to_bgr_uint8(img)))
            sl_batch.append(sl_tensor)
            if len(sl_batch) >= batch_size:
                strong_scores.extend(float(x) for x in engine.infer(np.stack(sl_batch))[1])
                sl_batch = []
        if len(batch) >= batch_size:
            flush(batch)
    flush(batch)
    if sl_batch:
        strong_scores.extend(float(x) for x in engine.infer(np.stack(sl_batch))[1])
    if skipped:
        log.warning(f"skipped {len(skipped)} unreadable test images", skipped=len(skipped), kept=len(paths))
    if not paths:
        raise DatasetError(f"{Path(data_dir) / 'test'}: no readable test images ({len(skipped)} skipped; first: {skipped[0] if skipped else '-'})")

    # Single-image latency, as a station runs it (batch 1, real test inputs).
    lat = []
    for k in range(LATENCY_RUNS):
        x = latency_inputs[k % len(latency_inputs)][None]
        t0 = time.perf_counter()
        engine.infer(x)
        lat.append((time.perf_counter() - t0) * 1000.0)

    labels = np.array([0 if t == "good" else 1 for t in types])
    s = np.array(scores, dtype=np.float64)
    threshold = bundle.threshold
    far, recall = M.rate_at_threshold(labels, s, threshold)
    f1, f1_thr = M.f1_max(labels, s)
    idx = sorted(red_masks)
    pix_maps = [red_maps[i] for i in idx]
    pix_masks = [red_masks[i] for i in idx]
    has_defect_pixels = any(m.any() for m in pix_masks)
    strong = np.array(strong_scores, dtype=np.float64)

    result: dict[str, Any] = {
        "image_auroc": M.image_auroc(labels, s),
        "image_ap": M.image_ap(labels, s),
        "image_f1_max": f1,
        "f1_max_threshold": f1_thr,
        "pixel_auroc": M.pixel_auroc(pix_maps, pix_masks) if has_defect_pixels else math.nan,
        "aupro_30": M.aupro(pix_maps, pix_masks, 0.3) if has_defect_pixels else math.nan,
        "threshold": threshold,
        "far_at_threshold": far,
        "recall_at_threshold": recall,
        "far_strong_light": float((strong >= threshold).mean()) if strong.size else math.nan,
        "per_type": M.per_type_auroc(types, s),
        "n_test": len(paths),
        "n_good": int((labels == 0).sum()),
        "n_defective": int((labels == 1).sum()),
        "n_skipped": len(skipped),
        "n_defective_without_mask": no_mask,
        "latency_ms_median": float(np.median(lat)),
        "latency_ms_p99": float(np.percentile(lat, 99)),
        "provider": engine.provider,
        "model": {
            "name": bundle.name,
            "head": bundle.head,
            "sha256": bundle.sha256,
            "image_size": bundle.image_size,
            "input_shape": list(bundle.input_shape),
            "backbone": bundle.meta.get("backbone"),
            "lighting": pre.lighting,
        },
        "pixel_metrics": {"grid": PIXEL_GRID, "n_images": len(pix_maps), "aupro_fpr_limit": 0.3},
        "data": str(Path(data_dir)),
    }
    thr_f1 = bundle.meta.get("threshold_f1")
    if thr_f1 is not None:
        far_f1, recall_f1 = M.rate_at_threshold(labels, s, float(thr_f1))
        result["threshold_f1"] = {
            "threshold": float(thr_f1),
            "far": far_f1,
            "recall": recall_f1,
            "far_strong_light": float((strong >= float(thr_f1)).mean()) if strong.size else math.nan,
        }
    if bundle.meta.get("threshold_far_target") is not None:
        result["threshold_far_target"] = float(bundle.meta["threshold_far_target"])
    # What the calibration left on the table: the ROC's best recall at the FAR the threshold gave
    # (and at the target), beside each threshold rule the bundle recorded.
    result["roc_recall_at_far"] = {"far_at_threshold": M.recall_at_far(labels, s, far)}
    if result.get("threshold_far_target") is not None:
        result["roc_recall_at_far"]["far_target"] = M.recall_at_far(labels, s, result["threshold_far_target"])
    rules = (bundle.meta.get("threshold_calibration") or {}).get("rules") or {}
    result["threshold_rules"] = {}
    for rule, calib in rules.items():
        # the rule's own diagnostics (train_pooled's test), so a results file shows why it pooled or not
        checks = {k: calib[k] for k in RULE_CHECKS if k in calib}
        if "threshold" in calib:
            far_r, recall_r = M.rate_at_threshold(labels, s, float(calib["threshold"]))
            result["threshold_rules"][rule] = {"threshold": float(calib["threshold"]), "far": far_r, "recall": recall_r,
                                               "roc_recall_at_same_far": M.recall_at_far(labels, s, far_r), **checks}
        elif "unavailable" in calib:
            result.setdefault("threshold_rules_unavailable", {})[rule] = {"unavailable": str(calib["unavailable"]), **checks}
    result["eval_seconds"] = time.perf_counter() - t_start
    result = _clean(result)

    if report_dir is not None:
        from edge_inspector.training.report import write_report

        result["report"] = str(
            write_report(
                report_dir,
                result,
                paths=paths,
                types=types,
                scores=s,
                maps=red_maps,
                mask_paths=mask_paths,
                strong_scores=strong,
                data_dir=Path(data_dir),
            )
        )
    engine.close()
    log.info(
        "evaluation done",
        model=bundle.name,
        n_test=result["n_test"],
        image_auroc=result["image_auroc"],
        pixel_auroc=result["pixel_auroc"],
        seconds=round(result["eval_seconds"], 1),
    )
    return result


def cli_evaluate(args) -> int:
    result = evaluate_bundle(args.model, args.data, report_dir=getattr(args, "report", None))
    out = Path(args.json_out)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    except OSError as exc:
        raise InputError(f"{out}: cannot write JSON ({exc.strerror or exc})") from None
    summary = {k: result[k] for k in ("image_auroc", "image_ap", "image_f1_max", "pixel_auroc", "aupro_30",
                                      "threshold", "far_at_threshold", "recall_at_threshold",
                                      "far_strong_light", "n_test", "latency_ms_median")}
    print(json.dumps(summary, indent=2))
    return 0
