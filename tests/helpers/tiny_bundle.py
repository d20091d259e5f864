"""A tiny, valid model bundle built by hand with onnx.helper — no training, no torch.

The graph: input ``image`` float32 [N, 3, H, W] (dynamic N, TF-normalised so mid-grey ≈ 0);
``anomaly_map`` [N, 1, H, W] = mean over channels of |image| (dark scratches and bright spots score
high, mid-grey scores ~0); ``score`` [N] = max of the map. Pipeline tests use it to run the daemon,
evaluate and bench without a trained model.

    from tests.helpers.tiny_bundle import make_tiny_bundle
    model_dir = make_tiny_bundle(tmp_path / "model", image_size=64, threshold=0.5)
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import onnx
from onnx import TensorProto, helper

from edge_inspector import BUNDLE_FORMAT_VERSION, __version__
from edge_inspector.inference.bundle import io_spec

OPSET = 17


def tiny_meta(image_size: int = 64, threshold: float = 0.5, head: str = "default") -> dict[str, Any]:
    """model.json content (without onnx_sha256) following inference/bundle.py's docstring."""
    return {
        "format_version": BUNDLE_FORMAT_VERSION,
        "package_version": __version__,
        "name": f"tiny-{head}",
        "head": head,
        "backbone": "none (|x| channel mean, test bundle)",
        "image_size": int(image_size),
        "input": io_spec()[0],
        "outputs": io_spec()[1],
        "fusion_levels": [],
        "threshold": float(threshold),
        "threshold_far_target": 0.01,
        "score_normalisation": {"kind": "none"},
        "preprocess": {"lighting": "none", "train_stats": None},
        "training_set": {"fingerprint": "0" * 64, "n_images": 0},
        "training_curve": {},
    }


def make_tiny_onnx_bytes(image_size: int = 64, metadata: dict | None = None,
                         input_shape: tuple[int, int] | None = None) -> bytes:
    """Serialized ONNX model (opset 17) of the |x| channel-mean anomaly map and max score;
    input ``image_size``² or ``input_shape`` (height, width)."""
    h, w = input_shape or (int(image_size), int(image_size))
    image = helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, h, w])
    amap = helper.make_tensor_value_info("anomaly_map", TensorProto.FLOAT, ["N", 1, h, w])
    score = helper.make_tensor_value_info("score", TensorProto.FLOAT, ["N"])
    nodes = [
        helper.make_node("Abs", ["image"], ["abs_image"], name="abs"),
        helper.make_node("ReduceMean", ["abs_image"], ["anomaly_map"], axes=[1], keepdims=1, name="channel_mean"),
        helper.make_node("ReduceMax", ["anomaly_map"], ["score"], axes=[1, 2, 3], keepdims=0, name="image_max"),
    ]
    graph = helper.make_graph(nodes, "tiny_anomaly", [image], [amap, score])
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        producer_name="edge-inspector-tests",
    )
    model.ir_version = 8  # readable by any onnxruntime >= 1.10
    if metadata is not None:
        helper.set_model_props(model, {"edge_inspector": json.dumps(metadata)})
    onnx.checker.check_model(model)
    return model.SerializeToString()


def make_tiny_bundle(
    model_dir: str | Path,
    image_size: int = 64,
    threshold: float = 0.5,
    head: str = "default",
    input_shape: tuple[int, int] | None = None,
    **meta_overrides: Any,
) -> Path:
    """Write a valid bundle (model.onnx + model.json with onnx_sha256) into ``model_dir``:
    input ``image_size``², or ``input_shape`` (height, width) as keep-aspect models have.

    ``meta_overrides`` replace top-level model.json keys after everything else is filled in
    (including ``onnx_sha256`` and ``format_version``), so tests can also build broken bundles.
    A value of ``None`` for a key removes it.
    """
    d = Path(model_dir)
    d.mkdir(parents=True, exist_ok=True)
    meta = tiny_meta(image_size, threshold, head)
    if input_shape is not None:
        meta["input_shape"] = [int(v) for v in input_shape]
    data = make_tiny_onnx_bytes(image_size, metadata=meta, input_shape=input_shape)
    (d / "model.onnx").write_bytes(data)
    meta["onnx_sha256"] = hashlib.sha256(data).hexdigest()
    for key, value in meta_overrides.items():
        if value is None:
            meta.pop(key, None)
        else:
            meta[key] = value
    (d / "model.json").write_text(json.dumps(meta, indent=2), encoding="utf-8")
    return d
