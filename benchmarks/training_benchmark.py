"""Training footprint: peak RSS and wall time of ``edge-inspector train`` under ``/usr/bin/time -v``.

Training sets:
  * ``kolektorsdd``, ``tire``, ``bottle``: the dev sets as they are (263, 210 and 209 train/good
    images; tire's frames are the largest, so its model input is too: 352 × 256);
  * ``mixed600``: 600 good images as a temporary folder of symlinks (never copies) under the work
    dir: kolektorsdd's 263, tire's 210 and the first 127 of bottle's train/good by name. Mixed
    products make a poor model but an honest load: the same decoding, caching and coreset work as
    a 600-image set of one product, with grey and colour frames of several sizes.

Each run is a fresh process (``python -m edge_inspector.cli train --head default``), so peak RSS
is that of one training; ``--source`` runs another checkout (e.g. main before a change, extracted
with ``git archive <commit> | tar -x -C DIR``) for a before/after comparison.

    python benchmarks/training_benchmark.py --json benchmarks/results/training.json
    python benchmarks/training_benchmark.py --source /tmp/base --label before --json /tmp/before.json

Prints one JSON document (and writes it with ``--json``; an existing file gets this label's runs
added beside the others).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.report import emit  # noqa: E402

MIXED = (("kolektorsdd", None), ("mvtec_3d_ad/tire", None), ("mvtec_ad/bottle", 127))
DEV_SETS = {"kolektorsdd": "kolektorsdd", "tire": "mvtec_3d_ad/tire", "bottle": "mvtec_ad/bottle"}


def datasets_root() -> Path:
    return Path(os.environ.get("EDGE_INSPECTOR_DATASETS", REPO.parent / "shared" / "datasets"))


def mixed_set(work: Path) -> Path:
    """A train/good folder of symlinks to 600 good images of three dev sets."""
    good = work / "mixed600" / "train" / "good"
    good.mkdir(parents=True, exist_ok=True)
    for rel, limit in MIXED:
        files = sorted(p for p in (datasets_root() / rel / "train" / "good").iterdir() if p.is_file())
        for f in files[:limit]:
            link = good / f"{rel.replace('/', '_')}_{f.name}"
            if not link.exists():
                link.symlink_to(f)
    return good.parents[1]


def parse_time_v(text: str) -> dict:
    """Peak RSS and wall time from GNU time's ``-v`` report."""
    rss = re.search(r"Maximum resident set size \(kbytes\): (\d+)", text)
    wall = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): ([\d:.]+)", text)
    seconds = None
    if wall:
        parts = [float(v) for v in wall.group(1).split(":")]
        seconds = sum(v * 60**k for k, v in enumerate(reversed(parts)))
    cpu = [re.search(rf"{kind} time \(seconds\): ([\d.]+)", text) for kind in ("User", "System")]
    return {"peak_rss_mb": round(int(rss.group(1)) / 1024, 1) if rss else None,
            "wall_s": round(seconds, 1) if seconds is not None else None,
            # CPU seconds move less than wall time when other tenants share the cores
            "cpu_s": round(sum(float(m.group(1)) for m in cpu if m), 1) if all(cpu) else None}


def run_training(source: Path, data: Path, out: Path, head: str, extra: list[str]) -> dict:
    env = {**os.environ, "PYTHONPATH": str(source)}
    cmd = ["/usr/bin/time", "-v", sys.executable, "-m", "edge_inspector.cli", "train", "--data", str(data),
           "--out", str(out), "--head", head, *extra]
    started = time.perf_counter()
    proc = subprocess.run(cmd, cwd=source, env=env, capture_output=True, text=True)
    row = {"command": " ".join(cmd[2:]), "returncode": proc.returncode, **parse_time_v(proc.stderr)}
    row["wall_s_python"] = round(time.perf_counter() - started, 1)
    if proc.returncode != 0:
        row["error"] = (proc.stderr.strip().splitlines() or ["train failed"])[-1]
        return row
    meta = json.loads((out / "model.json").read_text())
    timing = meta["training"]["timing"]
    row.update(n_images=meta["training_set"]["n_images"], n_train=meta["training_set"]["n_train"],
               threshold=meta["threshold"], train_s=timing.get("total_train_s"), features_s=timing.get("features_s"),
               coreset_s=timing.get("coreset_s"), bank_size=timing.get("bank_size"),
               n_backbone_passes=timing.get("n_backbone_passes"))
    return row


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sets", nargs="+", default=["kolektorsdd", "mixed600"], choices=[*DEV_SETS, "mixed600"])
    p.add_argument("--head", default="default")
    p.add_argument("--source", default=str(REPO), help="checkout whose edge_inspector is run (default: this one)")
    p.add_argument("--label", default="after", help="key of these runs in the JSON (e.g. before/after)")
    p.add_argument("--workdir", default=None, help="bundles and the symlink set go here (default: a temp dir)")
    p.add_argument("--json", dest="json_out", default=None)
    p.add_argument("train_args", nargs="*", help="more train arguments, after --")
    args = p.parse_args(argv)
    work_ctx = tempfile.TemporaryDirectory() if args.workdir is None else None
    work = Path(args.workdir) if args.workdir else Path(work_ctx.name)
    source = Path(args.source).resolve()
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=source, capture_output=True, text=True).stdout.strip()
    runs = {}
    for name in args.sets:
        data = datasets_root() / DEV_SETS[name] if name in DEV_SETS else mixed_set(work)
        runs[name] = run_training(source, data, work / args.label / name, args.head, args.train_args)
        print(json.dumps({"set": name, **runs[name]}), file=sys.stderr, flush=True)
    report = {}
    if args.json_out and Path(args.json_out).exists():
        report = json.loads(Path(args.json_out).read_text())
    report.setdefault("runs", {})[args.label] = {"source": str(source), "commit": commit or None, "head": args.head,
                                                 "threads": "torch default of the CLI (2)", "sets": runs}
    emit(report, args.json_out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
