"""Recipes (issue 11): products → bundles with their own threshold / ROI / min defect area;
switched by a trigger's product or P/cmd/product with the hot swap — no frame lost, every
result names its product and model; an unknown product is an ERROR naming it; at most
recipes.max_loaded engines stay loaded."""

from __future__ import annotations


import pytest
import yaml

from edge_inspector.acquisition.parts import PartTag
from edge_inspector.config.models import Config
from edge_inspector.errors import InputError
from edge_inspector.inference.bundle import load_bundle
from edge_inspector.pipeline.recipes import Recipes, product_config
from tests.helpers.tiny_bundle import make_tiny_bundle
from tests.test_pipeline import ListSource, NumpyEngine, blotched, grey, make_supervisor, run_to_end


@pytest.fixture
def bundles(tmp_path):
    return {"a": make_tiny_bundle(tmp_path / "bundle-a", image_size=32, threshold=0.5),
            "b": make_tiny_bundle(tmp_path / "bundle-b", image_size=48, threshold=0.5),
            "c": make_tiny_bundle(tmp_path / "bundle-c", image_size=40, threshold=0.5)}


def _recipes(bundles, **extra) -> dict:
    return {"products": {"bottle-a": {"model_path": str(bundles["a"])},
                         "bottle-b": {"model_path": str(bundles["b"]), "threshold": 0.7, "min_defect_area_px": 50},
                         "bottle-c": {"model_path": str(bundles["c"]), "roi": [0, 0, 64, 48]}},
            "default": "bottle-a", **extra}


def test_product_settings_override_the_station_ones(bundles):
    cfg = Config.model_validate({"station": {"line": "l", "name": "s"}, "postprocess": {"min_defect_area_px": 4},
                                 "recipes": _recipes(bundles)})
    b = product_config(cfg, "bottle-b")
    assert b.model.path == bundles["b"] and b.model.threshold == 0.7 and b.postprocess.min_defect_area_px == 50
    c = product_config(cfg, "bottle-c")
    assert c.preprocess.roi == (0, 0, 64, 48) and c.postprocess.min_defect_area_px == 4 and c.model.threshold is None


def test_unknown_default_product_is_a_config_error(bundles):
    with pytest.raises(ValueError, match="default 'bottle-x' is not one of products"):
        Config.model_validate({"station": {"line": "l", "name": "s"}, "recipes": {**_recipes(bundles), "default": "bottle-x"}})


def test_memory_budget_keeps_at_most_max_loaded_engines(bundles):
    cfg = Config.model_validate({"station": {"line": "l", "name": "s"}, "model": {"warmup_runs": 0},
                                 "recipes": _recipes(bundles, max_loaded=2)})
    loads = []
    recipes = Recipes(lambda c, bundle: loads.append(bundle.name) or NumpyEngine(), lambda: 1)
    assert recipes.preload(cfg, "bottle-a") == ["bottle-a", "bottle-b"]
    recipes.runtime(cfg, "bottle-c", keep="bottle-a")  # on demand: b (least recently used) goes
    assert recipes.loaded == ["bottle-a", "bottle-c"] and len(loads) == 3
    recipes.runtime(cfg, "bottle-a", keep="bottle-a")  # loaded already: no new load
    assert len(loads) == 3
    with pytest.raises(InputError, match=r"unknown product 'bottle-x': not in recipes.products \(bottle-a, bottle-b, bottle-c\)"):
        recipes.runtime(cfg, "bottle-x")


def test_product_switch_mid_run_loses_no_frame_and_every_verdict_names_product_and_model(tmp_path, bundles):
    images = [grey(), blotched(), grey(), blotched(), grey(), grey(), grey()]
    source = ListSource(images, triggered=True)
    sup = make_supervisor(tmp_path, bundles["a"], source, NumpyEngine(), recipes=_recipes(bundles))
    for product in ("bottle-a", "bottle-a", "bottle-b", "bottle-b", "bottle-x", None, "bottle-c"):
        sup.parts.announce(PartTag.make(product=product))  # the trigger names the product (or not)
    assert run_to_end(sup) == 0
    verdicts = sup.publisher.verdicts
    assert len(verdicts) == len(images)  # no frame lost at any switch
    sha = {name: load_bundle(path).sha256 for name, path in bundles.items()}
    assert [v.product for v in verdicts] == ["bottle-a", "bottle-a", "bottle-b", "bottle-b", "bottle-x", "bottle-b", "bottle-c"]
    assert [v.model["sha256"] for i, v in enumerate(verdicts) if i != 4] == [sha[k] for k in "aabbbc"]
    assert [v.threshold for v in verdicts[:4]] == [0.5, 0.5, 0.7, 0.7]  # each recipe's own threshold
    unknown = verdicts[4]
    assert unknown.verdict == "ERROR" and "unknown product 'bottle-x'" in unknown.error
    assert [v.verdict for v in verdicts[:4]] == ["OK", "NG", "OK", "NG"]


def test_product_command_switches_the_recipe_in_service(tmp_path, bundles):
    source = ListSource([grey()] * 3, triggered=True)
    sup = make_supervisor(tmp_path, bundles["a"], source, NumpyEngine(), recipes=_recipes(bundles, preload=False))
    assert sup.select_product("bottle-b") == (False, "pipeline is not running")
    sup.start()
    try:
        ok, message = sup.select_product("bottle-b")
        assert ok and "product bottle-b in service" in message and "threshold 0.7" in message
        assert sup.status()["product"] == "bottle-b" and sup.publisher.status["product"] == "bottle-b"
        ok, message = sup.select_product("bottle-x")
        assert not ok and "unknown product 'bottle-x'" in message and sup.status()["product"] == "bottle-b"
    finally:
        sup.request_stop("test done")
        sup.run()


def test_reload_updates_the_recipe_in_service_and_refuses_to_drop_it(tmp_path, bundles):
    config = tmp_path / "station.yaml"
    base = {"station": {"line": "l1", "name": "st1"}, "model": {"warmup_runs": 0}, "outbox": {"path": str(tmp_path / "o.sqlite")},
            "archive": {"enabled": False}, "health": {"enabled": False}, "recipes": _recipes(bundles, preload=False)}
    config.write_text(yaml.safe_dump(base))
    source = ListSource([grey()] * 2, triggered=True)
    sup = make_supervisor(tmp_path, bundles["a"], source, NumpyEngine(), config_path=config, recipes=_recipes(bundles, preload=False))
    sup.start()
    try:
        assert sup.current_runtime().product == "bottle-a" and sup.current_runtime().threshold == 0.5
        recipes = _recipes(bundles, preload=False)
        recipes["products"]["bottle-a"]["threshold"] = 0.8
        config.write_text(yaml.safe_dump({**base, "recipes": recipes}))
        ok, message = sup.reload()
        assert ok and "threshold 0.5 -> 0.8" in message, message
        assert sup.current_runtime().product == "bottle-a" and sup.current_runtime().threshold == 0.8
        recipes["products"]["bottle-a"]["model_path"] = str(bundles["c"])  # a new bundle for the product in service
        config.write_text(yaml.safe_dump({**base, "recipes": recipes}))
        ok, message = sup.reload()
        assert ok, message
        assert sup.current_runtime().bundle.sha256 == load_bundle(bundles["c"]).sha256 and sup.current_runtime().product == "bottle-a"
        del recipes["products"]["bottle-a"]
        recipes["default"] = "bottle-b"
        config.write_text(yaml.safe_dump({**base, "recipes": recipes}))
        ok, message = sup.reload()
        assert not ok and "recipes.products has no 'bottle-a', the product in service" in message
        assert sup.current_runtime().product == "bottle-a"
    finally:
        sup.request_stop("test done")
        sup.run()
