"""ONNX export with a torch ↔ onnxruntime parity check; ``edge-inspector export``.

The graph: input ``image`` float32 N×3×H×W (H×W = ``input_shape``; dynamic batch; TF-normalised RGB from
``Preprocessor.prepare``), outputs ``anomaly_map`` N×1×H×W and ``score`` N, both in the bundle's
normalised units. Everything — backbone, autoencoder, kNN distance (MatMul + ReduceMin against
the memory bank), upsampling, Gaussian smoothing, score normalisation — is inside the graph.
The bundle metadata (model.json minus its own onnx_sha256) is stored as JSON in the ONNX
``metadata_props`` under key ``edge_inspector``, so a lone .onnx file describes itself.

Parity tolerance: 1e-2 in score units, on both outputs. Score units are standard deviations of
good-image scores (the threshold is typically 2–4 of them), so a 0.01 disagreement can only
change a verdict for a part already within 0.01 σ of the threshold, i.e. a coin flip either way.
What it has to absorb: float32 reordering differences between torch and onnxruntime kernels
(~1e-5 relative on the backbone features), amplified by the feature standardisation and the
kNN ``sqrt`` near zero distance; measured differences are ~1e-4 (printed on every export).
A broken export (wrong op semantics, a traced constant batch size, stale weights) gives
differences of order 1 and fails.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch

from edge_inspector import BUNDLE_FORMAT_VERSION
from edge_inspector.errors import InspectorError, ModelBundleError
from edge_inspector.inference.bundle import METADATA_KEY, ONNX_NAME, file_sha256, write_meta
from edge_inspector.logging import get_logger
from edge_inspector.training.scoring import TERMS, InspectionModel, ModelConfig

log = get_logger(__name__)

PARITY_TOLERANCE = 1e-2
OPSET = 17
CHECKPOINT_NAME = "checkpoint.pt"
CHECKPOINT_FORMAT = "edge-inspector.checkpoint/1"


class ParityError(InspectorError):
    """The exported graph does not reproduce torch's outputs (exit code 1: our failure, not the user's)."""

    exit_code = 1


def export_onnx(model: InspectionModel, path: Path, meta: dict) -> None:
    """Write ``model`` to ``path`` as ONNX with ``meta`` in metadata_props."""
    import onnx

    model = model.cpu().eval()
    h, w = model.config.shape
    # Trace with batch 2 so no batch-size constant can hide in the graph.
    example = torch.zeros(2, 3, h, w)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with torch.no_grad():
        torch.onnx.export(
            model,
            (example,),
            str(tmp),
            dynamo=False,  # TorchScript exporter: no onnxscript dependency, stable output for this graph
            input_names=["image"],
            output_names=["anomaly_map", "score"],
            dynamic_axes={"image": {0: "batch"}, "anomaly_map": {0: "batch"}, "score": {0: "batch"}},
            opset_version=OPSET,
            do_constant_folding=True,
        )
    proto = onnx.load(str(tmp))
    onnx_meta = {k: v for k, v in meta.items() if k != "onnx_sha256"}
    entry = proto.metadata_props.add()
    entry.key = METADATA_KEY
    entry.value = json.dumps(onnx_meta)
    proto.producer_name = "edge-inspector"
    onnx.checker.check_model(proto)
    onnx.save(proto, str(tmp))
    tmp.replace(path)


def parity_images(shape: tuple[int, int], seed: int = 0) -> torch.Tensor:
    """Deterministic (height, width) inputs when no real images are at hand: a smooth gradient,
    noise, a flat grey."""
    h, w = shape
    g = torch.Generator().manual_seed(seed)
    gradient = (torch.linspace(-1, 1, h)[:, None] * torch.linspace(-1, 1, w)[None, :]).expand(3, h, w)
    noise = torch.rand(3, h, w, generator=g) * 2 - 1
    flat = torch.full((3, h, w), 0.1)
    return torch.stack([gradient, noise, flat]).float()


def cpu_session(onnx_path: Path, threads: int = 2):
    """A plain CPU onnxruntime session for checks on a graph file (not the runtime engine)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])


def parity_check(model: InspectionModel, onnx_path: Path, images: torch.Tensor, threads: int = 2) -> dict:
    """Max |torch − onnxruntime| on map and score for ``images``."""
    session = cpu_session(onnx_path, threads)
    with torch.no_grad():
        torch_map, torch_score = model.cpu().eval()(images.float())
    ort_map, ort_score = session.run(["anomaly_map", "score"], {"image": images.float().numpy()})
    diff_map = float(np.max(np.abs(ort_map - torch_map.numpy())))
    diff_score = float(np.max(np.abs(ort_score - torch_score.numpy())))
    result = {
        "max_abs_diff_map": diff_map,
        "max_abs_diff_score": diff_score,
        "tolerance": PARITY_TOLERANCE,
        "n_images": int(images.shape[0]),
        "passed": bool(max(diff_map, diff_score) <= PARITY_TOLERANCE),
    }
    return result


def export_with_parity(model: InspectionModel, meta: dict, onnx_path: Path, images: torch.Tensor | None) -> dict:
    export_onnx(model, onnx_path, meta)
    check_images = parity_images(model.config.shape)
    if images is not None and len(images):
        check_images = torch.cat([images.float(), check_images])
    parity = parity_check(model, onnx_path, check_images)
    print(
        f"parity torch vs onnxruntime: max abs diff map {parity['max_abs_diff_map']:.3g}, "
        f"score {parity['max_abs_diff_score']:.3g} (tolerance {PARITY_TOLERANCE:g}, {parity['n_images']} images)",
        file=sys.stderr,
    )
    if not parity["passed"]:
        raise ParityError(
            f"{onnx_path}: ONNX output differs from torch by {max(parity['max_abs_diff_map'], parity['max_abs_diff_score']):.3g} "
            f"(> tolerance {PARITY_TOLERANCE:g})"
        )
    return parity


def export_bundle(model: InspectionModel, meta: dict, out_dir: Path, sample_images: torch.Tensor | None = None) -> dict:
    """Write ``out_dir/model.onnx`` and ``out_dir/model.json`` (with parity result and sha256)."""
    meta = dict(meta)
    meta["export"] = {"opset": OPSET, "parity": None}
    onnx_path = out_dir / ONNX_NAME
    parity = export_with_parity(model, meta, onnx_path, sample_images)
    meta["export"]["parity"] = parity
    # Rewrite the ONNX metadata with the parity result included (the graph itself is unchanged).
    replace_metadata(onnx_path, meta)
    meta["onnx_sha256"] = file_sha256(onnx_path)
    write_meta(out_dir, meta)
    return meta


def replace_metadata(onnx_path: Path, meta: dict) -> None:
    import onnx

    proto = onnx.load(str(onnx_path))
    for entry in list(proto.metadata_props):
        if entry.key == METADATA_KEY:
            proto.metadata_props.remove(entry)
    entry = proto.metadata_props.add()
    entry.key = METADATA_KEY
    entry.value = json.dumps({k: v for k, v in meta.items() if k != "onnx_sha256"})
    tmp = onnx_path.with_name(onnx_path.name + ".tmp")
    onnx.save(proto, str(tmp))
    tmp.replace(onnx_path)


def _with_all_term_statistics(state: dict, n_terms: int) -> dict:
    """Checkpoints from before the subspace terms hold term statistics for [ae, knn] only; the
    missing terms get the identity (mean 0, std 1), and their weight is 0 in such a bundle."""
    state = dict(state)
    for key, fill in (("term_mean", 0.0), ("term_std", 1.0)):
        value = state.get(key)
        if isinstance(value, torch.Tensor) and value.dim() == 1 and value.numel() < n_terms:
            state[key] = torch.cat([value, torch.full((n_terms - value.numel(),), fill, dtype=value.dtype)])
    return state


def load_checkpoint(model_dir: str | Path) -> tuple[InspectionModel, dict]:
    """Rebuild the torch model from ``MODEL_DIR/checkpoint.pt``. ModelBundleError on any defect."""
    d = Path(model_dir)
    if not d.is_dir():
        raise ModelBundleError(f"{d}: model directory not found")
    path = d / CHECKPOINT_NAME
    if not path.is_file():
        raise ModelBundleError(f"{path}: missing from model bundle (export needs the torch checkpoint written by train)")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure means a corrupt file
        raise ModelBundleError(f"{path}: corrupt checkpoint ({exc.__class__.__name__})") from None
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != CHECKPOINT_FORMAT:
        found = checkpoint.get("format") if isinstance(checkpoint, dict) else type(checkpoint).__name__
        raise ModelBundleError(f"{path}: checkpoint format {found!r} is not {CHECKPOINT_FORMAT!r} (incompatible version)")
    meta = checkpoint.get("meta") or {}
    if meta.get("format_version") != BUNDLE_FORMAT_VERSION:
        raise ModelBundleError(
            f"{path}: bundle format version {meta.get('format_version')!r} is not supported "
            f"(this edge-inspector writes version {BUNDLE_FORMAT_VERSION}); retrain the model"
        )
    try:
        config = ModelConfig.from_dict(checkpoint["config"])
        model = InspectionModel(config)
        state = _with_all_term_statistics(checkpoint["state_dict"], len(TERMS))
        model.load_state_dict(state, strict=True)
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        msg = str(exc).splitlines()[0] if str(exc) else exc.__class__.__name__
        raise ModelBundleError(f"{path}: checkpoint does not match the model definition ({msg[:160]})") from None
    return model.eval(), meta


def cli_export(args) -> int:
    torch.set_num_threads(2)
    model, meta = load_checkpoint(args.model)
    out = Path(args.out)
    if out.is_dir():
        out = out / ONNX_NAME
    meta = dict(meta)
    meta.pop("onnx_sha256", None)
    try:
        parity = export_with_parity(model, meta, out, None)
    except ParityError as exc:
        print(f"edge-inspector export: error: {exc}", file=sys.stderr)
        return 1
    meta["export"] = {"opset": OPSET, "parity": parity}
    replace_metadata(out, meta)
    print(json.dumps({"onnx": str(out), "sha256": file_sha256(out), "head": meta.get("head"), "parity": parity}))
    return 0
