"""Model bundle: ``MODEL_DIR/model.onnx`` + ``MODEL_DIR/model.json`` (GUIDE.md contract).

model.json keys (written by training/export.py, read here and by the runtime):
  format_version      int, must equal edge_inspector.BUNDLE_FORMAT_VERSION
  package_version     edge-inspector version that wrote it
  name                human name, e.g. "bottle-default"
  head                "default" | "aegan" | "ae" | "knn"
  backbone            e.g. "efficientnet-lite0"
  image_size          the training size budget S; the model input is S × S unless input_shape says otherwise
  input_shape         optional [height, width] of the model input (keep-aspect models; absent = [S, S])
  input               {"name": "image", "layout": "NCHW", "channels": "RGB",
                       "normalisation": {"kind": "tf", "mean": 127.0, "std": 128.0}}
  outputs             {"map": "anomaly_map", "score": "score"}  (map N×1×H×W or N×H×W, score N)
  fusion_levels       list of backbone taps, e.g. [{"block": 5, "stride": 8, "channels": 40}, ...]
  threshold           image-score threshold (scores already normalised; NG when score ≥ threshold)
  threshold_far_target  target false-alarm rate used for calibration
  threshold_f1        optional F1-optimal threshold (when a labelled validation folder was given)
  score_normalisation dict describing how raw terms were normalised (informational)
  preprocess          {"lighting": "none", "train_stats": {"mean": [b,g,r], "std": [b,g,r]}}
  training_set        {"fingerprint": sha256 of sorted file names + sizes, "n_images": n, ...}
  training_curve      summary (final losses, Fréchet distance curve points)
  onnx_sha256         sha256 of model.onnx
The same metadata is stored as ONNX metadata_props key "edge_inspector" (JSON string).
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge_inspector import BUNDLE_FORMAT_VERSION
from edge_inspector.errors import ModelBundleError
from edge_inspector.preprocess.core import input_shape

ONNX_NAME = "model.onnx"
META_NAME = "model.json"
METADATA_KEY = "edge_inspector"
# The tensor contract every bundle we write follows (Preprocessor.prepare produces this input).
INPUT_SPEC = {
    "name": "image",
    "layout": "NCHW",
    "channels": "RGB",
    "normalisation": {"kind": "tf", "mean": 127.0, "std": 128.0},
}
OUTPUT_SPEC = {"map": "anomaly_map", "score": "score"}


def io_spec() -> tuple[dict, dict]:
    """Fresh copies of the input/output contract for a new model.json."""
    return copy.deepcopy(INPUT_SPEC), dict(OUTPUT_SPEC)


REQUIRED_KEYS = ("format_version", "head", "backbone", "image_size", "input", "outputs", "threshold")


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@dataclass
class ModelBundle:
    directory: Path
    meta: dict[str, Any]
    onnx_path: Path
    sha256: str

    @property
    def name(self) -> str:
        return str(self.meta.get("name") or self.directory.name)

    @property
    def image_size(self) -> int:
        return int(self.meta["image_size"])

    @property
    def input_shape(self) -> tuple[int, int]:
        """Model input (height, width)."""
        return input_shape(self.meta.get("input_shape") or self.image_size)

    @property
    def threshold(self) -> float:
        return float(self.meta["threshold"])

    @property
    def head(self) -> str:
        return str(self.meta["head"])

    @property
    def input_name(self) -> str:
        return str(self.meta["input"].get("name", "image"))

    @property
    def output_names(self) -> tuple[str, str]:
        out = self.meta["outputs"]
        return str(out.get("map", "anomaly_map")), str(out.get("score", "score"))

    @property
    def train_stats(self) -> dict | None:
        return (self.meta.get("preprocess") or {}).get("train_stats")


def validate_meta(meta: Any, where: str) -> dict:
    if not isinstance(meta, dict):
        raise ModelBundleError(f"{where}: metadata must be a JSON object")
    missing = [k for k in REQUIRED_KEYS if k not in meta]
    if missing:
        raise ModelBundleError(f"{where}: missing keys {', '.join(missing)}")
    version = meta.get("format_version")
    if version != BUNDLE_FORMAT_VERSION:
        raise ModelBundleError(
            f"{where}: bundle format version {version!r} is not supported by this edge-inspector "
            f"(reads version {BUNDLE_FORMAT_VERSION}); re-export the model with a matching version"
        )
    try:
        size = int(meta["image_size"])
    except (TypeError, ValueError):
        raise ModelBundleError(f"{where}: image_size must be a number") from None
    threshold = meta["threshold"]
    # JSON may hold NaN/Infinity (Python writes them): a NaN threshold would pass every part.
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not math.isfinite(threshold):
        raise ModelBundleError(f"{where}: threshold must be a finite number, got {json.dumps(threshold)}")
    if not 32 <= size <= 4096:
        raise ModelBundleError(f"{where}: image_size {size} out of range 32..4096")
    shape = meta.get("input_shape")
    if shape is not None:
        ok = isinstance(shape, list) and len(shape) == 2 and all(isinstance(v, int) and not isinstance(v, bool) for v in shape)
        if not ok or not all(32 <= v <= 4096 for v in shape):
            raise ModelBundleError(f"{where}: input_shape must be [height, width], each 32..4096, got {json.dumps(shape)}")
    return meta


def load_bundle(model_dir: str | Path, verify_hash: bool = True) -> ModelBundle:
    """Read and check a bundle. Raises ModelBundleError (exit code 2) naming the file."""
    d = Path(model_dir)
    if d.is_file() and d.suffix == ".onnx":
        raise ModelBundleError(f"{d}: expected a model directory holding {ONNX_NAME} and {META_NAME}, got a file")
    if not d.is_dir():
        raise ModelBundleError(f"{d}: model directory not found")
    onnx_path, meta_path = d / ONNX_NAME, d / META_NAME
    for p in (meta_path, onnx_path):
        if not p.is_file():
            raise ModelBundleError(f"{p}: missing from model bundle")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ModelBundleError(f"{meta_path}: corrupt JSON ({exc.__class__.__name__}: {str(exc).splitlines()[0]})") from None
    meta = validate_meta(meta, str(meta_path))
    if onnx_path.stat().st_size == 0:
        raise ModelBundleError(f"{onnx_path}: file is empty")
    sha = file_sha256(onnx_path)
    expected = meta.get("onnx_sha256")
    if verify_hash and expected and expected != sha:
        raise ModelBundleError(f"{onnx_path}: sha256 does not match model.json (file corrupt or replaced)")
    return ModelBundle(directory=d, meta=meta, onnx_path=onnx_path, sha256=sha)


def write_meta(model_dir: str | Path, meta: dict) -> Path:
    p = Path(model_dir) / META_NAME
    tmp = p.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(meta, indent=2, sort_keys=False), encoding="utf-8")
    tmp.replace(p)
    return p
