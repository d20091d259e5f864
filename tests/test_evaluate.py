"""evaluate / report / bench end to end on a tiny synthetic MVTec-layout folder and the tiny bundle."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge_inspector.cli import main
from tests.helpers.tiny_bundle import make_tiny_bundle

REPO = Path(__file__).resolve().parents[1]
H, W = 72, 96  # not square, not the model size: maps must go back to image geometry

JSON_KEYS = {
    "image_auroc", "image_ap", "image_f1_max", "pixel_auroc", "aupro_30", "threshold", "far_at_threshold",
    "recall_at_threshold", "far_strong_light",
}


def _part(rng, grey: bool) -> np.ndarray:
    img = np.clip(127 + rng.normal(0, 6, size=(H, W, 3)), 0, 255).astype(np.uint8)
    return img[:, :, 0].copy() if grey else img


def make_dataset(root: Path, n_good: int = 4, n_defect: int = 3, seed: int = 0) -> Path:
    """MVTec layout: test/good, test/scratch (dark bar), test/spot (bright blob) + masks; no train/."""
    rng = np.random.default_rng(seed)
    (root / "test" / "good").mkdir(parents=True)
    for i in range(n_good):
        cv2.imwrite(str(root / "test" / "good" / f"{i:03d}.png"), _part(rng, grey=i % 2 == 0))
    for kind, value in (("scratch", 0), ("spot", 255)):
        (root / "test" / kind).mkdir(parents=True)
        (root / "ground_truth" / kind).mkdir(parents=True)
        for i in range(n_defect):
            img = _part(rng, grey=i % 2 == 1)
            mask = np.zeros((H, W), np.uint8)
            y, x = int(rng.integers(5, H - 25)), int(rng.integers(5, W - 30))
            mask[y : y + 16 + 2 * i, x : x + 20] = 255
            img[mask > 0] = value
            cv2.imwrite(str(root / "test" / kind / f"{i:03d}.png"), img)
            cv2.imwrite(str(root / "ground_truth" / kind / f"{i:03d}_mask.png"), mask)
    return root


@pytest.fixture(autouse=True)
def _fresh_logging():
    """cli.main binds structlog to the sys.stderr of the moment (capsys's, closed after its test):
    bind it to this test's stream and reset afterwards so later tests never print to a closed file."""
    import structlog

    from edge_inspector.logging import setup_logging

    setup_logging("WARNING")
    yield
    structlog.reset_defaults()


@pytest.fixture
def dataset(tmp_path):
    return make_dataset(tmp_path / "data")


@pytest.fixture
def model_dir(tmp_path):
    return make_tiny_bundle(tmp_path / "model", image_size=64, threshold=0.5, threshold_f1=0.45)


def _error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("edge-inspector ")]


def test_evaluate_end_to_end_with_report(tmp_path, dataset, model_dir, capsys):
    out, rep = tmp_path / "out" / "eval.json", tmp_path / "report"
    rc = main(["evaluate", "--model", str(model_dir), "--data", str(dataset), "--json", str(out), "--report", str(rep)])
    assert rc == 0, capsys.readouterr().err
    r = json.loads(out.read_text())
    for k in JSON_KEYS:
        assert isinstance(r[k], float) and 0.0 <= r[k] <= 1.0, (k, r[k])
    assert r["threshold"] == 0.5
    # the tiny model scores |x|: the dark/bright defects are found, mid-grey parts are not
    assert r["image_auroc"] == 1.0 and r["far_at_threshold"] == 0.0 and r["recall_at_threshold"] == 1.0
    assert r["pixel_auroc"] > 0.9 and r["aupro_30"] > 0.8
    assert r["far_strong_light"] == 1.0  # strong light pushes mid-grey far from 0
    assert r["n_test"] == 10 and r["n_good"] == 4 and r["n_defective"] == 6
    assert set(r["per_type"]) == {"scratch", "spot"}
    assert r["per_type"]["spot"] == {"image_auroc": 1.0, "n": 3}
    assert r["latency_ms_median"] > 0
    assert r["model"]["name"] == "tiny-default" and r["model"]["head"] == "default"
    assert r["threshold_f1"]["threshold"] == 0.45 and 0 <= r["threshold_f1"]["far"] <= 1
    for name in ("index.html", "roc.png", "pr.png", "histogram.png", "false_alarms.png", "misses.png", "scores.csv"):
        assert (rep / name).stat().st_size > 0, name
    html = (rep / "index.html").read_text()
    assert all(p in html for p in ("roc.png", "pr.png", "histogram.png", "false_alarms.png", "misses.png"))
    assert cv2.imread(str(rep / "misses.png")) is not None


def test_evaluate_never_reads_train(tmp_path, dataset, model_dir):
    from edge_inspector.training.evaluate import evaluate_bundle

    (dataset / "train" / "good").mkdir(parents=True)
    (dataset / "train" / "good" / "000.png").write_bytes(b"corrupt")  # would be a warning if read
    r = evaluate_bundle(model_dir, dataset, batch_size=3)
    assert r["n_test"] == 10 and r["n_skipped"] == 0


def test_mask_size_mismatch_exit_2(tmp_path, dataset, model_dir, capsys):
    bad = dataset / "ground_truth" / "spot" / "001_mask.png"
    cv2.imwrite(str(bad), np.zeros((H + 4, W), np.uint8))
    rc = main(["evaluate", "--model", str(model_dir), "--data", str(dataset), "--json", str(tmp_path / "e.json")])
    err = capsys.readouterr().err
    assert rc == 2
    lines = _error_lines(err)
    assert len(lines) == 1 and str(bad) in lines[0] and "Traceback" not in err
    assert not (tmp_path / "e.json").exists()


def test_unreadable_test_image_is_skipped(tmp_path, dataset, model_dir):
    from edge_inspector.training.evaluate import evaluate_bundle

    (dataset / "test" / "good" / "999.png").write_bytes(b"\x89PNG not really")
    r = evaluate_bundle(model_dir, dataset)
    assert r["n_skipped"] == 1 and r["n_test"] == 10


@pytest.mark.parametrize("case", ["missing_model", "corrupt_onnx", "no_test_dir"])
def test_evaluate_bad_input_exit_2(tmp_path, dataset, model_dir, capsys, case):
    model, data = model_dir, dataset
    if case == "missing_model":
        model = tmp_path / "nope"
    elif case == "corrupt_onnx":
        model = make_tiny_bundle(tmp_path / "m2", onnx_sha256=None)
        (model / "model.onnx").write_bytes(b"garbage" * 30)
    else:
        data = tmp_path / "empty"
        data.mkdir()
    rc = main(["evaluate", "--model", str(model), "--data", str(data), "--json", str(tmp_path / "e.json")])
    lines = _error_lines(capsys.readouterr().err)
    assert rc == 2 and len(lines) == 1


def test_bench_json_and_no_torch(tmp_path, model_dir, dataset):
    out = tmp_path / "bench.json"
    code = (
        "import sys, json\n"
        "from edge_inspector.cli import main\n"
        f"rc = main(['bench', '--model', {str(model_dir)!r}, '--runs', '20', '--threads', '1', '--json', {str(out)!r}])\n"
        "assert rc == 0, rc\n"
        "bad = [m for m in ('torch', 'sklearn', 'matplotlib') if m in sys.modules]\n"
        "assert not bad, ('bench imported', bad)\n"
        # evaluate + report run the shipped ONNX, never torch
        f"rc = main(['evaluate', '--model', {str(model_dir)!r}, '--data', {str(dataset)!r}, '--json', {str(tmp_path / 'e.json')!r}])\n"
        "assert rc == 0, rc\n"
        "assert 'torch' not in sys.modules, 'evaluate imported torch'\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr[-2000:]
    r = json.loads(out.read_text())
    for k in ("latency_ms_median", "latency_ms_p99", "throughput_fps", "peak_rss_mb"):
        assert isinstance(r[k], float) and r[k] > 0, k
    assert r["latency_ms_p99"] >= r["latency_ms_median"]
    assert r["provider"] in ("cpu", "cuda", "tensorrt") and r["torch_imported"] is False
    assert '"runs": 20' in proc.stdout


def test_bench_bad_model_exit_2(tmp_path, capsys):
    assert main(["bench", "--model", str(tmp_path / "missing")]) == 2
    assert len(_error_lines(capsys.readouterr().err)) == 1
