"""HTTP endpoints of the operator page, mounted on the health server (health/server.py).

    GET  /  and  /ui/            the page (static/index.html)
    GET  /ui/static/<file>       the page's script and style sheet (a fixed list: nothing else is served)
    GET  /ui/api/state           latest part, NG gallery, score strip, counters, drift (JSON)
    GET  /ui/events              server-sent events: ``part`` (a new card + counters), keep-alives
    GET  /ui/img/<card>/<frame|overlay>.jpg   a card's pictures (digits and two names only)
    POST /ui/feedback            {"card", "label": "good"|"defect", "who", "why"}; needs the station token

Everything but feedback is read-only and open to whoever reaches the port (bound to 127.0.0.1
unless health.host says otherwise). Feedback needs ``Authorization: Bearer <token>`` with the
token of health.token_env / health.token_file; with no token configured it is refused (403).
"""

from __future__ import annotations

import json
import queue
import re
import socket
import time
from importlib import resources
from typing import Any, Mapping, Sequence

from edge_inspector.errors import InspectorError
from edge_inspector.health.auth import load_token, presented_token, token_matches
from edge_inspector.health.server import Route, send
from edge_inspector.logging import get_logger
from edge_inspector.ui.feedback import parse_request, write_feedback
from edge_inspector.ui.live import LiveView, dumps

log = get_logger(__name__)

STATIC = {  # the only files /ui/static/ serves: name -> content type
    "index.html": "text/html; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
}
_IMAGE = re.compile(r"^/ui/img/(\d{1,12})/(frame|overlay)\.jpg$")
SSE_WRITE_TIMEOUT_S = 10.0  # a browser that stops reading for this long loses its event stream
SSE_KEEPALIVE_S = 15.0
SSE_SEND_BUFFER = 64 * 1024
MAX_LIVE_VIEWERS = 16  # each holds one HTTP thread while connected
MAX_FEEDBACK_BYTES = 16 * 1024
TEXT = "text/plain; charset=utf-8"
# The page's own files only: no inline script, nothing from elsewhere (the station has no internet).
PAGE_HEADERS = {"Content-Security-Policy": "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'",
                "X-Content-Type-Options": "nosniff"}


def _static(name: str) -> bytes:
    return resources.files("edge_inspector.ui").joinpath("static", name).read_bytes()


class RootRoute(Route):
    """"/" alone: a Route whose prefix ends in "/" would match every path."""

    def matches(self, method: str, path: str) -> bool:
        return method == self.method and path == "/"


class UiRoutes:
    def __init__(self, view: LiveView, supervisor: Any):
        self.view = view
        self._supervisor = supervisor
        self.feedback_counts = {"good": 0, "defect": 0, "refused": 0}

    def routes(self) -> list[Route]:
        return [RootRoute("GET", "/", self.page), Route("GET", "/ui/", self.get), Route("POST", "/ui/feedback", self.feedback)]

    # --- GET ------------------------------------------------------------------------------
    def page(self, request, path: str, query: Mapping[str, Sequence[str]]) -> None:
        send(request, 200, STATIC["index.html"], _static("index.html"), PAGE_HEADERS)

    def get(self, request, path: str, query: Mapping[str, Sequence[str]]) -> None:
        if path == "/ui/":
            return self.page(request, path, query)
        if path.startswith("/ui/static/"):
            name = path[len("/ui/static/"):]
            if name in STATIC:
                return send(request, 200, STATIC[name], _static(name), PAGE_HEADERS)
            return send(request, 404, TEXT, b"not found\n")
        if path == "/ui/api/state":
            body = dict(self.view.state(), actions=self._actions())
            return send(request, 200, "application/json", dumps(body).encode())
        if path == "/ui/events":
            return self._events(request)
        match = _IMAGE.match(path)
        if match:
            card = self.view.card(int(match.group(1)))
            data = None if card is None else (card.frame_jpeg if match.group(2) == "frame" else card.overlay_jpeg)
            if not data:
                return send(request, 404, TEXT, b"no such picture (only recent parts are kept)\n")
            return send(request, 200, "image/jpeg", data, {"X-Content-Type-Options": "nosniff"})
        send(request, 404, TEXT, b"not found\n")

    def _actions(self) -> dict:
        try:
            configured = load_token(self._supervisor.cfg.health) is not None
        except InspectorError as exc:
            return {"enabled": False, "reason": str(exc)}
        if not configured:
            return {"enabled": False, "reason": "feedback is off: no station token configured (health.token_env or health.token_file)"}
        return {"enabled": True, "reason": "feedback needs the station token"}

    def _events(self, request) -> None:
        hub = self.view.hub
        if hub.clients >= MAX_LIVE_VIEWERS:
            return send(request, 503, TEXT, f"too many live viewers ({MAX_LIVE_VIEWERS}); close a page and retry\n".encode(),
                        {"Retry-After": "10"})
        q = hub.subscribe()
        # A browser that stops reading fills the socket buffer: the write times out and this
        # thread ends; the hub has already stopped queueing for it (never blocking the render thread).
        request.connection.settimeout(SSE_WRITE_TIMEOUT_S)
        # and a small send buffer, so a stalled browser is noticed after ~100 events, not after
        # the megabytes the kernel would otherwise buffer for it
        request.connection.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SSE_SEND_BUFFER)
        try:
            request.send_response(200)
            request.send_header("Content-Type", "text/event-stream")
            request.send_header("Cache-Control", "no-store")
            request.end_headers()
            request.wfile.write(f"retry: 2000\nevent: hello\ndata: {dumps(self.view.stats())}\n\n".encode())
            request.wfile.flush()
            while True:
                try:
                    item = q.get(timeout=SSE_KEEPALIVE_S)
                except queue.Empty:
                    request.wfile.write(b": keep-alive\n\n")
                    request.wfile.flush()
                    continue
                if item is None:
                    return
                event, data = item
                request.wfile.write(f"event: {event}\ndata: {data}\n\n".encode())
                request.wfile.flush()
        except (OSError, ValueError):
            pass  # the browser went away or stalled
        finally:
            hub.unsubscribe(q)

    # --- POST -----------------------------------------------------------------------------
    def feedback(self, request, path: str, query: Mapping[str, Sequence[str]]) -> None:
        code, message = self._feedback(request, query)
        if code >= 400:
            self.feedback_counts["refused"] += 1
        body = {"ok": code < 400, "message": message}
        send(request, code, "application/json", json.dumps(body).encode())

    def _feedback(self, request, query) -> tuple[int, str]:
        try:
            expected = load_token(self._supervisor.cfg.health)
        except InspectorError as exc:
            return 500, f"feedback refused: the station token cannot be read ({exc})"
        if expected is None:
            return 403, "feedback refused: no station token configured (health.token_env or health.token_file)"
        if not token_matches(presented_token(request, query), expected):
            return 401, "feedback refused: wrong or missing token"
        try:
            length = int(request.headers.get("Content-Length") or 0)
        except ValueError:
            return 400, "feedback: bad Content-Length"
        if length <= 0 or length > MAX_FEEDBACK_BYTES:
            return 400, f"feedback: the body must be 1..{MAX_FEEDBACK_BYTES} bytes of JSON"
        try:
            wanted = parse_request(json.loads(request.rfile.read(length)))
        except (ValueError, UnicodeDecodeError) as exc:
            return 400, f"feedback: the body is not valid JSON ({exc})"
        except InspectorError as exc:
            return 400, str(exc)
        card = self.view.card(wanted["card"])
        if card is None:
            return 404, f"feedback: part {wanted['card']} is no longer kept in memory (recent parts and the NG gallery only)"
        try:
            image = write_feedback(self.view.feedback_root, card, wanted, self.view.station, time.time())
        except InspectorError as exc:
            return 400, str(exc)
        except OSError as exc:
            log.error("feedback_write_failed", path=str(self.view.feedback_root), error=f"{type(exc).__name__}: {exc}")
            return 500, f"feedback not saved: cannot write under ui.feedback_path={self.view.feedback_root} ({exc.strerror or exc})"
        card.feedback = wanted["label"]
        self.feedback_counts[wanted["label"]] += 1
        log.info("feedback_saved", label=wanted["label"], who=wanted["who"], frame_id=card.frame_id, image=str(image))
        return 200, f"saved as {wanted['label']}: {image.name}"


def create_routes(supervisor: Any) -> list[Route]:
    """The page's routes for the health server (none when the page is off)."""
    from edge_inspector.health.metrics import find_metrics
    from edge_inspector.observer import find_observer

    view = find_observer(supervisor, LiveView)
    if view is None:
        return []
    ui = UiRoutes(view, supervisor)
    metrics = find_metrics(supervisor)
    if metrics is not None:
        metrics.watch_counters("feedback", "Operator feedback saved (good = false alarm, defect = missed) or refused",
                               lambda: dict(ui.feedback_counts), label="label")
    return ui.routes()
