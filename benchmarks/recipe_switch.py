"""Product switch benchmark (issue 11): what a recipe switch costs on this machine.

Goes through the station's own path — ``Recipes.runtime`` (pipeline/recipes.py: ``load_bundle``,
preprocessor check, ``open_engine`` with onnxruntime on CPU and the station's default warm-up,
``build_runtime``) — for two or more bundles:

* ``cold_ms``: switch to a product that is not loaded (load + warm-up): what a trigger naming it
  waits, once, when ``recipes.max_loaded`` is smaller than the number of products;
* ``warm_ms``: switch to a loaded product (lookup + reference swap), median over ``--rounds``;
* ``rss_mb_per_product``: resident memory added by loading each product (the budget
  ``recipes.max_loaded`` bounds);
* ``first_frame_ms``: one inference right after a cold switch (after warm-up; a grey frame).

    .venv/bin/python benchmarks/recipe_switch.py --model bottle=MODEL_DIR --model tire=MODEL_DIR \\
        --json benchmarks/results/recipe_switch.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from edge_inspector.config.models import Config  # noqa: E402
from edge_inspector.inference.bench import rss_mb  # noqa: E402
from edge_inspector.logging import setup_logging  # noqa: E402
from edge_inspector.pipeline.recipes import Recipes  # noqa: E402
from edge_inspector.pipeline.runtime import open_engine  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", action="append", required=True, metavar="NAME=DIR", help="a product and its bundle (2 or more)")
    ap.add_argument("--rounds", type=int, default=50, help="warm switches to time")
    ap.add_argument("--json", required=True, help="output file")
    args = ap.parse_args(argv)
    products = dict(item.split("=", 1) for item in args.model)
    if len(products) < 2:
        ap.error("give at least two --model NAME=DIR")
    setup_logging("WARNING", True)
    cfg = Config.model_validate({"station": {"line": "bench", "name": "recipes"}, "model": {"providers": ["cpu"]},
                                 "recipes": {"products": {n: {"model_path": d} for n, d in products.items()},
                                             "max_loaded": len(products), "preload": False}})
    recipes = Recipes(open_engine, lambda: 1)
    per_product = {}
    for name in products:
        before = rss_mb()
        t0 = time.perf_counter()
        runtime = recipes.runtime(cfg, name)
        cold_ms = (time.perf_counter() - t0) * 1000.0
        added = rss_mb() - before
        frame = np.full((runtime.bundle.image_size,) * 2, 127, np.uint8)
        tensor, _ = runtime.preprocessor.prepare(frame)
        t0 = time.perf_counter()
        runtime.engine.infer(tensor[None])
        per_product[name] = {"model": runtime.bundle.name, "sha256": runtime.bundle.sha256[:12],
                             "cold_ms": round(cold_ms, 1), "rss_mb_added": round(added, 1),
                             "first_frame_ms": round((time.perf_counter() - t0) * 1000.0, 2)}
    names = list(products)
    warm = []
    for i in range(args.rounds):
        t0 = time.perf_counter()
        recipes.runtime(cfg, names[i % len(names)])
        warm.append((time.perf_counter() - t0) * 1000.0)
    out = {
        "products": per_product,
        "cold_ms_median": round(statistics.median(p["cold_ms"] for p in per_product.values()), 1),
        "warm_ms_median": round(statistics.median(warm), 4),
        "warm_ms_max": round(max(warm), 4),
        "rss_mb_per_product_median": round(statistics.median(p["rss_mb_added"] for p in per_product.values()), 1),
        "warmup_runs": cfg.model.warmup_runs,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
    }
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
