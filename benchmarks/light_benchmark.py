"""Light-stress benchmark (issue 9): how a shipped model bundle holds up when the light changes.

Every figure goes through the station's own path — ``load_bundle`` → the runtime ``Preprocessor``
(ROI none, the bundle's lighting or a candidate) → ``QualityGate`` (default ``preprocess.quality``
settings against the bundle's training exposure) → ``OnnxEngine`` → the bundle's calibrated
threshold (NG when score ≥ threshold) — never through training code, so it works for whatever
model ``edge-inspector train`` produces.

For each dataset's ``test/`` images and each light condition (gain, gamma, offset, gradient,
specular highlights, alone and combined; ``LightCondition`` in preprocess/photometric.py, seeds
fixed) it reports, per lighting candidate:

* ``far``: good frames scored NG / good frames the gate let through;
* ``recall``: defective frames scored NG / defective frames the gate let through;
* ``gated_good`` / ``gated_defective``: frames the quality gate turned into ERROR (never counted
  as OK nor as NG), with the kind (overexposed / underexposed);
* ``auroc``: image AUROC over every frame (gated ones scored anyway) and ``auroc_ungated``;
* ``prepare_ms_median``: time of ``Preprocessor.prepare`` per frame (ROI, lighting, resize,
  normalise) under clean light, to show what a lighting candidate costs.

One command, JSON out:

    .venv/bin/python benchmarks/light_benchmark.py --model bottle=MODEL_DIR --model tire=MODEL_DIR \\
        --model kolektorsdd=MODEL_DIR --json benchmarks/results/light.json
    # or train the bundles first (edge-inspector train, one per dataset) into --workdir:
    .venv/bin/python benchmarks/light_benchmark.py --train --head knn --workdir /tmp/light --json out.json

``--lighting`` lists the candidates (``bundle`` = what the bundle records; any other value runs
that normalisation at run time on a bundle trained without it, flagged ``runtime_only``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.model_benchmark import DATASETS, datasets_root  # noqa: E402
from edge_inspector.config.models import QualityConfig  # noqa: E402
from edge_inspector.datasets import list_test_items  # noqa: E402
from edge_inspector.errors import InputError  # noqa: E402
from edge_inspector.imageio import read_image  # noqa: E402
from edge_inspector.inference.bundle import load_bundle  # noqa: E402
from edge_inspector.inference.onnx_engine import OnnxEngine  # noqa: E402
from edge_inspector.lightings import DEFAULT_TRAIN_LIGHTING  # noqa: E402
from edge_inspector.preprocess.core import Preprocessor, to_bgr_uint8  # noqa: E402
from edge_inspector.preprocess.photometric import LightCondition  # noqa: E402
from edge_inspector.preprocess.quality import QualityGate, measure  # noqa: E402

PAPER_FAR = 0.086  # the paper's false-alarm rate under strong light
SEED = 9
BATCH = 8


def conditions(seed: int = SEED) -> list[LightCondition]:
    """The grid. Acceptance (issue 9) covers the highlight-free ones with gain 0.6…1.6 and gamma
    0.6…1.6 (``in_acceptance``); the rest show how fast things degrade beyond."""
    c = LightCondition
    grid = [c("clean")]
    grid += [c(f"gain x{g}", gain=g) for g in (0.6, 0.8, 1.2, 1.4, 1.6, 1.8)]
    grid += [c(f"gamma {g}", gamma=g) for g in (0.5, 0.6, 0.8, 1.25, 1.6)]
    grid += [c(f"offset {o:+d}", offset=o) for o in (-30, 30)]
    grid += [c(f"gradient ±{int(s * 100)}%", gradient=s, gradient_angle_deg=30.0) for s in (0.2, 0.4)]
    grid += [c(f"highlight r{int(r * 100)}% +{a}", highlight_radius=r, highlight_add=a, seed=seed)
             for r, a in ((0.04, 60), (0.08, 100), (0.12, 150))]
    grid += [
        c("gain x1.6 + gamma 0.6", gain=1.6, gamma=0.6),
        c("gain x0.6 + gamma 1.6", gain=0.6, gamma=1.6),
        c("gain x1.4 + gamma 0.8 + offset +20 + gradient ±30%", gain=1.4, gamma=0.8, offset=20, gradient=0.3, gradient_angle_deg=30.0),
        c("gain x1.2 + gradient ±30% + highlight r8% +100", gain=1.2, gradient=0.3, gradient_angle_deg=30.0,
          highlight_radius=0.08, highlight_add=100, seed=seed),
        c("strong light: gain x1.6 + gamma 0.6 + highlight r12% +150", gain=1.6, gamma=0.6,
          highlight_radius=0.12, highlight_add=150, seed=seed),
    ]
    return grid


# A cheaper subset for comparing lighting candidates (``--conditions core``): the acceptance
# extremes, one gradient, one highlight, strong light.
CORE = ("clean", "gain x0.6", "gain x1.6", "gamma 0.6", "gamma 1.6", "offset -30", "offset +30", "gradient ±40%",
        "highlight r8% +100", "gain x1.6 + gamma 0.6", "strong light: gain x1.6 + gamma 0.6 + highlight r12% +150")


def in_acceptance(cond: LightCondition) -> bool:
    return not cond.is_clean and not cond.has_highlight and 0.6 <= cond.gain <= 1.6 and 0.6 <= cond.gamma <= 1.6


def _auroc(labels: np.ndarray, scores: np.ndarray) -> Optional[float]:
    from sklearn.metrics import roc_auc_score

    if labels.size == 0 or labels.min() == labels.max():
        return None
    return float(roc_auc_score(labels, scores))


def _rate(hits: int, n: int) -> Optional[float]:
    return hits / n if n else None


def load_test_images(data_dir: Path, limit: Optional[int]) -> tuple[list[np.ndarray], np.ndarray, list[str]]:
    items = list_test_items(data_dir)
    if limit:
        good = [it for it in items if it.label == 0]
        bad = [it for it in items if it.label == 1]
        pick = lambda xs: xs[:: max(1, math.ceil(len(xs) / limit))][:limit]  # noqa: E731 - spread over types
        items = pick(good) + pick(bad)
    images = [to_bgr_uint8(read_image(it.path)) for it in items]
    return images, np.array([it.label for it in items]), [it.path.name for it in items]


def score(engine: OnnxEngine, tensors: list[np.ndarray]) -> np.ndarray:
    out = []
    for i in range(0, len(tensors), BATCH):
        _, s = engine.infer(np.stack(tensors[i : i + BATCH]))
        out.extend(float(v) for v in s)
    return np.array(out, dtype=np.float64)


def run_condition(cond, images, labels, pre, gate, engine, threshold) -> dict:
    tensors, gated, exposures = [], [], []
    for i, img in enumerate(images):
        frame = cond.apply(img, i)
        exposures.append(measure(frame))
        g = gate.check(frame)
        gated.append(g[0] if g else None)
        tensors.append(pre.prepare(frame)[0])
    scores = score(engine, tensors)
    ng = scores >= threshold
    through = np.array([g is None for g in gated])
    good, bad = labels == 0, labels == 1
    n_good_through, n_bad_through = int((good & through).sum()), int((bad & through).sum())
    kinds = {k: {"good": int(sum(1 for g, lab in zip(gated, labels) if g == k and lab == 0)),
                 "defective": int(sum(1 for g, lab in zip(gated, labels) if g == k and lab == 1))}
             for k in ("overexposed", "underexposed")}
    return {
        "condition": cond.name,
        "params": cond.describe(),
        "in_acceptance": in_acceptance(cond),
        "has_highlight": cond.has_highlight,
        "n_good": int(good.sum()),
        "n_defective": int(bad.sum()),
        "far": _rate(int((ng & good & through).sum()), n_good_through),
        "recall": _rate(int((ng & bad & through).sum()), n_bad_through),
        "gated_good": _rate(int((good & ~through).sum()), int(good.sum())),
        "gated_defective": _rate(int((bad & ~through).sum()), int(bad.sum())),
        "gated_by_kind": kinds,
        # the stricter reading: a gated good part is not passed either (ERROR), a gated defective
        # part is not found as NG
        "good_not_ok": _rate(int((ng & good & through).sum() + (good & ~through).sum()), int(good.sum())),
        "defective_found_ng": _rate(int((ng & bad & through).sum()), int(bad.sum())),
        "auroc": _auroc(labels, scores),
        "auroc_ungated": _auroc(labels[through], scores[through]),
        "score_good_median": float(np.median(scores[good])) if good.any() else None,
        # what the condition left of the frames: the mean share of pixels clipped to white
        # (any channel ≥ the saturated level) and crushed to black (quality.measure)
        "saturated_share_mean": round(float(np.mean([e.saturated_fraction for e in exposures])), 4),
        "black_share_mean": round(float(np.mean([e.black_fraction for e in exposures])), 4),
    }


def prepare_ms(pre: Preprocessor, images: list[np.ndarray], repeats: int = 3) -> float:
    times = []
    for _ in range(repeats):
        for img in images[:20]:
            t0 = time.perf_counter()
            pre.prepare(img)
            times.append((time.perf_counter() - t0) * 1000.0)
    return float(np.median(times))


def rule_threshold(bundle, rule: Optional[str]) -> float:
    """The bundle's threshold, or that of another rule its calibration recorded (``--threshold-rule``:
    what a station would run with ``model.threshold`` set to it)."""
    if rule is None:
        return float(bundle.threshold)
    rules = (bundle.meta.get("threshold_calibration") or {}).get("rules") or {}
    recorded = rules.get(rule)
    if not isinstance(recorded, dict) or "threshold" not in recorded:
        why = recorded.get("unavailable") if isinstance(recorded, dict) else None
        raise InputError(f"{bundle.directory}: --threshold-rule {rule}: "
                         + (f"unavailable for this bundle ({why})" if why else
                            f"not recorded (model.json threshold_calibration.rules has {', '.join(rules) or 'none'})"))
    return float(recorded["threshold"])


def _rule_note(model: dict) -> str:
    """A variant scored at another recorded rule's threshold is a variant of its own."""
    rule = model.get("threshold_rule", "applied")
    return "" if rule == "applied" else f", threshold of rule {rule}"


def bench_dataset(name: str, model_dir: Path, data_dir: Path, lightings: list[str], limit: Optional[int],
                  threads: int, only: Optional[list[str]], quiet: bool, quality: Optional[QualityConfig] = None,
                  threshold_rule: Optional[str] = None) -> dict:
    bundle = load_bundle(model_dir)
    threshold = rule_threshold(bundle, threshold_rule)
    recorded = (bundle.meta.get("preprocess") or {}).get("lighting") or "none"
    engine = OnnxEngine.from_bundle(bundle, providers=["cpu"], intra_op_threads=threads)
    engine.warm_up(2)
    images, labels, _ = load_test_images(data_dir, limit)
    gate = QualityGate.from_settings(quality or QualityConfig(), bundle.meta.get("preprocess"))
    grid = [c for c in conditions() if not only or c.name in only or c.name == "clean"]
    out = {
        "model_dir": str(model_dir),
        "model": {"name": bundle.name, "sha256": bundle.sha256, "head": bundle.head, "lighting": recorded,
                  "threshold": threshold, "threshold_rule": threshold_rule or "applied",
                  "bundle_threshold": bundle.threshold, "image_size": bundle.image_size,
                  "has_exposure_stats": bool(((bundle.train_stats or {}).get("exposure"))),
                  # the training images' exposure (mean luma range, saturated/black shares) docs cite
                  "exposure": {k: v for k, v in ((bundle.train_stats or {}).get("exposure") or {}).items()
                               if k not in ("luma_percentiles", "reference")}},
        "data_dir": str(data_dir),
        "n_good": int((labels == 0).sum()),
        "n_defective": int((labels == 1).sum()),
        "lighting": {},
    }
    for lighting in lightings:
        actual = recorded if lighting == "bundle" else lighting
        pre = Preprocessor(bundle.input_shape, lighting=actual, train_stats=bundle.train_stats)
        rows = []
        for cond in grid:
            t0 = time.perf_counter()
            row = run_condition(cond, images, labels, pre, gate, engine, threshold)
            rows.append(row)
            if not quiet:
                print(f"[{name} {actual}] {cond.name}: FAR {row['far']} recall {row['recall']} gated "
                      f"{row['gated_good']}/{row['gated_defective']} AUROC {row['auroc']} ({time.perf_counter() - t0:.1f}s)",
                      file=sys.stderr, flush=True)
        clean = rows[0]
        for row in rows:
            if clean["recall"] and row["recall"] is not None:
                row["recall_vs_clean"] = row["recall"] / clean["recall"]
            if clean["auroc"] is not None and row["auroc"] is not None:
                row["auroc_drop"] = clean["auroc"] - row["auroc"]
        out["lighting"][actual] = {
            "runtime_only": actual != recorded,
            "prepare_ms_median": prepare_ms(pre, images),
            "conditions": rows,
            "summary": summarise(rows),
        }
    engine.close()
    return out


def summarise(rows: list[dict]) -> dict:
    """The acceptance checks of issue 9 for one dataset × lighting candidate."""
    clean = rows[0]
    acc = [r for r in rows[1:] if r["in_acceptance"]]
    hl = [r for r in rows if r["has_highlight"]]
    worst = lambda xs, key, f: f((r[key] for r in xs if r.get(key) is not None), default=None)  # noqa: E731
    far_max = worst(acc, "far", max)
    recall_min = worst(acc, "recall_vs_clean", min)
    # a condition whose frames were all gated has no FAR/recall: it cannot count as met
    all_gated = [r["condition"] for r in acc if r["far"] is None or r["recall"] is None]
    strict_max = worst(acc, "good_not_ok", max)
    return {
        "clean_auroc": clean["auroc"],
        "clean_far": clean["far"],
        "clean_recall": clean["recall"],
        "acceptance_far_max": far_max,
        "acceptance_far_max_condition": next((r["condition"] for r in acc if r.get("far") == far_max), None),
        "acceptance_recall_vs_clean_min": recall_min,
        "acceptance_gated_good_max": worst(acc, "gated_good", max),
        "acceptance_all_gated_conditions": all_gated,
        "acceptance_met": bool(far_max is not None and far_max <= PAPER_FAR and recall_min is not None and recall_min >= 0.9
                               and not all_gated),
        "acceptance_good_not_ok_max": strict_max,
        "acceptance_met_counting_gated_as_alarms": bool(strict_max is not None and strict_max <= PAPER_FAR
                                                        and recall_min is not None and recall_min >= 0.9 and not all_gated),
        "highlight_far_max": worst(hl, "far", max),
        "highlight_gated_good_max": worst(hl, "gated_good", max),
        "highlight_met": bool(hl and all(r["far"] is not None and r["far"] <= PAPER_FAR for r in hl)),
    }


def train_bundle(name: str, data_dir: Path, out: Path, head: str, lighting: str, seed: int) -> Path:
    if (out / "model.json").is_file():
        return out
    cmd = [sys.executable, "-m", "edge_inspector", "train", "--data", str(data_dir), "--out", str(out),
           "--head", head, "--seed", str(seed), "--lighting", lighting]
    print("training:", " ".join(cmd), file=sys.stderr, flush=True)
    subprocess.run(cmd, check=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    return out


def combine(paths: list[str]) -> dict:
    """Merge runs (e.g. one per dataset or bundle), or earlier combinations, into one document:
    datasets → bundle variant."""
    out: dict = {"benchmark": "light-stress (issue 9)", "paper_far": PAPER_FAR, "seed": SEED, "runs": [], "datasets": {}}
    for path in paths:
        run = read_json(path)
        if "runs" in run and "command" not in run:  # already combined: its variants as they are
            out["runs"].extend(run["runs"])
            entries = [(name, variant, ds) for name, variants in run["datasets"].items() for variant, ds in variants.items()]
        elif "command" in run and "datasets" in run:
            out["runs"].append({"command": run["command"], "limit": run["limit"], "threads": run["threads"],
                                "quality_gate": run["quality_gate"]})
            entries = [(name, f"{ds['model']['head']}, trained with lighting {ds['model']['lighting']}"
                              + _rule_note(ds["model"]), ds)
                       for name, ds in run["datasets"].items()]
        else:
            raise InputError(f"{path}: not a light_benchmark.py run or combined result")
        for name, variant, ds in entries:
            target = out["datasets"].setdefault(name, {}).setdefault(variant, {k: v for k, v in ds.items() if k != "lighting"})
            target.setdefault("lighting", {}).update(ds["lighting"])
    return out


def read_json(path: str) -> dict:
    try:
        doc = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise InputError(f"{path}: cannot read ({exc.strerror or exc})") from None
    except json.JSONDecodeError as exc:
        raise InputError(f"{path}: not JSON ({exc.msg}, line {exc.lineno})") from None
    if not isinstance(doc, dict):
        raise InputError(f"{path}: not a light_benchmark.py result")
    return doc


def _auroc_text(v: Optional[float]) -> str:
    return "–" if v is None else f"{v:.3f}"


def _pct(v: Optional[float]) -> str:
    return "–" if v is None else f"{100 * v:.0f}"


def _f3(v: Optional[float]) -> str:
    return "–" if v is None else f"{v:.3f}"


def markdown_summary(doc: dict) -> str:
    """One row per dataset × bundle × lighting: the acceptance figures of issue 9."""
    lines = ["| dataset | bundle (head, trained with) | run-time lighting | prepare ms | clean AUROC | clean FAR % / recall % | "
             "worst FAR % in acceptance (condition) | min recall / clean | max gated good % | max good not OK % | "
             "highlights: max FAR % / max gated good % |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, variants in doc["datasets"].items():
        for variant, ds in variants.items():
            for lighting, res in ds["lighting"].items():
                m = res["summary"]
                tag = f"{lighting} (run time only)" if res["runtime_only"] else lighting
                gated_all = m.get("acceptance_all_gated_conditions") or []
                worst = f"{_pct(m['acceptance_far_max'])} ({m['acceptance_far_max_condition']})"
                if gated_all:
                    worst += f"; all gated: {', '.join(gated_all)}"
                lines.append(f"| {name} | `{ds['model']['name']}` ({variant}) | {tag} | {res['prepare_ms_median']:.1f} | "
                             f"{_f3(m['clean_auroc'])} | {_pct(m['clean_far'])} / {_pct(m['clean_recall'])} | {worst} | "
                             f"{_f3(m['acceptance_recall_vs_clean_min'])} | {_pct(m['acceptance_gated_good_max'])} | "
                             f"{_pct(m.get('acceptance_good_not_ok_max'))} | "
                             f"{_pct(m['highlight_far_max'])} / {_pct(m['highlight_gated_good_max'])} |")
    return "\n".join(lines)


def markdown(doc: dict) -> str:
    """Tables for docs/benchmarks.md, every figure read from the combined JSON: the summary, then
    per (bundle kind, lighting) one table of every condition with a column per dataset."""
    lines = [markdown_summary(doc)]
    groups: dict = {}
    for name, variants in doc["datasets"].items():
        for variant, ds in variants.items():
            for lighting, res in ds["lighting"].items():
                key = (variant.split(",")[0], ds["model"]["lighting"], lighting, _rule_note(ds["model"]))
                groups.setdefault(key, {})[name] = res["conditions"]
    for (head, trained, lighting, rule), by_ds in groups.items():
        names = list(by_ds)
        lines.append(f"\n{head} bundles trained with lighting `{trained}`, run-time lighting `{lighting}`{rule} — "
                     "per dataset: FAR % / recall % / gated good % / AUROC (✱ = acceptance condition)\n")
        lines.append("| condition | " + " | ".join(names) + " |")
        lines.append("|---|" + "---|" * len(names))
        order = [r["condition"] for r in next(iter(by_ds.values()))]
        for cond in order:
            cells = []
            for n in names:
                row = next((r for r in by_ds[n] if r["condition"] == cond), None)
                cells.append("–" if row is None else
                             f"{_pct(row['far'])} / {_pct(row['recall'])} / {_pct(row['gated_good'])} / {_f3(row['auroc'])}")
            acc = next((r["in_acceptance"] for rows in by_ds.values() for r in rows if r["condition"] == cond), False)
            lines.append(f"| {cond}{' ✱' if acc else ''} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", action="append", default=[], metavar="DATASET=MODEL_DIR",
                   help=f"bundle to test per dataset ({', '.join(DATASETS)}); datasets without one are skipped unless --train")
    p.add_argument("--train", action="store_true", help="train missing bundles with edge-inspector train into --workdir")
    p.add_argument("--workdir", default="/tmp/ei_light", help="where --train writes bundles (reused when present)")
    p.add_argument("--head", default="default", help="--train: head to train")
    p.add_argument("--train-lighting", default=DEFAULT_TRAIN_LIGHTING,
                   help="--train: lighting the bundles are trained with (default: the train default)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--lighting", default="bundle", help="comma list of candidates: bundle, none, clahe, match_train, ...")
    p.add_argument("--limit", type=int, default=None, help="at most N good and N defective test images per dataset")
    p.add_argument("--conditions", default=None, help="'core' (a subset for comparing candidates) or a comma list of condition names (clean always runs)")
    p.add_argument("--quality", action="append", default=[], metavar="KEY=VALUE",
                   help="a preprocess.quality setting for the gate instead of its default (repeatable), e.g. saturated_margin=0.3")
    p.add_argument("--threshold-rule", default=None, metavar="RULE",
                   help="score at the threshold of this rule the bundle's calibration recorded (e.g. holdout, "
                        "train_pooled) instead of the one it applied")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", dest="json_out", default=None)
    p.add_argument("--quiet", action="store_true")
    p.add_argument("--combine", nargs="+", metavar="RUN.json", help="merge earlier runs into --json instead of running")
    p.add_argument("--markdown", metavar="RESULT.json", help="print the docs tables of a run's or a combined JSON instead of running")
    args = p.parse_args(argv)
    if args.markdown:
        # a single run's JSON is shown as its own combination (one run, same tables)
        print(markdown(combine([args.markdown])))
        return 0
    if args.combine:
        text = json.dumps(combine(args.combine), indent=1)
        if args.json_out:
            Path(args.json_out).write_text(text + "\n", encoding="utf-8")
        else:
            print(text)
        return 0

    models: dict[str, Path] = {}
    for spec in args.model:
        name, sep, path = spec.partition("=")
        if not sep or name not in DATASETS:
            print(f"--model {spec}: use DATASET=MODEL_DIR with DATASET one of {', '.join(DATASETS)}", file=sys.stderr)
            return 2
        models[name] = Path(path)
    root = datasets_root()
    if args.train:
        for name, parts in DATASETS.items():
            if name not in models and root.joinpath(*parts).is_dir():
                models[name] = train_bundle(name, root.joinpath(*parts), Path(args.workdir) / f"{args.head}_{args.train_lighting}" / name,
                                            args.head, args.train_lighting, args.seed)
    if not models:
        print("no bundles: give --model DATASET=MODEL_DIR or --train", file=sys.stderr)
        return 2
    try:  # the gate a station runs with its config's preprocess.quality: defaults, or --quality KEY=VALUE
        quality = QualityConfig(**dict(spec.split("=", 1) for spec in args.quality))
    except ValueError as exc:  # pydantic's ValidationError is one
        errors = getattr(exc, "errors", None)
        what = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in errors()) if errors else str(exc)
        print(f"--quality {' '.join(args.quality)}: {what} (use KEY=VALUE with KEY one of {', '.join(QualityConfig.model_fields)})",
              file=sys.stderr)
        return 2
    only = None
    if args.conditions == "core":
        only = list(CORE)
    elif args.conditions:
        only = [s.strip() for s in args.conditions.split(",")]
    result = {
        "benchmark": "light-stress (issue 9)",
        "command": " ".join([Path(sys.argv[0]).name] + (argv if argv is not None else sys.argv[1:])),
        "paper_far": PAPER_FAR,
        "seed": SEED,
        "limit": args.limit,
        "threads": args.threads,
        "quality_gate": quality.model_dump(),
        "datasets": {},
    }
    for name, model_dir in models.items():
        data_dir = root.joinpath(*DATASETS[name])
        if not data_dir.is_dir():
            print(f"{data_dir}: dataset not found; skipped {name}", file=sys.stderr)
            continue
        result["datasets"][name] = bench_dataset(name, model_dir, data_dir, [s.strip() for s in args.lighting.split(",")],
                                                 args.limit, args.threads, only, args.quiet, quality, args.threshold_rule)
    text = json.dumps(result, indent=2)
    if args.json_out:
        Path(args.json_out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json_out).write_text(text + "\n", encoding="utf-8")
    print(text if args.quiet is False and not args.json_out else json.dumps({k: v["lighting"] and {l: d["summary"] for l, d in v["lighting"].items()} for k, v in result["datasets"].items()}, indent=1))
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except InputError as exc:  # a bundle, dataset or option that cannot work: one line, exit 2
        print(f"light_benchmark: {exc}", file=sys.stderr)
        sys.exit(2)
