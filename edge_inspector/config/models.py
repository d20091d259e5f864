"""Station configuration schema (pydantic). Keys in GUIDE.md's config contract are fixed.

Every model forbids unknown keys so that a typo in a station's YAML is an error, not a silent
default. Each section is owned by one stage; add fields to the stage's own section.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class StationConfig(_Section):
    line: str = Field("line1", min_length=1, pattern=r"^[A-Za-z0-9_.-]+$", description="Production line id (MQTT topic level)")
    name: str = Field("station1", min_length=1, pattern=r"^[A-Za-z0-9_.-]+$", description="Station id (MQTT topic level)")


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


class CameraConfig(_Section):
    type: Literal["pylon", "opencv", "folder"] = "folder"
    # folder: directory or single image file; opencv: device index ("0") or URL / video file.
    path: Optional[str] = None
    serial: Optional[str] = Field(None, description="pylon: camera serial number; first device when empty")
    fps: float = Field(5.0, gt=0, le=1000)
    loop: bool = Field(False, description="folder/opencv file: start over at the end")
    trigger: TriggerConfig = TriggerConfig()
    exposure_us: Optional[float] = Field(None, gt=0)
    gain_db: Optional[float] = Field(None, ge=0)
    pixel_format: Optional[str] = Field(None, description="pylon PixelFormat, e.g. Mono8, BayerRG8, RGB8")
    grab_timeout_ms: int = Field(5000, gt=0)
    reconnect_min_s: float = Field(0.5, gt=0)
    reconnect_max_s: float = Field(30.0, gt=0)
    max_consecutive_failures: int = Field(5, ge=1, description="grab failures before the camera is reopened")


class PreprocessConfig(_Section):
    roi: Optional[tuple[int, int, int, int]] = Field(None, description="[x, y, w, h] in original-image pixels")
    lighting: Literal["none", "clahe", "flat_field", "match_train"] = "none"
    flat_field_reference: Optional[Path] = None
    clahe_clip_limit: float = Field(2.0, gt=0)
    clahe_tile_grid: int = Field(8, ge=1, le=64)

    @field_validator("roi")
    @classmethod
    def _roi_positive(cls, v):
        if v is not None and (v[0] < 0 or v[1] < 0 or v[2] <= 0 or v[3] <= 0):
            raise ValueError("roi must be [x>=0, y>=0, w>0, h>0]")
        return v

    @model_validator(mode="after")
    def _flat_field_needs_reference(self):
        if self.lighting == "flat_field" and self.flat_field_reference is None:
            raise ValueError("lighting 'flat_field' needs preprocess.flat_field_reference (an image file)")
        return self


class ModelConfig(_Section):
    path: Path = Field(Path("models/current"), description="MODEL_DIR with model.onnx and model.json")
    threshold: Optional[float] = Field(None, description="override the bundle's calibrated threshold")
    providers: list[Literal["tensorrt", "cuda", "cpu"]] = Field(default_factory=lambda: ["tensorrt", "cuda", "cpu"])
    intra_op_threads: int = Field(0, ge=0, description="0 = onnxruntime default")
    warmup_runs: int = Field(3, ge=0)


class PostprocessConfig(_Section):
    min_defect_area_px: int = Field(16, ge=0, description="connected regions smaller than this (original pixels) are ignored")
    max_defects: int = Field(16, ge=1, description="largest-score regions reported per frame")
    map_threshold: Optional[float] = Field(None, description="per-pixel threshold on the anomaly map; default = image threshold")


class PipelineConfig(_Section):
    queue_size: int = Field(8, ge=1, le=1024)
    heartbeat_timeout_s: float = Field(10.0, gt=0)
    shutdown_timeout_s: float = Field(10.0, gt=0)


class TLSConfig(_Section):
    enabled: bool = False
    ca_file: Optional[Path] = None
    cert_file: Optional[Path] = None
    key_file: Optional[Path] = None
    insecure: bool = Field(False, description="skip hostname verification (test benches only)")


class MQTTConfig(_Section):
    host: str = "localhost"
    port: int = Field(1883, ge=1, le=65535)
    topic_prefix: str = Field("edge-inspector", min_length=1)
    username: Optional[str] = None
    # Passwords never live inline in YAML: name an environment variable or a file.
    password_env: Optional[str] = None
    password_file: Optional[Path] = None
    protocol: Literal["5", "3.1.1"] = "5"
    client_id: Optional[str] = Field(None, description="default: edge-inspector-<line>-<station>")
    keepalive_s: int = Field(30, ge=5)
    tls: TLSConfig = TLSConfig()
    plc_expiry_s: int = Field(5, ge=1)
    health_interval_s: float = Field(10.0, gt=0)
    reconnect_min_s: float = Field(0.5, gt=0)
    reconnect_max_s: float = Field(30.0, gt=0)
    max_inflight: int = Field(20, ge=1)

    @field_validator("topic_prefix")
    @classmethod
    def _no_wildcards(cls, v: str):
        if any(c in v for c in "#+") or v.startswith("/") or v.endswith("/"):
            raise ValueError("topic_prefix must not contain '#' or '+' nor start/end with '/'")
        return v


class OutboxConfig(_Section):
    path: Path = Field(Path("state/outbox.sqlite"), description="sqlite file; results wait here until PUBACK")
    max_mb: float = Field(512.0, gt=0)
    # drop_oldest: evict the oldest unsent results (counted, logged) to keep inspecting;
    # stop: refuse new results; the publish stage holds the verdict and retries until acked
    # results free space (back-pressure; the stalled publish heartbeat shows in /healthz and the watchdog).
    when_full: Literal["drop_oldest", "stop"] = "drop_oldest"


class ArchiveConfig(_Section):
    enabled: bool = True
    path: Path = Path("state/archive")
    max_mb: float = Field(2048.0, gt=0)
    max_age_days: float = Field(30.0, gt=0)
    sample_ok_every: int = Field(0, ge=0, description="also keep every Nth OK frame for audit; 0 = never")
    save_heatmap: bool = True


class HealthConfig(_Section):
    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = Field(9310, ge=0, le=65535, description="0 = pick a free port")


class LoggingConfig(_Section):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    json_logs: Optional[bool] = Field(None, description="default: JSON unless stderr is a terminal")


class Config(_Section):
    station: StationConfig = StationConfig()
    camera: CameraConfig = CameraConfig()
    preprocess: PreprocessConfig = PreprocessConfig()
    model: ModelConfig = ModelConfig()
    postprocess: PostprocessConfig = PostprocessConfig()
    pipeline: PipelineConfig = PipelineConfig()
    mqtt: MQTTConfig = MQTTConfig()
    outbox: OutboxConfig = OutboxConfig()
    archive: ArchiveConfig = ArchiveConfig()
    health: HealthConfig = HealthConfig()
    logging: LoggingConfig = LoggingConfig()

    @property
    def topic_base(self) -> str:
        return f"{self.mqtt.topic_prefix}/{self.station.line}/{self.station.name}"

    @property
    def client_id(self) -> str:
        return self.mqtt.client_id or f"edge-inspector-{self.station.line}-{self.station.name}"
