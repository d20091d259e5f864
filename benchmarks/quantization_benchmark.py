"""INT8 benchmark: a float bundle against its INT8-backbone copy (``edge-inspector quantize``), on
the same test set — image/pixel AUROC, recall and FAR at the bundle's threshold, latency and peak
RSS (``edge-inspector bench`` in a separate process, as a station runs it).

Takes the bundles a model benchmark run kept (its ``--workdir``):

    .venv/bin/python benchmarks/quantization_benchmark.py --workdir /tmp/mb --head default \\
        --json benchmarks/results/quantization.json

The acceptance bar (issue 13) is an accuracy loss ≤ 0.005 AUROC; ``within_0.005`` records it.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchmarks.report import emit  # noqa: E402
from model_benchmark import DATASETS, bench_process, datasets_root  # noqa: E402

FIGURES = ("image_auroc", "pixel_auroc", "aupro_30", "far_at_threshold", "recall_at_threshold")


def run(name: str, float_dir: Path, args) -> dict:
    from edge_inspector.training.evaluate import evaluate_bundle
    from edge_inspector.training.quantize import quantize_bundle

    data_dir = datasets_root().joinpath(*DATASETS[name])
    int8_dir = float_dir.with_name(float_dir.name + "_int8")
    shutil.rmtree(int8_dir, ignore_errors=True)
    t0 = time.perf_counter()
    meta = quantize_bundle(float_dir, data_dir, int8_dir, n_images=args.images, seed=args.seed, threads=args.threads)
    quantize_s = time.perf_counter() - t0
    rows = {}
    for kind, model_dir in (("float", float_dir), ("int8", int8_dir)):
        ev = evaluate_bundle(model_dir, data_dir, threads=args.threads)
        bench = bench_process(model_dir, args.bench_runs, args.threads)
        rows[kind] = {**{k: ev.get(k) for k in FIGURES}, "ms_per_image": bench.get("latency_ms_median"),
                      "ms_p99": bench.get("latency_ms_p99"), "peak_rss_mb": bench.get("peak_rss_mb")}
    delta = {k: round(rows["int8"][k] - rows["float"][k], 4) for k in ("image_auroc", "pixel_auroc")}
    return {"float_dir": str(float_dir), **rows, "delta": delta,
            "within_0.005": bool(min(delta.values()) >= -0.005),
            "quantize_s": round(quantize_s, 1), "quantization": meta["quantization"]}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workdir", required=True, help="a model benchmark --workdir (WORKDIR/<dataset>/<head>)")
    p.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    p.add_argument("--head", default="default")
    p.add_argument("--images", type=int, default=64, help="calibration images from train/good")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--bench-runs", type=int, default=100)
    p.add_argument("--json", dest="json_out", default=None)
    args = p.parse_args(argv)
    from edge_inspector.logging import setup_logging

    setup_logging("WARNING")
    report = {"command": " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]),
              "head": args.head, "datasets": {}}
    for name in args.datasets:
        float_dir = Path(args.workdir) / name / args.head
        if not (float_dir / "model.onnx").is_file():
            report["datasets"][name] = {"skipped": f"{float_dir}: no bundle"}
            continue
        report["datasets"][name] = run(name, float_dir, args)
        print(json.dumps({"dataset": name, **report["datasets"][name]["delta"]}), file=sys.stderr, flush=True)
    emit(report, args.json_out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
