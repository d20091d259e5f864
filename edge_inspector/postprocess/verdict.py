"""Verdict and Defect: what postprocess produces and the publisher serialises."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional

VerdictKind = Literal["OK", "NG", "ERROR"]


@dataclass
class Defect:
    bbox: tuple[int, int, int, int]  # x, y, w, h in original-image pixels
    centroid: tuple[float, float]  # x, y in original-image pixels
    area_px: int  # in original-image pixels
    score: float  # max anomaly score inside the region

    def to_dict(self) -> dict:
        return {
            "bbox": [int(v) for v in self.bbox],
            "centroid": [round(float(self.centroid[0]), 1), round(float(self.centroid[1]), 1)],
            "area_px": int(self.area_px),
            "score": round(float(self.score), 4),
        }


@dataclass
class Verdict:
    frame_id: str
    verdict: VerdictKind
    score: Optional[float]
    threshold: Optional[float]
    ts_wall: float
    ts_grab: float
    defects: list[Defect] = field(default_factory=list)
    error: Optional[str] = None
    timings_ms: dict = field(default_factory=dict)
    archive_ref: Optional[str] = None
    # {"name", "sha256"} of the model generation that scored this frame (None = the publisher's
    # default). Set per verdict because a hot swap changes the model between two frames.
    model: Optional[dict] = None
    # "overexposed" / "underexposed" when the image-quality gate took the frame out (ERROR verdict;
    # the result's ``error`` starts with the same word). Counted in metrics and health.
    quality: Optional[str] = None
    # Part identity from the trigger (acquisition/parts.py); None when the trigger named none.
    part_id: Optional[str] = None
    product: Optional[str] = None
    context: Optional[dict] = None
    part_ref: int = 0  # the integer the PLC message echoes (0: no part announced)
    # Images by reference (archive/http.py): the heatmap's archive reference, and the URLs of both
    # files when archive.base_url is set.
    heatmap_ref: Optional[str] = None
    image_url: Optional[str] = None
    heatmap_url: Optional[str] = None
