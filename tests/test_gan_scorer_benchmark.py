"""The GAN-scorer benchmark's feature scorer and its argument checks."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from benchmarks.gan_scorer_benchmark import main, train_feature_scorer  # noqa: E402


def test_the_feature_scorer_ranks_perturbed_features_above_good_ones():
    torch.manual_seed(0)
    # good features: a low-dimensional structure in 16 channels, as backbone features have
    basis = torch.randn(3, 16)
    good = (torch.randn(24, 6, 6, 3) @ basis).permute(0, 3, 1, 2).contiguous()
    score = train_feature_scorer(good[:16], sigma=0.5, steps=600, width=32, seed=0)
    held_out = good[16:]
    anomalous = held_out.clone()
    anomalous[:, :, 2:4, 2:4] += 0.8 * torch.randn(8, 16, 2, 2)
    clean_map, anomalous_map = score(held_out), score(anomalous)
    assert clean_map.shape == (8, 1, 6, 6)
    assert anomalous_map[:, :, 2:4, 2:4].mean() > clean_map.amax()


@pytest.mark.parametrize("spec, message", [
    ("nosuchset={dir}", "expected DATASET=DIR"),
    ("bottle", "expected DATASET=DIR"),
    ("bottle={dir}", "checkpoint.pt not found"),  # a folder without a bundle in it
])
def test_a_bad_model_argument_is_one_line(spec, message, tmp_path):
    with pytest.raises(SystemExit, match=message):
        main(["--model", spec.format(dir=tmp_path)])


def test_the_candidate_is_scaled_by_the_rule_of_the_bundle_it_joins():
    from benchmarks.gan_scorer_benchmark import held_out_scaling

    values = torch.cat([torch.zeros(998), torch.tensor([10.0, 20.0])])
    tail = held_out_scaling(values, {"score_normalisation": {"term_scaling": {"rule": "median_tail"}}})
    assert tail[0] == 0.0 and tail[1] == pytest.approx(float(torch.quantile(values.double(), 0.999)))
    older = held_out_scaling(values, {"score_normalisation": {}})  # a bundle from before: mean and std
    assert older == pytest.approx((float(values.mean()), float(values.std())))
