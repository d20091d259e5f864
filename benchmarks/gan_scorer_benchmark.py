"""GAN scoring-part candidates against the shipped critic, on trained default bundles.

Issue 13 asks that the GAN contribute at inference: removing it must lower the mean pixel AUROC of
the default head. The shipped critic (``sagan.Critic``, f-AnoGAN's discriminator-feature residual)
does that on some trainings and not on others (docs/benchmarks.md, "Critic weight of the AE-GAN
prior"). This benchmark tests the other shape the issue names, SimpleNet's (Liu et al. 2023): a
discriminator that scores each feature position, trained to tell the good training features Z from
generated anomalous ones, Z + σ·ε (Gaussian-perturbed). Trained here on the bundle's own cached
features, so the candidate is judged beside exactly the terms and weights the bundle ships:

* every term of the bundle alone;
* ``default`` (the bundle's weights), ``default_without_gan`` (the critic's weight removed, the
  rest renormalised: the ablation row of model_benchmark.py) and ``default_without_ae`` (the
  autoencoder's term removed the same way: issue 13's other ablation);
* ``scorer_s<σ>``: the feature scorer alone;
* ``default_scorer_for_gan_s<σ>``: the bundle's weights with the scorer in the critic's place;
* ``default_plus_scorer_s<σ>``: the bundle's weights plus the scorer at the critic's weight.

Terms are scaled on the held-out good images (the bundle's statistics for its own terms, the same
rule for the scorer: median and tail, or mean and std for bundles from before; term_stats.py) and fused, smoothed on the grid and upsampled as the default head's
weight selection does it (``fusion.standardised_terms``, ``fusion.fused_maps``); image score = the map's maximum; pixel metrics on 128² maps, as ``evaluate``. It is a
torch-side measurement of candidates, not of the station's ONNX graph.

    .venv/bin/python benchmarks/gan_scorer_benchmark.py --model kolektorsdd=DIR --model tire=DIR \\
        --model bottle=DIR --sigmas 0.25 0.5 --json benchmarks/results/gan_scorer_seed0.json

DIR = a default bundle from ``edge-inspector train --head default`` (its checkpoint.pt is read).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchmarks.report import emit  # noqa: E402
from model_benchmark import DATASETS, datasets_root  # noqa: E402


def standardised_features(model, pre, paths, batch: int = 8):
    """(N×C×G×G standardised features, each image's (height, width)) — every file read once."""
    import numpy as np
    import torch

    from edge_inspector.imageio import read_image

    out, shapes = [], []
    for i in range(0, len(paths), batch):
        images = [read_image(p) for p in paths[i : i + batch]]
        shapes.extend(img.shape[:2] for img in images)
        x = torch.from_numpy(np.stack([pre.prepare(img)[0] for img in images]))
        with torch.no_grad():
            out.append(model.standardised_features(x))
    return torch.cat(out), shapes


def train_feature_scorer(z_train, sigma: float, steps: int, width: int, seed: int):
    """Per-position discriminator (two 1×1 convolutions): good features → real, good features plus
    Gaussian noise of std σ (standardised units) → fake; non-saturating logistic loss. Returns a
    function Z → N×1×G×G anomaly term (the negated logit)."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    net = nn.Sequential(nn.Conv2d(z_train.shape[1], width, 1), nn.LeakyReLU(0.2), nn.Conv2d(width, 1, 1))
    optimiser = torch.optim.Adam(net.parameters(), lr=2e-4)
    for _ in range(steps):
        z = z_train[torch.randint(z_train.shape[0], (8,), generator=generator)]
        fake = z + sigma * torch.randn(z.shape, generator=generator)
        loss = F.softplus(-net(z)).mean() + F.softplus(net(fake)).mean()
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
    net.eval()

    def score(z):
        with torch.no_grad():
            return torch.cat([-net(z[i : i + 16]) for i in range(0, z.shape[0], 16)])

    return score


def held_out_scaling(held_out, meta: dict):
    """(location, scale) of a candidate term over the held-out good positions, by the rule the
    bundle scaled its own terms with (term_stats.location_scale): median and tail, or mean and std
    in bundles from before the tail scaling."""
    from edge_inspector.training.term_stats import location_scale

    rule = ((meta.get("score_normalisation") or {}).get("term_scaling") or {}).get("rule", "mean_std")
    location, scale = location_scale(held_out, rule)
    return float(location), float(scale)


def run(name: str, model_dir: Path, args) -> dict:
    import numpy as np

    from edge_inspector.datasets import list_test_items, read_mask, train_good_paths
    from edge_inspector.inference.bundle import load_bundle
    from edge_inspector.training import metrics as M
    from edge_inspector.training.evaluate import PIXEL_GRID, make_preprocessor
    from edge_inspector.training.export import load_checkpoint
    from edge_inspector.training.features import split_holdout
    from edge_inspector.training.fusion import fused_maps, standardised_terms
    from edge_inspector.training.settings import TrainSettings

    started = time.perf_counter()
    data_dir = datasets_root().joinpath(*DATASETS[name])
    model, meta = load_checkpoint(model_dir)
    model.eval()
    if model.config.head != "default":
        raise SystemExit(f"{model_dir}: head {model.config.head!r}, this benchmark needs a default bundle")
    pre = make_preprocessor(load_bundle(model_dir))
    training = meta.get("training") or {}
    paths = train_good_paths(data_dir)
    # The hold-out split is not stored, only its size: redraw it with train's default fraction and
    # the bundle's seed, and refuse a bundle whose hold-out was drawn otherwise.
    train_idx, hold_idx = split_holdout(len(paths), TrainSettings.holdout, int(training.get("seed", 0)))
    recorded = (meta.get("training_set") or {}).get("n_holdout")
    if recorded != int(hold_idx.size):
        raise SystemExit(f"{model_dir}: {recorded} held-out images in model.json, {hold_idx.size} with --holdout "
                         f"{TrainSettings.holdout} (train it with the default --holdout and no --extra-good)")
    z_train, _ = standardised_features(model, pre, [paths[i] for i in train_idx])
    z_hold, _ = standardised_features(model, pre, [paths[i] for i in hold_idx])
    items = list_test_items(data_dir)
    z_test, shapes = standardised_features(model, pre, [it.path for it in items])
    labels = np.array([it.label for it in items])
    masks = [M.reduce_mask(read_mask(it, shape) if it.mask_path is not None else np.zeros(shape, dtype=bool), PIXEL_GRID)
             for it, shape in zip(items, shapes)]
    # the bundle's terms, standardised with its own held-out statistics, as the graph fuses them
    terms = standardised_terms(model, z_test, model.available_terms(), "cpu", are_features=True)

    def figures(weights: dict) -> dict:
        maps = fused_maps(model, terms, weights, tuple(model.config.shape))
        scores = maps.reshape(len(maps), -1).max(axis=1)
        reduced = [M.reduce_map(m, PIXEL_GRID) for m in maps]
        return {"image_auroc": round(M.image_auroc(labels, scores), 4), "pixel_auroc": round(M.pixel_auroc(reduced, masks), 4)}

    weights = {t: float(w) for t, w in (meta.get("fusion_weights") or {}).items() if float(w)}
    if "gan" not in weights:
        raise SystemExit(f"{model_dir}: its default carries no GAN critic term; nothing to compare the scorer with")
    def without(term: str) -> dict:
        kept = {t: w for t, w in weights.items() if t != term}
        return {t: w / sum(kept.values()) for t, w in kept.items()}

    rest = {t: w for t, w in weights.items() if t != "gan"}
    rows = {f"{t}_only": figures({t: 1.0}) for t in model.available_terms()}
    rows["default"] = figures(weights)
    rows["default_without_gan"] = figures(without("gan"))
    if "ae" in weights:
        rows["default_without_ae"] = figures(without("ae"))
    for sigma in args.sigmas:
        score = train_feature_scorer(z_train, sigma, args.steps, args.width, args.seed)
        location, scale = held_out_scaling(score(z_hold), meta)  # as the bundle's own terms
        terms["scorer"] = (score(z_test) - location) / scale
        rows[f"scorer_s{sigma:g}"] = figures({"scorer": 1.0})
        rows[f"default_scorer_for_gan_s{sigma:g}"] = figures({**rest, "scorer": weights["gan"]})
        rows[f"default_plus_scorer_s{sigma:g}"] = figures({**weights, "scorer": weights["gan"]})
    return {"model": str(model_dir), "weights": weights, "n_train": int(train_idx.size), "n_holdout": int(hold_idx.size),
            "n_test": len(items), "rows": rows, "seconds": round(time.perf_counter() - started, 1)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", action="append", required=True, metavar="DATASET=DIR",
                   help=f"a trained default bundle per dataset ({', '.join(DATASETS)})")
    p.add_argument("--sigmas", nargs="+", type=float, default=[0.25, 0.5], help="noise std of the generated anomalous features")
    p.add_argument("--steps", type=int, default=500)
    p.add_argument("--width", type=int, default=128)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", dest="json_out", default=None)
    args = p.parse_args(argv)
    models = {}
    for spec in args.model:
        name, _, directory = spec.partition("=")
        if name not in DATASETS or not directory:
            raise SystemExit(f"--model {spec!r}: expected DATASET=DIR with DATASET one of {', '.join(DATASETS)}")
        if not (Path(directory) / "checkpoint.pt").is_file():
            raise SystemExit(f"--model {spec!r}: {directory}/checkpoint.pt not found (a bundle from edge-inspector train)")
        models[name] = Path(directory)
    import torch

    from edge_inspector.logging import setup_logging

    setup_logging("WARNING")
    torch.set_num_threads(max(1, args.threads))
    report = {"command": " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]), "datasets": {}}
    for name, directory in models.items():
        report["datasets"][name] = run(name, directory, args)
        print(json.dumps({"dataset": name, **{k: v["pixel_auroc"] for k, v in report["datasets"][name]["rows"].items()}}),
              file=sys.stderr, flush=True)
    rows = next(iter(report["datasets"].values()))["rows"]
    report["mean"] = {row: {m: round(sum(d["rows"][row][m] for d in report["datasets"].values()) / len(report["datasets"]), 4)
                            for m in ("image_auroc", "pixel_auroc")} for row in rows
                      if all(row in d["rows"] for d in report["datasets"].values())}
    emit(report, args.json_out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
