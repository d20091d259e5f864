"""Model benchmark — the ablation of the paper's model on the dev sets, side by side on the same
split: MDAAE only (``ae``), the SA-GAN scorer only (``gan``), the PatchCore-style kNN reference
(``knn``) and the default head (MDAAE + SA-GAN fused, what a station runs; ``aegan`` is the same
model), plus the default head with its backbone quantised to INT8 (``default_int8``).

Per dataset the backbone features are computed once; the MDAAE, the GAN scorer and the kNN memory
bank are trained once each; every bundle is assembled from those parts, calibrated on the same
hold-out, exported to ONNX and evaluated through the runtime engine (``evaluate_bundle``:
onnxruntime, no torch). Latency and peak RSS come from the runtime bench in a separate process
(the inference process a station runs, without torch). Every figure docs/benchmarks.md reports is
in the JSON this writes.

    .venv/bin/python benchmarks/model_benchmark.py --json benchmarks/results/model.json

Prints one JSON document (and writes it with ``--json``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

DATASETS = {
    "bottle": ("mvtec_ad", "bottle"),
    "tire": ("mvtec_3d_ad", "tire"),
    "kolektorsdd": ("kolektorsdd",),
}
HEAD_ORDER = ("ae", "gan", "knn", "default", "default_int8")
# PatchCore-style reference (GUIDE.md "Measured reference figures"): image AUROC, pixel AUROC
REFERENCE = {"bottle": (1.000, 0.977), "tire": (0.698, 0.979), "kolektorsdd": (0.883, 0.910)}
METRICS = (
    "image_auroc",
    "image_ap",
    "image_f1_max",
    "pixel_auroc",
    "aupro_30",
    "threshold",
    "far_at_threshold",
    "recall_at_threshold",
    "far_strong_light",
    "latency_ms_median",
)


def datasets_root() -> Path:
    return Path(os.environ.get("EDGE_INSPECTOR_DATASETS", REPO.parent / "shared" / "datasets"))


_FOOTPRINT_CODE = """
import json, sys
from edge_inspector.inference.bench import bench_bundle
result = bench_bundle(sys.argv[1], runs=int(sys.argv[2]), threads=int(sys.argv[3]))
status = open("/proc/self/status").read().split("\\n")
hwm = [line for line in status if line.startswith("VmHWM:")]
result["peak_rss_mb_vmhwm"] = int(hwm[0].split()[1]) / 1024.0 if hwm else None
result["torch_imported"] = "torch" in sys.modules
print(json.dumps(result))
"""


def bench_process(model_dir: Path, runs: int, threads: int) -> dict:
    """The runtime bench (``edge_inspector.inference.bench.bench_bundle``) in a fresh process: the
    footprint of an inference-only process, without torch.

    Peak RSS is read from ``/proc/self/status`` (VmHWM), not from ``getrusage``: ru_maxrss survives
    fork + exec on Linux, so a child of this (multi-GB, feature-caching) process would report the
    parent's peak instead of its own."""
    proc = subprocess.run([sys.executable, "-c", _FOOTPRINT_CODE, str(model_dir), str(runs), str(threads)],
                          cwd=REPO, capture_output=True, text=True)
    if proc.returncode != 0:
        return {"error": (proc.stderr.strip().splitlines() or ["bench failed"])[-1]}
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    if result.get("peak_rss_mb_vmhwm") is not None:
        result["peak_rss_mb_getrusage"] = result.get("peak_rss_mb")
        result["peak_rss_mb"] = result["peak_rss_mb_vmhwm"]
    return result


def remeasure(json_path: Path, runs: int, threads: int) -> dict:
    """Re-run latency/RSS for the bundles of an earlier run (e.g. on a quieter machine)."""
    report = json.loads(json_path.read_text())
    for dataset in report["datasets"].values():
        for row in dataset.get("heads", {}).values():
            bench = bench_process(Path(row["model_dir"]), runs, threads)
            row.update(ms_per_image=bench.get("latency_ms_median"), ms_p99=bench.get("latency_ms_p99"),
                       peak_rss_mb=bench.get("peak_rss_mb"), torch_imported=bench.get("torch_imported"))
    return report


def run_dataset(name: str, data_dir: Path, work: Path, args) -> dict:
    from edge_inspector.training.assemble import assemble, fit_components
    from edge_inspector.training.backbone import DEFAULT_TAPS, FeatureExtractor
    from edge_inspector.training.evaluate import evaluate_bundle
    from edge_inspector.training.features import prepare_data
    from edge_inspector.training.quantise import quantise_bundle
    from edge_inspector.training.settings import TrainSettings
    from edge_inspector.training.train import set_determinism

    settings = TrainSettings(head="default", iterations=args.iterations, image_size=args.image_size, seed=args.seed,
                             progress=not args.quiet, threads=args.threads)
    set_determinism(settings.seed, settings.threads)
    t0 = time.perf_counter()
    data = prepare_data(data_dir, settings, FeatureExtractor(DEFAULT_TAPS))
    features_s = time.perf_counter() - t0
    parts = fit_components(data, settings, train_ae=True, train_gan=True, build_bank=True)
    timing = {"features_s": round(features_s, 1), "n_backbone_passes": data.timing["n_backbone_passes"],
              "mdaae_s": parts.timing.get("mdaae_s"), "mdaae_step_ms": parts.timing.get("mdaae_step_ms"),
              "gan_s": parts.timing.get("gan_s"), "gan_step_ms": parts.timing.get("gan_step_ms"),
              "coreset_s": parts.timing.get("coreset_s"), "bank_size": parts.timing.get("bank_size"),
              "n_train": int(data.train_idx.size), "n_holdout": int(data.hold_idx.size)}
    train_seconds = {"ae": features_s + (parts.timing.get("mdaae_s") or 0),
                     "gan": features_s + (parts.timing.get("gan_s") or 0),
                     "knn": features_s + (parts.timing.get("coreset_s") or 0),
                     "default": features_s + (parts.timing.get("mdaae_s") or 0) + (parts.timing.get("gan_s") or 0)}
    results = {}
    for head in args.heads:
        out = work / name / head
        if head == "default_int8":
            source = work / name / "default"
            if not (source / "model.json").is_file():
                assemble("default", data, parts, settings, source, name=f"{name}-default")
            quant = quantise_bundle(source, out, data.hold_images)
        else:
            assemble(head, data, parts, settings, out, name=f"{name}-{head}")
            quant = None
        meta = json.loads((out / "model.json").read_text())
        ev = evaluate_bundle(out, data_dir, threads=args.threads)
        bench = bench_process(out, args.bench_runs, args.threads)
        row = {k: ev.get(k) for k in METRICS}
        row.update(
            ms_per_image=bench.get("latency_ms_median"),
            ms_p99=bench.get("latency_ms_p99"),
            peak_rss_mb=bench.get("peak_rss_mb"),
            torch_imported=bench.get("torch_imported"),
            train_s=round(train_seconds[head.replace("_int8", "")], 1),
            per_type=ev.get("per_type"),
            parity_max_abs_diff=max(meta["export"]["parity"]["max_abs_diff_map"], meta["export"]["parity"]["max_abs_diff_score"]),
            frechet_curve=[(p["iteration"], p["frechet"]) for p in meta["training_curve"].get("points", [])],
            model_dir=str(out),
        )
        if quant is not None:
            row["quantisation"] = quant
        if head.startswith("default"):
            row["fusion_weights"] = meta.get("fusion_weights")
        results[head] = row
        print(json.dumps({"dataset": name, "head": head, **{k: row[k] for k in ("image_auroc", "pixel_auroc", "recall_at_threshold", "far_at_threshold", "ms_per_image")}}),
              file=sys.stderr, flush=True)
    ref_image, ref_pixel = REFERENCE.get(name, (None, None))
    default = results.get("default") or {}
    acceptance = None
    if ref_image is not None and default:
        acceptance = {"reference_image_auroc": ref_image, "reference_pixel_auroc": ref_pixel,
                      "image_ok": default.get("image_auroc", 0) >= ref_image,
                      "pixel_ok": default.get("pixel_auroc", 0) > ref_pixel}
    return {"timing": timing, "heads": results, "acceptance": acceptance}


def ablation_summary(report: dict) -> dict:
    """Mean and worst case over the dev sets per head (image / pixel AUROC)."""
    rows: dict[str, dict] = {}
    sets = [d for d in report["datasets"].values() if "heads" in d]
    for head in HEAD_ORDER:
        values = [(d["heads"][head]["image_auroc"], d["heads"][head]["pixel_auroc"]) for d in sets if head in d["heads"]]
        if values and len(values) == len(sets):
            rows[head] = {"mean_image_auroc": sum(v[0] for v in values) / len(values),
                          "mean_pixel_auroc": sum(v[1] for v in values) / len(values),
                          "worst_image_auroc": min(v[0] for v in values),
                          "worst_pixel_auroc": min(v[1] for v in values), "n_datasets": len(values)}
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    p.add_argument("--heads", nargs="+", default=list(HEAD_ORDER), choices=list(HEAD_ORDER))
    p.add_argument("--iterations", type=int, default=None, help="AE iterations (default: the train default)")
    p.add_argument("--image-size", type=int, default=256)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--bench-runs", type=int, default=100)
    p.add_argument("--workdir", default=None, help="keep the bundles here (default: a temp dir)")
    p.add_argument("--json", dest="json_out", default=None)
    p.add_argument("--quiet", action="store_true")
    p.add_argument("--remeasure", default=None, metavar="RESULT.json",
                   help="only re-run latency/RSS for the bundles listed in an earlier result (needs its --workdir)")
    p.add_argument("--merge", nargs="+", default=None, metavar="RESULT.json",
                   help="combine the per-dataset results of runs made with --datasets (e.g. in parallel) into "
                        "one report with the ablation summary; writes --json")
    args = p.parse_args(argv)
    if args.merge:
        parts = [json.loads(Path(f).read_text()) for f in args.merge]
        report = {**parts[0], "command": [part["command"] for part in parts], "datasets": {}}
        for part in parts:
            report["datasets"].update(part["datasets"])
        report["ablation"] = ablation_summary(report)
        report["total_s"] = max(part.get("total_s", 0) for part in parts)
        text = json.dumps(report, indent=1)
        print(text)
        if args.json_out:
            Path(args.json_out).write_text(text)
        return 0
    if args.remeasure:
        report = remeasure(Path(args.remeasure), args.bench_runs, args.threads)
        text = json.dumps(report, indent=1)
        print(text)
        if args.json_out:
            Path(args.json_out).write_text(text)
        return 0

    from edge_inspector.logging import setup_logging

    setup_logging("WARNING")
    import torch

    torch.set_num_threads(args.threads)
    work_ctx = tempfile.TemporaryDirectory() if args.workdir is None else None
    work = Path(args.workdir) if args.workdir else Path(work_ctx.name)
    started = time.perf_counter()
    report = {"image_size": args.image_size, "seed": args.seed, "iterations": args.iterations, "threads": args.threads,
              "command": " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]), "datasets": {}}
    for name in args.datasets:
        data_dir = datasets_root().joinpath(*DATASETS[name])
        if not (data_dir / "train" / "good").is_dir():
            report["datasets"][name] = {"skipped": f"{data_dir} not found"}
            continue
        report["datasets"][name] = run_dataset(name, data_dir, work, args)
        if args.json_out:  # partial results survive an interrupted run
            Path(args.json_out).parent.mkdir(parents=True, exist_ok=True)
            Path(args.json_out).write_text(json.dumps(report, indent=1))
        (work / "result.json").write_text(json.dumps(report, indent=1))
    report["ablation"] = ablation_summary(report)
    report["total_s"] = round(time.perf_counter() - started, 1)
    text = json.dumps(report, indent=1)
    print(text)
    if args.json_out:
        Path(args.json_out).write_text(text)
    if work_ctx is not None:
        work_ctx.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
