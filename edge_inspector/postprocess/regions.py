"""Anomaly map → defect regions → Verdict (OK / NG / ERROR).

Coordinates: the map lives on the model-input grid (H×W = the bundle's input_shape, or whatever size the model outputs);
``Geometry`` says which part of the original frame (the ROI) was resized onto that grid. Map pixel
``i`` covers original pixels ``[roi_x + i·sx, roi_x + (i+1)·sx)`` with ``sx = roi_w / map_w``, so a
region's bounding box is widened to whole original pixels and its centroid is the mean of the
covered pixel centres. Areas are reported (and filtered) in original pixels.

The image verdict is decided by the image score alone (NG when ``score ≥ threshold``); regions
only describe *where*. An NG frame may therefore carry no defect when every region is smaller
than ``min_defect_area_px`` — the part is still rejected, the PLC just gets no coordinates.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import cv2
import numpy as np

from edge_inspector.postprocess.verdict import Defect, Verdict
from edge_inspector.preprocess.core import Geometry


@dataclass(frozen=True)
class RegionSettings:
    """Postprocess parameters for one model/threshold generation (immutable: swapped whole)."""

    threshold: float  # image-score threshold: NG when score >= threshold
    map_threshold: Optional[float] = None  # per-pixel threshold; None = the image threshold
    min_defect_area_px: int = 16  # in original-image pixels
    max_defects: int = 16

    @property
    def pixel_threshold(self) -> float:
        return self.threshold if self.map_threshold is None else self.map_threshold


def find_defects(anomaly_map: np.ndarray, geometry: Geometry, settings: RegionSettings) -> list[Defect]:
    """Connected regions of ``anomaly_map >= pixel_threshold`` in original-image pixels, largest
    score first, at most ``max_defects``, each at least ``min_defect_area_px`` original pixels."""
    amap = np.asarray(anomaly_map, dtype=np.float32)
    if amap.ndim == 3 and amap.shape[0] == 1:
        amap = amap[0]
    if amap.ndim != 2 or amap.size == 0:
        raise ValueError(f"anomaly map must be H×W, got shape {tuple(amap.shape)}")
    map_h, map_w = amap.shape
    scale_x = geometry.roi_w / map_w
    scale_y = geometry.roi_h / map_h
    # NaN compares False, so non-finite pixels never form regions.
    mask = (amap >= settings.pixel_threshold).astype(np.uint8)
    if not mask.any():
        return []
    n_labels, labels, stats, centroids = cv2.connectedComponentsWithStats(mask, connectivity=8)
    roi_right = geometry.roi_x + geometry.roi_w
    roi_bottom = geometry.roi_y + geometry.roi_h
    defects: list[Defect] = []
    for label in range(1, n_labels):  # label 0 is the background
        x, y, w, h, area = (int(v) for v in stats[label])
        area_original = area * scale_x * scale_y
        if area_original < settings.min_defect_area_px:
            continue
        x0 = geometry.roi_x + math.floor(x * scale_x)
        y0 = geometry.roi_y + math.floor(y * scale_y)
        x1 = min(roi_right, geometry.roi_x + math.ceil((x + w) * scale_x))
        y1 = min(roi_bottom, geometry.roi_y + math.ceil((y + h) * scale_y))
        cx, cy = centroids[label]
        # centroid of map-pixel centres → centre of the covered original pixels (index convention)
        centroid = (geometry.roi_x + (cx + 0.5) * scale_x - 0.5, geometry.roi_y + (cy + 0.5) * scale_y - 0.5)
        region_score = float(amap[labels == label].max())
        defects.append(Defect(bbox=(x0, y0, x1 - x0, y1 - y0), centroid=centroid, area_px=int(round(area_original)), score=region_score))
    defects.sort(key=lambda d: d.score, reverse=True)
    return defects[: settings.max_defects]


def decide(
    frame_id: str,
    ts_wall: float,
    ts_grab: float,
    score: float,
    anomaly_map: np.ndarray,
    geometry: Geometry,
    settings: RegionSettings,
) -> Verdict:
    """The verdict for one inspected frame. A non-finite score or threshold is an ERROR, never an
    OK: NaN compares False with everything, so ``score >= NaN`` would pass every part. The config
    and the commands already refuse such thresholds; this is the last line of defence."""
    if not _finite(settings.threshold):
        return error_verdict(frame_id, ts_wall, ts_grab, f"threshold is not a finite number ({settings.threshold})", None)
    if not _finite(score):
        return error_verdict(frame_id, ts_wall, ts_grab, f"model produced a non-finite score ({score})", settings.threshold)
    score = float(score)
    is_ng = score >= settings.threshold
    defects = find_defects(anomaly_map, geometry, settings) if is_ng else []
    return Verdict(
        frame_id=frame_id,
        verdict="NG" if is_ng else "OK",
        score=score,
        threshold=settings.threshold,
        ts_wall=ts_wall,
        ts_grab=ts_grab,
        defects=defects,
    )


def _finite(value: Optional[float]) -> bool:
    try:
        return value is not None and math.isfinite(float(value))
    except (TypeError, ValueError):
        return False


def error_verdict(frame_id: str, ts_wall: float, ts_grab: float, reason: str, threshold: Optional[float]) -> Verdict:
    """A frame that could not be inspected still yields a verdict: the part must not vanish."""
    return Verdict(
        frame_id=frame_id,
        verdict="ERROR",
        score=None,
        threshold=threshold,
        ts_wall=ts_wall,
        ts_grab=ts_grab,
        error=reason,
    )
