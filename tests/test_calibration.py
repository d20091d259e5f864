"""Threshold calibration with more good scores: leave-one-image-out scores of the training images
against the memory bank, pooled with the hold-out, and a generalized Pareto tail for the target
FAR (crossfit.py, calibrate.tail_threshold); both rules recorded in the bundle and evaluated.

Dev-set figures (FAR/recall at both thresholds, ROC recall at the same FAR) come from
benchmarks/model_benchmark.py (docs/benchmarks.md)."""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from edge_inspector.training.calibrate import MIN_TAIL, TAIL_FRACTION, far_threshold, tail_threshold  # noqa: E402
from edge_inspector.training import crossfit  # noqa: E402
from edge_inspector.training.crossfit import (POOL_MIN_HOLDOUT, POOL_MIN_P, crossfit_unavailable,  # noqa: E402
                                              leave_one_out_scores, train_pooled_threshold)
from edge_inspector.training.evaluate import evaluate_bundle  # noqa: E402
from edge_inspector.training.export import load_checkpoint  # noqa: E402
from edge_inspector.training.knn import KnnScorer  # noqa: E402
from edge_inspector.training.metrics import recall_at_far  # noqa: E402
from edge_inspector.training.train import train_bundle  # noqa: E402
from tests.test_training import SIZE, make_dataset  # noqa: E402


@pytest.fixture(scope="module")
def knn_bundle(tmp_path_factory):
    # 140 good parts: 119 training images + 21 held out → 140 pooled scores, a tail of 28 ≥ MIN_TAIL
    data = make_dataset(tmp_path_factory.mktemp("data") / "part", n_train=140, n_test=6)
    out = tmp_path_factory.mktemp("model") / "knn"
    torch.set_num_threads(2)
    train_bundle(data, out, head="knn", image_size=SIZE, seed=0, progress=False, augmented_copies=0,
                 calibration="crossfit_tail")
    return data, out


def test_tail_threshold_meets_the_target_far_on_fresh_scores():
    rng = np.random.default_rng(0)
    for draw in (rng.normal(size=500), rng.gumbel(size=500)):  # light and heavier right tails
        calib = tail_threshold(draw, 0.01)
        assert calib["method"] == "gpd_tail" and calib["tail"]["n"] == int(TAIL_FRACTION * 500)
        fresh = rng.normal(size=200_000) if draw.min() < -2.5 else rng.gumbel(size=200_000)
        assert 0.003 < float(np.mean(fresh >= calib["threshold"])) < 0.03


def test_tail_threshold_falls_back_to_the_hold_out_rule_on_few_scores():
    scores = np.random.default_rng(1).normal(size=int(MIN_TAIL / TAIL_FRACTION) - 1)
    calib = tail_threshold(scores, 0.01)
    assert calib["method"] != "gpd_tail" and calib["threshold"] == far_threshold(scores, 0.01)["threshold"]


def test_recall_at_far_is_the_best_recall_within_the_false_alarm_budget():
    labels = np.array([0] * 10 + [1] * 4)
    scores = np.array([0, 1, 2, 3, 4, 5, 6, 7, 8, 9.5, 9, 8.5, 3, 10.0])
    assert recall_at_far(labels, scores, 0.0) == 0.25  # above every good score: only 10.0
    assert recall_at_far(labels, scores, 0.1) == 0.75  # one good (9.5) may alarm: cut above 8
    assert recall_at_far(labels, scores, 0.7) == 1.0  # seven may: cut above 2


def _bank_of_two_images(knn_bundle, seed: int):
    """The knn bundle's model with random features z of 4 images and a memory bank of every patch
    of images 0 and 1 (raw space); returns (model, z, patches, source row of each patch)."""
    _, out = knn_bundle
    model, _ = load_checkpoint(out)
    rng = torch.Generator().manual_seed(seed)
    channels, grid = model.feature_std.shape[1], SIZE // 8
    z = torch.randn(4, channels, grid, grid, generator=rng)
    patches = (z[:2] * model.feature_std).permute(0, 2, 3, 1).reshape(-1, channels)
    model.knn = KnnScorer(patches)
    return model, z, patches, torch.arange(2).repeat_interleave(grid * grid)


def _image_scores(model, z) -> list[float]:
    return [float(model.upsample_and_smooth(model.raw_grid_map(z[i : i + 1]), SIZE).amax()) for i in range(len(z))]


def test_leave_one_out_scores_use_no_bank_entry_of_the_image_itself(knn_bundle):
    # The bank is every patch of images 0 and 1: in-sample, their map is ~0 everywhere.
    model, z, patches, source = _bank_of_two_images(knn_bundle, seed=0)
    full = _image_scores(model, z)
    loo = leave_one_out_scores(model, z, source, "cpu")
    # (in-sample ≈ 0 up to the matmul form's rounding; leave-one-out: against the other image only)
    assert max(full[:2]) < 0.1 < 1.0 < min(loo[:2])
    np.testing.assert_allclose(loo[2:], full[2:], rtol=1e-6)  # no own entries: nothing removed
    assert model.knn.size == patches.shape[0]  # the model's own bank is back


def test_leave_one_out_drops_the_images_own_entries_from_a_smaller_subspace_bank(knn_bundle):
    model, z, patches, source = _bank_of_two_images(knn_bundle, seed=1)
    # the sub term alone, its bank every other entry of the memory bank, projected
    model.config.head, model.config.fusion_weights = "default", {"sub": 1.0}
    model.subspace = torch.linalg.qr(torch.randn(patches.shape[1], 8, generator=torch.Generator().manual_seed(2))).Q
    sub_index = torch.arange(0, patches.shape[0], 2)
    model.knn_sub = KnnScorer((patches @ model.subspace)[sub_index])
    full = _image_scores(model, z)
    loo = leave_one_out_scores(model, z, source, "cpu", sub_index)
    assert all(loo[i] > full[i] + 0.1 for i in range(2))  # its own half of the sub bank is gone
    np.testing.assert_allclose(loo[2:], full[2:], rtol=1e-6)
    assert model.knn_sub.size == sub_index.numel()


def test_an_image_that_owns_a_whole_bank_has_no_leave_one_out_score_and_breaks_nothing(knn_bundle):
    # a subspace bank of image 0's entries only (a small subspace bank, a tiny training set)
    model, z, patches, source = _bank_of_two_images(knn_bundle, seed=3)
    model.config.head, model.config.fusion_weights = "default", {"knn": 0.5, "sub": 0.5}
    model.subspace = torch.linalg.qr(torch.randn(patches.shape[1], 8, generator=torch.Generator().manual_seed(4))).Q
    sub_index = torch.nonzero(source == 0).ravel()
    model.knn_sub = KnnScorer((patches @ model.subspace)[sub_index])
    loo = leave_one_out_scores(model, z, source, "cpu", sub_index)
    assert np.isnan(loo[0]) and np.isfinite(loo[1:]).all()
    hold = np.linspace(-2.0, 2.0, 35)
    calib = crossfit.threshold_rules(model, z, source, hold, 0.0, 1.0, "train_pooled", 0.01, "cpu", sub_index=sub_index)
    assert calib["rules"]["train_pooled"]["n_unscored"] == 1 and calib["rules"]["train_pooled"]["n_train"] == 3
    # every image owning its own whole bank: no score at all, the hold-out rule, no error
    only_own = torch.zeros_like(source)
    model.knn = KnnScorer(patches[: source.numel() // 2])
    model.knn_sub = None
    model.config.fusion_weights = {"knn": 1.0}
    calib = crossfit.threshold_rules(model, z[:1], only_own[: source.numel() // 2], hold, 0.0, 1.0, "train_pooled", 0.01, "cpu")
    assert calib["rule"] == "holdout" and "no training image could be scored" in calib["rules"]["train_pooled"]["unavailable"]
    assert "no training image could be scored" in calib["rules"]["crossfit_tail"]["unavailable"]


def test_knn_bundle_applies_the_tail_rule_and_records_both(knn_bundle):
    data, out = knn_bundle
    meta = json.loads((out / "model.json").read_text())
    calib = meta["threshold_calibration"]
    assert calib["rule"] == "crossfit_tail" and calib["method"] == "gpd_tail"
    assert meta["threshold"] == round(calib["threshold"], 6)
    tail = calib["rules"]["crossfit_tail"]
    assert tail["n_out_of_fold"] == meta["training_set"]["n_train"] and tail["n_holdout"] == meta["training_set"]["n_holdout"]
    assert calib["rules"]["holdout"]["method"] in ("empirical", "gaussian_tail_floor")
    result = evaluate_bundle(out, data)
    assert set(result["threshold_rules"]) == {"holdout", "crossfit_tail"}
    # train_pooled refused these leave-one-out scores (they err high): reported with its test
    refused = result["threshold_rules_unavailable"]["train_pooled"]
    assert "median above" in refused["unavailable"] and refused["ks_p"] < 0.05
    applied = result["threshold_rules"]["crossfit_tail"]
    assert (applied["far"], applied["recall"]) == (result["far_at_threshold"], result["recall_at_threshold"])
    assert 0.0 <= result["roc_recall_at_far"]["far_target"] <= 1.0


def test_train_pooled_by_default_falls_back_to_the_hold_out_and_where_the_map_is_the_autoencoders(knn_bundle, tmp_path):
    data, _ = knn_bundle
    out = train_bundle(data, tmp_path / "knn", head="knn", image_size=SIZE, seed=0, progress=False,
                       augmented_copies=0, export=False)
    calib = json.loads((out / "model.json").read_text())["threshold_calibration"]
    # the default rule, refused here (a kNN map's leave-one-out scores err high), gives the hold-out's
    assert calib["rule_requested"] == "train_pooled" and "unavailable" in calib["rules"]["train_pooled"]
    assert calib["rule"] == "holdout" and calib["threshold"] == calib["rules"]["holdout"]["threshold"]
    assert "threshold" in calib["rules"]["crossfit_tail"]  # still shown
    model, _ = load_checkpoint(tmp_path / "knn")
    model.config.head = "ae"
    assert "autoencoder" in crossfit_unavailable(model, torch.zeros(1))
    model.config.head = "default"
    model.config.fusion_weights = {"sub": 0.9, "gan": 0.1}  # the critic scores the AE's reconstruction
    assert "GAN critic" in crossfit_unavailable(model, torch.zeros(1))


def test_train_pooled_pools_training_scores_that_look_like_the_hold_outs():
    rng = np.random.default_rng(3)
    hold, train = rng.normal(size=35), rng.normal(size=250)
    calib = train_pooled_threshold(hold, train, 0.01)
    assert calib["ks_p"] >= POOL_MIN_P and calib["n_calibration"] == 285 and calib["method"] == "gpd_tail"
    shifted = train + calib["median_shift"]
    assert calib["threshold"] == tail_threshold(np.concatenate([hold, shifted]), 0.01)["threshold"]


def test_train_pooled_refuses_training_scores_that_differ_either_way():
    rng = np.random.default_rng(4)
    hold = rng.normal(size=35)
    # below: a network that learnt its images by heart; above: a bank that lost their own entries
    for offset, side in ((-1.5, "below"), (1.5, "above")):
        calib = train_pooled_threshold(hold, rng.normal(size=250) + offset, 0.01)
        assert "threshold" not in calib and calib["ks_p"] < POOL_MIN_P
        assert f"median {side}" in calib["unavailable"] and "KS p" in calib["unavailable"]
    assert calib["ks_p_lower"] > 0.5  # the one-sided test alone would have let the higher ones in


def test_train_pooled_shifts_lower_training_scores_up_to_the_hold_outs_median():
    from scipy.stats import norm

    hold = norm.ppf((np.arange(35) + 0.5) / 35)  # median 0
    standard = norm.ppf((np.arange(250) + 0.5) / 250)
    train = standard - 0.2  # too small a shift for the test on 35 scores to see
    calib = train_pooled_threshold(hold, train, 0.01)
    assert calib["ks_p"] >= POOL_MIN_P and calib["median_shift"] == pytest.approx(0.2, abs=1e-4)
    assert calib["threshold"] == pytest.approx(tail_threshold(np.concatenate([hold, standard]), 0.01)["threshold"])
    assert calib["threshold"] > tail_threshold(np.concatenate([hold, train]), 0.01)["threshold"]
    # never shifted down: higher training scores only raise the threshold
    assert train_pooled_threshold(hold, standard + 0.2, 0.01)["median_shift"] == 0.0


def test_train_pooled_is_recorded_in_every_bundle_with_the_training_scores(knn_bundle, tmp_path):
    data, out = knn_bundle
    meta = json.loads((out / "model.json").read_text())
    pooled = meta["threshold_calibration"]["rules"]["train_pooled"]
    assert pooled["n_train"] == meta["training_set"]["n_train"] == len(pooled["train_scores"])
    assert pooled["train_scores"] == sorted(pooled["train_scores"]) and pooled["train_max"] == pooled["train_scores"][-1]
    # the kNN map's leave-one-out scores err high: the test tells them apart, the hold-out rule stays
    out = train_bundle(data, tmp_path / "pooled", head="knn", image_size=SIZE, seed=0, progress=False,
                       augmented_copies=0, export=False, calibration="train_pooled")
    calib = json.loads((out / "model.json").read_text())["threshold_calibration"]
    assert "median above" in calib["rules"]["train_pooled"]["unavailable"]
    assert (calib["rule"], calib["rule_requested"]) == ("holdout", "train_pooled")


def test_train_pooled_applies_where_the_training_scores_look_like_the_hold_outs(knn_bundle, monkeypatch):
    from scipy.stats import norm

    model, _ = load_checkpoint(knn_bundle[1])
    hold = norm.ppf((np.arange(35) + 0.5) / 35)
    alike = norm.ppf((np.arange(250) + 0.5) / 250)
    offset, scale = 2.0, 0.5  # the rule works in the bundle's units: (raw − offset) / scale
    for train, expected in ((alike, "train_pooled"), (alike + 1.5, "holdout")):
        monkeypatch.setattr(crossfit, "leave_one_out_scores", lambda *a, raw=offset + scale * train, **k: raw)
        calib = crossfit.threshold_rules(model, torch.zeros(250, 1), torch.zeros(1), hold, offset, scale,
                                         "train_pooled", 0.01, "cpu")
        assert calib["rule"] == expected and calib["threshold"] == calib["rules"][expected]["threshold"]
        if expected == "train_pooled":
            assert calib["rules"]["train_pooled"]["n_calibration"] == 285
            assert calib["threshold"] == pytest.approx(tail_threshold(np.concatenate([hold, alike]), 0.01)["threshold"])


def test_train_pooled_refuses_a_hold_out_too_small_for_its_test():
    rng = np.random.default_rng(5)
    # two hold-out scores: the KS test could never tell any training scores from them
    small = train_pooled_threshold(rng.normal(size=2), rng.normal(size=250) + 3.0, 0.01)
    assert "threshold" not in small and f"fewer than the {POOL_MIN_HOLDOUT}" in small["unavailable"]
    assert "--holdout" in small["unavailable"] and small["n_holdout"] == 2
    enough = train_pooled_threshold(rng.normal(size=POOL_MIN_HOLDOUT), rng.normal(size=250), 0.01)
    assert "threshold" in enough


def test_extra_good_images_are_trained_on_but_not_pooled(knn_bundle, monkeypatch):
    from scipy.stats import norm

    model, _ = load_checkpoint(knn_bundle[1])
    hold = norm.ppf((np.arange(35) + 0.5) / 35)
    alike = norm.ppf((np.arange(250) + 0.5) / 250)
    scored = []

    def fake_scores(model, z, *args, **kwargs):
        scored.append(z.shape[0])
        return np.concatenate([alike, np.full(z.shape[0] - alike.size, 30.0)])  # the extras would score far out

    monkeypatch.setattr(crossfit, "leave_one_out_scores", fake_scores)
    z = torch.zeros(253, 1)  # 250 line images, then 3 an operator judged good (--extra-good)
    calib = crossfit.threshold_rules(model, z, torch.zeros(1), hold, 0.0, 1.0, "train_pooled", 0.01, "cpu", n_extra_good=3)
    assert scored == [250] and calib["rule"] == "train_pooled" and calib["rules"]["train_pooled"]["n_train"] == 250
    with_extras = crossfit.threshold_rules(model, z, torch.zeros(1), hold, 0.0, 1.0, "train_pooled", 0.01, "cpu")
    assert with_extras["rules"]["train_pooled"]["train_max"] == 30.0  # what they would have done to the tail
