"""The model benchmark's ablation rows: which fixed weights each row gets from the default's."""

from __future__ import annotations

import pytest

pytest.importorskip("torch")

from benchmarks.model_benchmark import ABLATIONS, MIXES, ablation_weights  # noqa: E402
from edge_inspector.training.scoring import TERMS  # noqa: E402


def _full(**weights):
    return {t: float(weights.get(t, 0.0)) for t in TERMS}


def test_removing_a_term_renormalises_the_rest():
    default = _full(sub=0.6, ae=0.2, gan=0.2)
    assert ablation_weights("default_without_gan", default) == {"sub": 0.75, "ae": 0.25}
    assert ablation_weights("default_without_ae", default) == {"sub": 0.75, "gan": 0.25}
    assert ablation_weights("gan_only", default) == {"gan": 1.0}
    assert ablation_weights("default_without_memory", default) == {"ae": 0.5, "gan": 0.5}
    mixed = _full(knn=0.7, res=0.1, ae=0.1, gan=0.1)  # every memory term goes, not only the first
    assert ablation_weights("default_without_memory", mixed) == {"ae": 0.5, "gan": 0.5}


def test_rows_that_would_repeat_another_are_skipped():
    assert ablation_weights("default_without_ae", _full(sub=1.0)) is None  # nothing to remove
    assert ablation_weights("default_without_gan", _full(gan=1.0)) is None  # nothing would be left
    assert ablation_weights("default_without_gan", _full(ae=0.5, gan=0.5)) == {"ae": 1.0}
    assert ablation_weights("default_without_memory", _full(ae=0.5, gan=0.5)) is None  # no memory term
    assert ablation_weights("default_without_memory", _full(knn=1.0)) is None  # nothing would be left


def test_every_mix_names_known_terms_and_sums_to_one():
    for weights in MIXES.values():
        assert set(weights) <= set(TERMS) and sum(weights.values()) == pytest.approx(1.0)
    assert not set(MIXES) & set(ABLATIONS)


def test_markdown_table_reads_every_figure_from_the_result():
    from benchmarks.model_benchmark import markdown

    row = {"image_auroc": 0.9876, "pixel_auroc": 0.9512, "aupro_30": 0.81, "far_at_threshold": 0.04,
           "recall_at_threshold": 0.5, "ms_per_image": 17.26, "peak_rss_mb": 143.8}
    report = {"datasets": {"tire": {"heads": {
        "knn": row,
        "default": {**row, "fusion_weights": {"ae": 0.1, "knn": 0.7, "sub": 0.0, "res": 0.1, "gan": 0.1}},
        "default_without_ae": {**row, "image_auroc": None, "fusion_weights": {"knn": 7 / 9, "res": 1 / 9, "gan": 1 / 9}}}}},
        "means": {"datasets": ["tire"], "rows": {"default": {"image_auroc": 0.9876, "pixel_auroc": 0.9512}}}}
    text = markdown(report)
    assert "| tire | knn | 0.988 / 0.951 | 0.810 | 0.040 / 0.500 | 17.3 | 144 |" in text
    assert "| tire | **default (0.7 knn + 0.1 ae + 0.1 res + 0.1 gan)** |" in text
    assert "| tire | default_without_ae (0.78 knn + 0.11 res + 0.11 gan) | – / 0.951 |" in text
    assert text.splitlines()[-1] == "Mean over tire (image / pixel AUROC): default 0.9876 / 0.9512."
