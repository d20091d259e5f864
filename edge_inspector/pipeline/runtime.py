"""The model generation in service: engine + the settings that must change together with it.

A ``ModelRuntime`` is immutable. The preprocess stage picks the current one up when a frame
enters and the frame keeps it through inference and postprocess, so a hot swap (new model,
threshold, ROI, lighting or postprocess settings) is a single reference assignment between two
frames: no frame is ever half old, half new, and none sees a model that is still loading.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from edge_inspector.acquisition.expect import FrameExpectation
from edge_inspector.config.models import Config
from edge_inspector.errors import InputError
from edge_inspector.inference.base import Engine
from edge_inspector.inference.bundle import ModelBundle
from edge_inspector.postprocess.regions import RegionSettings
from edge_inspector.preprocess.core import Preprocessor
from edge_inspector.preprocess.quality import QualityGate


@dataclass(frozen=True)
class ModelRuntime:
    bundle: ModelBundle
    engine: Engine
    preprocessor: Preprocessor
    regions: RegionSettings
    generation: int  # 1 at start, +1 for every applied change (logs and status)
    # What a frame of this station's camera looks like; sizes may derive from this bundle's input size.
    frame_expectation: FrameExpectation
    # Exposure limits (config) against this bundle's training images: unusable frames become ERROR.
    quality_gate: QualityGate = QualityGate(enabled=False)
    # The recipe (config ``recipes``) this generation inspects; None = the station's model.path.
    product: Optional[str] = None

    @property
    def model_info(self) -> dict:
        return {"name": self.bundle.name, "sha256": self.bundle.sha256}

    @property
    def threshold(self) -> float:
        return self.regions.threshold


def effective_threshold(cfg: Config, bundle: ModelBundle, override: Optional[float] = None) -> float:
    """Runtime override (set_threshold) > station config (model.threshold) > bundle calibration."""
    if override is not None:
        return float(override)
    if cfg.model.threshold is not None:
        return float(cfg.model.threshold)
    return bundle.threshold


def effective_lighting(cfg: Config, bundle: ModelBundle) -> str:
    """The lighting normalisation the station runs: the one the bundle was trained with.

    ``preprocess.lighting: null`` (the default) takes the bundle's. An explicit value must be the
    same, since a model sees at run time only what it saw in training; the one exception is
    ``flat_field`` over a bundle trained without normalisation: it corrects this station's uneven
    field toward the even light the training images were taken under."""
    recorded = str((bundle.meta.get("preprocess") or {}).get("lighting") or "none")
    wanted = cfg.preprocess.lighting
    if wanted is None or wanted == recorded or (wanted == "flat_field" and recorded == "none"):
        return recorded if wanted is None else wanted
    raise InputError(
        f"preprocess.lighting={wanted} does not match the model bundle's lighting '{recorded}' "
        f"({bundle.directory / 'model.json'}); set preprocess.lighting: {recorded}, or null to follow the bundle"
    )


def build_preprocessor(cfg: Config, bundle: ModelBundle) -> Preprocessor:
    """Raises InputError for settings that cannot work with this bundle (a lighting other than the
    bundle's, or one needing training statistics the bundle does not record)."""
    pre = cfg.preprocess
    return Preprocessor(
        bundle.input_shape,
        roi=pre.roi,
        lighting=effective_lighting(cfg, bundle),
        flat_field_reference=pre.flat_field_reference,
        clahe_clip_limit=pre.clahe_clip_limit,
        clahe_tile_grid=pre.clahe_tile_grid,
        train_stats=bundle.train_stats,
    )


def build_region_settings(cfg: Config, threshold: float) -> RegionSettings:
    post = cfg.postprocess
    return RegionSettings(
        threshold=threshold,
        map_threshold=post.map_threshold,
        min_defect_area_px=post.min_defect_area_px,
        max_defects=post.max_defects,
    )


def build_runtime(
    cfg: Config, bundle: ModelBundle, engine: Engine, generation: int, threshold_override: Optional[float] = None,
    product: Optional[str] = None,
) -> ModelRuntime:
    return ModelRuntime(
        bundle=bundle,
        engine=engine,
        preprocessor=build_preprocessor(cfg, bundle),
        regions=build_region_settings(cfg, effective_threshold(cfg, bundle, threshold_override)),
        generation=generation,
        frame_expectation=FrameExpectation.from_config(cfg.camera.expect, bundle.input_shape),
        quality_gate=QualityGate.from_settings(cfg.preprocess.quality, bundle.meta.get("preprocess"), cfg.preprocess.roi),
        product=product,
    )


def open_engine(cfg: Config, bundle: ModelBundle) -> Engine:
    """Load the ONNX session (provider fallback is logged by the engine) and warm it up, so the
    first real frame does not pay session initialisation costs."""
    from edge_inspector.inference.onnx_engine import OnnxEngine

    engine = OnnxEngine.from_bundle(bundle, providers=cfg.model.providers, intra_op_threads=cfg.model.intra_op_threads)
    engine.warm_up(cfg.model.warmup_runs)
    return engine
