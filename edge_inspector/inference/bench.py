"""``edge-inspector bench``: latency, throughput and peak RSS of a bundle through the runtime engine.

Runs exactly what a station runs (``OnnxEngine`` on onnxruntime, batch 1) and never imports torch
or the training package, so ``peak_rss_mb`` is the inference process's footprint.
"""

from __future__ import annotations

import json
import resource
import sys
import time
from pathlib import Path
from typing import Optional

import numpy as np

from edge_inspector.errors import InputError
from edge_inspector.inference.bundle import load_bundle
from edge_inspector.inference.onnx_engine import OnnxEngine
from edge_inspector.logging import get_logger
from edge_inspector.preprocess import Preprocessor

log = get_logger(__name__)

WARM_UP_RUNS = 5


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far, in MiB.

    On Linux read VmHWM from /proc/self/status: getrusage's ru_maxrss carries over across
    fork+exec, so a bench started from a big process (a training benchmark) would report the
    parent's peak (measured: 3.1 GB instead of ~165 MB)."""
    peak = _proc_status_mb("VmHWM:")
    if peak is not None:
        return peak
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / (1024.0 * 1024.0) if sys.platform == "darwin" else rss / 1024.0


def rss_mb() -> float:
    """Resident set size of this process now, in MiB (NaN where /proc is missing)."""
    now = _proc_status_mb("VmRSS:")
    return float("nan") if now is None else now


def _proc_status_mb(field: str) -> Optional[float]:
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith(field):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return None


def _inputs(bundle, n: int, seed: int = 0) -> list[np.ndarray]:
    """Random frames through the runtime preprocessing (lighting 'none': the bench times the model)."""
    rng = np.random.default_rng(seed)
    pre = Preprocessor(bundle.input_shape)
    h, w = bundle.input_shape
    return [pre.prepare(rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8))[0] for _ in range(n)]


def bench_bundle(model_dir: str | Path, runs: int = 200, threads: int = 0, providers=None) -> dict:
    if runs < 1:
        raise InputError(f"--runs must be at least 1 (got {runs})")
    if threads < 0:
        raise InputError(f"--threads must be 0 (auto) or positive (got {threads})")
    bundle = load_bundle(model_dir)
    engine = OnnxEngine.from_bundle(bundle, providers=providers, intra_op_threads=threads)
    inputs = _inputs(bundle, min(runs, 8))
    engine.warm_up(WARM_UP_RUNS)
    lat = np.empty(runs, dtype=np.float64)
    t_all = time.perf_counter()
    for k in range(runs):
        x = inputs[k % len(inputs)][None]
        t0 = time.perf_counter()
        engine.infer(x)
        lat[k] = (time.perf_counter() - t0) * 1000.0
    total = time.perf_counter() - t_all
    result = {
        "latency_ms_median": float(np.median(lat)),
        "latency_ms_p99": float(np.percentile(lat, 99)),
        "latency_ms_mean": float(lat.mean()),
        "throughput_fps": float(runs / total) if total > 0 else 0.0,
        "peak_rss_mb": peak_rss_mb(),
        "provider": engine.provider,
        "provider_notes": engine.provider_notes,
        "runs": int(runs),
        "batch_size": 1,
        "threads": int(threads) or "auto",
        "image_size": bundle.image_size,
        "input_shape": list(bundle.input_shape),
        "model": {"name": bundle.name, "head": bundle.head, "sha256": bundle.sha256},
        "torch_imported": "torch" in sys.modules,
    }
    engine.close()
    return result


def cli_bench(args) -> int:
    result = bench_bundle(args.model, runs=int(getattr(args, "runs", 200)), threads=int(getattr(args, "threads", 0) or 0))
    text = json.dumps(result, indent=2)
    print(text)
    out = getattr(args, "json_out", None)
    if out:
        p = Path(out)
        try:
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_text(text + "\n", encoding="utf-8")
        except OSError as exc:
            raise InputError(f"{p}: cannot write JSON ({exc.strerror or exc})") from None
    return 0
