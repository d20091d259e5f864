"""Products (recipes): each product of a station names its model bundle and the settings that go
with it (threshold, ROI, min defect area); ``recipes`` in the station config.

The product in service changes by ``P/cmd/product`` or by a trigger's ``product``. Either way the
switch is the existing hot swap (runtime.py): the frame that asks for a product gets that
product's ``ModelRuntime``, frames already in the line keep theirs, so no frame is lost or
inspected half with one product, half with the other.

Memory budget: at most ``recipes.max_loaded`` engines stay loaded (the product in service
included); switching to another loads it on demand (load + warm-up, measured by
benchmarks/recipe_switch.py) and drops the least recently used one. Frames still in flight keep
a dropped runtime alive until they leave the line.
"""

from __future__ import annotations

import collections
import threading
import time
from typing import Callable, Optional

from edge_inspector.config.models import Config
from edge_inspector.errors import InputError
from edge_inspector.inference.bundle import load_bundle
from edge_inspector.logging import get_logger
from edge_inspector.pipeline.runtime import ModelRuntime, build_preprocessor, build_runtime

log = get_logger(__name__)


class UnknownProduct(InputError):
    """A product the station has no recipe for: the frame becomes an ERROR naming it."""


def product_config(cfg: Config, product: str) -> Config:
    """The station config as this product runs it: its bundle and the settings it overrides."""
    recipe = cfg.recipes.products[product]
    model = cfg.model.model_copy(update={"path": recipe.model_path,
                                         "threshold": recipe.threshold if recipe.threshold is not None else cfg.model.threshold})
    preprocess = cfg.preprocess if recipe.roi is None else cfg.preprocess.model_copy(update={"roi": recipe.roi})
    postprocess = (cfg.postprocess if recipe.min_defect_area_px is None
                   else cfg.postprocess.model_copy(update={"min_defect_area_px": recipe.min_defect_area_px}))
    return cfg.model_copy(update={"model": model, "preprocess": preprocess, "postprocess": postprocess})


class Recipes:
    """Loaded product runtimes, least recently used first. Thread-safe: the preprocess stage
    (a trigger's product) and the command worker (``P/cmd/product``) may ask at the same time;
    one load at a time."""

    def __init__(self, engine_factory: Callable, next_generation: Callable[[], int]):
        self._engine_factory = engine_factory
        self._next_generation = next_generation
        self._loaded: collections.OrderedDict[str, ModelRuntime] = collections.OrderedDict()
        self._lock = threading.RLock()
        self.last_switch_ms: Optional[float] = None  # load (or lookup) time of the last product switch

    def check(self, cfg: Config, product: str) -> None:
        if product not in cfg.recipes.products:
            known = ", ".join(cfg.recipes.products) or "none configured"
            raise UnknownProduct(f"unknown product {product!r}: not in recipes.products ({known})")

    def runtime(self, cfg: Config, product: str, keep: Optional[str] = None) -> ModelRuntime:
        """This product's runtime, loaded on demand; ``keep`` (the product in service) is never
        the one dropped to stay within ``max_loaded``."""
        self.check(cfg, product)
        with self._lock:
            t0 = time.monotonic()
            runtime = self._loaded.get(product)
            if runtime is None:
                runtime = self._load(cfg, product)
                self._loaded[product] = runtime
            self._loaded.move_to_end(product)
            self._evict(cfg.recipes.max_loaded, keep={product, keep})
            self.last_switch_ms = round((time.monotonic() - t0) * 1000.0, 3)
            return runtime

    def preload(self, cfg: Config, first: Optional[str]) -> list[str]:
        """Load up to ``max_loaded`` products at start (``first`` first)."""
        names = ([first] if first else []) + [p for p in cfg.recipes.products if p != first]
        for name in names[: cfg.recipes.max_loaded]:
            self.runtime(cfg, name, keep=first)
        return list(self._loaded)

    def forget(self, keep: Optional[str] = None) -> None:
        """After a reload: recipes may have changed, reload them on next use (``keep`` stays)."""
        with self._lock:
            for name in [n for n in self._loaded if n != keep]:
                del self._loaded[name]

    @property
    def loaded(self) -> list[str]:
        with self._lock:
            return list(self._loaded)

    def _load(self, cfg: Config, product: str) -> ModelRuntime:
        pcfg = product_config(cfg, product)
        bundle = load_bundle(pcfg.model.path)
        build_preprocessor(pcfg, bundle)  # ROI/lighting against this bundle: fail before loading the engine
        engine = self._engine_factory(pcfg, bundle)
        runtime = build_runtime(pcfg, bundle, engine, self._next_generation(), product=product)
        log.info("product_loaded", product=product, model=bundle.name, sha256=bundle.sha256[:12])
        return runtime

    def _evict(self, limit: int, keep: set) -> None:
        for name in list(self._loaded):
            if len(self._loaded) <= limit:
                return
            if name not in keep:
                del self._loaded[name]
                log.info("product_unloaded", product=name, reason=f"recipes.max_loaded={limit}")
