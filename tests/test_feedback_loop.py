"""The loop the operator page closes: a good-but-unusual part is rejected, the operator marks it
"good — false alarm" on the page, ``train --extra-good`` learns it, and the new model passes it.

Tiny: 64² parts, the kNN head (no iterations), 12 training images, so the whole loop (two
trainings, one daemon run) stays within about a minute on 2 cores.
"""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

pytest.importorskip("torch")

from edge_inspector.cli import main  # noqa: E402
from edge_inspector.drift import SIGNALS  # noqa: E402
from edge_inspector.inference.bundle import load_bundle  # noqa: E402
from edge_inspector.training.train import train_bundle  # noqa: E402
from tests.helpers.page import feedback, start_page_daemon, wait_state  # noqa: E402
from tests.helpers.station import stop_daemon  # noqa: E402
from tests.test_training import make_dataset, make_part  # noqa: E402

SIZE = 64


def unusual_good_part(rng) -> np.ndarray:
    """A good part with a printed white marking the training set never showed."""
    img = make_part(rng)
    cv2.rectangle(img, (30, 20), (36, 60), (250, 250, 250), -1)
    return img


def _far(model, data, out) -> dict:
    assert main(["evaluate", "--model", str(model), "--data", str(data), "--json", str(out)]) == 0
    return json.loads(out.read_text())


def test_feedback_then_train_extra_good_passes_the_false_alarm(tmp_path, mosquitto, capsys):
    rng = np.random.default_rng(5)
    data = make_dataset(tmp_path / "part")
    first = train_bundle(data, tmp_path / "first", head="knn", image_size=SIZE, seed=0, progress=False)
    line = tmp_path / "line"
    line.mkdir()
    cv2.imwrite(str(line / "a_good.png"), make_part(rng))
    cv2.imwrite(str(line / "b_unusual.png"), unusual_good_part(rng))
    cv2.imwrite(str(line / "c_dent.png"), make_part(rng, defect=True))

    proc, base = start_page_daemon(tmp_path, mosquitto.port, first, line, camera={"fps": 5.0})
    try:
        def ng(stem):
            return lambda s: any(c["frame_id"].startswith(stem) for c in s["gallery"])

        state = wait_state(base, ng("b_unusual"), proc=proc, what="the unusual part rejected")
        false_alarm = next(c for c in state["gallery"] if c["frame_id"].startswith("b_unusual"))
        assert false_alarm["score"] >= false_alarm["threshold"]
        assert feedback(base, false_alarm["id"], "good", why="printed marking, part is fine")[0] == 200
        state = wait_state(base, ng("c_dent"), proc=proc, what="the dented part rejected")
        dent = next(c for c in state["gallery"] if c["frame_id"].startswith("c_dent"))
        assert feedback(base, dent["id"], "defect", why="confirmed dent")[0] == 200
    finally:
        stop_daemon(proc)

    fb = tmp_path / "feedback"
    assert len(list((fb / "test" / "good").glob("*.png"))) == 1
    before = _far(first, fb, tmp_path / "before.json")
    assert before["far_at_threshold"] == 1.0  # the old model rejects the judged-good part

    second = tmp_path / "second"
    assert main(["train", "--data", str(data), "--out", str(second), "--head", "knn", "--image-size", str(SIZE),
                 "--extra-good", str(fb)]) == 0
    meta = load_bundle(second).meta
    assert meta["training_set"]["extra_good"] == {"folder": str(fb), "n_images": 1}
    assert meta["training_set"]["n_images"] == 13
    after = _far(second, fb, tmp_path / "after.json")
    assert after["far_at_threshold"] == 0.0  # the false alarm now scores OK ...
    assert after["recall_at_threshold"] == 1.0  # ... and the confirmed dent is still NG
    capsys.readouterr()


def test_bundle_carries_the_drift_reference(tmp_path):
    data = make_dataset(tmp_path / "part", n_train=10)
    meta = load_bundle(train_bundle(data, tmp_path / "m", head="knn", image_size=SIZE, progress=False)).meta
    ref = meta["drift_reference"]
    assert ref["measure"] == "psi"
    assert len(ref["mean_luma"]) == len(ref["contrast"]) == 10  # every training image
    assert len(ref["score"]) == meta["training_set"]["n_holdout"]  # the calibration scores
    assert all(ref[s] == sorted(ref[s]) for s in SIGNALS)


def test_extra_good_without_images_is_exit_2(tmp_path, capsys):
    data = make_dataset(tmp_path / "part", n_train=4, n_test=1)
    (tmp_path / "empty").mkdir()
    code = main(["train", "--data", str(data), "--out", str(tmp_path / "m"), "--extra-good", str(tmp_path / "empty")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "--extra-good has no images" in err and len(err.splitlines()) == 1


def test_a_default_model_keeps_the_marked_images_bank_entries_in_its_subspace_bank(tmp_path):
    from edge_inspector.training.export import load_checkpoint

    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(5)
    data = make_dataset(tmp_path / "part")
    marked = tmp_path / "feedback" / "test" / "good"
    marked.mkdir(parents=True)
    cv2.imwrite(str(marked / "unusual.png"), unusual_good_part(rng))
    out = train_bundle(data, tmp_path / "model", head="default", iterations=2, image_size=SIZE, seed=0,
                       progress=False, augmented_copies=0, export=False, extra_good=str(tmp_path / "feedback"),
                       subspace_bank_size=4)
    added = json.loads((out / "model.json").read_text())["training"]["timing"]["extra_good_bank_entries"]
    model, _ = load_checkpoint(out)
    bank = model.knn.bank_t.t()
    assert 0 < added < bank.shape[0] and model.knn_sub.size == max(4, added)
    # the sub bank holds the projection of every entry that covers the marked image (the bank's last rows)
    torch.testing.assert_close(model.knn_sub.bank_t.t()[-added:], bank[-added:] @ model.subspace)
