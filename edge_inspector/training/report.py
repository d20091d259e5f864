"""Human evaluation report (``evaluate --report DIR``): PNG plots + a small index.html.

- roc.png, pr.png: image-level ROC and precision-recall curves
- histogram.png: score histograms, good vs defective (and good under strong light), with the
  bundle's threshold (and the F1 threshold when the bundle has one)
- false_alarms.png: the good images with the highest scores, heatmap overlaid
- misses.png: the defective images with the lowest scores, heatmap overlaid, ground truth outlined
- scores.csv: one line per test image

matplotlib with the Agg backend (no display needed). No torch.
"""

from __future__ import annotations

import csv
import html
import json
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np

from edge_inspector.errors import InputError
from edge_inspector.imageio import read_image
from edge_inspector.logging import get_logger
from edge_inspector.preprocess import to_bgr_uint8

log = get_logger(__name__)

MONTAGE_N = 6
THUMB = 256


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path) -> None:
    """Write a figure as a 90-dpi PNG and free it (pyplot keeps every open figure alive)."""
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    _plt().close(fig)


def _thumb_with_heat(path: Path, amap: np.ndarray, vmin: float, vmax: float, mask_path: Path | None):
    """(RGB thumbnail, heat in 0..1 at thumbnail size, mask contour image or None)."""
    try:
        img = to_bgr_uint8(read_image(path))
    except Exception:  # noqa: BLE001 - the report must not fail on one image
        img = np.zeros((THUMB, THUMB, 3), np.uint8)
    h, w = img.shape[:2]
    scale = THUMB / max(h, w)
    tw, th = max(1, round(w * scale)), max(1, round(h * scale))
    rgb = cv2.cvtColor(cv2.resize(img, (tw, th), interpolation=cv2.INTER_AREA), cv2.COLOR_BGR2RGB)
    heat = cv2.resize(np.asarray(amap, np.float32), (tw, th), interpolation=cv2.INTER_LINEAR)
    heat = np.clip((heat - vmin) / max(vmax - vmin, 1e-12), 0, 1)
    mask = None
    if mask_path is not None:
        try:
            m = read_image(mask_path, grayscale=True)
            mask = cv2.resize((m > 127).astype(np.uint8), (tw, th), interpolation=cv2.INTER_NEAREST)
        except Exception:  # noqa: BLE001
            mask = None
    return rgb, heat, mask


def _montage(plt, out: Path, title: str, picks: Sequence[int], paths, types, scores, maps, mask_paths, threshold, vmin, vmax):
    n = max(1, len(picks))
    cols = min(3, n)
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 4.4 * rows), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    if not picks:
        axes[0, 0].text(0.5, 0.5, "none", ha="center", va="center", fontsize=16)
    for ax, i in zip(axes.ravel(), picks):
        rgb, heat, mask = _thumb_with_heat(paths[i], maps[i], vmin, vmax, mask_paths[i] if mask_paths else None)
        ax.imshow(rgb)
        # low values transparent: the part stays visible, hot spots stand out
        ax.imshow(np.ma.masked_less(heat, 0.2), cmap="jet", alpha=0.5, vmin=0, vmax=1)
        if mask is not None and mask.any():
            ax.contour(mask, levels=[0.5], colors="white", linewidths=1.2)
        verdict = "NG" if scores[i] >= threshold else "OK"
        ax.set_title(f"{types[i]}/{paths[i].name}\nscore {scores[i]:.3f} ({verdict}, thr {threshold:.3f})", fontsize=9)
    fig.suptitle(f"{title}\nheat: map value {vmin:.3g} (clear) … {vmax:.3g} (red); threshold at 2/3", fontsize=11)
    _save(fig, out)


def write_report(
    report_dir: str | Path,
    result: dict,
    paths: Sequence[Path],
    types: Sequence[str],
    scores: np.ndarray,
    maps: Sequence[np.ndarray],
    strong_scores: np.ndarray | None = None,
    mask_paths: Sequence[Path | None] | None = None,
    data_dir: Path | None = None,
) -> Path:
    """Write the report files into ``report_dir``; returns the path of index.html."""
    from sklearn.metrics import precision_recall_curve, roc_curve

    d = Path(report_dir)
    try:
        d.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"{d}: cannot create report directory ({exc.strerror or exc})") from None
    plt = _plt()
    s = np.asarray(scores, dtype=np.float64)
    labels = np.array([0 if t == "good" else 1 for t in types])
    threshold = float(result["threshold"])
    thr_f1 = (result.get("threshold_f1") or {}).get("threshold")
    both = 0 < labels.sum() < labels.size
    name = (result.get("model") or {}).get("name", "model")

    # ROC
    fig, ax = plt.subplots(figsize=(5, 5))
    if both:
        fpr, tpr, _ = roc_curve(labels, s)
        ax.plot(fpr, tpr, lw=2, label=f"AUROC {result.get('image_auroc') or float('nan'):.3f}")
        far, rec = result.get("far_at_threshold"), result.get("recall_at_threshold")
        if far is not None and rec is not None:
            ax.plot([far], [rec], "o", color="red", label=f"threshold {threshold:.3f}")
    ax.plot([0, 1], [0, 1], ":", color="grey")
    ax.set(xlabel="false-alarm rate (good images)", ylabel="recall (defective images)", title=f"ROC — {name}", xlim=(0, 1), ylim=(0, 1.02))
    ax.legend(loc="lower right")
    _save(fig, d / "roc.png")

    # PR
    fig, ax = plt.subplots(figsize=(5, 5))
    if both:
        p, r, _ = precision_recall_curve(labels, s)
        ax.plot(r, p, lw=2, label=f"AP {result.get('image_ap') or float('nan'):.3f}, F1-max {result.get('image_f1_max') or float('nan'):.3f}")
        ax.axhline(labels.mean(), ls=":", color="grey", label="chance")
    ax.set(xlabel="recall", ylabel="precision", title=f"Precision-recall — {name}", xlim=(0, 1), ylim=(0, 1.02))
    ax.legend(loc="lower left")
    _save(fig, d / "pr.png")

    # histograms
    fig, ax = plt.subplots(figsize=(7, 4.5))
    extra = [] if strong_scores is None else list(np.asarray(strong_scores, dtype=np.float64))
    allv = np.concatenate([s, np.asarray(extra, dtype=np.float64), [threshold]])
    bins = np.linspace(float(allv.min()), float(allv.max()) + 1e-9, 40)
    ax.hist(s[labels == 0], bins=bins, alpha=0.6, color="tab:green", label=f"good (n={int((labels == 0).sum())})")
    ax.hist(s[labels == 1], bins=bins, alpha=0.6, color="tab:red", label=f"defective (n={int((labels == 1).sum())})")
    if extra:
        ax.hist(extra, bins=bins, histtype="step", lw=1.5, color="tab:orange", label=f"good, strong light (n={len(extra)})")
    ax.axvline(threshold, color="black", lw=2, label=f"threshold {threshold:.3f}")
    if thr_f1 is not None:
        ax.axvline(float(thr_f1), color="black", ls="--", lw=1.2, label=f"F1 threshold {float(thr_f1):.3f}")
    ax.set(xlabel="image score", ylabel="images", title=f"Score distribution — {name}")
    ax.legend()
    _save(fig, d / "histogram.png")

    # montages: one colour scale for all heatmaps (threshold sits at ~2/3 of it)
    all_maps_max = float(np.percentile([float(np.max(m)) for m in maps], 95)) if len(maps) else 1.0
    vmin = float(np.percentile([float(np.min(m)) for m in maps], 5)) if len(maps) else 0.0
    vmax = vmin + 1.5 * (threshold - vmin) if threshold > vmin else all_maps_max
    vmax = max(vmax, vmin + 1e-6)
    good_idx = np.flatnonzero(labels == 0)
    bad_idx = np.flatnonzero(labels == 1)
    worst_fa = [int(i) for i in good_idx[np.argsort(-s[good_idx], kind="stable")][:MONTAGE_N]]
    worst_miss = [int(i) for i in bad_idx[np.argsort(s[bad_idx], kind="stable")][:MONTAGE_N]]
    _montage(plt, d / "false_alarms.png", "Worst false alarms (good images, highest scores)", worst_fa,
             paths, types, s, maps, mask_paths, threshold, vmin, vmax)
    _montage(plt, d / "misses.png", "Worst misses (defective images, lowest scores; white = ground truth)", worst_miss,
             paths, types, s, maps, mask_paths, threshold, vmin, vmax)

    with open(d / "scores.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["file", "type", "score", "verdict"])
        for pth, t, v in zip(paths, types, s):
            w.writerow([str(pth), t, f"{v:.6f}", "NG" if v >= threshold else "OK"])
    (d / "evaluation.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")

    def fmt(v):
        return "–" if v is None else (f"{v:.4f}" if isinstance(v, float) else html.escape(str(v)))

    keys = ["image_auroc", "image_ap", "image_f1_max", "pixel_auroc", "aupro_30", "threshold", "far_at_threshold",
            "recall_at_threshold", "far_strong_light", "n_test", "latency_ms_median", "provider"]
    rows = "\n".join(f"<tr><td>{k}</td><td>{fmt(result.get(k))}</td></tr>" for k in keys)
    per_type = "\n".join(
        f"<tr><td>{html.escape(t)}</td><td>{fmt(v.get('image_auroc'))}</td><td>{v.get('n')}</td></tr>"
        for t, v in (result.get("per_type") or {}).items()
    )
    model = result.get("model") or {}
    page = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>edge-inspector evaluation — {html.escape(str(name))}</title>
<style>body{{font-family:sans-serif;max-width:1100px;margin:2em auto}} td,th{{padding:2px 10px;text-align:left}}
img{{max-width:100%;border:1px solid #ccc;margin:6px 0}}</style></head><body>
<h1>Evaluation: {html.escape(str(name))}</h1>
<p>head <b>{html.escape(str(model.get('head')))}</b>, input {html.escape('×'.join(map(str, model.get('input_shape') or [model.get('image_size')] * 2)))} (height×width), model sha256
<code>{html.escape(str(model.get('sha256', ''))[:16])}…</code>, data <code>{html.escape(str(data_dir or result.get('data', '')))}</code></p>
<table><tr><th>metric</th><th>value</th></tr>
{rows}
</table>
<h2>Per defect type (vs good)</h2>
<table><tr><th>type</th><th>image AUROC</th><th>n</th></tr>
{per_type}
</table>
<h2>Curves</h2>
<a href="roc.png"><img src="roc.png" width="420"></a> <a href="pr.png"><img src="pr.png" width="420"></a>
<h2>Scores</h2>
<a href="histogram.png"><img src="histogram.png"></a>
<h2>Worst false alarms</h2>
<a href="false_alarms.png"><img src="false_alarms.png"></a>
<h2>Worst misses</h2>
<a href="misses.png"><img src="misses.png"></a>
<p><a href="scores.csv">scores.csv</a> · <a href="evaluation.json">evaluation.json</a></p>
</body></html>
"""
    index = d / "index.html"
    index.write_text(page, encoding="utf-8")
    log.info("report written", path=str(index))
    return index
