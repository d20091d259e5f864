"""Model benchmark: AE only, AE + SA-GAN (the paper's model), PatchCore-style kNN and the default
(fused) head, trained on the same split of the same cached features, evaluated side by side.

Per dataset the backbone features are computed once; the AE-only model and the AE + GAN model are
trained once each (same seed, same initial weights), and the kNN memory bank once; the four
bundles are then assembled from those parts, calibrated on the same hold-out, exported to ONNX
and evaluated through the runtime engine (``evaluate_bundle``: onnxruntime, no torch). Latency
and peak RSS come from ``edge-inspector bench`` in a separate process (the inference process a
station runs, without torch).

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
from dataclasses import replace
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.report import emit  # noqa: E402
from edge_inspector.lightings import DEFAULT_TRAIN_LIGHTING, TRAIN_LIGHTINGS  # noqa: E402

DATASETS = {
    "bottle": ("mvtec_ad", "bottle"),
    "tire": ("mvtec_3d_ad", "tire"),
    "kolektorsdd": ("kolektorsdd",),
}
HEAD_ORDER = ("ae", "aegan", "knn", "default")
# Ablation rows of the default head, built from the very same trained parts with fixed term
# weights (TrainSettings.fusion_weights): the GAN critic's term alone, and the default's own
# weights with the AE term, the GAN term or the memory terms (kNN, subspace, residual) taken out
# (the rest renormalised to sum 1; the last is the default's AE-GAN alone).
ABLATIONS = ("gan_only", "default_without_ae", "default_without_gan", "default_without_memory")
MEMORY_TERMS = ("knn", "sub", "res")
# --mixes: further fixed term mixes of the same trained parts, evaluated on the test defects (for
# the record only: the default head chooses its weights on good images, fusion.py)
MIXES = {
    "mix_ae_gan": {"ae": 0.5, "gan": 0.5},
    "mix_sub_ae": {"sub": 0.6, "ae": 0.4},
    "mix_sub_ae_gan": {"sub": 0.6, "ae": 0.2, "gan": 0.2},
    "mix_knn_ae_gan": {"knn": 0.6, "ae": 0.2, "gan": 0.2},
    "mix_sub_ae_gan_even": {"sub": 0.4, "ae": 0.4, "gan": 0.2},
}
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
    # calibration: far/recall at each threshold rule the bundle recorded (the applied one is
    # threshold/far_at_threshold/recall_at_threshold), and the ROC's best recall at the same FAR
    "threshold_rules",
    "roc_recall_at_far",
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


def cross_dataset_means(report: dict) -> dict:
    """Per row, image / pixel AUROC averaged over the datasets that have that row (all of them, or
    the row is left out): the figure issue 13's ablation compares."""
    datasets = [d["heads"] for d in report["datasets"].values() if "heads" in d]
    rows = {r for heads in datasets for r in heads}
    means = {}
    for row in sorted(rows):
        if datasets and all(row in heads for heads in datasets):
            means[row] = {k: round(sum(heads[row][k] for heads in datasets) / len(datasets), 4)
                          for k in ("image_auroc", "pixel_auroc")}
    return {"datasets": [n for n, d in report["datasets"].items() if "heads" in d], "rows": means}


def _weights_text(weights: dict | None) -> str:
    if not weights:
        return ""
    return " + ".join(f"{v:.2g} {k}" for k, v in sorted(weights.items(), key=lambda kv: -kv[1]) if v)


def _f(v, digits: int = 3) -> str:
    return "–" if v is None else f"{v:.{digits}f}"


def markdown(report: dict) -> str:
    """The docs table of a result (one row per dataset × head or ablation row) and the means line."""
    lines = ["| dataset | row (weights) | img / px AUROC | AUPRO-30 | FAR / recall @thr | ms/img | RSS MB |",
             "|---|---|---|---|---|---|---|"]
    for name, ds in report["datasets"].items():
        for row, r in (ds.get("heads") or {}).items():
            label = row if row not in ("default", *ABLATIONS, *MIXES) or not r.get("fusion_weights") \
                else f"{row} ({_weights_text(r['fusion_weights'])})"
            if row == "default":
                label = f"**{label}**"
            rss = r.get("peak_rss_mb")
            lines.append(f"| {name} | {label} | {_f(r.get('image_auroc'))} / {_f(r.get('pixel_auroc'))} | {_f(r.get('aupro_30'))} | "
                         f"{_f(r.get('far_at_threshold'))} / {_f(r.get('recall_at_threshold'))} | {_f(r.get('ms_per_image'), 1)} | "
                         f"{'–' if rss is None else round(rss)} |")
    means = (report.get("means") or {}).get("rows") or {}
    if means:
        lines.append("")
        lines.append("Mean over " + ", ".join((report.get("means") or {}).get("datasets") or []) + " (image / pixel AUROC): " +
                     "; ".join(f"{row} {m['image_auroc']:.4f} / {m['pixel_auroc']:.4f}" for row, m in means.items()) + ".")
    return "\n".join(lines)


def reuse_autoencoder(model_dir: Path):
    """(Components with the trained MDAAE and its curve, feature mean, feature std) from a bundle."""
    from edge_inspector.training.export import load_checkpoint
    from edge_inspector.training.components import Components

    model, meta = load_checkpoint(model_dir)
    curve = json.loads((model_dir / "training_curve.json").read_text())
    timing = {k: v for k, v in meta["training"]["timing"].items() if k.endswith("_ms") or k.endswith("_steps")}
    parts = Components(ae=model.mdaae, ae_config=model.config.mdaae, used_gan=bool(curve.get("gan")),
                       curve=curve["points"], timing=timing)
    return parts, model.feature_mean.clone(), model.feature_std.clone()


def reused_bundles(earlier: Path, heads) -> tuple[Path | None, Path]:
    """(AE-only bundle or None, bundle holding the AE-GAN's MDAAE) of one dataset of an earlier run.

    A run of the default head alone (--heads default) wrote no ae/aegan bundles: its default bundle
    holds the AE-GAN's MDAAE, and the AE-only bundle is then needed only if the ae head is asked
    for (SystemExit naming the missing folder)."""
    ae_dir = earlier / "ae"
    if not ae_dir.is_dir():
        if "ae" in heads:
            raise SystemExit(f"--reuse: {ae_dir} missing (that run had no ae head); drop ae from --heads")
        ae_dir = None
    gan_dir = earlier / "aegan" if (earlier / "aegan").is_dir() else earlier / "default"
    if not gan_dir.is_dir():
        raise SystemExit(f"--reuse: neither {earlier / 'aegan'} nor {earlier / 'default'} exists")
    return ae_dir, gan_dir


def run_lighting(requested: str | None, reuse: str | None) -> str:
    """The lighting this run trains and evaluates with. With --reuse it is the earlier run's
    (``result.json`` ``lighting``; runs from before the key used none): its autoencoders were
    trained on features of frames normalised that way, so another lighting would mix the two
    silently — an explicit --lighting that differs is a one-line SystemExit."""
    if reuse is None:
        return requested or DEFAULT_TRAIN_LIGHTING
    result = Path(reuse) / "result.json"
    if not result.is_file():
        raise SystemExit(f"--reuse {reuse}: no result.json there (not a workdir of this benchmark)")
    earlier = json.loads(result.read_text()).get("lighting") or "none"
    if requested is not None and requested != earlier:
        raise SystemExit(f"--reuse {reuse}: that run used lighting {earlier}; drop --lighting {requested} or pass --lighting {earlier}")
    return earlier


def reuse_critic(model_dir: Path):
    """The GAN critic of an earlier run's default bundle (None if that bundle has none)."""
    from edge_inspector.training.export import load_checkpoint

    model, _ = load_checkpoint(model_dir)
    return model.critic


def restandardise(data, mean, std):
    """Re-express cached standardised features with another (the reused model's) mean/std."""
    def convert(z):
        return ((z.float() * data.feature_std + data.feature_mean - mean) / std).to(z.dtype)

    return replace(data, z_train=convert(data.z_train), z_clean=convert(data.z_clean), z_hold=convert(data.z_hold),
                   feature_mean=mean, feature_std=std)


def ablation_weights(row: str, default_weights: dict) -> dict | None:
    """Fixed term weights of an ablation row; None when the row would not differ from the default
    (the term it removes has weight 0) or would have no term left."""
    if row == "gan_only":
        return {"gan": 1.0}
    removed = {"default_without_ae": ("ae",), "default_without_gan": ("gan",),
               "default_without_memory": MEMORY_TERMS}[row]
    rest = {t: float(w) for t, w in default_weights.items() if t not in removed and float(w) > 0}
    if not any(float(default_weights.get(t, 0.0)) for t in removed) or not rest:
        return None
    total = sum(rest.values())
    return {t: round(w / total, 6) for t, w in rest.items()}


def run_dataset(name: str, data_dir: Path, work: Path, args) -> dict:
    import torch

    from edge_inspector.training.backbone import DEFAULT_TAPS, FeatureExtractor
    from edge_inspector.training.evaluate import evaluate_bundle
    from edge_inspector.training.assemble import assemble
    from edge_inspector.training.components import fit_components
    from edge_inspector.training.features import prepare_data
    from edge_inspector.training.settings import TrainSettings, set_determinism

    settings = TrainSettings(head="default", iterations=args.iterations, image_size=args.image_size,
                             geometry=args.geometry, seed=args.seed, lighting=args.lighting,
                             progress=not args.quiet, threads=args.threads, fusion_ae_weight=args.fusion_ae_weight,
                             knn_features=args.knn_features,
                             subspace_bank_size=(args.subspace_bank_size if args.subspace_bank_size is not None
                                                 else TrainSettings.subspace_bank_size))
    set_determinism(settings.seed, settings.threads)
    t0 = time.perf_counter()
    # Reusing trained autoencoders: the augmented copies were only needed to train them.
    data_settings = TrainSettings(**{**settings.__dict__, "augmented_copies": 0}) if args.reuse else settings
    data = prepare_data(data_dir, data_settings, FeatureExtractor(DEFAULT_TAPS))
    features_s = time.perf_counter() - t0
    parts = {}
    if args.reuse:
        # Autoencoders from an earlier run of this benchmark (same split and seed): only the kNN
        # bank is rebuilt and all four heads are re-assembled, calibrated and evaluated.
        previous = json.loads((Path(args.reuse) / "result.json").read_text())["datasets"][name]
        ae_dir, gan_dir = reused_bundles(Path(args.reuse) / name, args.heads)
        # both bundles of a run share its split, so either one's feature mean/std will do
        gan_parts, mean, std = reuse_autoencoder(gan_dir)
        parts["ae"] = reuse_autoencoder(ae_dir)[0] if ae_dir is not None else None
        gan_parts.critic = reuse_critic(Path(args.reuse) / name / "default")
        data = restandardise(data, mean, std)
        t0 = time.perf_counter()
        bank = fit_components(data, settings, train_ae=False, use_gan=False, build_bank=True)
        gan_parts.bank, gan_parts.subspace, gan_parts.bank_source = bank.bank, bank.subspace, bank.bank_source
        gan_parts.sub_index = bank.sub_index
        gan_parts.timing = {**gan_parts.timing, **bank.timing}
        gan_and_bank = gan_parts
        ae_s = previous["timing"]["ae_train_s"]
        gan_s = previous["timing"]["aegan_train_s"]
        features_s = previous["timing"]["features_s"]
    else:
        t0 = time.perf_counter()
        # the AE-only model is only needed for its own row
        parts["ae"] = (fit_components(data, settings, train_ae=True, use_gan=False, build_bank=False)
                       if "ae" in args.heads else None)
        ae_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        gan_and_bank = fit_components(data, settings, train_ae=True, use_gan=True, build_bank=True)
        gan_s = time.perf_counter() - t0 - gan_and_bank.timing.get("coreset_s", 0.0)
    parts.update(aegan=gan_and_bank, knn=gan_and_bank, default=gan_and_bank)
    train_seconds = {
        "ae": features_s + ae_s,
        "aegan": features_s + gan_s,
        "knn": features_s + gan_and_bank.timing.get("coreset_s", 0.0),
        "default": features_s + gan_s + gan_and_bank.timing.get("coreset_s", 0.0),
    }
    train_seconds.update({a: train_seconds["default"] for a in (*ABLATIONS, *MIXES)})
    results = {}
    rows = list(args.heads)
    if "default" in args.heads:
        rows += ([] if args.no_ablation else list(ABLATIONS)) + (list(MIXES) if args.mixes else [])
    for head in rows:
        out = work / name / head
        fixed_row = head in ABLATIONS or head in MIXES  # the default head's parts with fixed weights
        if fixed_row:
            weights = MIXES.get(head) or ablation_weights(head, results["default"]["fusion_weights"])
            if weights is None:
                continue
            assemble("default", data, parts["default"], replace(settings, fusion_weights=weights), out,
                     name=f"{name}-{head}")
        else:
            assemble(head, data, parts[head], settings, out, name=f"{name}-{head}")
        meta = json.loads((out / "model.json").read_text())
        ev = evaluate_bundle(out, data_dir, threads=args.threads)
        bench = bench_process(out, args.bench_runs, args.threads)
        row = {k: ev.get(k) for k in METRICS}
        row.update(
            ms_per_image=bench.get("latency_ms_median"),
            ms_p99=bench.get("latency_ms_p99"),
            peak_rss_mb=bench.get("peak_rss_mb"),
            torch_imported=bench.get("torch_imported"),
            train_s=round(train_seconds[head], 1),
            per_type=ev.get("per_type"),
            parity_max_abs_diff=max(meta["export"]["parity"]["max_abs_diff_map"], meta["export"]["parity"]["max_abs_diff_score"]),
            frechet_initial=meta["training_curve"].get("frechet_initial"),
            frechet_final=meta["training_curve"].get("frechet_final"),
            model_dir=str(out),
        )
        row["threshold_rule"] = meta["threshold_calibration"].get("rule")
        row["threshold_calibration"] = meta["threshold_calibration"]  # both rules, with the tail fit
        if head == "default" or fixed_row:
            row["fusion_weights"] = meta.get("fusion_weights")
            row["fusion_selection"] = meta["score_normalisation"].get("fusion", {}).get("selection")
        if head in ("knn", "default") or fixed_row:
            row["knn_features"] = meta.get("knn_features")
        results[head] = row
        print(json.dumps({"dataset": name, "head": head, **{k: row[k] for k in ("image_auroc", "pixel_auroc", "aupro_30", "ms_per_image")}}),
              file=sys.stderr, flush=True)
    timing = {
        "n_backbone_passes": data.timing["n_backbone_passes"],
        "features_s": round(features_s, 1),
        "ae_train_s": round(ae_s, 1),
        "aegan_train_s": round(gan_s, 1),
        "coreset_s": gan_and_bank.timing.get("coreset_s"),
        "bank_size": gan_and_bank.timing.get("bank_size"),
        "ae_only_step_ms": parts["ae"].timing.get("ae_step_ms") if parts["ae"] is not None else None,
        "gan_step_ms": gan_and_bank.timing.get("gan_step_ms"),
        "n_train": int(data.train_idx.size),
        "n_holdout": int(data.hold_idx.size),
    }
    shape = [data.preprocessor.input_h, data.preprocessor.input_w]
    return {"input_shape": shape, "timing": timing, "heads": results}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    p.add_argument("--heads", nargs="+", default=list(HEAD_ORDER), choices=list(HEAD_ORDER))
    p.add_argument("--iterations", type=int, default=None, help="AE iterations (default: the train default)")
    p.add_argument("--image-size", type=int, default=256)
    p.add_argument("--geometry", default="keep_aspect", choices=["keep_aspect", "square"],
                   help="model input shape, as train --geometry")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--lighting", default=None, choices=TRAIN_LIGHTINGS,
                   help="lighting the bundles are trained with and run (default: the train default; "
                        "with --reuse, the earlier run's)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--bench-runs", type=int, default=100)
    p.add_argument("--workdir", default=None, help="keep the bundles here (default: a temp dir)")
    p.add_argument("--json", dest="json_out", default=None)
    p.add_argument("--quiet", action="store_true")
    p.add_argument("--fusion-ae-weight", type=float, default=None,
                   help="default head: fix the weight of the AE term (default: chosen on synthetic anomalies "
                        "drawn on the held-out good images, as train does)")
    p.add_argument("--knn-features", default="raw", choices=["raw", "standardised"],
                   help="feature space of the kNN term (knn and default heads)")
    p.add_argument("--subspace-bank-size", type=int, default=None,
                   help="default head: entries of the subspace term's bank (0: the whole memory bank; "
                        "default: the train default)")
    p.add_argument("--no-ablation", action="store_true",
                   help="skip the ablation rows of the default head (" + ", ".join(ABLATIONS) + ")")
    p.add_argument("--mixes", action="store_true",
                   help="also evaluate the fixed term mixes " + ", ".join(MIXES) + " of the default head's parts")
    p.add_argument("--reuse", default=None, metavar="WORKDIR",
                   help="reuse the autoencoders trained by an earlier run (its --workdir, holding result.json); "
                        "rebuilds the kNN bank and re-assembles and re-evaluates all heads")
    p.add_argument("--summarise", default=None, metavar="RESULT.json",
                   help="only add the cross-dataset means (report['means']) to an earlier result")
    p.add_argument("--markdown", default=None, metavar="RESULT.json",
                   help="only print the docs table (docs/benchmarks.md) of an earlier result")
    p.add_argument("--remeasure", default=None, metavar="RESULT.json",
                   help="only re-run latency/RSS for the bundles listed in an earlier result (needs its --workdir)")
    args = p.parse_args(argv)
    if args.markdown:
        print(markdown(json.loads(Path(args.markdown).read_text())))
        return 0
    if args.remeasure or args.summarise:
        if args.remeasure:
            report = remeasure(Path(args.remeasure), args.bench_runs, args.threads)
        else:
            report = json.loads(Path(args.summarise).read_text())
        report["means"] = cross_dataset_means(report)
        emit(report, args.json_out)
        return 0

    from edge_inspector.logging import setup_logging

    setup_logging("WARNING")
    import torch

    torch.set_num_threads(args.threads)
    args.lighting = run_lighting(args.lighting, args.reuse)
    work_ctx = tempfile.TemporaryDirectory() if args.workdir is None else None
    work = Path(args.workdir) if args.workdir else Path(work_ctx.name)
    started = time.perf_counter()
    report = {"image_size": args.image_size, "geometry": args.geometry, "seed": args.seed,
              "lighting": args.lighting, "iterations": args.iterations, "threads": args.threads,
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
    report["total_s"] = round(time.perf_counter() - started, 1)
    report["means"] = cross_dataset_means(report)
    emit(report, args.json_out)
    if work_ctx is not None:
        work_ctx.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
