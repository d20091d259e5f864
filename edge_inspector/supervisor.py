"""`edge-inspector run`: the supervisor that wires and minds the inspection pipeline.

Start order (each step only once the previous one works, so a bad station fails fast and a
good one never grabs a part it cannot inspect and report):

1. validate the model bundle and the preprocessing settings (bad input → exit 2, one line);
2. station operations are constructed (metrics, /healthz, watchdog, NG archive, remote
   commands: ``_build_ops``) so that they observe every later step;
3. publisher + durable outbox (replays results left from a previous run while we warm up);
4. onnxruntime engine: load + warm-up; then the ops components are started;
5. camera open, then the stage threads (see pipeline/stages.py), then the software-trigger
   timer when the camera needs one (acquisition/trigger.py); "ready" is announced last.

Stop (SIGTERM/SIGINT, ``--max-frames`` reached, camera ended): stop acquisition, let every
accepted frame reach the outbox, flush the publisher (which publishes the offline status), exit 0.

Reload (SIGHUP or ``PipelineControl.reload``): see ``Supervisor.reload``.
"""

from __future__ import annotations

import argparse
import dataclasses
import errno
import signal
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Optional

import numpy as np

from edge_inspector import drift, faults, systemd
from edge_inspector.acquisition.parts import PartQueue, PartTag
from edge_inspector.acquisition.trigger import SoftwareTrigger
from edge_inspector.archive import store as archive_store
from edge_inspector.archive.http import image_urls
from edge_inspector.config.loader import load_config
from edge_inspector.config.models import Config
from edge_inspector.config.numbers import threshold_problem
from edge_inspector.errors import ConfigError, InputError
from edge_inspector.health import metrics as health_metrics
from edge_inspector.health import server as health_server
from edge_inspector.health.liveness import assess
from edge_inspector.inference.bundle import ModelBundle, load_bundle
from edge_inspector.logging import bind_station, get_logger, quiet_native_libraries, setup_logging
from edge_inspector.observer import CompositeObserver, PipelineObserver
from edge_inspector.pipeline.recipes import Recipes, UnknownProduct, product_config
from edge_inspector.preflight import require_unit_view
from edge_inspector.pipeline.runtime import ModelRuntime, build_preprocessor, build_runtime, open_engine
from edge_inspector.pipeline.stages import Pipeline
from edge_inspector.postprocess.verdict import Verdict
from edge_inspector.publish import commands as remote_commands
from edge_inspector.publish.outbox import seq_in_window
from edge_inspector.publish.payload import format_ts
from edge_inspector.threads import restart_counts
from edge_inspector.ui import live as ui_live

log = get_logger("edge_inspector.supervisor")

# Config sections a running daemon cannot change without reopening the camera or the outbox:
# a reload reports them as "restart needed" and keeps the running values.
RESTART_ONLY_SECTIONS = ("camera", "outbox", "pipeline")
# Model settings whose change means a new onnxruntime session (loaded in the background).
ENGINE_KEYS = ("path", "providers", "intra_op_threads", "warmup_runs")
# Verdicts remembered for on_published (PUBACK); bounded so a week-long outage cannot eat RAM.
AWAITING_ACK_LIMIT = 10_000
# Station-operations components, built in this order by ``_build_ops`` (metrics before the
# components that add their counters to it). Explicit on purpose: a renamed module is an
# ImportError at start, never a silently missing watchdog.
OPS_BUILDERS: tuple[tuple[str, Callable[[Any], Any]], ...] = (
    ("watchdog", systemd.create_ops_component),  # None when not run by systemd
    ("metrics", health_metrics.create_ops_component),  # None when health.enabled is false
    ("drift", drift.create_ops_component),
    ("ui", ui_live.create_ops_component),  # before health, which mounts its routes; None when off
    ("health", health_server.create_ops_component),  # None when health.enabled is false
    ("archive", archive_store.create_ops_component),
    ("commands", remote_commands.create_ops_component),
)


def _default_source(cfg: Config, on_state):
    from edge_inspector.acquisition.factory import create_source

    return create_source(cfg.camera, on_state=on_state)


def _default_publisher(cfg: Config, model_info: dict, on_state, outbox=None, on_acked=None):
    from edge_inspector.publish.mqtt import MqttPublisher
    from edge_inspector.publish.outbox import Outbox, OutboxError

    if outbox is None:
        try:
            outbox = Outbox(cfg.outbox.path, cfg.outbox.max_mb, cfg.outbox.when_full)
        except OSError as exc:  # folder cannot be created, no permission, read-only mount: the key is wrong
            if exc.errno == errno.ENOSPC:  # ... unless the disk is full: not a bad path (exit 1, systemd retries)
                raise OutboxError(f"outbox.path={cfg.outbox.path}: no space left on the disk to create the outbox") from None
            raise ConfigError(f"outbox.path={cfg.outbox.path}: cannot create the outbox "
                              f"({exc.strerror or exc.__class__.__name__}: {exc.filename or cfg.outbox.path})") from None
    return MqttPublisher(cfg, outbox, model_info, on_state=on_state, on_acked=on_acked)


class Supervisor:
    """Owns the pipeline, the model generations, the publisher and the ops components.

    Implements ``observer.PipelineControl`` (reload, set_threshold, trigger, snapshot, status,
    stage_heartbeats) for SIGHUP, the remote command handler and the watchdog.

    The factories exist for tests and benchmarks: ``source_factory(cfg, on_state)``,
    ``publisher_factory(cfg, model_info, on_state, outbox=None, on_acked=None)``,
    ``engine_factory(cfg, bundle)``.
    """

    def __init__(
        self,
        cfg: Config,
        *,
        config_path: Optional[str | Path] = None,
        overrides: Iterable[str] = (),
        max_frames: Optional[int] = None,
        observers: Iterable[PipelineObserver] = (),
        source_factory: Callable = _default_source,
        publisher_factory: Callable = _default_publisher,
        engine_factory: Callable = open_engine,
    ):
        if max_frames is not None and max_frames < 1:
            raise InputError(f"--max-frames {max_frames}: must be >= 1")
        self.cfg = cfg
        self.config_path = str(config_path) if config_path is not None else None
        self.overrides = list(overrides)
        self.max_frames = max_frames
        self.observer = CompositeObserver(*observers)
        self._source_factory = source_factory
        self._publisher_factory = publisher_factory
        self._engine_factory = engine_factory
        self.publisher = None
        self.source = None
        self.pipeline: Optional[Pipeline] = None
        self.software_trigger: Optional[SoftwareTrigger] = None  # camera.trigger.mode: software only
        self.parts = PartQueue()  # announced part identities, one per triggered frame (acquisition/parts.py)
        self.recipes = Recipes(engine_factory, lambda: self._runtime.generation + 1 if self._runtime else 1)
        self.ops: list[Any] = []
        self._runtime: Optional[ModelRuntime] = None
        self._threshold_override: Optional[float] = None
        self._publisher_lock = threading.RLock()  # publish stage vs. publisher replacement on reload
        self._awaiting_ack: dict[int, Verdict] = {}  # seq -> verdict until its PUBACK (insertion-ordered)
        self._awaiting_ack_lock = threading.Lock()
        self._replay_window: Optional[tuple[int, int]] = None
        self._reload_lock = threading.Lock()
        self._model_request = 0  # newest background model load; older ones must not swap in
        self._stop_requested = threading.Event()
        self._stop_reason = ""
        self._reload_requested = threading.Event()
        self._state = "starting"
        self._camera_state = "closed"
        self._mqtt_state = "disconnected"
        self._started_at = time.monotonic()
        self._loop_beat: Optional[float] = None  # the supervisor loop's own heartbeat, once it runs
        self.last_reload: dict = {}
        self.model_load: dict = {"state": "idle"}

    # ================================================================ start / run / stop
    def start(self) -> None:
        cfg = self.cfg
        require_unit_view(cfg)  # a state path the unit cannot write: say so now, not "Read-only file system" later
        default = cfg.recipes.default
        first_cfg = cfg if default is None else product_config(cfg, default)
        bundle = load_bundle(first_cfg.model.path)
        build_preprocessor(first_cfg, bundle)  # ROI/lighting vs. this bundle: fail before touching anything
        try:
            self.ops = self._build_ops()  # first, so their observers see every state from here on
            self._set_state("starting", "publisher")
            self.publisher = self._publisher_factory(cfg, {"name": bundle.name, "sha256": bundle.sha256}, self._on_mqtt_state,
                                                     on_acked=self._on_acked)
            outbox = getattr(self.publisher, "outbox", None)
            # the results an earlier run left: acks of these are replays, not frames of this run
            self._replay_window = outbox.pending_window() if hasattr(outbox, "pending_window") else None
            self.publisher.start()
            self._set_state("starting", f"loading model {bundle.name}")
            if default is None:
                engine = self._engine_factory(cfg, bundle)
                self._runtime = build_runtime(cfg, bundle, engine, generation=1)
            else:
                self._runtime = self.recipes.runtime(cfg, default, keep=default)
            if cfg.recipes.products and cfg.recipes.preload:
                self._set_state("starting", "preloading products")
                self.recipes.preload(cfg, default)
            engine = self._runtime.engine
            log.info("model_in_service", product=default, model=bundle.name, sha256=bundle.sha256[:12], provider=getattr(engine, "provider", "?"),
                     threshold=self._runtime.threshold)
            self.observer.on_model(bundle.name, bundle.sha256)
            for component in self.ops:
                if hasattr(component, "start"):
                    component.start()
            self._set_state("starting", "opening camera")
            self.source = self._source_factory(cfg, self._on_camera_state)
            self.source.open()
            self.pipeline = Pipeline(self.source, self.current_runtime, self._publish, self.observer,
                                     cfg.pipeline.queue_size, max_frames=self.max_frames, parts=self.parts,
                                     runtime_for=self.runtime_for)
            self.pipeline.start()
            if getattr(self.source, "trigger_mode", cfg.camera.trigger.mode) == "software":
                # Started after the stage threads: every trigger's frame has a consumer waiting.
                self.software_trigger = SoftwareTrigger(self.source, cfg.camera, lambda: self.pipeline.frames_in,
                                                        max_triggers=self.max_frames, parts=self.parts)
                self.software_trigger.start()
        except BaseException:
            self._abort_start()
            raise
        self._set_state("ready", f"model {bundle.name}, camera {cfg.camera.type}")
        self._publish_status()

    def _abort_start(self) -> None:
        """Undo a half-done start so a failed daemon leaves no thread, socket or lock behind."""
        if self.software_trigger is not None:
            _quietly(self.software_trigger.stop)
        for component in reversed(self.ops):
            _quietly(getattr(component, "stop", None))
        if self.source is not None:
            _quietly(self.source.close)
        if self.publisher is not None:
            _quietly(lambda: self.publisher.stop(timeout=2.0))

    def run(self) -> int:
        """Mind the running pipeline until asked to stop or the camera ends; return the exit code."""
        health_every = self.cfg.mqtt.health_interval_s
        next_health = time.monotonic() + health_every
        stall_reported: set[str] = set()
        reported_conditions: tuple = ({}, {})
        self._loop_beat = time.monotonic()
        while not self._stop_requested.wait(0.2):
            # The loop reloads, reports stalls and publishes P/health: if it hangs, /healthz and
            # the watchdog must say so, as they do for a stage.
            self._loop_beat = time.monotonic()
            faults.fault_point("supervisor.loop")
            if self.pipeline.finished.is_set():
                self._stop_reason = self._stop_reason or self.pipeline.failure or self.pipeline.end_reason or "pipeline ended"
                break
            if self._reload_requested.is_set():
                self._reload_requested.clear()
                try:
                    self.reload()
                except Exception:  # noqa: BLE001 - a failed reload must never stop the line
                    log.exception("reload_crashed")
            if self.publisher is not None:
                self.observer.on_outbox_depth(self._outbox_depth())
            stall_reported = self._report_stalls(stall_reported)
            reported_conditions = self._report_conditions(reported_conditions)
            if time.monotonic() >= next_health:
                next_health = time.monotonic() + health_every
                self._publish_health()
        return self.shutdown()

    def request_stop(self, reason: str = "requested") -> None:
        """Thread- and signal-safe."""
        self._stop_reason = self._stop_reason or reason
        self._stop_requested.set()

    def request_reload(self) -> None:
        """Signal-safe: the reload runs in the supervisor loop, not in the signal handler."""
        self._reload_requested.set()

    def shutdown(self) -> int:
        """Stop within ``pipeline.shutdown_timeout_s`` (one deadline for draining the pipeline and
        for the broker's PUBACKs, plus a few seconds to close). Exit code 0 only when every
        verdict was delivered; 1 when a stage failed, a verdict could not be stored (lost), frames
        were still in flight, or results remain undelivered in the outbox (they are kept and
        replayed at the next start — the exit code and the ``stopped`` line say how many)."""
        reason = self._stop_reason or "requested"
        self._set_state("stopping", reason)
        timeout = self.cfg.pipeline.shutdown_timeout_s
        deadline = time.monotonic() + timeout
        clean = True
        in_flight = 0
        if self.software_trigger is not None:
            self.software_trigger.stop()  # first: no trigger may reach a camera being closed
        if self.pipeline is not None:
            self.pipeline.stop_acquisition()
            clean = self.pipeline.join(timeout)
            p = self.pipeline
            # accepted frames that never became a published (or given-up) verdict: still queued
            # at the deadline, or behind a stage that died
            in_flight = max(0, p.frames_in - p.frames_dropped - p.frames_out)
            if not clean:
                log.error("shutdown_timeout", detail=f"{in_flight} frame(s) still in flight; they stay unpublished",
                          queues=self.pipeline.queue_depths(), heartbeats=self.stage_heartbeats())
        for component in reversed(self.ops):
            _quietly(getattr(component, "stop", None))
        if self.publisher is not None:
            try:
                # waits for PUBACKs until the same deadline, then the offline status
                self.publisher.stop(timeout=max(0.5, deadline - time.monotonic()))
            except Exception:  # noqa: BLE001 - unsent results stay in the outbox for the next start
                log.exception("publisher_stop_failed")
        failure = self.pipeline.failure if self.pipeline is not None else None
        lost = self.pipeline.verdicts_lost if self.pipeline is not None else 0
        undelivered = self._outbox_depth() or 0
        self._set_state("stopped", reason)
        ok = not failure and clean and lost == 0 and in_flight == 0 and undelivered == 0
        (log.info if ok else log.error)(
            "stopped", reason=reason, clean=clean, verdicts_lost=lost, frames_in_flight=in_flight,
            undelivered_in_outbox=undelivered, exit_code=0 if ok else 1,
            message=("all verdicts delivered" if ok else
                     (f"{failure}; " if failure else "") + f"{lost + in_flight} verdict(s) lost, {undelivered} "
                     "result(s) remain in the outbox (replayed at the next start)"),
            **self._counters())
        return 0 if ok else 1

    # ================================================================ stage callbacks
    def current_runtime(self) -> ModelRuntime:
        return self._runtime

    def runtime_for(self, frame) -> ModelRuntime:
        """The generation for this frame: the one in service, or the product its trigger names
        (switched to, and in service from this frame on). Raises UnknownProduct."""
        tag = frame.meta.get("part")
        product = getattr(tag, "product", None)
        current = self._runtime
        if product is None or product == current.product or not self.cfg.recipes.products:
            return current  # without recipes a product is a label, echoed in the result
        return self._switch_product(product, "trigger")

    def select_product(self, product: str) -> tuple[bool, str]:
        """``P/cmd/product``: put this product's recipe in service from the next frame on."""
        if not self.cfg.recipes.products:
            return False, "no recipes.products configured: this station inspects one product"
        if self._runtime is None:
            return False, "pipeline is not running"
        try:
            runtime = self._switch_product(product, "command")
        except InputError as exc:
            return False, str(exc)
        return True, (f"product {product} in service: model {runtime.bundle.name} ({runtime.bundle.sha256[:12]}), "
                      f"threshold {runtime.threshold:g}, switch {self.recipes.last_switch_ms:g} ms")

    def _switch_product(self, product: str, reason: str) -> ModelRuntime:
        with self._reload_lock:
            current = self._runtime
            if current.product == product:
                return current
            try:
                runtime = self.recipes.runtime(self.cfg, product, keep=product)
            except UnknownProduct:
                raise
            except Exception as exc:  # noqa: BLE001 - a broken bundle keeps the product in service
                log.exception("product_load_failed", product=product)
                raise InputError(f"product {product!r} not loaded, keeping {current.product or current.bundle.name}: "
                                 f"{type(exc).__name__}: {exc}") from None
            self._threshold_override = None  # each recipe brings its own threshold
            self._swap_runtime(runtime)
        log.info("product_switched", product=product, previous=current.product, reason=reason,
                 model=runtime.bundle.name, switch_ms=self.recipes.last_switch_ms)
        self.observer.on_state("product", product, f"{reason}: model {runtime.bundle.name}")
        self._publish_status()
        return runtime

    def _publish(self, verdict: Verdict) -> int:
        with self._publisher_lock:
            # The payload names verdict.model, the model that scored *this* frame: frames still
            # in flight during a hot swap were scored by the previous generation.
            verdict.image_url, verdict.heatmap_url = image_urls(self.cfg.archive.base_url, verdict.archive_ref, verdict.heatmap_ref)
            seq = self.publisher.publish_verdict(verdict)
            archive = self._archive()
            if archive is not None:
                archive.remember(seq, verdict.archive_ref, verdict.heatmap_ref)
            with self._awaiting_ack_lock:
                self._awaiting_ack[seq] = verdict
                while len(self._awaiting_ack) > AWAITING_ACK_LIMIT:  # long outage: forget the oldest
                    self._awaiting_ack.pop(next(iter(self._awaiting_ack)))
        return seq

    def _on_acked(self, seq: int) -> None:
        """PUBACK for ``seq`` (publisher worker thread). Results an earlier run left in the
        outbox (seqs in the cyclic window of those waiting when this run opened it) are replays,
        not frames of this run — a window, not "at or below the last seq", so that this run's
        seqs after the 2^31 wrap still count as its own. The verdict is None for replays, or for
        this run's results evicted from memory during a long outage."""
        with self._awaiting_ack_lock:
            verdict = self._awaiting_ack.pop(seq, None)
        if verdict is None and seq_in_window(seq, self._replay_window):
            self.observer.on_replayed(seq)
        else:
            self.observer.on_published(seq, verdict)

    def _on_camera_state(self, state: str, detail: str = "") -> None:
        changed = state != self._camera_state
        self._camera_state = state
        self.observer.on_state("camera", state, detail)
        if changed and self._state == "ready":  # MES sees a reconnecting camera on the retained status
            self._publish_status()

    def _on_mqtt_state(self, state: str, info: Any = None) -> None:
        self._mqtt_state = state
        detail = ", ".join(f"{k}={v}" for k, v in info.items()) if isinstance(info, dict) else str(info or "")
        self.observer.on_state("mqtt", state, detail)

    def _set_state(self, state: str, detail: str = "") -> None:
        self._state = state
        log.info("pipeline_state", state=state, detail=detail)
        self.observer.on_state("pipeline", state, detail)

    # ================================================================ station operations
    def _build_ops(self) -> list:
        """Construct the station-operations components (metrics, /healthz, systemd watchdog, NG
        archive, remote commands) from ``self.cfg``, each by its builder in ``OPS_BUILDERS``.

        A builder takes the supervisor (``cfg``, ``publisher``, and the PipelineControl methods)
        and returns a component or None (switched off by config). A component may have any of:
        PipelineObserver methods (it is then added as an observer), ``start()``, ``stop()``, and
        ``apply_config(cfg) -> str | None`` for reloads.
        """
        if faults.PLAN_ERROR:
            raise ConfigError(faults.PLAN_ERROR)
        plan = faults.armed()
        if plan:
            log.warning("fault_injection_armed", plan=plan, detail=f"{faults.ENV_VAR} is set: for tests only")
        components = []
        for name, build in OPS_BUILDERS:
            component = build(self)
            if component is None:
                log.info("ops_component_off", component=name)
                continue
            if isinstance(component, PipelineObserver):
                self.observer.add(component)
            components.append(component)
        return components

    # ================================================================ PipelineControl
    def stage_heartbeats(self) -> dict[str, float]:
        """Seconds since each part last did its work: the five stages, the publisher's outbox
        worker (``mqtt_worker``) and result delivery (``delivery``: results in flight on an up
        link without a PUBACK). /healthz, the watchdog and the heartbeat metric all read this."""
        if self.pipeline is None:
            return {}
        ages = self.pipeline.heartbeat_ages()
        if self._state in ("stopping", "stopped"):
            return ages
        publisher = self.publisher
        liveness = getattr(publisher, "liveness", None)
        if liveness is not None:
            ages.update(liveness())
        if self._loop_beat is not None:
            ages["supervisor"] = time.monotonic() - self._loop_beat
        return ages

    def conditions(self) -> dict[str, str]:
        """States that stop results from being stored (name → one-line reason): /healthz answers
        503 while any holds, and the status payload carries them. Heartbeats stay fresh meanwhile
        (the parts are working, e.g. retrying), so the watchdog does not restart a daemon that a
        restart cannot help; everything resumes by itself once the condition clears."""
        found = {}
        outbox = getattr(self.publisher, "outbox", None)
        reason = getattr(outbox, "disk_full", None)
        if reason:
            found["outbox"] = reason
        return found

    def warnings(self) -> dict[str, str]:
        """Degraded but still delivering (name → reason): reported, /healthz stays 200."""
        archive = self._archive()
        return {"archive": archive.disk_full} if archive is not None and archive.disk_full else {}

    def _archive(self) -> Optional[archive_store.ArchiveStore]:
        return next((c for c in self.ops if isinstance(c, archive_store.ArchiveStore)), None)

    def liveness(self) -> tuple[bool, dict]:
        """The /healthz verdict and body, also published in P/health's ``liveness`` section."""
        return assess(self.stage_heartbeats(), self.cfg.pipeline.heartbeat_timeout_s, self.conditions(), self.warnings())

    def disk_states(self) -> dict[str, float]:
        """1 for a store whose disk is full now (outbox, archive), else 0 — for the metric."""
        full = {**self.conditions(), **self.warnings()}
        stores = ("outbox", "archive") if self._archive() is not None else ("outbox",)
        return {store: 1.0 if store in full else 0.0 for store in stores}

    def snapshot(self, seq: Optional[int] = None) -> Optional[np.ndarray]:
        """The last grabbed frame, or the archived frame of result ``seq`` (None when not kept)."""
        if seq is not None:
            archive = self._archive()
            return None if archive is None else archive.read_image(seq)
        return None if self.pipeline is None else self.pipeline.last_image

    def set_threshold(self, value: float) -> tuple[bool, str]:
        """Change the image threshold now (until the next reload or model swap, which bring the
        configured/calibrated one back)."""
        problem = threshold_problem(value)
        if problem is not None:
            return False, problem
        value = float(value)
        with self._reload_lock:
            current = self._runtime
            if current is None:
                return False, "pipeline is not running"
            old = current.threshold
            self._threshold_override = value
            regions = dataclasses.replace(current.regions, threshold=value)
            self._swap_runtime(dataclasses.replace(current, regions=regions, generation=current.generation + 1))
        message = f"threshold {old:g} -> {value:g}"
        log.info("threshold_set", old=old, new=value)
        self._publish_status()
        return True, message

    def trigger(self, count: int = 1, tag: Optional[PartTag] = None) -> tuple[bool, str]:
        """Fire ``count`` software triggers now (``P/cmd/trigger``); each one ends as a result
        that carries ``tag`` (part id, product, context) when given."""
        if self.software_trigger is None:
            mode = getattr(self.source, "trigger_mode", self.cfg.camera.trigger.mode)
            if mode != "software":
                return False, f"camera.trigger.mode is {mode}: only a software-triggered camera takes remote triggers"
            return False, "pipeline is not running"
        return self.software_trigger.fire(count, tag)

    def announce_part(self, tag: Optional[PartTag], clear: bool = False) -> tuple[bool, str]:
        """``P/cmd/part``: the part the next hardware trigger images (``clear``: drop the waiting
        ones first). Software-triggered stations name the part in ``P/cmd/trigger`` itself;
        free-run frames are not parts."""
        mode = getattr(self.source, "trigger_mode", self.cfg.camera.trigger.mode)
        if mode != "hardware":
            return False, (f"camera.trigger.mode is {mode}: announce parts only for a hardware trigger "
                           "(software triggers carry the part in P/cmd/trigger)")
        dropped = self.parts.clear() if clear else 0
        if dropped:
            log.warning("announced_parts_cleared", dropped=dropped)
        if tag is None:
            return True, f"{dropped} waiting announcement(s) dropped"
        if not self.parts.announce(tag):
            return False, (f"{len(self.parts)} announced part(s) still wait for a trigger: part not queued "
                           f"(at most {self.parts.limit} ahead)")
        return True, f"part queued for the next trigger ({len(self.parts)} waiting)"

    def status(self) -> dict:
        runtime = self._runtime
        pipeline = self.pipeline
        counters = self._counters()
        return {
            "state": self._state,
            "uptime_s": round(time.monotonic() - self._started_at, 1),
            "fps": pipeline.fps() if pipeline else 0.0,
            **counters,
            "verdicts": dict(pipeline.verdict_counts) if pipeline else {},
            "quality_gated": dict(pipeline.quality_gated) if pipeline else {},
            "last_seq": pipeline.last_seq if pipeline else None,
            "mqtt_state": self._mqtt_state,
            "outbox_depth": self._outbox_depth(),
            "camera_state": self._camera_state,
            "software_trigger": self.software_trigger.status() if self.software_trigger else None,
            "model": None if runtime is None else {**runtime.model_info, "provider": getattr(runtime.engine, "provider", "?"),
                                                   "generation": runtime.generation},
            "threshold": None if runtime is None else runtime.threshold,
            "session": getattr(self.publisher, "session", None),  # daemon start counter (frame_id, status/will)
            "product": None if runtime is None else runtime.product,
            "products_loaded": self.recipes.loaded,
            "threshold_override": self._threshold_override,  # set_threshold value in force, if any
            "queues": pipeline.queue_depths() if pipeline else {},
            "heartbeats_s": {k: round(v, 2) for k, v in self.stage_heartbeats().items()},
            "model_load": dict(self.model_load),
            "last_reload": dict(self.last_reload),
            "conditions": self.conditions(),
            "warnings": self.warnings(),
            "verdicts_lost": pipeline.verdicts_lost if pipeline else 0,
            "thread_restarts": restart_counts(),
        }

    def reload(self, config_path: Optional[str] = None) -> tuple[bool, str]:
        """Re-read and re-validate the station config and apply it without stopping the camera.

        * threshold, ROI, lighting, postprocess: a new runtime generation, in service from the next
          frame that enters preprocessing;
        * ``mqtt`` / ``station``: the publisher is replaced (same outbox, so nothing is lost);
        * ops sections (archive, health, logging): handed to the ops components;
        * a changed model (path, providers, threads): validated now, loaded and warmed up in the
          background, swapped in between two frames once ready;
        * camera / outbox / pipeline: need a restart — reported, the running values stay.
        An invalid config or model keeps everything as it runs; the reason is logged, in
        ``status()["last_reload"]`` and on the status topic.
        """
        path = config_path or self.config_path
        with self._reload_lock:
            self.observer.on_state("pipeline", "reloading", str(path))
            if path is None:
                return self._reload_done(False, "reload: the daemon was started without a config file")
            try:
                new_cfg = load_config(path, self.overrides)
            except InputError as exc:
                return self._reload_done(False, f"new config rejected, keeping the running one: {exc}")
            if self._runtime is None:
                return self._reload_done(False, "reload: the pipeline is not running yet")
            old_cfg = self.cfg
            changed = [name for name in type(new_cfg).model_fields if getattr(old_cfg, name) != getattr(new_cfg, name)]
            restart_needed = [s for s in RESTART_ONLY_SECTIONS if s in changed]
            # keep the sections that cannot change live, so status and the next diff tell the truth
            new_cfg = new_cfg.model_copy(update={s: getattr(old_cfg, s) for s in RESTART_ONLY_SECTIONS})
            current = self._runtime
            product = current.product  # a recipe in service: its settings are what this reload changes
            if product is not None and product not in new_cfg.recipes.products:
                return self._reload_done(False, f"new config rejected, keeping the running one: recipes.products "
                                                f"has no {product!r}, the product in service (switch product first)")
            run_cfg, old_run_cfg = ((new_cfg, old_cfg) if product is None
                                    else (product_config(new_cfg, product), product_config(old_cfg, product)))
            engine_changed = any(getattr(old_run_cfg.model, k) != getattr(run_cfg.model, k) for k in ENGINE_KEYS)
            try:
                if engine_changed and product is not None:
                    # a recipe's new bundle: loaded now (like a product switch), not in the background
                    self.recipes.forget()
                    candidate = self.recipes.runtime(new_cfg, product, keep=product)
                    engine_changed = False
                elif engine_changed:
                    new_bundle = load_bundle(new_cfg.model.path)
                    build_preprocessor(new_cfg, new_bundle)
                    candidate = None
                else:
                    candidate = build_runtime(run_cfg, current.bundle, current.engine, current.generation + 1, product=product)
            except InputError as exc:
                return self._reload_done(False, f"new config rejected, keeping the running one: {exc}")
            if "recipes" in changed:
                self.recipes.forget()  # other products load from their new recipes on their next use
            applied = []
            if "mqtt" in changed or "station" in changed:
                try:
                    self._replace_publisher(new_cfg)
                except Exception as exc:  # noqa: BLE001
                    return self._reload_done(False, f"publisher settings rejected, keeping the running one: {exc}")
                applied.append("publisher")
            self.cfg = new_cfg
            self._threshold_override = None  # the file is the truth again
            if candidate is not None:
                self._swap_runtime(candidate)
                if candidate.threshold != current.threshold:
                    applied.append(f"threshold {current.threshold:g} -> {candidate.threshold:g}")
                applied.extend(s for s in ("preprocess", "postprocess") if s in changed)
            for component in self.ops:
                apply = getattr(component, "apply_config", None)
                if apply is not None:
                    try:
                        applied.append(apply(new_cfg) or type(component).__name__)
                    except InputError as exc:  # a setting it cannot take (e.g. a taken port): one line
                        log.error("ops_apply_config_rejected", component=type(component).__name__, error=str(exc))
                        applied.append(f"{type(component).__name__} FAILED ({exc})")
                    except Exception as exc:  # noqa: BLE001 - one ops component must not undo the rest
                        log.exception("ops_apply_config_failed", component=type(component).__name__)
                        applied.append(f"{type(component).__name__} FAILED ({exc.__class__.__name__}: {exc})")
            if "logging" in changed:
                setup_logging(new_cfg.logging.level, new_cfg.logging.json_logs)
                applied.append("logging")
            parts = [f"applied: {', '.join(applied) if applied else 'nothing changed'}"]
            if engine_changed:
                self._model_request += 1
                threading.Thread(target=self._load_model_reporting, args=(new_bundle, self._model_request, old_cfg.model),
                                 name="model-loader", daemon=True).start()
                parts.append(f"model {new_bundle.name} ({new_bundle.sha256[:12]}) loading in the background")
            if restart_needed:
                parts.append(f"restart needed for: {', '.join(restart_needed)} (running values kept)")
            return self._reload_done(True, "; ".join(parts))

    # ---------------------------------------------------------------- reload helpers
    def _reload_done(self, ok: bool, message: str) -> tuple[bool, str]:
        self.last_reload = {"ok": ok, "message": message, "ts": format_ts(time.time())}  # ISO 8601 like every payload time
        (log.info if ok else log.error)("reload", ok=ok, message=message)
        self.observer.on_state("pipeline", "reloaded" if ok else "reload_failed", message)
        self._publish_status()
        return ok, message

    def _swap_runtime(self, runtime: ModelRuntime) -> None:
        """The one place a new generation enters service: a single reference assignment, read
        by the preprocess stage once per frame (so no frame mixes two generations)."""
        previous = self._runtime
        self._runtime = runtime
        log.info("runtime_swapped", generation=runtime.generation, model=runtime.bundle.name,
                 sha256=runtime.bundle.sha256[:12], threshold=runtime.threshold)
        if previous is None or previous.bundle.sha256 != runtime.bundle.sha256:
            self.observer.on_model(runtime.bundle.name, runtime.bundle.sha256)

    def _load_model_reporting(self, bundle: ModelBundle, request: int, running_model_cfg) -> None:
        """The model-loader thread: one attempt (no restart: the next reload retries), and an
        unexpected exception ends as ``model_load: failed`` with the reason, never as a silently
        dead thread with ``model_load`` stuck at "loading"."""
        try:
            self._load_model(bundle, request, running_model_cfg)
        except Exception as exc:  # noqa: BLE001 - see docstring
            message = f"model {bundle.directory} not put in service: {type(exc).__name__}: {exc}"
            log.exception("model_load_crashed", model=bundle.name)
            self.model_load = {"state": "failed", "model": bundle.name, "message": message}
            self.observer.on_state("model", "load_failed", message)
            self._publish_status()

    def _load_model(self, bundle: ModelBundle, request: int, running_model_cfg) -> None:
        """Background: load + warm up a new engine, then swap it in — unless a newer reload
        asked for another model meanwhile. On failure the running model stays, and ``cfg.model``
        says so again (so that the next reload of the same file retries the load)."""
        self.model_load = {"state": "loading", "model": bundle.name, "sha256": bundle.sha256}
        self.observer.on_state("model", "loading", f"{bundle.name} {bundle.sha256[:12]}")
        try:
            engine = self._engine_factory(self.cfg, bundle)
        except Exception as exc:  # noqa: BLE001 - keep the running model whatever went wrong
            with self._reload_lock:
                if request == self._model_request:
                    restored = self.cfg.model.model_copy(update={k: getattr(running_model_cfg, k) for k in ENGINE_KEYS})
                    self.cfg = self.cfg.model_copy(update={"model": restored})
            message = f"model {bundle.directory} not loaded, keeping {self._runtime.bundle.name}: {exc}"
            self.model_load = {"state": "failed", "model": bundle.name, "message": message}
            log.error("model_load_failed", message=message)
            self.observer.on_state("model", "load_failed", message)
            self._publish_status()
            return
        with self._reload_lock:
            if request != self._model_request:
                log.info("model_load_superseded", model=bundle.name)
                return
            try:
                runtime = build_runtime(self.cfg, bundle, engine, self._runtime.generation + 1)
            except InputError as exc:
                # e.g. a later reload changed the ROI/lighting to something this bundle rejects:
                # same outcome as a failed load — the running model stays, and says so everywhere.
                restored = self.cfg.model.model_copy(update={k: getattr(running_model_cfg, k) for k in ENGINE_KEYS})
                self.cfg = self.cfg.model_copy(update={"model": restored})
                failed = f"model {bundle.directory} not put in service, keeping {self._runtime.bundle.name}: {exc}"
                self.model_load = {"state": "failed", "model": bundle.name, "message": failed}
                log.error("model_load_failed", message=failed)
            else:
                failed = None
                self._threshold_override = None
                self._swap_runtime(runtime)
                self.model_load = {"state": "in_service", "model": bundle.name, "sha256": bundle.sha256}
        if failed is not None:
            self.observer.on_state("model", "load_failed", failed)
        else:
            self.observer.on_state("model", "in_service", f"{bundle.name} {bundle.sha256[:12]}")
        self._publish_status()

    def _replace_publisher(self, new_cfg: Config) -> None:
        """New broker/topic/credentials: start a publisher on the same outbox, then retire the old
        one. The publish stage waits on the lock meanwhile (back-pressure, nothing dropped); rows
        the old one had not got acknowledged are replayed by the new one."""
        with self._publisher_lock:
            old = self.publisher
            # Construct first: bad credentials/TLS files raise here, while the old one still runs.
            new = self._publisher_factory(new_cfg, self._runtime.model_info, self._on_mqtt_state,
                                          outbox=getattr(old, "outbox", None), on_acked=self._on_acked)
            # Stop before start: both use the station's client id, and a broker drops the older
            # of two sessions with one id.
            # Bounded well inside the heartbeat timeout: this runs in the supervisor loop, whose
            # heartbeat must stay fresh; rows not acknowledged in time are replayed by the new one.
            old.stop(timeout=min(self.cfg.pipeline.shutdown_timeout_s, self.cfg.pipeline.heartbeat_timeout_s / 2))
            new.start()
            self.publisher = new

    # ---------------------------------------------------------------- reporting
    def _outbox_depth(self) -> Optional[int]:
        try:
            return None if self.publisher is None else int(self.publisher.outbox_depth)
        except Exception:  # noqa: BLE001
            return None

    def _counters(self) -> dict:
        p = self.pipeline
        if p is None:
            return {"frames_in": 0, "frames_out": 0, "frames_dropped": 0, "publish_failures": 0}
        return {"frames_in": p.frames_in, "frames_out": p.frames_out, "frames_dropped": p.frames_dropped,
                "publish_failures": p.publish_failures}

    def _publish_health(self) -> None:
        if self.publisher is None or self.pipeline is None:
            return
        counters = dict(self._counters())
        counters.update({f"verdicts_{k.lower()}": v for k, v in self.pipeline.verdict_counts.items()})
        counters.update({f"gated_{k}": v for k, v in self.pipeline.quality_gated.items()})
        counters["fps"] = self.pipeline.fps()
        depth = self._outbox_depth()
        if depth is not None:
            counters["outbox_depth"] = depth
        counters.update({f"queue_{k}": v for k, v in self.pipeline.queue_depths().items()})
        counters["verdicts_lost"] = self.pipeline.verdicts_lost
        counters["thread_restarts"] = sum(restart_counts().values())
        healthy, body = self.liveness()
        sections: dict = {}
        for component in self.ops:  # e.g. the drift monitor's ``drift`` section
            section = getattr(component, "health_section", None)
            if section is not None:
                try:
                    sections.update(section())
                except Exception:  # noqa: BLE001 - one section must not cost the whole message
                    log.exception("health_section_failed", component=type(component).__name__)
        try:
            self.publisher.publish_health(counters, liveness={"healthy": healthy, **body}, **sections)
        except Exception:  # noqa: BLE001 - health is best effort (QoS 0)
            log.exception("health_publish_failed")

    def _publish_status(self) -> None:
        runtime = self._runtime
        if self.publisher is None or runtime is None:
            return
        try:
            self.publisher.set_status(
                state=self._state,
                model=runtime.model_info,
                product=runtime.product,
                threshold=runtime.threshold,
                camera=self._camera_state,
                last_reload=self.last_reload or None,
                model_load=self.model_load,
                conditions=self.conditions(),
                warnings=self.warnings(),
            )
        except Exception:  # noqa: BLE001
            log.exception("status_publish_failed")

    def _report_conditions(self, reported: tuple) -> tuple:
        """Republish the retained status when a condition (disk full) starts or ends, so MES sees
        the state change, not only the next periodic health message."""
        now = (self.conditions(), self.warnings())
        if now != reported:
            for store in ("outbox", "archive"):
                was = store in reported[0] or store in reported[1]
                is_ = store in now[0] or store in now[1]
                if was != is_:
                    self.observer.on_state(store, "disk_full" if is_ else "ok", (now[0].get(store) or now[1].get(store) or ""))
            self._publish_status()
        return now

    def _report_stalls(self, already: set[str]) -> set[str]:
        timeout = self.cfg.pipeline.heartbeat_timeout_s
        stalled = {s for s, age in self.stage_heartbeats().items() if age > timeout}
        for stage in stalled - already:
            log.error("stage_stalled", stage=stage, timeout_s=timeout)
            self.observer.on_state("pipeline", "stalled", stage)
        return stalled


def _quietly(fn: Optional[Callable[[], Any]]) -> None:
    if fn is None:
        return
    try:
        fn()
    except Exception:  # noqa: BLE001 - cleanup of a failed start must not hide the first error
        log.exception("cleanup_failed")


# ==================================================================== CLI
def cli_run(args: argparse.Namespace) -> int:
    """``edge-inspector run --config FILE [--set k=v ...] [--max-frames N]``."""
    cfg = load_config(args.config, args.overrides)
    bind_station(cfg.station.line, cfg.station.name)
    setup_logging(cfg.logging.level, cfg.logging.json_logs)
    quiet_native_libraries(cfg.logging.level)
    supervisor = Supervisor(cfg, config_path=args.config, overrides=args.overrides, max_frames=args.max_frames)
    _install_signal_handlers(supervisor)
    supervisor.start()
    return supervisor.run()


def _install_signal_handlers(supervisor: Supervisor) -> None:
    def stop(signum, _frame):
        supervisor.request_stop(signal.Signals(signum).name)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    if hasattr(signal, "SIGHUP"):
        signal.signal(signal.SIGHUP, lambda _s, _f: supervisor.request_reload())
