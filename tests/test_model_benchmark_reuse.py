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


def test_a_reused_run_keeps_its_lighting(tmp_path):
    """--reuse loads autoencoders trained on frames normalised one way: the run takes that lighting
    (runs from before the key used none), and another --lighting is refused in one line."""
    import json

    from benchmarks.model_benchmark import run_lighting
    from edge_inspector.lightings import DEFAULT_TRAIN_LIGHTING

    assert run_lighting(None, None) == DEFAULT_TRAIN_LIGHTING
    assert run_lighting("none", None) == "none"
    (tmp_path / "result.json").write_text(json.dumps({"lighting": "none", "datasets": {}}))
    assert run_lighting(None, str(tmp_path)) == "none"
    assert run_lighting("none", str(tmp_path)) == "none"
    with pytest.raises(SystemExit, match=r"used lighting none; drop --lighting match_hist"):
        run_lighting("match_hist", str(tmp_path))
    (tmp_path / "result.json").write_text(json.dumps({"datasets": {}}))  # before the key
    assert run_lighting(None, str(tmp_path)) == "none"
    with pytest.raises(SystemExit, match=r"no result.json"):
        run_lighting(None, str(tmp_path / "elsewhere"))
