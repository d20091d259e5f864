"""The model benchmark's --reuse: which earlier bundles it loads the autoencoders from."""

from __future__ import annotations

import pytest

pytest.importorskip("torch")

from benchmarks.model_benchmark import reused_bundles  # noqa: E402


def _run(tmp_path, *heads):
    for head in heads:
        (tmp_path / "bottle" / head).mkdir(parents=True)
    return tmp_path / "bottle"


def test_a_full_run_gives_the_ae_and_aegan_bundles(tmp_path):
    earlier = _run(tmp_path, "ae", "aegan", "knn", "default")
    assert reused_bundles(earlier, ["ae", "aegan", "knn", "default"]) == (earlier / "ae", earlier / "aegan")
    # the AE-only bundle is still used when it exists, even without the ae head
    assert reused_bundles(earlier, ["default"]) == (earlier / "ae", earlier / "aegan")


def test_a_default_only_run_gives_the_default_bundle_for_the_ae_gan(tmp_path):
    earlier = _run(tmp_path, "default", "gan_only")
    assert reused_bundles(earlier, ["default"]) == (None, earlier / "default")


def test_asking_for_a_head_the_earlier_run_lacks_names_the_missing_folder(tmp_path):
    earlier = _run(tmp_path, "default")
    with pytest.raises(SystemExit, match=r"bottle/ae missing .*drop ae from --heads"):
        reused_bundles(earlier, ["ae", "default"])
    with pytest.raises(SystemExit, match=r"neither .*aegan nor .*default exists"):
        reused_bundles(_run(tmp_path / "other", "knn"), ["default"])
