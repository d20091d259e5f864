"""Prometheus metrics fed by the pipeline's observer hooks.

Everything lives in the observer's own ``CollectorRegistry`` (not the process-global default), so
tests and a reload can build a fresh one, and /metrics shows only what this daemon means to show.
Values that are cheaper to read than to push (heartbeat ages, archive counters) are collected at
scrape time from callables, never on the hot path.
"""

from __future__ import annotations

import threading
from typing import Any, Callable, Iterable, Mapping, Optional

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from edge_inspector import __version__
from edge_inspector.observer import PipelineObserver, find_observer
from edge_inspector.threads import restart_counts

NAMESPACE = "edge_inspector"

# Per-stage times range from ~0.1 ms (postprocess) to seconds (a first TensorRT run, a stalled publish).
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.02, 0.035, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class MetricsObserver(PipelineObserver):
    """PipelineObserver → Prometheus. Cheap per call (a dict lookup and a lock-free-ish increment)."""

    def __init__(self, station: str = "", registry: Optional[CollectorRegistry] = None):
        self.registry = registry or CollectorRegistry(auto_describe=True)
        r = self.registry
        self.frames_in = Counter(f"{NAMESPACE}_frames_in", "Frames accepted from the camera", registry=r)
        self.frames_out = Counter(f"{NAMESPACE}_frames_out", "Results of this run acknowledged by the broker (PUBACK)", registry=r)
        self.results_replayed = Counter(
            f"{NAMESPACE}_results_replayed", "Results left in the outbox by an earlier run, acknowledged by the broker now", registry=r)
        self.verdicts = Counter(f"{NAMESPACE}_verdicts", "Final verdicts by kind", ["verdict"], registry=r)
        self.drops = Counter(f"{NAMESPACE}_drops", "Free-run frames dropped because a queue was full", ["stage", "reason"], registry=r)
        self.stage_latency = Histogram(
            f"{NAMESPACE}_stage_latency_seconds", "Time one frame spent in a stage", ["stage"], buckets=LATENCY_BUCKETS, registry=r
        )
        self.outbox_depth = Gauge(f"{NAMESPACE}_outbox_depth", "Results waiting in the outbox for PUBACK", registry=r)
        self.component_state = Gauge(
            f"{NAMESPACE}_component_state",
            "1 for the current state of camera/mqtt/model/pipeline, 0 for states it has left",
            ["component", "state"],
            registry=r,
        )
        # Exists from the start (0 until the first CONNACK): "broker down" alerts need a series.
        self.broker_connected = Gauge(f"{NAMESPACE}_broker_connected", "1 while the MQTT link is up", registry=r)
        self.state_changes = Counter(f"{NAMESPACE}_state_changes", "State transitions per component", ["component"], registry=r)
        self.model = Info(f"{NAMESPACE}_model", "Model bundle in service", registry=r)
        self.model_swaps = Counter(f"{NAMESPACE}_model_loads", "Model bundles put in service (start and hot swaps)", registry=r)
        self.commands = Counter(f"{NAMESPACE}_commands", "Remote commands handled", ["command", "ok"], registry=r)
        self.quality_gated = Counter(
            f"{NAMESPACE}_quality_gated", "Frames the image-quality gate turned into ERROR verdicts", ["kind"], registry=r
        )
        self.last_verdict_time = Gauge(f"{NAMESPACE}_last_verdict_timestamp_seconds", "Wall clock of the last verdict", registry=r)
        Info(f"{NAMESPACE}_build", "Daemon build", registry=r).info({"version": __version__, "station": station})

        for kind in ("OK", "NG", "ERROR"):
            self.verdicts.labels(kind)  # export zeros from the start: rate() needs a first sample
        for kind in ("overexposed", "underexposed"):
            self.quality_gated.labels(kind)
        self._states: dict[str, str] = {}
        self._state_lock = threading.Lock()

    # --- PipelineObserver -------------------------------------------------------------------
    def on_frame(self, frame: Any) -> None:
        self.frames_in.inc()

    def on_drop(self, stage: str, reason: str) -> None:
        self.drops.labels(stage, reason).inc()

    def on_stage_latency(self, stage: str, seconds: float) -> None:
        self.stage_latency.labels(stage).observe(seconds)

    def on_queue_depth(self, queue: str, depth: int) -> None:
        """Not used: a depth pushed on put() goes stale at the next get(); ``watch_queues``
        reads every queue at scrape time instead."""

    def on_verdict(self, verdict: Any, frame: Any, anomaly_map: Any) -> None:
        self.verdicts.labels(str(getattr(verdict, "verdict", "ERROR"))).inc()
        quality = getattr(verdict, "quality", None)
        if quality:
            self.quality_gated.labels(str(quality)).inc()
        ts = getattr(verdict, "ts_wall", None)
        if ts is not None:
            self.last_verdict_time.set(ts)
        return None

    def on_published(self, seq: int, verdict: Any) -> None:
        self.frames_out.inc()

    def on_replayed(self, seq: int) -> None:
        self.results_replayed.inc()

    def on_state(self, component: str, state: str, detail: str = "") -> None:
        with self._state_lock:
            previous = self._states.get(component)
            if previous == state:
                return
            if previous is not None:
                self.component_state.labels(component, previous).set(0)
            self.component_state.labels(component, state).set(1)
            self._states[component] = state
            if component == "mqtt":
                self.broker_connected.set(1 if state == "connected" else 0)
        self.state_changes.labels(component).inc()

    def on_outbox_depth(self, depth: int) -> None:
        self.outbox_depth.set(depth)

    def on_model(self, name: str, sha256: str) -> None:
        self.model.info({"name": str(name), "sha256": str(sha256)})
        self.model_swaps.inc()

    # --- not observer hooks ------------------------------------------------------------------
    def on_command(self, command: str, ok: bool) -> None:
        """CommandHandler's ``on_command`` hook (command is one of the known names or 'unknown')."""
        self.commands.labels(command, "true" if ok else "false").inc()

    # --- scrape-time sources ----------------------------------------------------------------
    def watch_heartbeats(self, heartbeats: Callable[[], Mapping[str, float]]) -> None:
        """Export ``edge_inspector_heartbeat_age_seconds{stage}`` from e.g. PipelineControl.stage_heartbeats."""
        self.registry.register(_HeartbeatCollector(heartbeats))

    def watch_counters(self, name: str, documentation: str, read: Callable[[], Mapping[str, float]], label: str = "kind") -> None:
        """Export a callable's ``{label_value: count}`` as one counter family (e.g. archive stats)."""
        self.registry.register(_CallableCollector(CounterMetricFamily, f"{NAMESPACE}_{name}", documentation, read, label))

    def watch_queues(self, depths: Callable[[], Mapping[str, float]]) -> None:
        """``edge_inspector_queue_depth{queue}`` read at scrape time (e.g. Pipeline.queue_depths)."""
        self.watch_gauges("queue_depth", "Items waiting in each pipeline queue now", depths, label="queue")

    def watch_value(self, name: str, documentation: str, read: Callable[[], float]) -> None:
        """One unlabelled gauge read at scrape time (one unit per metric: sizes, counts)."""
        self.registry.register(_ValueCollector(f"{NAMESPACE}_{name}", documentation, read))

    def watch_gauges(self, name: str, documentation: str, read: Callable[[], Mapping[str, float]], label: str = "kind") -> None:
        """Like ``watch_counters`` for values that go up and down (sizes, queue lengths)."""
        self.registry.register(_CallableCollector(GaugeMetricFamily, f"{NAMESPACE}_{name}", documentation, read, label))


class _HeartbeatCollector(Collector):
    def __init__(self, heartbeats: Callable[[], Mapping[str, float]]):
        self._heartbeats = heartbeats

    def collect(self) -> Iterable[GaugeMetricFamily]:
        family = GaugeMetricFamily(f"{NAMESPACE}_heartbeat_age_seconds", "Seconds since each stage's last heartbeat", labels=["stage"])
        try:
            ages = self._heartbeats() or {}
        except Exception:  # noqa: BLE001 - a scrape must not fail because the pipeline is stopping
            ages = {}
        for stage, age in sorted(ages.items()):
            family.add_metric([stage], float(age))
        yield family


class _ValueCollector(Collector):
    def __init__(self, name: str, documentation: str, read: Callable[[], float]):
        self._name, self._doc, self._read = name, documentation, read

    def collect(self):
        family = GaugeMetricFamily(self._name, self._doc)
        try:
            family.add_metric([], float(self._read()))
        except Exception:  # noqa: BLE001 - a scrape must not fail because a store is closing
            pass
        yield family


class _CallableCollector(Collector):
    def __init__(self, family_type, name: str, documentation: str, read: Callable[[], Mapping[str, float]], label: str):
        self._family_type = family_type
        self._name, self._doc, self._read, self._label = name, documentation, read, label

    def collect(self):
        family = self._family_type(self._name, self._doc, labels=[self._label])
        try:
            values = self._read() or {}
        except Exception:  # noqa: BLE001
            values = {}
        for key, value in sorted(values.items()):
            family.add_metric([key], float(value))
        yield family


def find_metrics(supervisor: Any) -> Optional[MetricsObserver]:
    """The MetricsObserver already registered with the supervisor (other ops components add
    their own counters to it), or None when health is disabled."""
    return find_observer(supervisor, MetricsObserver)


def create_ops_component(supervisor: Any) -> Optional[MetricsObserver]:
    """Hook for Supervisor._build_ops: metrics exist whenever health is enabled."""
    cfg = supervisor.cfg
    if not cfg.health.enabled:
        return None
    metrics = MetricsObserver(station=f"{cfg.station.line}/{cfg.station.name}")
    metrics.watch_heartbeats(supervisor.stage_heartbeats)
    metrics.watch_queues(lambda: supervisor.pipeline.queue_depths() if getattr(supervisor, "pipeline", None) else {})
    metrics.watch_counters("thread_restarts", "Supervised threads restarted after an exception (see threads.py)",
                           restart_counts, label="thread")
    if hasattr(supervisor, "disk_states"):
        metrics.watch_gauges("disk_full", "1 while the disk under a store (outbox, archive) is full",
                             supervisor.disk_states, label="store")
    # The supervisor announced the model before ops existed; start with it rather than empty.
    runtime = getattr(supervisor, "current_runtime", lambda: None)()
    info = getattr(runtime, "model_info", None) or {}
    if info.get("name"):
        metrics.on_model(info["name"], info.get("sha256", ""))
    try:  # likewise the MQTT and camera states reported before this observer was added
        status = supervisor.status()
        for component in ("mqtt", "camera"):
            if status.get(f"{component}_state"):
                metrics.on_state(component, str(status[f"{component}_state"]))
    except Exception:  # noqa: BLE001 - seeding is cosmetic
        pass
    return metrics
