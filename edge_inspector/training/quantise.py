"""INT8 static quantisation of a bundle's backbone (onnxruntime.quantization, QDQ format).

EfficientNet-Lite was designed for INT8 (ReLU6, no squeeze-excitation), and the backbone is most
of the graph's compute. Only the backbone's Conv nodes are quantised (per-channel INT8 weights,
UINT8 activations calibrated on good training images); the MDAAE, the GAN scorer and the map
arithmetic stay float32, because their outputs are small differences of large numbers.

The quantised bundle is a complete bundle of its own (model.onnx + model.json with
``quantisation`` and the new sha256); its threshold is re-fitted on the same hold-out scores the
float model was calibrated on, through the quantised graph, so the score units stay honest.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import numpy as np

from edge_inspector.inference.bundle import META_NAME, ONNX_NAME, file_sha256, write_meta
from edge_inspector.training.calibrate import far_threshold


class _Reader:
    def __init__(self, images: np.ndarray) -> None:
        self.images = iter(images[i : i + 1] for i in range(images.shape[0]))

    def get_next(self):
        batch = next(self.images, None)
        return None if batch is None else {"image": batch}


def quantise_bundle(src_dir: Path, out_dir: Path, calibration_images) -> dict:
    """Write an INT8-backbone copy of the bundle in ``src_dir`` to ``out_dir``; returns its record."""
    import onnx
    import onnxruntime as ort
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    from edge_inspector.training.export import _replace_metadata

    started = time.perf_counter()
    src_dir, out_dir = Path(src_dir), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    images = np.ascontiguousarray(np.asarray(calibration_images, dtype=np.float32))
    proto = onnx.load(str(src_dir / ONNX_NAME))
    # The exporter names nodes after the module path; the backbone's are /stem/… and /blocks.N/…
    head_nodes = [n.name for n in proto.graph.node if not n.name.startswith(("/stem/", "/blocks."))]
    tmp = out_dir / (ONNX_NAME + ".tmp")
    quantize_static(str(src_dir / ONNX_NAME), str(tmp), _Reader(images), quant_format=QuantFormat.QDQ,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, per_channel=True,
                    op_types_to_quantize=["Conv"], nodes_to_exclude=head_nodes)
    tmp.replace(out_dir / ONNX_NAME)
    meta = json.loads((src_dir / META_NAME).read_text(encoding="utf-8"))
    # Re-calibrate through the quantised graph on the same hold-out: offset/scale are inside the
    # graph, so only the threshold in score units moves.
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    session = ort.InferenceSession(str(out_dir / ONNX_NAME), options, providers=["CPUExecutionProvider"])
    scores = np.concatenate([session.run(["score"], {"image": images[i : i + 8]})[0] for i in range(0, len(images), 8)])
    calibration = far_threshold(scores, float(meta.get("threshold_far_target") or 0.01))
    record = {"kind": "int8_static_qdq", "quantised": "backbone Conv nodes (per-channel INT8 weights, UINT8 activations)",
              "calibration_images": int(len(images)), "float_threshold": meta["threshold"],
              "seconds": round(time.perf_counter() - started, 1)}
    meta.update(name=f"{meta.get('name', 'model')}-int8", threshold=round(float(calibration["threshold"]), 6),
                threshold_calibration=calibration, quantisation=record)
    meta.pop("threshold_f1", None)
    meta.pop("threshold_f1_detail", None)
    _replace_metadata(out_dir / ONNX_NAME, meta)
    meta["onnx_sha256"] = file_sha256(out_dir / ONNX_NAME)
    write_meta(out_dir, meta)
    for extra in ("training_curve.json",):
        if (src_dir / extra).is_file():
            shutil.copy2(src_dir / extra, out_dir / extra)
    return record
