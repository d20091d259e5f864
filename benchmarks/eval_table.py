"""The docs table of one or more ``edge-inspector evaluate --json`` results: per bundle, image and
pixel AUROC, AUPRO-30, and FAR / recall on test at the threshold of every rule the bundle recorded,
beside the best recall the ROC allows at that FAR (what the calibration left on the table).

    python benchmarks/eval_table.py "bottle s0=benchmarks/results/eval_….json" "bottle s1=…"

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


def _test(rule: dict) -> str:
    """train_pooled's two-sample test, where the rule ran one."""
    return f" (KS p {rule['ks_p']:.3f})" if "ks_p" in rule else ""


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("results", nargs="+", metavar="LABEL=FILE", help="a row label and an evaluate --json result")
    args = parser.parse_args(argv)
    lines = [HEADER]
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
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
