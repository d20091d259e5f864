"""The docs table of one or more ``edge-inspector evaluate --json`` results: per bundle, image and
pixel AUROC, AUPRO-30, and FAR / recall on test at the threshold of every rule the bundle recorded,
beside the best recall the ROC allows at that FAR (what the calibration left on the table).

    python benchmarks/eval_table.py "bottle s0=benchmarks/results/eval_….json" "bottle s1=…"

``--totals`` adds what a station would have seen with each rule over all the bundles named: false
alarms on the good test parts and defects caught, summed, beside the most the ROC allows at the
false-alarm target and at the false-alarm rate the rule reached. ``train_pooled`` counts the
hold-out rule's figures where its test refused (what training applies then).

Markdown on stdout; nothing is measured here, so every figure in the table is in the JSON named.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HEADER = ("| bundle | img / px AUROC | AUPRO-30 | rule (applied ✱) | threshold | FAR | recall | ROC recall at that FAR |\n"
          "|---|---|---|---|---|---|---|---|")


def rows(label: str, result: dict) -> list[str]:
    """One row per threshold rule the bundle recorded (only the applied one for older results),
    and one per rule it could not use."""
    rules = result.get("threshold_rules") or {}
    applied = result["threshold"]
    if not rules:
        rules = {"(applied)": {"threshold": applied, "far": result["far_at_threshold"],
                               "recall": result["recall_at_threshold"],
                               "roc_recall_at_same_far": (result.get("roc_recall_at_far") or {}).get("far_at_threshold")}}
    bundle = f"| {label} | {result['image_auroc']:.3f} / {result['pixel_auroc']:.4f} | {result['aupro_30']:.3f} |"
    out = []
    for rule, r in rules.items():
        mark = " ✱" if abs(float(r["threshold"]) - float(applied)) < 5e-6 else ""
        roc = r.get("roc_recall_at_same_far")
        out.append(f"{bundle} {rule}{_test(r)}{mark} | {float(r['threshold']):.3f} | {float(r['far']):.3f} | "
                   f"{float(r['recall']):.3f} | {'–' if roc is None else f'{float(roc):.3f}'} |")
    for rule, r in (result.get("threshold_rules_unavailable") or {}).items():
        out.append(f"{bundle} {rule}: refused{_test(r)} | – | – | – | – |")
    return out


TOTALS_HEADER = ("| rule | applied on | false alarms / good test parts | defects caught | "
                 "ROC's best at the FAR target | ROC's best at the FAR reached |\n|---|---|---|---|---|---|")
# the rules whose fallback an evaluate result shows exactly: train_pooled applies wherever it set a
# threshold, otherwise the hold-out rule does (crossfit.threshold_rules)
TOTAL_RULES = ("holdout", "train_pooled")


def totals(results: list[tuple[str, dict]]) -> list[str]:
    """One row per rule in TOTAL_RULES, summed over the results (counts, not mean rates, so a
    larger test set weighs more)."""
    lines = [TOTALS_HEADER]
    for rule in TOTAL_RULES:
        applied, alarms, good, caught, defective, at_target, at_reached = 0, 0, 0, 0, 0, 0, 0
        for label, result in results:
            rules = result.get("threshold_rules") or {}
            if "holdout" not in rules:
                raise KeyError(f"{label}: no threshold_rules.holdout (evaluate it again with this version)")
            r = rules.get(rule, rules["holdout"])
            applied += rule in rules
            n_good, n_def = int(result["n_good"]), int(result["n_defective"])
            alarms += round(float(r["far"]) * n_good)
            caught += round(float(r["recall"]) * n_def)
            at_target += round(float(result["roc_recall_at_far"]["far_target"]) * n_def)
            at_reached += round(float(r["roc_recall_at_same_far"]) * n_def)
            good, defective = good + n_good, defective + n_def
        lines.append(f"| {rule} | {applied} of {len(results)} | {alarms} / {good} ({100 * alarms / max(good, 1):.1f} %) | "
                     f"{caught} / {defective} | {at_target} | {at_reached} |")
    return lines


def _test(rule: dict) -> str:
    """train_pooled's two-sample test, where the rule ran one."""
    return f" (KS p {rule['ks_p']:.3f})" if "ks_p" in rule else ""


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("results", nargs="+", metavar="LABEL=FILE", help="a row label and an evaluate --json result")
    parser.add_argument("--totals", action="store_true", help="also the per-rule sums over all results")
    args = parser.parse_args(argv)
    lines, loaded = [HEADER], []
    for item in args.results:
        label, sep, path = item.partition("=")
        if not sep or not label or not path:
            print(f"eval_table: {item!r}: give LABEL=FILE", file=sys.stderr)
            return 2
        try:
            result = json.loads(Path(path).read_text(encoding="utf-8"))
            lines += rows(label, result)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            print(f"eval_table: {path}: not an evaluate --json result ({type(exc).__name__}: {str(exc)[:80]})", file=sys.stderr)
            return 2
        loaded.append((label, result))
    if args.totals:
        try:
            lines += ["", *totals(loaded)]
        except (KeyError, TypeError, ValueError) as exc:
            # a KeyError's str() quotes its message; its argument is the message itself
            print(f"eval_table: --totals: {str(exc.args[0] if exc.args else exc)[:160]}", file=sys.stderr)
            return 2
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
