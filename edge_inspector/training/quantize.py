"""INT8 static quantisation of a bundle's backbone; ``edge-inspector quantize``.

What is quantised: the backbone only (EfficientNet-Lite0 was designed for integer inference:
ReLU6, no squeeze-excitation, no swish), as QLinear operators (``QOperator`` format: onnxruntime
runs them as integer kernels; the QDQ form of the same model was slower than float here) with
per-channel int8 weights and per-tensor uint8 activations whose ranges are calibrated (min/max) on
good training images run through the bundle's own preprocessing. Everything after the backbone stays float32: the feature
standardisation, the autoencoder and critic discrepancies, the kNN distances and the smoothing are
differences of nearly equal numbers, where 8 bits would erase the faint defects' signal.

The integer backbone shifts the score units (by several σ of good-part scores on the dev sets),
which would void the bundle's threshold: the graph's outputs are mapped back onto the float
model's units by an affine fit (float ≈ gain·int8 + offset, gain > 0, so score = max(map) still
holds) over the calibration images, appended to the graph as a Mul and an Add.

The result is a new bundle directory: ``model.onnx`` quantised (its embedded metadata and
model.json carry a ``quantization`` section with the calibration set, the alignment and the score
difference to the float model on those images), ``checkpoint.pt`` copied (``export`` from it gives the float
graph again). Whether the quantised bundle is as accurate is measured, not assumed:
``benchmarks/quantization_benchmark.py`` evaluates both on the test set.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

from edge_inspector.datasets import load_images, train_good_paths
from edge_inspector.errors import InputError
from edge_inspector.inference.bundle import ONNX_NAME, file_sha256, load_bundle, write_meta
from edge_inspector.logging import get_logger
from edge_inspector.training.evaluate import make_preprocessor
from edge_inspector.training.assemble import CURVE_NAME
from edge_inspector.training.export import CHECKPOINT_NAME, cpu_session, replace_metadata

log = get_logger(__name__)

BACKBONE_PREFIX = "/backbone/"


def calibration_inputs(bundle, data_dir: str | Path, n_images: int, seed: int) -> tuple[np.ndarray, list[str]]:
    """Model inputs (N×3×H×W float32) of a seeded sample of ``data_dir/train/good``."""
    paths = train_good_paths(data_dir)
    rng = np.random.default_rng(seed)
    chosen = sorted(rng.choice(len(paths), size=min(n_images, len(paths)), replace=False).tolist())
    kept, images = load_images([paths[i] for i in chosen], "calibration images")
    pre = make_preprocessor(bundle)
    return np.stack([pre.prepare(img)[0] for img in images]).astype(np.float32), [p.name for p in kept]


@contextlib.contextmanager
def _quiet_quantiser():
    """The quantiser warns (root logger, stdout, onnxruntime's log) for every integer shape tensor
    of the padding subgraphs it leaves alone: hundreds of lines that say nothing about the result."""
    import onnxruntime as ort

    ort.set_default_logger_severity(3)
    logging.disable(logging.WARNING)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        logging.disable(logging.NOTSET)
        ort.set_default_logger_severity(2)


def backbone_nodes(onnx_path: Path) -> list[str]:
    import onnx

    graph = onnx.load(str(onnx_path)).graph
    return [n.name for n in graph.node if n.name.startswith(BACKBONE_PREFIX)]


def _scores(onnx_path: Path, inputs: np.ndarray, threads: int) -> tuple[np.ndarray, np.ndarray]:
    session = cpu_session(onnx_path, threads)
    outputs = [session.run(["anomaly_map", "score"], {"image": inputs[i : i + 8]}) for i in range(0, len(inputs), 8)]
    return np.concatenate([m for m, _ in outputs]), np.concatenate([s for _, s in outputs])


def quantize_bundle(model_dir: str | Path, data_dir: str | Path, out_dir: str | Path, n_images: int = 64,
                    seed: int = 0, threads: int = 2) -> dict:
    """Write an INT8-backbone copy of bundle ``model_dir`` to ``out_dir``; returns its metadata."""
    if n_images < 1:
        raise InputError(f"--images {n_images} must be ≥ 1")
    src = Path(model_dir)
    out = Path(out_dir)
    if out.resolve() == src.resolve():
        raise InputError(f"{out}: --out must differ from --model (the float bundle is kept)")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise InputError(f"{out}: --out exists and is not an empty directory")
    bundle = load_bundle(src)
    if bundle.meta.get("quantization"):
        raise InputError(f"{src / 'model.json'}: this bundle is already quantised")
    inputs, names = calibration_inputs(bundle, data_dir, n_images, seed)
    nodes = backbone_nodes(bundle.onnx_path)
    if not nodes:
        raise InputError(f"{bundle.onnx_path}: no backbone nodes (names starting {BACKBONE_PREFIX!r}) to quantise")

    out.mkdir(parents=True, exist_ok=True)
    try:
        return _quantize_into(bundle, inputs, names, nodes, out, seed, threads)
    except BaseException:
        # no half-written bundle is left behind: a folder with a model.onnx and no model.json
        shutil.rmtree(out, ignore_errors=True)
        raise


def _quantize_into(bundle, inputs: np.ndarray, names: list[str], nodes: list[str], out: Path, seed: int,
                   threads: int) -> dict:
    from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.items = iter([{"image": inputs[i : i + 1]} for i in range(len(inputs))])

        def get_next(self):
            return next(self.items, None)

    target = out / ONNX_NAME
    with tempfile.TemporaryDirectory() as tmp, _quiet_quantiser():
        quantize_static(
            str(bundle.onnx_path), str(Path(tmp) / ONNX_NAME), Reader(),
            quant_format=QuantFormat.QOperator, per_channel=True,
            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax, nodes_to_quantize=nodes,
        )
        shutil.move(str(Path(tmp) / ONNX_NAME), target)
    float_maps, float_scores = _scores(bundle.onnx_path, inputs, threads)
    _, raw_scores = _scores(target, inputs, threads)
    gain, offset = score_alignment(raw_scores, float_scores, bundle.onnx_path)
    append_affine_outputs(target, gain, offset)
    int8_maps, int8_scores = _scores(target, inputs, threads)
    meta = {k: v for k, v in bundle.meta.items() if k != "onnx_sha256"}
    meta["name"] = f"{bundle.name}-int8"
    meta["quantization"] = {
        "kind": "int8_static_qoperator",
        "scope": "backbone convolutions (per-channel int8 weights, per-tensor uint8 activations); heads float32",
        "calibration": {"method": "minmax", "n_images": len(names), "source": "train/good", "seed": seed},
        "n_quantised_nodes": len(nodes),
        "float_bundle_sha256": bundle.sha256,
        # the integer backbone shifts the score units (several σ of good-part scores on the dev
        # sets), which would void the float threshold: the graph maps its outputs back with this
        # affine fit of float on int8 scores over the calibration images
        "score_alignment": {"gain": gain, "offset": offset,
                            "before_mean_abs_diff": round(float(np.mean(np.abs(raw_scores - float_scores))), 5)},
        "score_diff_to_float_on_calibration": {
            "max_abs": round(float(np.max(np.abs(int8_scores - float_scores))), 5),
            "mean_abs": round(float(np.mean(np.abs(int8_scores - float_scores))), 5),
            "map_max_abs": round(float(np.max(np.abs(int8_maps - float_maps))), 5),
        },
    }
    replace_metadata(target, meta)
    meta["onnx_sha256"] = file_sha256(target)
    write_meta(out, meta)
    for name in (CHECKPOINT_NAME, CURVE_NAME):
        if (bundle.directory / name).is_file():
            shutil.copy2(bundle.directory / name, out / name)
    return meta


def score_alignment(int8_scores: np.ndarray, float_scores: np.ndarray, where: Path) -> tuple[float, float]:
    """Least-squares (gain, offset) with float ≈ gain·int8 + offset. A gain ≤ 0 means the integer
    graph's scores no longer track the float ones: refused."""
    if len(int8_scores) < 2 or float(np.std(int8_scores)) == 0.0:
        return 1.0, float(np.mean(float_scores) - np.mean(int8_scores))
    gain, offset = np.polyfit(int8_scores.astype(np.float64), float_scores.astype(np.float64), 1)
    if not gain > 0:
        raise InputError(f"{where}: INT8 scores do not track the float model's on the calibration images "
                         f"(fitted gain {gain:.3g}); keep the float bundle")
    return round(float(gain), 6), round(float(offset), 6)


def append_affine_outputs(onnx_path: Path, gain: float, offset: float) -> None:
    """Rewrite both graph outputs as gain·output + offset (gain > 0 keeps score = max(map))."""
    import onnx
    from onnx import helper, numpy_helper

    proto = onnx.load(str(onnx_path))
    graph = proto.graph
    graph.initializer.extend([numpy_helper.from_array(np.array(gain, np.float32), "int8_alignment_gain"),
                              numpy_helper.from_array(np.array(offset, np.float32), "int8_alignment_offset")])
    for output in graph.output:
        inner = f"{output.name}_int8_units"
        for node in graph.node:  # the producer, and any node reading it (score = max of the map)
            node.output[:] = [inner if o == output.name else o for o in node.output]
            node.input[:] = [inner if i == output.name else i for i in node.input]
        graph.node.extend([
            helper.make_node("Mul", [inner, "int8_alignment_gain"], [f"{inner}_scaled"], name=f"align_{output.name}_mul"),
            helper.make_node("Add", [f"{inner}_scaled", "int8_alignment_offset"], [output.name], name=f"align_{output.name}_add"),
        ])
    onnx.checker.check_model(proto)
    onnx.save(proto, str(onnx_path))


def cli_quantize(args) -> int:
    meta = quantize_bundle(args.model, args.data, args.out, n_images=args.images, seed=args.seed)
    q = meta["quantization"]
    print(json.dumps({"model": str(args.out), "quantised_nodes": q["n_quantised_nodes"],
                      "calibration_images": q["calibration"]["n_images"],
                      "score_diff_to_float": q["score_diff_to_float_on_calibration"]}))
    print("accuracy is measured by evaluate on a labelled test set, not by this command", file=sys.stderr)
    return 0
