"""Metrics with known answers (hand-checked) and against brute-force / scikit-learn references."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from edge_inspector.training import metrics as M


def test_image_metrics_known_answers():
    labels = [0, 0, 0, 1, 1, 1]
    scores = [0.1, 0.2, 0.7, 0.6, 0.8, 0.9]
    # pairs (defect > good): 0.6 beats 0.1, 0.2 (2); 0.8, 0.9 beat all 3 → 8 of 9
    assert M.image_auroc(labels, scores) == pytest.approx(8 / 9)
    # AP: ranks 0.9(1) 0.8(1) 0.7(0) 0.6(1) → (1 + 1 + 3/4) / 3
    assert M.image_ap(labels, scores) == pytest.approx((1 + 1 + 0.75) / 3)
    f1, thr = M.f1_max(labels, scores)
    # threshold 0.6: TP 3, FP 1 → P 0.75, R 1 → F1 6/7; threshold 0.8: P 1, R 2/3 → 0.8
    assert f1 == pytest.approx(6 / 7) and thr == pytest.approx(0.6)
    far, rec = M.rate_at_threshold(labels, scores, 0.7)  # NG when score >= threshold
    assert far == pytest.approx(1 / 3) and rec == pytest.approx(2 / 3)


def test_single_class_is_nan():
    assert math.isnan(M.image_auroc([0, 0], [0.1, 0.2]))
    assert math.isnan(M.f1_max([1, 1], [0.1, 0.2])[0])
    far, rec = M.rate_at_threshold([0, 0], [0.1, 0.9], 0.5)
    assert far == 0.5 and math.isnan(rec)


def test_per_type_auroc():
    types = ["good", "good", "crack", "crack", "spot"]
    scores = [0.1, 0.5, 0.9, 0.3, 0.05]
    out = M.per_type_auroc(types, scores)
    assert out["crack"] == {"image_auroc": pytest.approx(0.75), "n": 2}
    assert out["spot"]["image_auroc"] == 0.0 and out["spot"]["n"] == 1
    assert "good" not in out


def _hand_case():
    # 1×13 image: region A = pixels 0,1 (0.9, 0.5); normal 0.6; region B = pixel 3 (0.2); normals after.
    amap = np.array([[0.9, 0.5, 0.6, 0.2, 0.3, 0.0] + [0.1] * 7], dtype=np.float32)
    mask = np.array([[1, 1, 0, 1, 0, 0] + [0] * 7], dtype=bool)
    return amap, mask


def test_aupro_hand_checked():
    amap, mask = _hand_case()
    # 10 normal pixels. Curve (FPR, PRO): thr 0.9 → (0, .25); 0.6 → (.1, .25); 0.5 → (.1, .5);
    # 0.3 → (.2, .5); 0.2 → (.2, 1); below → FPR ≥ .9. Area to 0.3 = .1·.25 + .1·.5 + .1·1 = .175
    assert M.aupro([amap], [mask], fpr_limit=0.3) == pytest.approx(0.175 / 0.3)
    # limit inside a flat step: to 0.15 → .1·.25 + .05·.5 = .05
    assert M.aupro([amap], [mask], fpr_limit=0.15) == pytest.approx(0.05 / 0.15)
    fpr, pro = M.pro_curve([amap], [mask])
    assert fpr[0] == 0 and pro[0] == 0 and np.all(np.diff(fpr) >= 0) and pro[-1] == pytest.approx(1.0)


def test_aupro_perfect_and_region_weighting():
    mask = np.zeros((20, 20), bool)
    mask[2:4, 2:4] = True  # small region
    mask[10:18, 10:18] = True  # large region
    perfect = mask.astype(np.float32)
    assert M.aupro([perfect], [mask]) == pytest.approx(1.0)
    # only the large region detected: PRO is the mean over regions → 0.5 (not 64/68)
    half = np.full_like(perfect, 0.5)
    half[10:18, 10:18] = 1.0
    half[2:4, 2:4] = 0.0  # small region below every normal pixel
    assert M.aupro([half], [mask]) == pytest.approx(0.5)


def _pro_bruteforce(maps, masks, limit):
    vals = np.unique(np.concatenate([m.ravel() for m in maps]))[::-1]
    regions = []
    for m, g in zip(maps, masks):
        k, lab = cv2.connectedComponents(g.astype(np.uint8), connectivity=8)
        regions += [(m, lab == r) for r in range(1, k)]
    negs = np.concatenate([m[~g] for m, g in zip(maps, masks)])
    pts = [(0.0, 0.0)]
    for t in vals:
        pts.append(((negs >= t).mean(), np.mean([(m[r] >= t).mean() for m, r in regions])))
    x, y = np.array(pts).T
    return M._integrate_to(x, y, limit) / limit


def test_aupro_matches_bruteforce_and_binned_is_close():
    rng = np.random.default_rng(1)
    maps, masks = [], []
    for i in range(4):
        g = np.zeros((24, 24), bool)
        if i:
            g[rng.integers(0, 14) :][:6, rng.integers(0, 14) :][:, :7] = True
        m = np.round(rng.random((24, 24)) + 0.8 * g, 2).astype(np.float32)  # few distinct values: exact
        maps.append(m)
        masks.append(g)
    ref = _pro_bruteforce(maps, masks, 0.3)
    assert M.aupro(maps, masks) == pytest.approx(ref, abs=1e-9)
    cont = [m + rng.random(m.shape).astype(np.float32) * 1e-3 for m in maps]
    assert M.aupro(cont, masks, max_thresholds=400) == pytest.approx(_pro_bruteforce(cont, masks, 0.3), abs=5e-3)


def test_pixel_auroc_matches_sklearn():
    rng = np.random.default_rng(2)
    masks = [rng.random((16, 16)) < 0.2 for _ in range(3)]
    maps = [np.round(rng.random((16, 16)) + 0.5 * g, 2) for g in masks]
    ref = roc_auc_score(np.concatenate([g.ravel() for g in masks]), np.concatenate([m.ravel() for m in maps]))
    assert M.pixel_auroc(maps, masks) == pytest.approx(ref, abs=1e-12)
    cont = [rng.random((64, 64)) + 0.5 * cv2.resize(g.astype(np.uint8), (64, 64)) for g in masks]
    cmask = [cv2.resize(g.astype(np.uint8), (64, 64), interpolation=cv2.INTER_NEAREST).astype(bool) for g in masks]
    ref = roc_auc_score(np.concatenate([g.ravel() for g in cmask]), np.concatenate([m.ravel() for m in cont]))
    assert M.pixel_auroc(cont, cmask, max_thresholds=2000) == pytest.approx(ref, abs=2e-3)


def test_pixel_metrics_without_defects_are_nan():
    maps = [np.random.default_rng(0).random((8, 8))]
    masks = [np.zeros((8, 8), bool)]
    assert math.isnan(M.pixel_auroc(maps, masks)) and math.isnan(M.aupro(maps, masks))


def test_reduce_map_and_mask():
    mask = np.zeros((256, 256), bool)
    mask[:128, :] = True
    r = M.reduce_mask(mask, 128)
    assert r.shape == (128, 128) and r[:64].all() and not r[64:].any()
    assert M.reduce_map(np.ones((300, 200), np.float32), 128).shape == (128, 128)
