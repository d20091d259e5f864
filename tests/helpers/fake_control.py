"""A PipelineControl whose heartbeats, status and answers the test sets by hand."""

from __future__ import annotations

import threading
import time
from typing import Optional

import numpy as np


class FakeControl:
    """Implements observer.PipelineControl. Heartbeats are ages computed from ``beat()`` times,
    so a test can stall one stage (stop calling beat for it) while the others keep beating."""

    def __init__(self, stages=("acquisition", "preprocess", "inference", "postprocess", "publish"), live: bool = False):
        """``live``: every stage not stalled by hand reports a fresh beat, as a running pipeline's
        stages do — so a watchdog test does not depend on how long the test itself takes."""
        self._last_beat = {stage: time.monotonic() for stage in stages}
        self._live = live
        self._stalled: set[str] = set()
        self._lock = threading.Lock()
        self.threshold = 0.5
        self.frame: Optional[np.ndarray] = None
        self.reload_calls: list[Optional[str]] = []
        self.reload_result = (True, "config reloaded")
        self.status_dict = {"fps": 4.9, "mqtt_state": "connected", "outbox_depth": 3, "camera_state": "open"}
        self.status_calls = 0
        self.trigger_calls: list[int] = []
        self.trigger_result = (True, "triggers fired")
        self.trigger_tags: list = []
        self.announced: list = []
        self.products: list = []
        self.snapshot_seqs: list = []

    def beat(self, *stages: str) -> None:
        with self._lock:
            for stage in stages or tuple(self._last_beat):
                self._last_beat[stage] = time.monotonic()
                self._stalled.discard(stage)

    def stall(self, stage: str, seconds_ago: float) -> None:
        with self._lock:
            self._last_beat[stage] = time.monotonic() - seconds_ago
            self._stalled.add(stage)

    # --- PipelineControl ---
    def reload(self, config_path: Optional[str] = None):
        self.reload_calls.append(config_path)
        return self.reload_result

    def set_threshold(self, value: float):
        self.threshold = value
        return True, f"threshold set to {value}"

    def trigger(self, count: int = 1, tag=None):
        self.trigger_calls.append(count)
        self.trigger_tags.append(tag)
        return self.trigger_result

    def select_product(self, product):
        self.products.append(product)
        return True, f"product {product} in service"

    def announce_part(self, tag, clear=False):
        self.announced.append((tag, clear) if clear else tag)
        return True, "part announced"

    def snapshot(self, seq=None):
        self.snapshot_seqs.append(seq)
        return self.frame

    def status(self) -> dict:
        self.status_calls += 1
        return dict(self.status_dict, threshold=self.threshold)

    def stage_heartbeats(self) -> dict[str, float]:
        now = time.monotonic()
        with self._lock:
            return {stage: (now - t if stage in self._stalled or not self._live else 0.0)
                    for stage, t in self._last_beat.items()}
