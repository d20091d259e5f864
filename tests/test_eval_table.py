"""benchmarks/eval_table.py: the docs table of evaluate --json results, and its one-line errors."""

from __future__ import annotations

import json

from benchmarks.eval_table import main


def _result(tmp_path, name="r.json"):
    result = {"image_auroc": 0.8929, "pixel_auroc": 0.96012, "aupro_30": 0.7662, "threshold": 3.932599,
              "far_at_threshold": 0.0, "recall_at_threshold": 0.26,
              "threshold_rules": {"holdout": {"threshold": 3.932599, "far": 0.0, "recall": 0.26, "roc_recall_at_same_far": 0.36},
                                  "train_pooled": {"threshold": 3.5864, "far": 0.0143, "recall": 0.32, "ks_p": 0.8889,
                                                   "roc_recall_at_same_far": 0.5}},
              "threshold_rules_unavailable": {"crossfit_tail": {"unavailable": "the default head's fusion kept the autoencoder term"}}}
    path = tmp_path / name
    path.write_text(json.dumps(result))
    return path


def test_one_row_per_rule_with_the_applied_one_marked(tmp_path, capsys):
    assert main([f"kolektorsdd s0={_result(tmp_path)}"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 5
    assert lines[2] == "| kolektorsdd s0 | 0.893 / 0.9601 | 0.766 | holdout ✱ | 3.933 | 0.000 | 0.260 | 0.360 |"
    assert lines[3] == "| kolektorsdd s0 | 0.893 / 0.9601 | 0.766 | train_pooled (KS p 0.889) | 3.586 | 0.014 | 0.320 | 0.500 |"
    assert lines[4] == "| kolektorsdd s0 | 0.893 / 0.9601 | 0.766 | crossfit_tail: refused | – | – | – | – |"


def test_bad_arguments_and_files_are_one_line_errors(tmp_path, capsys):
    assert main(["no-label"]) == 2
    assert capsys.readouterr().err.strip() == "eval_table: 'no-label': give LABEL=FILE"
    (tmp_path / "bad.json").write_text('{"image_auroc": 1.0}')
    for path in (tmp_path / "bad.json", tmp_path / "missing.json"):
        assert main([f"x={path}"]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith(f"eval_table: {path}: not an evaluate --json result") and "\n" not in err


def test_totals_sum_counts_per_rule_with_the_hold_out_where_train_pooled_refused(tmp_path, capsys):
    pooled = json.loads(_result(tmp_path).read_text())
    pooled.update(n_good=70, n_defective=50, roc_recall_at_far={"far_target": 0.36})
    refused = {**pooled, "threshold_rules": {"holdout": {"threshold": 2.4, "far": 0.05, "recall": 1.0, "roc_recall_at_same_far": 1.0}},
               "threshold_rules_unavailable": {"train_pooled": {"unavailable": "differ", "ks_p": 0.02}},
               "n_good": 20, "n_defective": 63, "roc_recall_at_far": {"far_target": 0.984127}}
    for name, result in (("a.json", pooled), ("b.json", refused)):
        (tmp_path / name).write_text(json.dumps(result))
    assert main(["--totals", f"a={tmp_path / 'a.json'}", f"b={tmp_path / 'b.json'}"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    # holdout: 0 + 1 alarms, 13 + 63 caught; train_pooled: 1 alarm (0.0143·70) + b's hold-out 1, 16 + 63
    assert lines[-2] == "| holdout | 2 of 2 | 1 / 90 (1.1 %) | 76 / 113 | 80 | 81 |"
    assert lines[-1] == "| train_pooled | 1 of 2 | 2 / 90 (2.2 %) | 79 / 113 | 80 | 88 |"


def test_totals_of_a_result_without_rules_is_a_one_line_error(tmp_path, capsys):
    old = {"image_auroc": 1.0, "pixel_auroc": 0.97, "aupro_30": 0.9, "threshold": 2.0, "far_at_threshold": 0.0,
           "recall_at_threshold": 1.0, "n_good": 20, "n_defective": 63}
    (tmp_path / "old.json").write_text(json.dumps(old))
    assert main([f"old={tmp_path / 'old.json'}"]) == 0  # the table alone still reads it
    capsys.readouterr()
    assert main(["--totals", f"old={tmp_path / 'old.json'}"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "eval_table: --totals: old: no threshold_rules.holdout (evaluate it again with this version)"
