"""Is this frame one that the station's camera gives? (issue 8, class 3)

A frame of another size or channel count than the station's camera produces was not taken by
that camera (a stray file in a folder camera, a wrong camera on the cable, a sensor ROI set by
hand): the model would score it all the same and publish a confident OK or NG. The pipeline
turns it into an ERROR verdict naming what is wrong instead.

The expectation comes from ``camera.expect``; sizes left unset are derived from the model's
input size S: each side from ceil(S/4) (more upsampling invents detail) to 32·S (more
shrinking loses defects of a few pixels). ``max_megapixels`` is also the limit image files are
checked against from their header, before decoding (acquisition/folder.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import numpy as np

from edge_inspector.config.models import FrameExpectConfig
from edge_inspector.preprocess.core import input_shape

MIN_SIDE_FRACTION = 4  # default min side = ceil(S / 4)
MAX_SIDE_FACTOR = 32  # default max side = 32 · S


def max_pixels(cfg: FrameExpectConfig) -> int:
    return int(cfg.max_megapixels * 1_000_000)


@dataclass(frozen=True)
class FrameExpectation:
    min_width: int
    max_width: int
    min_height: int
    max_height: int
    max_pixels: int
    channels: tuple[int, ...]
    derived: bool  # True when any size came from the model input size (said in the error)

    @classmethod
    def from_config(cls, cfg: FrameExpectConfig, model_input_size: "int | tuple[int, int]") -> "FrameExpectation":
        """``model_input_size``: the model input side, or its (height, width)."""
        h, w = input_shape(model_input_size)
        sizes = (cfg.min_width, cfg.max_width, cfg.min_height, cfg.max_height)
        return cls(
            min_width=cfg.min_width or math.ceil(w / MIN_SIDE_FRACTION),
            max_width=cfg.max_width or MAX_SIDE_FACTOR * w,
            min_height=cfg.min_height or math.ceil(h / MIN_SIDE_FRACTION),
            max_height=cfg.max_height or MAX_SIDE_FACTOR * h,
            max_pixels=max_pixels(cfg),
            channels=tuple(cfg.channels),
            derived=any(v is None for v in sizes),
        )

    def problem(self, image: np.ndarray) -> Optional[str]:
        """None for a frame this station's camera gives, else a one-line reason naming the key."""
        if image.ndim not in (2, 3):
            return f"frame has {image.ndim} dimensions, not a camera image"
        h, w = image.shape[:2]
        channels = 1 if image.ndim == 2 else image.shape[2]
        size = f"{w}×{h} frame"
        note = " (derived from the model input size; set camera.expect to this camera's frames)" if self.derived else ""
        if w < self.min_width:
            return f"{size} is narrower than camera.expect.min_width={self.min_width}{note}"
        if w > self.max_width:
            return f"{size} is wider than camera.expect.max_width={self.max_width}{note}"
        if h < self.min_height:
            return f"{size} is lower than camera.expect.min_height={self.min_height}{note}"
        if h > self.max_height:
            return f"{size} is higher than camera.expect.max_height={self.max_height}{note}"
        if w * h > self.max_pixels:
            return f"{size} is larger than camera.expect.max_megapixels={self.max_pixels / 1e6:g}"
        if channels not in self.channels:
            return f"{size} has {channels} channels, camera.expect.channels allows {list(self.channels)}"
        return None
