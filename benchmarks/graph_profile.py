"""Where a bundle's inference time goes: onnxruntime's per-node profile, summed per model part.

Runs the bundle's ``model.onnx`` as the station does (CPU provider, the runtime engine's session
options with ``--threads`` intra-op threads, batch 1) with onnxruntime's profiler on, over
``--runs`` inferences of a seeded random input of the bundle's input shape, and sums each node's
kernel time under the part of the model it belongs to — the top-level module in the exported
node name (``backbone``, ``mdaae``, ``critic``, ``knn``, ``knn_sub``, …) or ``other`` (feature
standardisation, term arithmetic, upsampling and smoothing, layout reorders). The profiler adds
its own overhead per node, so the shares are the figure to read; ``median_ms_unprofiled`` is the
same session's latency before profiling starts.

    .venv/bin/python benchmarks/graph_profile.py --model MODEL_DIR [--runs 100] [--json out.json]

Prints one JSON document (and writes it with ``--json``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.report import emit  # noqa: E402

PARTS = ("backbone", "mdaae", "critic", "knn_sub", "knn")
# The critic is called through Critic.discrepancy, not its forward, so the exporter names its nodes
# by its submodules alone (/stem/…, /down1/…, /attention/…; a second call gets a _1 suffix).
CRITIC_MODULES = ("stem", "down1", "attention")


def part_of(node_name: str) -> str:
    """The model part a profiled node belongs to, from its exported name (``/mdaae/encoder/...``)."""
    first = node_name.strip("/").split("/")[0]
    if first in PARTS:
        return first
    if node_name.startswith("/") and first.split("_")[0] in CRITIC_MODULES:
        return "critic"
    return "other"


def session(onnx_path: Path, threads: int, profile_prefix: str | None):
    """A CPU session with the station's own options (OnnxEngine's), profiling when asked."""
    import onnxruntime as ort

    from edge_inspector.inference.onnx_engine import runtime_session_options

    options = runtime_session_options(threads)
    if profile_prefix:
        options.enable_profiling = True
        options.profile_file_prefix = profile_prefix
    return ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])


def profile(model_dir: Path, runs: int, threads: int) -> dict:
    import numpy as np

    from edge_inspector.inference.bundle import load_bundle

    bundle = load_bundle(model_dir)
    x = np.random.default_rng(0).normal(size=(1, 3, *bundle.input_shape)).astype(np.float32)
    plain = session(bundle.onnx_path, threads, None)
    for _ in range(5):
        plain.run(None, {"image": x})
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        plain.run(None, {"image": x})
        times.append(time.perf_counter() - t0)
    with tempfile.TemporaryDirectory() as tmp:
        profiled = session(bundle.onnx_path, threads, os.path.join(tmp, "profile"))
        for _ in range(runs):
            profiled.run(None, {"image": x})
        events = json.loads(Path(profiled.end_profiling()).read_text())
    per_part: dict[str, float] = defaultdict(float)
    for event in events:
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            per_part[part_of(event["name"][: -len("_kernel_time")])] += event["dur"] / 1000.0 / runs
    total = sum(per_part.values())
    return {
        "model": str(model_dir), "name": bundle.name, "input_shape": list(bundle.input_shape),
        "threads": threads, "runs": runs,
        "median_ms_unprofiled": round(float(np.median(times)) * 1000, 2),
        "kernel_ms_profiled": round(total, 2),
        "parts": {name: {"ms": round(ms, 2), "share": round(ms / total, 3)}
                  for name, ms in sorted(per_part.items(), key=lambda kv: -kv[1])},
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True, help="bundle directory (model.json + model.onnx)")
    p.add_argument("--runs", type=int, default=100)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", dest="json_out", default=None)
    args = p.parse_args(argv)
    if args.runs < 1 or args.threads < 1:
        p.error("--runs and --threads must be ≥ 1")
    emit(profile(Path(args.model), args.runs, args.threads), args.json_out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
