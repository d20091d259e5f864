"""train → evaluate on the real MVTec data in ../shared/datasets (skipped when absent).

Small on purpose: a handful of real training images linked into tmp_path (never copied into the
repo) and the kNN head at 128², so the contract is exercised on real images within seconds;
full trainings live in benchmarks/model_benchmark.py.
"""

from __future__ import annotations

import json
import os

import pytest

from edge_inspector.cli import main

CONTRACT_KEYS = {"image_auroc", "image_ap", "image_f1_max", "pixel_auroc", "aupro_30", "threshold",
                 "far_at_threshold", "recall_at_threshold", "per_type", "n_test", "latency_ms_median"}


def _subset(src, dst, n_train: int):
    """MVTec layout in dst with the first n_train good training images, linked not copied."""
    (dst / "train" / "good").mkdir(parents=True)
    for img in sorted((src / "train" / "good").iterdir())[:n_train]:
        os.symlink(img, dst / "train" / "good" / img.name)
    os.symlink(src / "test", dst / "test")
    os.symlink(src / "ground_truth", dst / "ground_truth")
    return dst


@pytest.mark.datasets
@pytest.mark.slow
def test_train_and_evaluate_on_real_bottle(tmp_path, bottle_dir):
    data = _subset(bottle_dir, tmp_path / "bottle", n_train=24)
    model = tmp_path / "model"
    assert main(["train", "--data", str(data), "--out", str(model), "--head", "knn", "--image-size", "128",
                 "--holdout", "0.25"]) == 0
    out = tmp_path / "eval.json"
    assert main(["evaluate", "--model", str(model), "--data", str(data), "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert CONTRACT_KEYS <= result.keys()
    assert result["n_test"] == sum(1 for d in (bottle_dir / "test").iterdir() for _ in d.iterdir())
    assert set(result["per_type"]) == {d.name for d in (bottle_dir / "test").iterdir() if d.name != "good"}
    # Bottle is easy for a kNN head even from 18 training images at 128²: anything near chance
    # means the pipeline (preprocessing, geometry, masks) is broken, not the model.
    assert result["image_auroc"] > 0.9 and result["pixel_auroc"] > 0.85
