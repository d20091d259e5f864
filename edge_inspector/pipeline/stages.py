"""The five pipeline threads and the queues between them.

    acquisition ─frames─▶ preprocess ─tensors─▶ inference ─results─▶ postprocess ─verdicts─▶ publish

* Only the ``frames`` queue may drop, and only in free-run (oldest frame first, counted through
  ``observer.on_drop``); every later queue applies back-pressure. Once the preprocess stage has
  taken a frame, that frame ends as exactly one verdict — ERROR when it cannot be inspected
  (grab failure, undecodable or odd frame, inference exception, non-finite score).
* One inference worker: onnxruntime already uses every core inside one session; two sessions
  would fight over the same 2 cores. When several frames wait, they run as one batch.
* Order is preserved end to end (every stage is a single thread, queues are FIFO), so ``seq``
  follows grab order.
* Every stage beats a heartbeat each time it handles an item or wakes up from an empty queue;
  a stage stuck inside a call (driver, session.run, publisher) stops beating. The acquisition
  stage also beats while its camera waits to reconnect (``FrameSource.on_alive``).
"""

from __future__ import annotations

import collections
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import numpy as np

from edge_inspector.acquisition.base import Frame, FrameSource
from edge_inspector.acquisition.parts import PartQueue, PartTag
from edge_inspector.errors import InputError
from edge_inspector.faults import fault_point
from edge_inspector.logging import get_logger
from edge_inspector.observer import PipelineObserver
from edge_inspector.pipeline.queues import END, StageQueue
from edge_inspector.pipeline.runtime import ModelRuntime
from edge_inspector.postprocess.regions import decide, error_verdict
from edge_inspector.postprocess.verdict import Verdict

log = get_logger(__name__)

STAGES = ("acquisition", "preprocess", "inference", "postprocess", "publish")
MAX_BATCH = 4  # frames per session.run when a backlog forms; bounded so one batch stays short
POLL_S = 0.5  # how often an idle stage wakes to beat its heartbeat


@dataclass
class WorkItem:
    """One frame on its way through the line."""

    frame: Frame
    runtime: Optional[ModelRuntime] = None  # fixed when preprocessing starts (see runtime.py)
    tensor: Optional[np.ndarray] = None
    geometry: Any = None
    anomaly_map: Optional[np.ndarray] = None
    score: Optional[float] = None
    error: Optional[str] = None  # set by the first stage that fails; later stages pass it on
    quality: Optional[str] = None  # "overexposed" / "underexposed" when the quality gate took the frame out
    verdict: Optional[Verdict] = None
    timings_ms: dict = field(default_factory=dict)


class Pipeline:
    """Threads + queues. The supervisor owns start order, stop, reload and the publisher.

    ``current_runtime()`` returns the model generation for the next frame; ``publish(verdict)``
    stores/sends one verdict and returns its ``seq`` (raising on failure: retried here).
    """

    def __init__(
        self,
        source: FrameSource,
        current_runtime: Callable[[], ModelRuntime],
        publish: Callable[[Verdict], int],
        observer: PipelineObserver,
        queue_size: int,
        max_frames: Optional[int] = None,
        parts: Optional[PartQueue] = None,
        runtime_for: Optional[Callable[[Frame], ModelRuntime]] = None,
    ):
        self.source = source
        # Announced parts (acquisition/parts.py): one taken per frame of a triggered camera.
        self.parts = parts
        # The generation that inspects this frame: its trigger may name a product (recipes.py);
        # raises InputError for a product the station has no recipe for.
        self.runtime_for = runtime_for or (lambda _frame: current_runtime())
        self.current_runtime = current_runtime
        self.publish = publish
        self.observer = observer
        self.max_frames = max_frames
        free_run = not getattr(source, "triggered", False)
        self.queues = {
            "frames": StageQueue("frames", queue_size, "drop_oldest" if free_run else "block"),
            "tensors": StageQueue("tensors", queue_size),
            "results": StageQueue("results", queue_size),
            "verdicts": StageQueue("verdicts", queue_size),
        }
        self._threads: dict[str, threading.Thread] = {}
        self._beats = {stage: time.monotonic() for stage in STAGES}
        # A source that waits (for a trigger, the next paced frame, or to reconnect) yields
        # nothing for a while; it proves that the acquisition thread is alive from inside its
        # wait (FrameSource.on_alive, called every poll slice), so a thread hung inside a driver
        # call stops beating whatever the trigger mode.
        source.on_alive = self._beat_acquisition
        self._stop_acquisition = threading.Event()
        self.finished = threading.Event()  # set when the publish stage has handled END
        self.failure: Optional[str] = None  # a stage died (bug or camera error): the daemon exits 1
        self.end_reason = ""  # why acquisition ended by itself: "camera ended" / "max frames reached"
        self._counts_lock = threading.Lock()
        self.frames_in = 0
        self.frames_dropped = 0
        self.frames_out = 0
        self.publish_failures = 0
        self.verdicts_lost = 0  # verdicts given up at shutdown because the outbox could not store them
        self.verdict_counts = {"OK": 0, "NG": 0, "ERROR": 0}
        self.quality_gated = {"overexposed": 0, "underexposed": 0}  # ERROR verdicts from the quality gate
        self.last_image: Optional[np.ndarray] = None
        self.last_seq: Optional[int] = None
        self._published_at: collections.deque = collections.deque(maxlen=256)  # monotonic times, for fps
        self._engines_without_batching: set[int] = set()

    # -- lifecycle -------------------------------------------------------------------------
    def start(self) -> None:
        # consumers first, so the first frame never waits for a thread that is not there yet
        targets = {
            "publish": self._publish_loop,
            "postprocess": self._postprocess_loop,
            "inference": self._inference_loop,
            "preprocess": self._preprocess_loop,
            "acquisition": self._acquisition_loop,
        }
        for stage, target in targets.items():
            self._beat(stage)
            thread = threading.Thread(target=self._guarded, args=(stage, target), name=f"stage-{stage}", daemon=True)
            self._threads[stage] = thread
            thread.start()

    def stop_acquisition(self) -> None:
        """Stop taking new frames; everything already accepted still ends as a verdict."""
        self._stop_acquisition.set()
        try:
            self.source.close()  # makes a blocking frames() return (FrameSource contract)
        except Exception:  # noqa: BLE001 - closing a broken camera must not stop the drain
            log.exception("camera_close_failed")

    def join(self, timeout: float) -> bool:
        """Wait until every stage thread has ended; False when some are still running."""
        deadline = time.monotonic() + timeout
        for thread in self._threads.values():
            thread.join(max(0.0, deadline - time.monotonic()))
        return not any(t.is_alive() for t in self._threads.values())

    def _guarded(self, stage: str, target: Callable[[], None]) -> None:
        try:
            target()
        except Exception as exc:  # noqa: BLE001 - a dead stage must end the daemon, not hang it
            self.failure = f"{stage} stage failed: {exc.__class__.__name__}: {exc}"
            log.exception("stage_failed", stage=stage)
            self.observer.on_state("pipeline", "failed", self.failure)
            self.finished.set()

    # -- heartbeats and counters -------------------------------------------------------------
    def _beat(self, stage: str) -> None:
        self._beats[stage] = time.monotonic()

    def _beat_acquisition(self) -> None:
        self._beat("acquisition")

    def heartbeat_ages(self) -> dict[str, float]:
        now = time.monotonic()
        # No exemption for a triggered camera waiting for its next part: the source's own wait
        # loop beats (on_alive), so an idle line stays fresh and a hung grab goes stale.
        return {stage: now - t for stage, t in self._beats.items()}

    def queue_depths(self) -> dict[str, int]:
        return {name: len(q) for name, q in self.queues.items()}

    def fps(self, window_s: float = 10.0) -> float:
        now = time.monotonic()
        recent = [t for t in list(self._published_at) if now - t <= window_s]
        if len(recent) < 2:
            return 0.0
        span = max(now - recent[0], 1e-6)
        return round(len(recent) / span, 2)

    def _put(self, queue_name: str, item: Any, stage: str) -> None:
        queue = self.queues[queue_name]
        queue.put(item, heartbeat=lambda: self._beat(stage))
        self.observer.on_queue_depth(queue_name, len(queue))

    # -- stages ------------------------------------------------------------------------------
    def _acquisition_loop(self) -> None:
        frames_queue = self.queues["frames"]
        frame_iter = iter(self.source.frames())
        try:
            while not self._stop_acquisition.is_set():
                try:
                    frame = next(frame_iter)
                except StopIteration:
                    log.info("camera_ended", state=getattr(self.source, "state", "?"))
                    self.end_reason = self.end_reason or "camera ended"
                    break
                self._beat("acquisition")
                fault_point("stage.acquisition")
                t0 = time.monotonic()
                with self._counts_lock:
                    self.frames_in += 1
                if self.parts is not None and getattr(self.source, "triggered", False):
                    frame.meta["part"] = self.parts.take()
                if frame.image is not None:
                    self.last_image = frame.image
                self.observer.on_frame(frame)
                dropped = frames_queue.put(WorkItem(frame), heartbeat=lambda: self._beat("acquisition"))
                if dropped is not None:
                    with self._counts_lock:
                        self.frames_dropped += 1
                    log.warning("frame_dropped", frame_id=dropped.frame.frame_id, reason="free-run queue full")
                    self.observer.on_drop("acquisition", "queue full (free-run): oldest frame dropped")
                self.observer.on_queue_depth("frames", len(frames_queue))
                self.observer.on_stage_latency("acquisition", time.monotonic() - t0)
                if self.max_frames is not None and self.frames_in - self.frames_dropped >= self.max_frames:
                    # every accepted frame yields one verdict, so exactly max_frames get published
                    log.info("max_frames_reached", max_frames=self.max_frames)
                    self.end_reason = "max frames reached"
                    break
        finally:
            try:
                self.source.close()
            except Exception:  # noqa: BLE001
                log.exception("camera_close_failed")
            frames_queue.put(END, heartbeat=lambda: self._beat("acquisition"))

    def _next(self, queue_name: str, stage: str) -> Any:
        """Block for the next item, beating while idle."""
        while True:
            item = self.queues[queue_name].get(POLL_S)
            self._beat(stage)
            if item is not None:
                fault_point(f"stage.{stage}")
                return item

    def _preprocess_loop(self) -> None:
        while True:
            item = self._next("frames", "preprocess")
            if item is END:
                self._put("tensors", END, "preprocess")
                return
            t0 = time.monotonic()
            frame = item.frame
            where = frame.source or frame.frame_id
            try:
                item.runtime = runtime = self.runtime_for(frame)
            except InputError as exc:  # e.g. an unknown product: this part ends as an ERROR naming it
                item.runtime = runtime = self.current_runtime()
                item.error = str(exc)
            except Exception as exc:  # noqa: BLE001 - a product that fails to load must not kill the stage
                log.exception("runtime_selection_failed", frame_id=frame.frame_id)
                item.runtime = runtime = self.current_runtime()
                item.error = f"product switch failed ({exc.__class__.__name__}: {exc})"
            if item.error is not None:
                pass
            elif frame.image is None:
                item.error = frame.error or f"{where}: grab failed (no image)"
            elif (odd := runtime.frame_expectation.problem(frame.image)) is not None:
                item.error = f"{where}: {odd}"  # not this station's camera's frame: no score can be trusted
            elif (gated := runtime.quality_gate.check(frame.image)) is not None:
                item.quality, reason = gated  # exposure unusable: not a part verdict (preprocess/quality.py)
                item.error = f"{reason} ({where})"
                with self._counts_lock:
                    self.quality_gated[item.quality] = self.quality_gated.get(item.quality, 0) + 1
            else:
                try:
                    item.tensor, item.geometry = runtime.preprocessor.prepare(frame.image)
                except InputError as exc:
                    item.error = f"{where}: {exc}"
                except Exception as exc:  # noqa: BLE001 - one bad frame becomes an ERROR verdict
                    item.error = f"{where}: preprocessing failed ({exc.__class__.__name__}: {exc})"
            self._timed(item, "preprocess", t0)
            self._put("tensors", item, "preprocess")

    def _inference_loop(self) -> None:
        tensors = self.queues["tensors"]
        while True:
            item = self._next("tensors", "inference")
            if item is END:
                self._put("results", END, "inference")
                return
            if item.error is not None:
                self._put("results", item, "inference")
                continue
            batch = [item]
            engine = item.runtime.engine
            if id(engine) not in self._engines_without_batching:
                while len(batch) < MAX_BATCH:
                    more = tensors.get_nowait_if(lambda it: it.error is None and it.runtime.engine is engine)
                    if more is None:
                        break
                    batch.append(more)
            t0 = time.monotonic()
            self._infer(engine, batch)
            for member in batch:
                self._timed(member, "inference", t0)
                self._put("results", member, "inference")

    def _infer(self, engine, batch: list[WorkItem]) -> None:
        try:
            maps, scores = engine.infer(np.stack([it.tensor for it in batch]))
            for it, amap, score in zip(batch, maps, scores):
                it.anomaly_map, it.score = amap, float(score)
            return
        except Exception as exc:  # noqa: BLE001
            if len(batch) == 1:
                batch[0].error = f"inference failed ({exc.__class__.__name__}: {str(exc).splitlines()[0] if str(exc) else ''})"
                log.error("inference_failed", frame_id=batch[0].frame.frame_id, error=batch[0].error)
                return
            # A model exported with a fixed batch of 1 rejects stacks: stop batching for it and
            # retry one by one, so only a frame that fails alone becomes an ERROR.
            log.warning("batched_inference_failed", error=str(exc)[:200], batch=len(batch))
            self._engines_without_batching.add(id(engine))
        for it in batch:
            self._infer(engine, [it])

    def _postprocess_loop(self) -> None:
        while True:
            item = self._next("results", "postprocess")
            if item is END:
                self._put("verdicts", END, "postprocess")
                return
            t0 = time.monotonic()
            frame, runtime = item.frame, item.runtime
            threshold = runtime.threshold if runtime is not None else None
            if item.error is None:
                try:
                    item.verdict = decide(frame.frame_id, frame.ts_wall, frame.ts_grab, item.score, item.anomaly_map,
                                          item.geometry, runtime.regions)
                except Exception as exc:  # noqa: BLE001
                    item.error = f"postprocess failed ({exc.__class__.__name__}: {exc})"
            if item.error is not None:
                item.verdict = error_verdict(frame.frame_id, frame.ts_wall, frame.ts_grab, item.error, threshold)
                item.verdict.quality = item.quality
            verdict = item.verdict
            verdict.model = runtime.model_info if runtime is not None else None
            _identify(verdict, frame.meta.get("part"))
            if verdict.product is None and runtime is not None:
                verdict.product = runtime.product  # the recipe in service names the part's product
            self._timed(item, "postprocess", t0)
            verdict.timings_ms = item.timings_ms
            archive_ref = self.observer.on_verdict(verdict, frame, item.anomaly_map if verdict.verdict != "ERROR" else None)
            if archive_ref:
                verdict.archive_ref = archive_ref
            item.tensor = None  # release memory early; the queue may hold several frames
            self._put("verdicts", item, "postprocess")

    def _publish_loop(self) -> None:
        while True:
            item = self._next("verdicts", "publish")
            if item is END:
                self.finished.set()
                return
            t0 = time.monotonic()
            verdict = item.verdict
            resolve = getattr(verdict.archive_ref, "resolve", None)
            if resolve is not None:  # name an archive file only once it is on disk (archive/store.py)
                heatmap = getattr(verdict.archive_ref, "heatmap_ref", None)
                verdict.archive_ref = resolve()
                verdict.heatmap_ref = heatmap if verdict.archive_ref else None
            seq = self._publish_with_retry(verdict)
            self.observer.on_stage_latency("publish", time.monotonic() - t0)
            with self._counts_lock:
                self.frames_out += 1
                self.verdict_counts[verdict.verdict] = self.verdict_counts.get(verdict.verdict, 0) + 1
                self.last_seq = seq if seq is not None else self.last_seq
            self._published_at.append(time.monotonic())

    def _publish_with_retry(self, verdict: Verdict) -> Optional[int]:
        """Hand the verdict to the durable outbox; retry until it is stored.

        A failure the outbox reports as a *state* (``exc.state``, e.g. "disk_full": it says so in
        /healthz, the status payload and a metric, and resumes by itself when space returns)
        keeps the heartbeat beating: the stage is doing its job, a restart cannot free a disk.
        Any other failure (I/O error, a bug) retries without beating, so the watchdog sees a
        publish stage that cannot make progress. During shutdown give up after a few tries so
        the daemon can still exit; each verdict given up is counted (exit code 1)."""
        attempt = 0
        while True:
            try:
                return self.publish(verdict)
            except Exception as exc:  # noqa: BLE001
                attempt += 1
                with self._counts_lock:
                    self.publish_failures += 1
                known_state = getattr(exc, "state", None)
                if known_state is not None:
                    self._beat("publish")
                if known_state is None or attempt == 1 or attempt % 50 == 0:  # a state is logged, not repeated
                    log.error("publish_failed", frame_id=verdict.frame_id, attempt=attempt, state=known_state,
                              error=f"{exc.__class__.__name__}: {exc}")
                if self._stop_acquisition.is_set() and attempt >= 3:
                    with self._counts_lock:
                        self.verdicts_lost += 1
                    log.error("verdict_lost", frame_id=verdict.frame_id, verdict=verdict.verdict)
                    return None
                # a known state retries often enough to beat within any heartbeat timeout
                time.sleep(min(POLL_S if known_state is not None else 2.0, 0.1 * 2**attempt))

    def _timed(self, item: WorkItem, stage: str, t0: float) -> None:
        seconds = time.monotonic() - t0
        item.timings_ms[stage] = round(seconds * 1000.0, 3)
        self.observer.on_stage_latency(stage, seconds)


def _identify(verdict: Verdict, tag: Optional[PartTag]) -> None:
    if tag is None:
        return
    verdict.part_id, verdict.product, verdict.part_ref = tag.part_id, tag.product, tag.part_ref
    verdict.context = dict(tag.context) if tag.context else None
