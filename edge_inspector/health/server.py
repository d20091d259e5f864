"""HTTP endpoint for the plant's monitoring: /metrics (Prometheus text) and /healthz.

A standard-library ThreadingHTTPServer in one daemon thread: no extra dependency, and a slow or
hung scraper costs one short-lived thread, never a pipeline stage. Bound to 127.0.0.1 by default
(health.host); expose it deliberately, e.g. through the node's reverse proxy or a firewall rule.

/healthz: 200 ``{"status": "ok", ...}`` while every stage's heartbeat is younger than
pipeline.heartbeat_timeout_s; 503 with the reason otherwise (also while the pipeline is starting).

Other endpoints mount here as ``Route``s (one HTTP port per station, one place to secure it); they
are wired by name in ``create_ops_component``.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Mapping, Optional, Sequence
from urllib.parse import parse_qs

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from edge_inspector.errors import ConfigError
from edge_inspector.health.liveness import assess
from edge_inspector.logging import get_logger
from edge_inspector.preflight import port_in_use_message
from edge_inspector.threads import start_supervised

log = get_logger(__name__)

# (request, path without query, parsed query) -> None; the handler sends the whole response itself
# (with ``send``, or streams, e.g. server-sent events).
RouteHandler = Callable[[BaseHTTPRequestHandler, str, Mapping[str, Sequence[str]]], None]


@dataclass(frozen=True)
class Route:
    """An endpoint beside /metrics and /healthz: ``prefix`` ending in "/" matches every path under
    it, any other prefix matches exactly."""

    method: str  # "GET" or "POST"
    prefix: str
    handle: RouteHandler

    def matches(self, method: str, path: str) -> bool:
        if method != self.method:
            return False
        return path.startswith(self.prefix) if self.prefix.endswith("/") else path == self.prefix


def send(request: BaseHTTPRequestHandler, code: int, content_type: str, body: bytes,
         headers: Optional[Mapping[str, str]] = None) -> None:
    request.send_response(code)
    request.send_header("Content-Type", content_type)
    request.send_header("Content-Length", str(len(body)))
    request.send_header("Cache-Control", "no-store")
    for name, value in (headers or {}).items():
        request.send_header(name, value)
    request.end_headers()
    if request.command != "HEAD":
        request.wfile.write(body)


class HealthServer:
    """Serve /metrics from ``registry`` and /healthz from ``heartbeats``.

    ``heartbeats`` (usually PipelineControl.stage_heartbeats) may be attached after the server
    starts with ``attach(...)``: metrics are useful during start-up, health is not yet "ok".
    """

    def __init__(
        self,
        registry: CollectorRegistry,
        host: str = "127.0.0.1",
        port: int = 9310,
        heartbeat_timeout_s: float = 10.0,
        heartbeats: Optional[Callable[[], Mapping[str, float]]] = None,
        conditions: Optional[Callable[[], tuple[Mapping[str, str], Mapping[str, str]]]] = None,
        routes: Sequence[Route] = (),
    ):
        self.registry = registry
        self.routes = tuple(routes)
        # () -> (blocking conditions, warnings), e.g. ({"outbox": "disk full"}, {"archive": "disk full"})
        self._conditions = conditions
        self.host = host
        self.requested_port = port
        self.heartbeat_timeout_s = heartbeat_timeout_s
        self._heartbeats = heartbeats
        self._httpd: Optional[ThreadingHTTPServer] = None
        self._thread: Optional[threading.Thread] = None
        self._stopping = threading.Event()  # ends the supervised serve loop's restarts

    def attach(self, heartbeats: Callable[[], Mapping[str, float]], heartbeat_timeout_s: Optional[float] = None) -> None:
        self._heartbeats = heartbeats
        if heartbeat_timeout_s is not None:
            self.heartbeat_timeout_s = heartbeat_timeout_s

    # --- lifecycle --------------------------------------------------------------------------
    def start(self) -> "HealthServer":
        server = self

        class Handler(BaseHTTPRequestHandler):
            server_version = "edge-inspector-health"

            def do_GET(self):  # noqa: N802 - http.server's naming
                path, _, query = self.path.partition("?")
                if path == "/metrics":
                    send(self, 200, CONTENT_TYPE_LATEST, generate_latest(server.registry))
                elif path == "/healthz":
                    code, body = server.health()
                    send(self, code, "application/json", json.dumps(body).encode())
                else:
                    self._route("GET", path, query)

            def do_POST(self):  # noqa: N802
                path, _, query = self.path.partition("?")
                self._route("POST", path, query)

            def _route(self, method: str, path: str, query: str) -> None:
                for route in server.routes:
                    if route.matches(method, path):
                        route.handle(self, path, parse_qs(query))
                        return
                send(self, 404, "text/plain; charset=utf-8", b"not found: try /metrics or /healthz\n")

            def log_message(self, format, *args):  # noqa: A002 - scrapes every 15 s would flood the journal
                pass

        httpd = ThreadingHTTPServer((self.host, self.requested_port), Handler)
        httpd.daemon_threads = True
        self._httpd = httpd
        # serve_forever marks itself shut down even when it raises, so stop() never waits on a
        # crashed loop; a restart simply serves again on the same socket.
        self._thread = start_supervised("health-http", lambda: httpd.serve_forever(poll_interval=0.5), self._stopping)
        log.info("health_listening", url=self.url)
        return self

    def stop(self) -> None:
        self._stopping.set()
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None

    @property
    def port(self) -> int:
        """The bound port (useful when health.port is 0)."""
        return self._httpd.server_address[1] if self._httpd else self.requested_port

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    # --- health -----------------------------------------------------------------------------
    def health(self) -> tuple[int, dict]:
        """(HTTP status, JSON body) for /healthz."""
        if self._heartbeats is None:
            return 503, {"status": "starting", "reason": "pipeline not started yet"}
        try:
            ages = dict(self._heartbeats())
        except Exception as exc:  # noqa: BLE001 - the probe failing is itself unhealthy
            return 503, {"status": "error", "reason": f"heartbeat probe failed: {type(exc).__name__}: {exc}"}
        blocking: Mapping[str, str] = {}
        warnings: Mapping[str, str] = {}
        if self._conditions is not None:
            try:
                blocking, warnings = self._conditions()
            except Exception as exc:  # noqa: BLE001 - not knowing is not healthy
                blocking = {"conditions probe": f"{type(exc).__name__}: {exc}"}
        healthy, body = assess(ages, self.heartbeat_timeout_s, blocking, warnings)
        return (200 if healthy else 503), body


class HealthOps:
    """The supervisor's /metrics + /healthz component (start/stop/apply_config)."""

    def __init__(self, registry: CollectorRegistry, cfg: Any, heartbeats: Callable[[], Mapping[str, float]],
                 conditions: Optional[Callable[[], tuple[Mapping[str, str], Mapping[str, str]]]] = None,
                 routes: Sequence[Route] = ()):
        self._registry = registry
        self._routes = tuple(routes)
        self._heartbeats = heartbeats
        self._conditions = conditions
        self._health_cfg = cfg.health
        self._timeout = cfg.pipeline.heartbeat_timeout_s
        self.server: Optional[HealthServer] = None

    def start(self, port: Optional[int] = None) -> None:
        """Serve on the configured address (``port``: this port instead of ``health.port``)."""
        cfg = self._health_cfg
        if not cfg.enabled:
            return
        port = cfg.port if port is None else port
        server = HealthServer(self._registry, cfg.host, port, self._timeout, heartbeats=self._heartbeats,
                              conditions=self._conditions, routes=self._routes)
        try:
            server.start()
        except OSError as exc:
            # A station nobody can scrape must not say READY: at start this is exit 2 (bad
            # input, not restarted by the unit); on a reload the caller reports it.
            raise ConfigError(port_in_use_message(cfg.host, port, exc)) from None
        self.server = server

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()
            self.server = None

    def apply_config(self, cfg: Any) -> Optional[str]:
        """Reload: a new host/port/enabled rebinds the endpoint; anything else is untouched.

        A new address that cannot be bound (port taken) must not leave the station unscrapable:
        the endpoint goes back to the address it served, and the reload reports the clash
        (ConfigError). The next reload with that config tries again."""
        if cfg.health == self._health_cfg:
            return "health: unchanged"
        previous = self._health_cfg
        served = self.server.port if self.server is not None else None  # the bound one (health.port 0: picked)
        self.stop()
        self._health_cfg = cfg.health
        try:
            self.start()
        except ConfigError as exc:
            self._health_cfg = previous
            self.start(port=served)  # the same URL the scrapers had: it was ours a moment ago
            where = f"still serving {self.server.url}" if self.server else "it stays off"
            raise ConfigError(f"{exc}; {where}") from None
        return f"health: {'serving ' + self.server.url if self.server else 'off'}"


def create_ops_component(supervisor: Any) -> Optional[HealthOps]:
    """Hook for Supervisor._build_ops (after health.metrics, whose registry it serves)."""
    from edge_inspector.archive.http import create_route as image_route
    from edge_inspector.health.metrics import find_metrics
    from edge_inspector.ui.routes import create_routes as ui_routes

    metrics = find_metrics(supervisor)
    if metrics is None:
        return None  # health.enabled is false
    # Endpoints beside /metrics and /healthz, each built here by name.
    routes: list[Route] = []
    routes += ui_routes(supervisor)  # the operator page (/ and /ui/...), when ui.enabled
    routes.append(image_route(supervisor))  # GET /images/...: archived frames and heatmaps by reference
    return HealthOps(metrics.registry, supervisor.cfg, supervisor.stage_heartbeats,
                     conditions=lambda: (supervisor.conditions(), supervisor.warnings()), routes=routes)
