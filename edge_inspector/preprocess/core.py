"""ROI crop, lighting normalisation, resize and backbone normalisation."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Optional, Sequence

import cv2
import numpy as np

from edge_inspector.errors import InputError
from edge_inspector.lightings import LIGHTINGS
from edge_inspector.preprocess.levelling import LEVELLINGS, REFERENCE_SIDE, Reference, level
from edge_inspector.preprocess.quality import BLACK_LEVEL, SATURATED_LEVEL, sampled_luma
from edge_inspector.preprocess.tone import TONE_CURVES, gain_gamma_offset_lut, histogram_lut, rank_positions

Lighting = Literal[LIGHTINGS]

# EfficientNet-Lite weights were trained on TF-style inputs: (x - 127) / 128. Measured 4-7 AUROC
# points better than ImageNet mean/std on these weights.
TF_MEAN = 127.0
TF_STD = 128.0


@dataclass(frozen=True)
class Geometry:
    """Where the model input came from in the original frame (to map defects back)."""

    orig_h: int
    orig_w: int
    roi_x: int
    roi_y: int
    roi_w: int
    roi_h: int
    input_h: int  # the model input is input_h × input_w
    input_w: int

    def map_to_original(self, x: float, y: float) -> tuple[float, float]:
        """Model-input pixel (x, y) → original-image pixel."""
        return (self.roi_x + x * self.scale_x, self.roi_y + y * self.scale_y)

    @property
    def scale_x(self) -> float:
        return self.roi_w / self.input_w

    @property
    def scale_y(self) -> float:
        return self.roi_h / self.input_h


def input_shape(shape: "int | Sequence[int]") -> tuple[int, int]:
    """A model input size as (height, width): an int is a square side (bundles before input_shape)."""
    if isinstance(shape, (int, np.integer)):
        return int(shape), int(shape)
    h, w = (int(v) for v in shape)
    return h, w


def aspect_input_shape(frame_h: int, frame_w: int, size: int, multiple: int = 32) -> tuple[int, int]:
    """The model input (height, width) for frames of ``frame_h × frame_w`` with their aspect ratio:
    the short side gets ``size`` — what a square ``size × size`` input gave it, so no axis is
    sampled coarser than before — except that a frame whose long side already has ``size`` pixels
    or more is not upsampled (that adds cost, not detail). The long side is capped at
    ``4 · size``; each side is a multiple of ``multiple`` (the backbone's coarsest stride, so every
    feature level has whole cells).

    Squashing a tall frame into a square throws away resolution along its long side, where a thin
    crack runs, and shrinking the short side below ``size`` costs detail across it
    (docs/model.md, "Input geometry")."""
    if frame_h <= 0 or frame_w <= 0:
        raise InputError(f"frame size {frame_w}×{frame_h} is empty")
    short, long = min(frame_h, frame_w), max(frame_h, frame_w)
    scale = min(size / short, max(1.0, size / long))
    scale = min(scale, 4 * size / long)
    side = lambda v: max(multiple, int(round(v * scale / multiple)) * multiple)
    return side(frame_h), side(frame_w)


def to_bgr_uint8(image: np.ndarray) -> np.ndarray:
    """Any decoded frame → H×W×3 uint8 BGR. Raises InputError for shapes a camera cannot produce."""
    if not isinstance(image, np.ndarray) or image.size == 0:
        raise InputError("frame is empty")
    img = image
    if img.dtype == np.uint16:
        img = (img >> 8).astype(np.uint8)
    elif img.dtype in (np.float32, np.float64):
        img = np.clip(img * (255.0 if img.max() <= 1.0 else 1.0), 0, 255).astype(np.uint8)
    elif img.dtype != np.uint8:
        raise InputError(f"frame has unsupported dtype {img.dtype}")
    if img.ndim == 2:
        return cv2.cvtColor(img, cv2.COLOR_GRAY2BGR)
    if img.ndim == 3 and img.shape[2] == 1:
        return cv2.cvtColor(img[:, :, 0], cv2.COLOR_GRAY2BGR)
    if img.ndim == 3 and img.shape[2] == 3:
        return img
    if img.ndim == 3 and img.shape[2] == 4:
        return cv2.cvtColor(img, cv2.COLOR_BGRA2BGR)
    raise InputError(f"frame has unsupported shape {tuple(image.shape)} (want H×W, H×W×1, H×W×3 or H×W×4)")


def normalise_tf(rgb_u8: np.ndarray) -> np.ndarray:
    """H×W×3 uint8 RGB → 3×H×W float32 with (x - 127) / 128."""
    x = rgb_u8.astype(np.float32)
    x -= TF_MEAN
    x *= 1.0 / TF_STD
    return np.ascontiguousarray(x.transpose(2, 0, 1))


def _slope_band(band) -> Optional[dict]:
    """The bundle's ``exposure.slope_band``, or None when absent; a malformed one is an InputError."""
    if band is None:
        return None
    try:
        return {k: [float(band[k][0]), float(band[k][1])] for k in ("low", "high")}
    except (KeyError, IndexError, TypeError, ValueError):
        raise InputError("model.json: preprocess.train_stats.exposure.slope_band must hold low and high as two numbers each "
                         f"(got {band!r:.80})") from None


def _levelling_reference(exposure: dict) -> Optional[Reference]:
    """The bundle's levelling reference (``exposure.levelling: reference``), None for the plane fit
    of bundles without the key; an unknown or malformed one is an InputError."""
    levelling = exposure.get("levelling", "plane")
    if levelling not in LEVELLINGS:
        raise InputError(f"model.json: preprocess.train_stats.exposure.levelling must be one of {', '.join(LEVELLINGS)} "
                         f"(got {levelling!r:.40})")
    if levelling == "plane":
        return None
    try:
        return Reference.from_json(exposure["reference"])
    except (KeyError, TypeError, ValueError) as exc:
        raise InputError("model.json: preprocess.train_stats.exposure.reference must hold luma and clipped as "
                         f"{REFERENCE_SIDE}×{REFERENCE_SIDE} grids of numbers ({str(exc)[:80] or type(exc).__name__})") from None


class Preprocessor:
    """Configured once per station (or per training run); ``prepare`` is called per frame."""

    def __init__(
        self,
        image_size: "int | Sequence[int]",
        roi: Optional[Sequence[int]] = None,
        lighting: Lighting = "none",
        flat_field_reference: Optional[np.ndarray | str | Path] = None,
        clahe_clip_limit: float = 2.0,
        clahe_tile_grid: int = 8,
        train_stats: Optional[dict] = None,
    ) -> None:
        self.input_h, self.input_w = input_shape(image_size)
        if min(self.input_h, self.input_w) < 32:
            raise InputError(f"model input {self.input_w}×{self.input_h} is too small (min 32 a side)")
        self.roi = tuple(int(v) for v in roi) if roi is not None else None
        self.lighting = lighting
        self._clahe = cv2.createCLAHE(clipLimit=float(clahe_clip_limit), tileGridSize=(clahe_tile_grid, clahe_tile_grid))
        self._flat = None
        if lighting == "flat_field":
            if flat_field_reference is None:
                raise InputError("lighting 'flat_field' needs a reference image")
            ref = flat_field_reference
            if not isinstance(ref, np.ndarray):
                from edge_inspector.imageio import read_image

                ref = read_image(ref)
            self._flat_source = to_bgr_uint8(ref)
        # match_train: per-channel mean/std (BGR, after ROI) of the training images, from the bundle.
        self.train_stats = train_stats
        if lighting == "match_train" and not train_stats:
            raise InputError("lighting 'match_train' needs training-set statistics from the model bundle (model.json: preprocess.train_stats)")
        # match_hist / match_tone: the training images' luma percentiles (exposure_stats in
        # preprocess/quality.py).
        self._train_percentiles = None
        self._reclip_from: Optional[float] = None
        self._slope_band: Optional[dict] = None
        self._tone_curve = "histogram"
        self._reference: Optional[Reference] = None
        if lighting in ("match_hist", "match_tone"):
            exposure = (train_stats or {}).get("exposure") or {}
            percentiles = exposure.get("luma_percentiles")
            if not percentiles or len(percentiles) != 101:
                raise InputError(f"lighting '{lighting}' needs the training images' luma percentiles from the model bundle "
                                 "(model.json: preprocess.train_stats.exposure.luma_percentiles; retrain with this version)")
            self._train_percentiles = np.asarray(percentiles, dtype=np.float64)
            # Recorded at training time: bundles from before the rule have no key and keep the
            # plain tone curve they were trained with.
            reclip = exposure.get("reclip_from")
            self._reclip_from = float(reclip) if reclip is not None else None
            # The same holds for the band of training slopes: without it match_hist levels every
            # frame flat, as those bundles were trained.
            self._slope_band = _slope_band(exposure.get("slope_band"))
            # And for the curve: bundles from before the key matched the whole histogram.
            self._tone_curve = exposure.get("tone_curve", "histogram")
            if self._tone_curve not in TONE_CURVES:
                raise InputError(f"model.json: preprocess.train_stats.exposure.tone_curve must be one of {', '.join(TONE_CURVES)} "
                                 f"(got {self._tone_curve!r:.40})")
            # And for the levelling: bundles from before the key fit the plane to the frame's luma.
            self._reference = _levelling_reference(exposure)

    # -- geometry -------------------------------------------------------------------------
    def _crop(self, img: np.ndarray) -> tuple[np.ndarray, Geometry]:
        h, w = img.shape[:2]
        if self.roi is None:
            x, y, rw, rh = 0, 0, w, h
        else:
            x, y, rw, rh = self.roi
            if x >= w or y >= h:
                raise InputError(f"ROI {list(self.roi)} lies outside the {w}×{h} frame")
            rw = min(rw, w - x)
            rh = min(rh, h - y)
        return img[y : y + rh, x : x + rw], Geometry(h, w, x, y, rw, rh, self.input_h, self.input_w)

    # -- lighting -------------------------------------------------------------------------
    def _flat_field(self, img: np.ndarray) -> np.ndarray:
        if self._flat is None or self._flat.shape[:2] != img.shape[:2]:
            ref = cv2.resize(self._flat_source, (img.shape[1], img.shape[0]), interpolation=cv2.INTER_AREA)
            ref = cv2.GaussianBlur(ref.astype(np.float32), (0, 0), sigmaX=max(img.shape[:2]) / 32.0)
            self._flat = np.maximum(ref, 1.0) / np.maximum(ref.mean(axis=(0, 1), keepdims=True), 1.0)
        return np.clip(img.astype(np.float32) / self._flat, 0, 255).astype(np.uint8)

    def _match_train(self, img: np.ndarray) -> np.ndarray:
        mean = np.asarray(self.train_stats["mean"], dtype=np.float32).reshape(1, 1, 3)
        std = np.asarray(self.train_stats["std"], dtype=np.float32).reshape(1, 1, 3)
        f = img.astype(np.float32)
        cur_mean = f.mean(axis=(0, 1), keepdims=True)
        cur_std = f.std(axis=(0, 1), keepdims=True) + 1e-3
        return np.clip((f - cur_mean) / cur_std * std + mean, 0, 255).astype(np.uint8)

    def _match_hist(self, img: np.ndarray) -> np.ndarray:
        """Level the illumination slope beyond the training frames' band (``levelling.level``;
        all of it for a bundle without ``exposure.slope_band``), then ``_match_tone``: undoes a
        smooth gradient and any global monotonic change of light (gain, gamma, offset) up to
        clipping, keeps colour ratios, and leaves local structure alone."""
        return self._match_tone(level(img, self._slope_band, self._reference))

    def _match_tone(self, img: np.ndarray) -> np.ndarray:
        """One tone curve (the same LUT on every channel) that maps the frame's luma onto the
        training images': undoes a global change of light (gain, gamma, offset) up to clipping
        (preprocess/tone.py: the fitted gain-gamma-offset curve, or full histogram matching for
        bundles that recorded no ``exposure.tone_curve``). Alone (lighting ``match_tone``) it
        leaves a frame's own brightness slope in place (why that matters: preprocess/levelling.py).
        When the training frames clipped a large area, the frame's same share (and a margin) maps
        to 255 (``quality.reclip_percentile``, recorded in the bundle as ``exposure.reclip_from``)."""
        luma = sampled_luma(img)  # the same subsample exposure_stats took of the training images
        # the frame's rank positions serve the histogram curve and the re-clipping: one histogram
        positions = rank_positions(luma) if self._tone_curve == "histogram" or self._reclip_from is not None else None
        if self._tone_curve == "histogram":
            lut = histogram_lut(positions, self._train_percentiles)
        else:
            lut = gain_gamma_offset_lut(luma, self._train_percentiles, BLACK_LEVEL, SATURATED_LEVEL)
        if self._reclip_from is not None:
            lut[positions >= self._reclip_from] = 255.0
        return cv2.LUT(img, np.clip(np.rint(lut), 0, 255).astype(np.uint8))

    def normalise_lighting(self, bgr: np.ndarray) -> np.ndarray:
        if self.lighting == "none":
            return bgr
        if self.lighting == "clahe":
            lab = cv2.cvtColor(bgr, cv2.COLOR_BGR2LAB)
            lab[:, :, 0] = self._clahe.apply(lab[:, :, 0])
            return cv2.cvtColor(lab, cv2.COLOR_LAB2BGR)
        if self.lighting == "flat_field":
            return self._flat_field(bgr)
        if self.lighting == "match_train":
            return self._match_train(bgr)
        if self.lighting == "match_hist":
            return self._match_hist(bgr)
        if self.lighting == "match_tone":
            return self._match_tone(bgr)
        raise InputError(f"unknown lighting normalisation '{self.lighting}'")

    # -- main entry -----------------------------------------------------------------------
    def prepare_rgb(self, image: np.ndarray) -> tuple[np.ndarray, Geometry]:
        """Frame → (H×W×3 uint8 RGB at the model input size, after ROI and lighting; geometry)."""
        bgr = to_bgr_uint8(image)
        crop, geom = self._crop(bgr)
        crop = self.normalise_lighting(crop)
        shrinks = crop.shape[0] > self.input_h and crop.shape[1] > self.input_w
        interp = cv2.INTER_AREA if shrinks else cv2.INTER_LINEAR
        resized = cv2.resize(crop, (self.input_w, self.input_h), interpolation=interp)
        return cv2.cvtColor(resized, cv2.COLOR_BGR2RGB), geom

    def prepare(self, image: np.ndarray) -> tuple[np.ndarray, Geometry]:
        """Frame → (3×H×W float32 model input, geometry)."""
        rgb, geom = self.prepare_rgb(image)
        return normalise_tf(rgb), geom
