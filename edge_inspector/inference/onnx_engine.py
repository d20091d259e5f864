"""onnxruntime engine: the one way stations, ``evaluate`` and ``bench`` run the model (no torch).

Provider fallback TensorRT → CUDA → CPU. A provider that is not compiled into the installed
onnxruntime, or that fails to initialise (e.g. ``onnxruntime-gpu`` on a machine without CUDA
libraries), is skipped with the reason logged; CPU is always the last resort so a station keeps
inspecting. ``engine.provider`` names the provider the session actually runs on.

Threading: ``session.intra_op.allow_spinning=0``. With spinning on, onnxruntime's idle worker
threads busy-wait and steal the cores numpy/OpenCV need in the neighbouring pipeline stages
(measured 57 → 29 ms per frame on 2 cores when preprocessing runs beside inference).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from edge_inspector.errors import InputError, ModelBundleError
from edge_inspector.inference.base import Engine
from edge_inspector.inference.bundle import METADATA_KEY, ModelBundle, load_bundle
from edge_inspector.logging import get_logger
from edge_inspector.preprocess.core import input_shape

log = get_logger(__name__)

# short name (config/CLI) -> onnxruntime provider name
PROVIDER_NAMES = {
    "tensorrt": "TensorrtExecutionProvider",
    "trt": "TensorrtExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "cpu": "CPUExecutionProvider",
}
SHORT_NAMES = {"TensorrtExecutionProvider": "tensorrt", "CUDAExecutionProvider": "cuda", "CPUExecutionProvider": "cpu"}
DEFAULT_PROVIDERS = ("tensorrt", "cuda", "cpu")


def _ort():
    try:
        import onnxruntime
    except ImportError as exc:  # pragma: no cover - dependency always installed
        raise ModelBundleError(f"onnxruntime is not installed ({exc}); install onnxruntime or onnxruntime-gpu") from None
    return onnxruntime


def normalise_providers(providers: str | Iterable[str] | None) -> list[str]:
    """``"tensorrt,cuda,cpu"`` / ``["cuda", "CPUExecutionProvider"]`` → onnxruntime names, CPU last.

    Unknown names are an InputError (a typo in the config must not silently mean CPU)."""
    if providers is None:
        providers = DEFAULT_PROVIDERS
    if isinstance(providers, str):
        providers = [p for p in providers.replace(" ", "").split(",") if p]
    out: list[str] = []
    for p in providers:
        name = PROVIDER_NAMES.get(str(p).lower(), str(p))
        if not name.endswith("ExecutionProvider"):
            raise InputError(f"unknown onnxruntime provider '{p}' (use tensorrt, cuda or cpu)")
        if name not in out:
            out.append(name)
    if "CPUExecutionProvider" not in out:
        out.append("CPUExecutionProvider")
    return out


def _trt_cache_dir(bundle: ModelBundle) -> str:
    base = os.environ.get("EDGE_INSPECTOR_TRT_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "edge-inspector", "trt"
    )
    path = os.path.join(base, bundle.sha256[:16])
    os.makedirs(path, exist_ok=True)
    return path


def _provider_entry(name: str, bundle: ModelBundle):
    if name == "TensorrtExecutionProvider":
        # Building a TRT engine takes minutes; cache it per model hash so restarts are fast.
        try:
            cache = _trt_cache_dir(bundle)
        except OSError:
            return name
        (h, w), inp = bundle.input_shape, bundle.input_name
        # One optimisation profile for batch 1..8 (stations run batch 1; evaluate batches up to 8),
        # so a new batch size does not trigger an engine rebuild. FP32: the threshold was
        # calibrated on FP32 scores.
        return (
            name,
            {
                "trt_engine_cache_enable": True,
                "trt_engine_cache_path": cache,
                "trt_timing_cache_enable": True,
                "trt_timing_cache_path": cache,
                "trt_profile_min_shapes": f"{inp}:1x3x{h}x{w}",
                "trt_profile_opt_shapes": f"{inp}:1x3x{h}x{w}",
                "trt_profile_max_shapes": f"{inp}:8x3x{h}x{w}",
            },
        )
    return name


def runtime_session_options(intra_op_threads: int = 0):
    """The onnxruntime session options every station session uses (see the module docstring on
    threading); also what benchmarks/graph_profile.py profiles under."""
    ort = _ort()
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.intra_op_num_threads = max(0, int(intra_op_threads))
    opts.inter_op_num_threads = 1
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.add_session_config_entry("session.inter_op.allow_spinning", "0")
    opts.log_severity_level = 3  # onnxruntime's own warnings are noisy; we log the fallback ourselves
    return opts


class OnnxEngine(Engine):
    """``infer(batch N×3×H×W float32) → (maps N×H×W float32, scores N float32)``."""

    def __init__(self, session, bundle: ModelBundle, provider_notes: list[str] | None = None) -> None:
        self.session = session
        self.bundle = bundle
        self.input_h, self.input_w = bundle.input_shape
        self.input_name = bundle.input_name
        self.map_name, self.score_name = bundle.output_names
        active = session.get_providers()
        self.provider_name = active[0] if active else "CPUExecutionProvider"
        self.provider = SHORT_NAMES.get(self.provider_name, self.provider_name)
        self.provider_notes = list(provider_notes or [])
        self._check_io()

    # -- construction ------------------------------------------------------------------------
    @classmethod
    def from_bundle(
        cls,
        bundle: ModelBundle,
        providers: str | Sequence[str] | None = DEFAULT_PROVIDERS,
        intra_op_threads: int = 0,
    ) -> "OnnxEngine":
        """Open ``bundle.onnx_path``. ``intra_op_threads=0`` lets onnxruntime use one per core."""
        ort = _ort()
        wanted = normalise_providers(providers)
        available = set(ort.get_available_providers())
        notes: list[str] = []
        candidates: list[str] = []
        for name in wanted:
            if name in available:
                candidates.append(name)
            else:
                notes.append(f"{name}: not available in this onnxruntime build")
                log.info("onnxruntime provider skipped", provider=name, reason="not available in this onnxruntime build")

        opts = runtime_session_options(intra_op_threads)
        path = str(bundle.onnx_path)
        session = None
        # Try the preferred providers; if a GPU provider fails to initialise, drop it and retry.
        while candidates:
            try:
                session = ort.InferenceSession(path, sess_options=opts, providers=[_provider_entry(c, bundle) for c in candidates])
                break
            except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own pybind exception types
                msg = str(exc).strip().splitlines()[0] if str(exc).strip() else exc.__class__.__name__
                if candidates[0] == "CPUExecutionProvider" or _is_model_error(msg):
                    raise ModelBundleError(f"{path}: cannot load ONNX model ({msg[:300]})") from None
                notes.append(f"{candidates[0]}: failed to initialise ({msg[:200]})")
                log.warning("onnxruntime provider failed, falling back", provider=candidates[0], reason=msg[:300])
                candidates = candidates[1:]
        if session is None:  # pragma: no cover - CPU is always in the list
            raise ModelBundleError(f"{path}: no usable onnxruntime provider ({'; '.join(notes)})")

        active = session.get_providers()
        first_choice = candidates[0]
        if active and active[0] != first_choice:
            # onnxruntime silently drops GPU providers whose libraries are missing.
            notes.append(f"{first_choice}: requested but onnxruntime fell back to {active[0]}")
            log.warning("onnxruntime provider fell back", requested=first_choice, actual=active[0])
        engine = cls(session, bundle, notes)
        log.info(
            "onnx engine ready",
            model=bundle.name,
            provider=engine.provider,
            threads=opts.intra_op_num_threads or "auto",
            fallback=notes or None,
        )
        return engine

    @classmethod
    def from_path(cls, model_dir: str | Path, **kwargs) -> "OnnxEngine":
        return cls.from_bundle(load_bundle(model_dir), **kwargs)

    def _check_io(self) -> None:
        path = self.bundle.onnx_path
        inputs = {i.name: i for i in self.session.get_inputs()}
        outputs = {o.name for o in self.session.get_outputs()}
        if self.input_name not in inputs:
            raise ModelBundleError(f"{path}: model has no input '{self.input_name}' (has {', '.join(inputs)})")
        missing = [n for n in (self.map_name, self.score_name) if n not in outputs]
        if missing:
            raise ModelBundleError(f"{path}: model lacks output(s) {', '.join(missing)} named in model.json")
        shape = inputs[self.input_name].shape
        if len(shape) != 4:
            raise ModelBundleError(f"{path}: input '{self.input_name}' has rank {len(shape)}, expected N×3×H×W")
        h, w = self.input_h, self.input_w
        static = [d for d in shape[1:] if isinstance(d, int)]
        if len(static) == 3 and tuple(shape[1:]) != (3, h, w):
            raise ModelBundleError(
                f"{path}: input shape {list(shape)} does not match model.json image_size/input_shape (expected [N, 3, {h}, {w}])"
            )
        meta_json = self.session.get_modelmeta().custom_metadata_map.get(METADATA_KEY)
        if meta_json:
            try:
                embedded = json.loads(meta_json)
            except json.JSONDecodeError:
                embedded = None
            if isinstance(embedded, dict) and "image_size" in embedded:
                try:
                    said = list(input_shape(embedded.get("input_shape") or int(embedded["image_size"])))
                except (TypeError, ValueError):
                    raise ModelBundleError(f"{path}: embedded metadata has an unreadable image_size/input_shape") from None
                if said != [h, w]:
                    raise ModelBundleError(
                        f"{path}: embedded metadata says the input is {said[0]}×{said[1]} (height×width), model.json says {h}×{w}"
                    )

    # -- running -----------------------------------------------------------------------------
    def _check_batch(self, batch: np.ndarray) -> np.ndarray:
        h, w = self.input_h, self.input_w
        if not isinstance(batch, np.ndarray):
            raise InputError(f"inference input must be a numpy array, got {type(batch).__name__}")
        if batch.dtype != np.float32:
            raise InputError(f"inference input must be float32, got {batch.dtype}")
        if batch.ndim != 4 or batch.shape[0] < 1 or batch.shape[1:] != (3, h, w):
            raise InputError(f"inference input must be N×3×{h}×{w}, got {'×'.join(map(str, batch.shape))}")
        return np.ascontiguousarray(batch)

    def infer(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        x = self._check_batch(batch)
        maps, scores = self.session.run([self.map_name, self.score_name], {self.input_name: x})
        maps = np.asarray(maps, dtype=np.float32)
        if maps.ndim == 4 and maps.shape[1] == 1:
            maps = maps[:, 0]
        if maps.ndim != 3 or maps.shape[0] != x.shape[0]:
            raise ModelBundleError(
                f"{self.bundle.onnx_path}: output '{self.map_name}' has shape {list(maps.shape)}, expected N×1×H×W or N×H×W"
            )
        scores = np.asarray(scores, dtype=np.float32).reshape(x.shape[0], -1)[:, 0]
        return maps, scores

    def warm_up(self, runs: int = 3) -> None:
        """Run a few zero batches so the first real frame does not pay allocation/JIT costs."""
        x = np.zeros((1, 3, self.input_h, self.input_w), dtype=np.float32)
        for _ in range(max(0, int(runs))):
            self.infer(x)

    def close(self) -> None:
        self.session = None


def _is_model_error(msg: str) -> bool:
    """Errors that come from the file itself, not the provider: no point retrying elsewhere."""
    low = msg.lower()
    return any(k in low for k in ("protobuf", "invalid_graph", "invalidgraph", "no_model", "load model", "model_path"))
