"""Station configuration schema (pydantic). Keys in GUIDE.md's config contract are fixed.

Every model forbids unknown keys so that a typo in a station's YAML is an error, not a silent
default. Each section is owned by one stage; add fields to the stage's own section.

Every number is a ``FiniteFloat`` or ``Integer`` with a lower and an upper bound (issue 8: no
non-finite or out-of-range value reaches a decision); tests/faults/test_inputs_config.py walks
this schema and fails for a numeric key without both bounds.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal, Optional

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator, model_validator

from edge_inspector.config.numbers import THRESHOLD_RANGE, FiniteFloat, Integer, not_a_boolean
from edge_inspector.lightings import LIGHTINGS

# A ROI coordinate or size in original-image pixels (the largest sensors are ~16k pixels wide).
RoiInt = Annotated[Integer, Field(ge=0, le=65535)]
# Channels of a decoded frame: 1 grey/mono, 3 colour, 4 colour + alpha (PNG/TIFF files only).
ChannelCount = Annotated[Literal[1, 3, 4], BeforeValidator(not_a_boolean)]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False, validate_default=True)


class StationConfig(_Section):
    # Required, no defaults: a station that forgot its name would publish on another one's topics.
    line: str = Field(..., min_length=1, pattern=r"^[A-Za-z0-9_.-]+$", description="Production line id (MQTT topic level)")
    name: str = Field(..., min_length=1, pattern=r"^[A-Za-z0-9_.-]+$", description="Station id (MQTT topic level)")


class TriggerConfig(_Section):
    mode: Literal["free_run", "software", "hardware"] = "free_run"
    # Hardware trigger input line for pylon cameras (Line1, Line2, ...).
    source: str = "Line1"
    activation: Literal["RisingEdge", "FallingEdge"] = "RisingEdge"
    software_source: Literal["timer", "command"] = Field(
        "timer",
        description="mode software: who fires the triggers. timer = the daemon, every 1/camera.fps s "
                    "(never faster than the pipeline takes frames); command = only P/cmd/trigger (PLC/MES)",
    )


class FrameExpectConfig(_Section):
    """What a frame of this station's camera looks like (issue 8, class 3). A frame outside it is
    an ERROR verdict naming what is wrong: it was not taken by this station's camera (a stray
    file, a wrong camera, a mis-set ROI on the sensor), so no score of it can be trusted.

    Unset sizes are derived from the model bundle's input size S: each side from ceil(S/4) (the
    model would upsample more than 4×) to 32·S (it would shrink more than 32×, defects vanish).
    """

    min_width: Optional[Integer] = Field(None, ge=1, le=65535, description="pixels; default ceil(S/4), S = model input size")
    max_width: Optional[Integer] = Field(None, ge=1, le=65535, description="pixels; default 32·S")
    min_height: Optional[Integer] = Field(None, ge=1, le=65535, description="pixels; default ceil(S/4)")
    max_height: Optional[Integer] = Field(None, ge=1, le=65535, description="pixels; default 32·S")
    max_megapixels: FiniteFloat = Field(
        40.0, gt=0, le=150,
        description="largest frame in millions of pixels; image files are refused from their header, before decoding",
    )
    channels: list[ChannelCount] = Field([1, 3], min_length=1, description="allowed channel counts: 1 grey, 3 colour, 4 colour+alpha")

    @model_validator(mode="after")
    def _min_not_above_max(self):
        for side in ("width", "height"):
            low, high = getattr(self, f"min_{side}"), getattr(self, f"max_{side}")
            if low is not None and high is not None and low > high:
                raise ValueError(f"min_{side} {low} is above max_{side} {high}")
        return self


class CameraConfig(_Section):
    type: Literal["pylon", "opencv", "folder"] = "folder"
    # folder: directory or single image file; opencv: device index ("0") or URL / video file.
    path: Optional[str] = None
    serial: Optional[str] = Field(None, description="pylon: camera serial number; first device when empty")
    fps: FiniteFloat = Field(5.0, gt=0, le=1000)
    loop: bool = Field(False, description="folder/opencv file: start over at the end")
    trigger: TriggerConfig = TriggerConfig()
    exposure_us: Optional[FiniteFloat] = Field(None, gt=0, le=10_000_000)
    gain_db: Optional[FiniteFloat] = Field(None, ge=0, le=100)
    # Closing the light loop in the camera (issue 9): pylon's ExposureAuto/GainAuto "Continuous"
    # keep the frame's mean at the camera's brightness target whatever the lamp does.
    auto_exposure: bool = Field(False, description="pylon: ExposureAuto and GainAuto Continuous (not with exposure_us / gain_db)")
    auto_target_brightness: Optional[FiniteFloat] = Field(
        None, ge=0, le=1,
        description="pylon: brightness target of the auto functions, 0..1 of full scale; take the training images' "
                    "mean (model.json preprocess.train_stats.exposure.mean_luma.mean / 255); null = the camera's setting; "
                    "used only with auto_exposure",
    )
    pixel_format: Optional[str] = Field(None, description="pylon PixelFormat, e.g. Mono8, BayerRG8, RGB8")
    grab_timeout_ms: Integer = Field(5000, gt=0, le=3_600_000)
    reconnect_min_s: FiniteFloat = Field(0.5, gt=0, le=3600)
    reconnect_max_s: FiniteFloat = Field(30.0, gt=0, le=3600)
    max_consecutive_failures: Integer = Field(5, ge=1, le=10_000, description="grab failures before the camera is reopened")
    expect: FrameExpectConfig = Field(default_factory=FrameExpectConfig,
                                      description="what a frame of this station's camera looks like; anything else is an ERROR verdict")

    @model_validator(mode="after")
    def _auto_exposure_alone(self):
        if self.auto_exposure and (self.exposure_us is not None or self.gain_db is not None):
            raise ValueError("auto_exposure lets the camera choose exposure and gain: leave exposure_us and gain_db null")
        return self


class QualityConfig(_Section):
    """Image-quality gate (preprocess/quality.py): a frame whose exposure is unusable becomes an
    ERROR verdict ("overexposed: …" / "underexposed: …") instead of a part verdict."""

    enabled: bool = True
    saturated_level: Integer = Field(250, ge=1, le=255, description="a pixel with any channel at or above this is saturated")
    black_level: Integer = Field(5, ge=0, le=254, description="a pixel whose luma is at or below this is black")
    max_saturated_fraction: FiniteFloat = Field(0.6, ge=0, le=1, description="absolute limit on the saturated share of the ROI")
    max_black_fraction: FiniteFloat = Field(0.6, ge=0, le=1, description="absolute limit on the black share of the ROI")
    saturated_margin: FiniteFloat = Field(0.20, ge=0, le=1, description="saturated share allowed above the training images' maximum (bundle stats)")
    black_margin: FiniteFloat = Field(0.10, ge=0, le=1, description="black share allowed above the training images' maximum (bundle stats)")
    mean_ratio: FiniteFloat = Field(4.0, ge=1, le=100, description="mean luma more than this × the training range (or less than 1/this) is gated")
    # Disjoint ranges, so the lower limit can never sit above the upper one.
    min_mean: FiniteFloat = Field(2.0, ge=0, le=127, description="absolute lower limit of the mean luma")
    max_mean: FiniteFloat = Field(250.0, ge=128, le=255, description="absolute upper limit of the mean luma")


def roi_positive(v):
    if v is not None and (v[0] < 0 or v[1] < 0 or v[2] <= 0 or v[3] <= 0):
        raise ValueError("roi must be [x>=0, y>=0, w>0, h>0]")
    return v


class PreprocessConfig(_Section):
    roi: Optional[tuple[RoiInt, RoiInt, RoiInt, RoiInt]] = Field(None, description="[x, y, w, h] in original-image pixels")
    # null = the lighting the model bundle was trained with; an explicit value must match it.
    lighting: Optional[Literal[LIGHTINGS]] = None
    flat_field_reference: Optional[Path] = None
    clahe_clip_limit: FiniteFloat = Field(2.0, gt=0, le=1000)
    clahe_tile_grid: Integer = Field(8, ge=1, le=64)
    quality: QualityConfig = Field(default_factory=QualityConfig, description="image-quality gate before inference")

    @field_validator("roi")
    @classmethod
    def _roi_positive(cls, v):
        return roi_positive(v)

    @model_validator(mode="after")
    def _flat_field_needs_reference(self):
        if self.lighting == "flat_field" and self.flat_field_reference is None:
            raise ValueError("lighting 'flat_field' needs preprocess.flat_field_reference (an image file)")
        return self


class ModelConfig(_Section):
    path: Path = Field(Path("models/current"), description="MODEL_DIR with model.onnx and model.json")
    threshold: Optional[FiniteFloat] = Field(None, **THRESHOLD_RANGE, description="override the bundle's calibrated threshold")
    providers: list[Literal["tensorrt", "cuda", "cpu"]] = Field(default_factory=lambda: ["tensorrt", "cuda", "cpu"])
    intra_op_threads: Integer = Field(0, ge=0, le=1024, description="0 = onnxruntime default")
    warmup_runs: Integer = Field(3, ge=0, le=1000)


class PostprocessConfig(_Section):
    min_defect_area_px: Integer = Field(16, ge=0, le=1_000_000_000, description="connected regions smaller than this (original pixels) are ignored")
    max_defects: Integer = Field(16, ge=1, le=1000, description="largest-score regions reported per frame")
    map_threshold: Optional[FiniteFloat] = Field(None, **THRESHOLD_RANGE, description="per-pixel threshold on the anomaly map; default = image threshold")


class PipelineConfig(_Section):
    queue_size: Integer = Field(8, ge=1, le=1024)
    heartbeat_timeout_s: FiniteFloat = Field(10.0, gt=0, le=3600)
    shutdown_timeout_s: FiniteFloat = Field(10.0, gt=0, le=3600)


class TLSConfig(_Section):
    enabled: bool = False
    ca_file: Optional[Path] = None
    cert_file: Optional[Path] = None
    key_file: Optional[Path] = None
    insecure: bool = Field(False, description="skip hostname verification (test benches only)")


class MQTTConfig(_Section):
    host: str = "localhost"
    port: Integer = Field(1883, ge=1, le=65535)
    topic_prefix: str = Field("edge-inspector", min_length=1)
    username: Optional[str] = None
    # Passwords never live inline in YAML: name an environment variable or a file.
    password_env: Optional[str] = None
    password_file: Optional[Path] = None
    protocol: Literal["5", "3.1.1"] = "5"
    client_id: Optional[str] = Field(None, description="default: edge-inspector-<line>-<station>")
    keepalive_s: Integer = Field(30, ge=5, le=65535)
    tls: TLSConfig = TLSConfig()
    plc_expiry_s: Integer = Field(5, ge=1, le=3600)
    health_interval_s: FiniteFloat = Field(10.0, gt=0, le=86400)
    reconnect_min_s: FiniteFloat = Field(0.5, gt=0, le=3600)
    reconnect_max_s: FiniteFloat = Field(30.0, gt=0, le=3600)
    max_inflight: Integer = Field(20, ge=1, le=65535)

    @field_validator("topic_prefix")
    @classmethod
    def _no_wildcards(cls, v: str):
        if any(c in v for c in "#+") or v.startswith("/") or v.endswith("/"):
            raise ValueError("topic_prefix must not contain '#' or '+' nor start/end with '/'")
        return v


class OutboxConfig(_Section):
    path: Path = Field(Path("state/outbox.sqlite"), description="sqlite file; results wait here until PUBACK")
    max_mb: FiniteFloat = Field(512.0, gt=0, le=1_000_000)
    # drop_oldest: evict the oldest unsent results (counted, logged) to keep inspecting;
    # stop: refuse new results; the publish stage holds the verdict and retries until acked
    # results free space (back-pressure; the stalled publish heartbeat shows in /healthz and the watchdog).
    when_full: Literal["drop_oldest", "stop"] = "drop_oldest"

    @field_validator("path")
    @classmethod
    def _a_file_not_a_directory(cls, v: Path):
        if v.is_dir():
            raise ValueError(f"{v} is a directory; name the sqlite file inside it, e.g. {v / 'outbox.sqlite'}")
        return v


class ArchiveConfig(_Section):
    enabled: bool = True
    path: Path = Path("state/archive")
    max_mb: FiniteFloat = Field(2048.0, gt=0, le=100_000_000)
    max_age_days: FiniteFloat = Field(30.0, gt=0, le=36500)
    sample_ok_every: Integer = Field(0, ge=0, le=1_000_000_000, description="also keep every Nth OK frame for audit; 0 = never")
    save_heatmap: bool = True
    # Images by reference (archive/http.py): results carry image_url / heatmap_url under this base.
    base_url: Optional[str] = Field(None, max_length=256, pattern=r"^https?://[^\s/?#]+(/[^\s?#]*[^\s?#/])?$",
                                    description="how MES clients reach this station's HTTP server, e.g. http://10.0.0.5:9310; "
                                                "null = results carry no URLs")
    require_token: bool = Field(False, description="GET /images/... needs the station's HTTP token (health.token_env / token_file)")


class HealthConfig(_Section):
    enabled: bool = True
    host: str = "127.0.0.1"
    port: Integer = Field(9310, ge=0, le=65535, description="0 = pick a free port")
    # Token for the HTTP endpoints beside /metrics and /healthz that need one (named in their
    # docs); like the broker password, it is named by environment variable or file, never inline.
    token_env: Optional[str] = None
    token_file: Optional[Path] = None


# Product names travel in P/cmd/trigger, P/cmd/product and results: the same rule everywhere.
ProductName = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")]


class ProductConfig(_Section):
    """One product (variant) of the station: its model bundle and the settings that go with it.
    Unset settings fall back to the station's (model.threshold, preprocess.roi, ...)."""

    model_path: Path = Field(..., description="MODEL_DIR of this product's bundle")
    threshold: Optional[FiniteFloat] = Field(None, **THRESHOLD_RANGE, description="default: model.threshold, then the bundle's calibration")
    roi: Optional[tuple[RoiInt, RoiInt, RoiInt, RoiInt]] = Field(None, description="[x, y, w, h]; default preprocess.roi")
    min_defect_area_px: Optional[Integer] = Field(None, ge=0, le=1_000_000_000, description="default postprocess.min_defect_area_px")

    @field_validator("roi")
    @classmethod
    def _roi_positive(cls, v):
        return roi_positive(v)


class RecipesConfig(_Section):
    """Products → bundles (pipeline/recipes.py). Empty: the station runs model.path only and a
    trigger's ``product`` is just echoed."""

    products: dict[ProductName, ProductConfig] = Field(default_factory=dict)
    default: Optional[ProductName] = Field(None, description="product in service at start; null = model.path until the first switch")
    max_loaded: Integer = Field(2, ge=1, le=64, description="product engines kept in memory (the active one included); others load on demand")
    preload: bool = Field(True, description="load up to max_loaded products at start, so the first switches cost no load")

    @model_validator(mode="after")
    def _default_is_a_product(self):
        if self.default is not None and self.default not in self.products:
            raise ValueError(f"default {self.default!r} is not one of products ({', '.join(self.products) or 'none'})")
        return self


class DriftConfig(_Section):
    """Drift monitor (edge_inspector/drift.py): recent scores and image statistics against the
    model bundle's calibration set, as a population stability index (PSI)."""

    enabled: bool = True
    window: Integer = Field(500, ge=20, le=100_000, description="recent inspected frames compared with the calibration set")
    min_samples: Integer = Field(200, ge=10, le=100_000,
                                 description="frames needed in the window before a PSI is reported (capped at window)")
    alert_psi: FiniteFloat = Field(0.25, gt=0, le=100, description="PSI at or above this on any signal raises the drift alert")


class UiConfig(_Section):
    """Operator page on the health server (edge_inspector/ui/): needs health.enabled."""

    enabled: bool = True
    gallery_size: Integer = Field(24, ge=1, le=500, description="recent NG parts kept in memory for the gallery")
    recent_size: Integer = Field(8, ge=1, le=500, description="recent parts of any verdict kept for feedback")
    score_points: Integer = Field(300, ge=10, le=100_000, description="points in the score-over-time strip")
    max_image_px: Integer = Field(640, ge=64, le=8192, description="longest side of the images sent to the browser")
    feedback_path: Path = Field(Path("state/feedback"), description="feedback set (MVTec layout test/good, test/defect)")
    shift_starts: list[str] = Field(default_factory=list, max_length=24,
                                    description='local times "HH:MM" at which the page\'s counters and yield start over; empty = since the daemon started')

    @field_validator("shift_starts")
    @classmethod
    def _clock_times(cls, v: list[str]):
        for t in v:
            h, _, m = t.partition(":")
            if not (len(t) == 5 and h.isdigit() and m.isdigit() and int(h) < 24 and int(m) < 60):
                raise ValueError(f'shift start {t!r} is not a time "HH:MM" (00:00 to 23:59)')
        return sorted(set(v))


class LoggingConfig(_Section):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    json_logs: Optional[bool] = Field(None, description="default: JSON unless stderr is a terminal")


class Config(_Section):
    station: StationConfig
    camera: CameraConfig = CameraConfig()
    preprocess: PreprocessConfig = PreprocessConfig()
    model: ModelConfig = ModelConfig()
    postprocess: PostprocessConfig = PostprocessConfig()
    pipeline: PipelineConfig = PipelineConfig()
    mqtt: MQTTConfig = MQTTConfig()
    outbox: OutboxConfig = OutboxConfig()
    archive: ArchiveConfig = ArchiveConfig()
    health: HealthConfig = HealthConfig()
    drift: DriftConfig = DriftConfig()
    ui: UiConfig = UiConfig()
    logging: LoggingConfig = LoggingConfig()
    recipes: RecipesConfig = Field(default_factory=RecipesConfig, description="products of this station and their model bundles")

    @property
    def topic_base(self) -> str:
        return f"{self.mqtt.topic_prefix}/{self.station.line}/{self.station.name}"

    @property
    def client_id(self) -> str:
        return self.mqtt.client_id or f"edge-inspector-{self.station.line}-{self.station.name}"
