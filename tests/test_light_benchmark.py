"""benchmarks/light_benchmark.py on a hand-made MVTec-layout folder and the tiny bundle: the
figures are those of the station's path, and gated frames are reported apart from FAR/recall."""

from __future__ import annotations

import json
import re

import cv2
import numpy as np
import pytest

from benchmarks import light_benchmark as lb
from edge_inspector.preprocess.quality import exposure_stats
from tests.helpers.tiny_bundle import make_tiny_bundle


def _dataset(root, value: int):
    good, bad = root / "mvtec_ad" / "bottle" / "test" / "good", root / "mvtec_ad" / "bottle" / "test" / "dent"
    good.mkdir(parents=True)
    bad.mkdir(parents=True)
    for i in range(3):
        cv2.imwrite(str(good / f"{i:03d}.png"), np.full((96, 96), value, np.uint8))
        img = np.full((96, 96), value, np.uint8)
        img[40:56, 40:56] = 0  # dark spot: the tiny bundle scores |x| ≈ 1 there
        cv2.imwrite(str(bad / f"{i:03d}.png"), img)


def _dataset_and_model(tmp_path, monkeypatch, value: int, threshold: float):
    """The dataset at grey level ``value`` and a tiny bundle trained on that level (exposure stats)."""
    _dataset(tmp_path / "data", value)
    train = {"mean": [float(value)] * 3, "std": [1.0] * 3, "exposure": exposure_stats([np.full((96, 96), value, np.uint8)])}
    monkeypatch.setenv("EDGE_INSPECTOR_DATASETS", str(tmp_path / "data"))
    return make_tiny_bundle(tmp_path / "model", image_size=64, threshold=threshold,
                            preprocess={"lighting": "none", "train_stats": train})


def test_benchmark_reports_far_recall_and_gated_frames_apart(tmp_path, monkeypatch):
    model = _dataset_and_model(tmp_path, monkeypatch, 127, threshold=0.5)
    out = tmp_path / "light.json"
    rc = lb.main(["--model", f"bottle={model}", "--conditions", "gain x1.2,gain x0.6,gamma 0.5,offset +30", "--threads", "1",
                  "--json", str(out), "--quiet"])
    assert rc == 0
    result = json.loads(out.read_text())
    ds = result["datasets"]["bottle"]
    assert ds["model"]["has_exposure_stats"] and ds["n_good"] == 3 and ds["n_defective"] == 3
    rows = {r["condition"]: r for r in ds["lighting"]["none"]["conditions"]}
    assert list(rows) == ["clean", "gain x0.6", "gain x1.2", "gamma 0.5", "offset +30"]  # grid order, clean first
    assert rows["clean"]["far"] == 0.0 and rows["clean"]["recall"] == 1.0 and rows["clean"]["auroc"] == 1.0
    # gain 1.2: 127 → 152, |x| ≈ 0.19: still OK; the dark spot still NG
    assert rows["gain x1.2"]["far"] == 0.0 and rows["gain x1.2"]["recall"] == 1.0
    # gamma 0.5: 127 → 180 is 1.4× the training mean (< mean_ratio 2.5): not gated, scored 0.41 < 0.5
    assert rows["gamma 0.5"]["gated_good"] == 0.0
    # offset +30 on the tiny |x| model: 157 → 0.24, still OK; the defect's spot becomes 30 → still NG
    assert rows["offset +30"]["recall"] == 1.0
    assert ds["lighting"]["none"]["summary"]["clean_auroc"] == 1.0
    assert ds["lighting"]["none"]["prepare_ms_median"] > 0


def test_gated_frames_are_never_counted_as_ok(tmp_path, monkeypatch):
    model = _dataset_and_model(tmp_path, monkeypatch, 200, threshold=0.9)
    out = tmp_path / "light.json"
    assert lb.main(["--model", f"bottle={model}", "--conditions", "gain x1.4", "--threads", "1", "--json", str(out), "--quiet"]) == 0
    row = json.loads(out.read_text())["datasets"]["bottle"]["lighting"]["none"]["conditions"][1]
    # 200 × 1.4 saturates every good frame: all gated (overexposed), so FAR has no frames to count
    assert row["gated_good"] == 1.0 and row["gated_by_kind"]["overexposed"]["good"] == 3
    assert row["far"] is None
    assert row["gated_defective"] == 1.0 and row["recall"] is None  # nor as NG
    assert row["auroc"] is not None  # every frame is still scored for the AUROC column
    # what the condition left of the frames: 200 × 1.4 clips the whole good frame, and all of the
    # defective one but its 16 × 16 spot (256 of 9 216 pixels), which stays black (0)
    clean = json.loads(out.read_text())["datasets"]["bottle"]["lighting"]["none"]["conditions"][0]
    assert clean["saturated_share_mean"] == 0.0
    assert abs(row["saturated_share_mean"] - (1.0 + (1.0 - 256 / 9216)) / 2) < 0.001
    assert abs(row["black_share_mean"] - (256 / 9216) / 2) < 0.001


def test_bad_model_argument_is_exit_2(capsys):
    assert lb.main(["--model", "nosuchset=/tmp/x"]) == 2
    assert "DATASET=MODEL_DIR" in capsys.readouterr().err


def test_combine_and_markdown_read_every_figure_from_the_json(tmp_path, monkeypatch, capsys):
    _dataset(tmp_path / "data", 127)
    model = make_tiny_bundle(tmp_path / "model", image_size=64, threshold=0.5)
    monkeypatch.setenv("EDGE_INSPECTOR_DATASETS", str(tmp_path / "data"))
    run = tmp_path / "run.json"
    assert lb.main(["--model", f"bottle={model}", "--conditions", "gain x1.2", "--threads", "1", "--json", str(run), "--quiet"]) == 0
    combined = tmp_path / "combined.json"
    assert lb.main(["--combine", str(run), "--json", str(combined)]) == 0
    doc = json.loads(combined.read_text())
    assert list(doc["datasets"]["bottle"]) == ["default, trained with lighting none"]
    capsys.readouterr()
    assert lb.main(["--markdown", str(combined)]) == 0
    text = capsys.readouterr().out
    assert "| bottle | `tiny-default` (default, trained with lighting none) | none |" in text
    assert "| gain x1.2 ✱ | 0 / 100 / 0 / 1.000 |" in text
    # a single run's JSON gives the same tables; a combined result combines again unchanged
    assert lb.main(["--markdown", str(run)]) == 0
    assert capsys.readouterr().out == text
    again = tmp_path / "again.json"
    assert lb.main(["--combine", str(combined), "--json", str(again)]) == 0
    assert json.loads(again.read_text())["datasets"] == doc["datasets"]


def test_markdown_of_a_file_that_is_not_a_result_is_one_line(tmp_path):
    import pytest

    from edge_inspector.errors import InputError

    bad = tmp_path / "bad.json"
    bad.write_text("[1, 2]")
    with pytest.raises(InputError, match="not a light_benchmark.py result"):
        lb.main(["--markdown", str(bad)])
    bad.write_text("{oops")
    with pytest.raises(InputError, match="not JSON"):
        lb.main(["--combine", str(bad)])


def test_quality_option_sets_the_gate_and_a_bad_one_is_exit_2(tmp_path, monkeypatch, capsys):
    model = _dataset_and_model(tmp_path, monkeypatch, 200, threshold=0.9)
    out = tmp_path / "light.json"
    assert lb.main(["--model", f"bottle={model}", "--conditions", "gain x1.4", "--quality", "enabled=false", "--threads", "1",
                    "--json", str(out), "--quiet"]) == 0
    result = json.loads(out.read_text())
    row = result["datasets"]["bottle"]["lighting"]["none"]["conditions"][1]
    assert result["quality_gate"]["enabled"] is False
    assert row["gated_good"] == 0.0 and row["far"] is not None  # the saturated frames now reach the model
    capsys.readouterr()
    assert lb.main(["--model", f"bottle={model}", "--quality", "saturated_margin=abc"]) == 2
    err = capsys.readouterr().err
    assert "saturated_margin" in err and "\n" not in err.strip()


def test_threshold_rule_scores_at_another_recorded_threshold(tmp_path, monkeypatch, capsys):
    _dataset(tmp_path / "data", 127)
    monkeypatch.setenv("EDGE_INSPECTOR_DATASETS", str(tmp_path / "data"))
    train = {"mean": [127.0] * 3, "std": [1.0] * 3, "exposure": exposure_stats([np.full((96, 96), 127, np.uint8)])}
    # the tiny bundle scores ≈ 0 on the good frames and ≈ 1 on the dark spot: 0.5 separates them, 2.0 passes all
    calibration = {"rule": "holdout", "threshold": 0.5,
                   "rules": {"holdout": {"threshold": 0.5}, "train_pooled": {"threshold": 2.0},
                             "crossfit_tail": {"unavailable": "the default head's fusion kept the autoencoder term"}}}
    model = make_tiny_bundle(tmp_path / "model", image_size=64, threshold=0.5, threshold_calibration=calibration,
                             preprocess={"lighting": "none", "train_stats": train})
    out = tmp_path / "light.json"
    for rule, recall in ((None, 1.0), ("train_pooled", 0.0)):
        extra = ["--threshold-rule", rule] if rule else []
        assert lb.main(["--model", f"bottle={model}", "--conditions", "clean", "--threads", "1", "--json", str(out), "--quiet",
                        *extra]) == 0
        ds = json.loads(out.read_text())["datasets"]["bottle"]
        assert ds["model"]["threshold_rule"] == (rule or "applied") and ds["model"]["bundle_threshold"] == 0.5
        assert ds["lighting"]["none"]["conditions"][0]["recall"] == recall
    first = tmp_path / "applied.json"
    assert lb.main(["--model", f"bottle={model}", "--conditions", "clean", "--threads", "1", "--json", str(first), "--quiet"]) == 0
    tables = lb.markdown(lb.combine([str(first), str(out)]))
    # each threshold its own variant and its own per-condition table: clean recall 100 % at 0.5, 0 % at 2.0
    assert "run-time lighting `none` — per dataset" in tables and "`none`, threshold of rule train_pooled — per" in tables
    assert "| clean | 0 / 100 / 0 / 1.000 |" in tables and "| clean | 0 / 0 / 0 / 1.000 |" in tables
    capsys.readouterr()
    for rule, why in (("crossfit_tail", "unavailable for this bundle (the default head's fusion kept"),
                      ("f1", "not recorded (model.json threshold_calibration.rules has holdout, train_pooled, crossfit_tail)")):
        # __main__ prints the InputError as one line, exit 2
        with pytest.raises(lb.InputError, match=re.escape(f"--threshold-rule {rule}: {why}")):
            lb.main(["--model", f"bottle={model}", "--threshold-rule", rule, "--quiet"])
