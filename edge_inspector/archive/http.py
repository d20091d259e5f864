"""Archived images by reference: ``GET /images/...`` on the station's HTTP server (health/server.py).

    /images/<YYYY-MM-DD>/<name>.png           the archived frame (a result's ``archive``)
    /images/<YYYY-MM-DD>/<name>.heatmap.png   its heatmap overlay (a result's ``heatmap``)
    /images/seq/<seq>/original.png            the same files by the result's ``seq`` (results of
    /images/seq/<seq>/heatmap.png             this daemon run, most recent 10 000)

Results carry ``image_url`` / ``heatmap_url`` = ``archive.base_url`` + these paths. Read-only.
A path is accepted only when it has exactly one of these shapes (so ``..``, encoded slashes,
absolute paths and other files are 400 before any file system access), and the file must be a
regular file inside the archive folder after resolving links (else 404). With
``archive.require_token`` the station's HTTP token is needed (health/auth.py).
"""

from __future__ import annotations

import re
import urllib.parse
from pathlib import Path
from typing import Any, Callable, Optional

from edge_inspector.health.auth import load_token, presented_token, token_matches
from edge_inspector.health.server import Route, send
from edge_inspector.logging import get_logger

log = get_logger(__name__)

PREFIX = "/images/"
_BY_REF = re.compile(r"^(\d{4}-\d{2}-\d{2})/([A-Za-z0-9][A-Za-z0-9_-]*(?:\.[A-Za-z0-9_-]+)*)\.png$")
_BY_SEQ = re.compile(r"^seq/([1-9]\d{0,9})/(original|heatmap)\.png$")
_TEXT = "text/plain; charset=utf-8"


def image_urls(base_url: Optional[str], ref: Optional[str], heatmap: Optional[str]) -> tuple[Optional[str], Optional[str]]:
    """The URLs a result carries for its archived files (None without base_url or file)."""
    if not base_url or not ref:
        return None, None
    base = base_url.rstrip("/") + PREFIX
    return base + ref, (base + heatmap if heatmap else None)


class ImageRoute:
    """``handle`` for Route("GET", "/images/", ...). ``archive()`` returns the running ArchiveStore
    (None while archiving is off); ``token()`` the station's token when one is required."""

    def __init__(self, archive: Callable[[], Any], require_token: Callable[[], bool], token: Callable[[], Optional[str]]):
        self._archive = archive
        self._require_token = require_token
        self._token = token

    def route(self) -> Route:
        return Route("GET", PREFIX, self.handle)

    def handle(self, request, path: str, query) -> None:
        if self._require_token() and not token_matches(presented_token(request, query), self._token()):
            send(request, 401, _TEXT, b"token required: Authorization: Bearer <token> or ?token=\n",
                 headers={"WWW-Authenticate": "Bearer"})
            return
        archive = self._archive()
        if archive is None or not archive.enabled:
            send(request, 404, _TEXT, b"archive is off\n")
            return
        ref = self._ref(archive, urllib.parse.unquote(path[len(PREFIX):]))
        if ref is None:
            send(request, 400, _TEXT, b"not an image reference: /images/<YYYY-MM-DD>/<name>.png or /images/seq/<seq>/original.png\n")
            return
        if ref == "":
            send(request, 404, _TEXT, b"no archived image for this seq\n")
            return
        data = self._read(archive.root, ref)
        if data is None:
            send(request, 404, _TEXT, b"not in the archive (never kept, or removed by its quota / age limit)\n")
            return
        send(request, 200, "image/png", data)

    @staticmethod
    def _ref(archive: Any, rel: str) -> Optional[str]:
        """The archive reference a request names; None = malformed (400), "" = unknown seq (404)."""
        if _BY_REF.match(rel) and ".." not in rel:
            return rel
        match = _BY_SEQ.match(rel)
        if match is None:
            return None
        refs = archive.refs_for_seq(int(match.group(1)))
        if refs is None:
            return ""
        return (refs[0] if match.group(2) == "original" else refs[1]) or ""

    @staticmethod
    def _read(root: Path, ref: str) -> Optional[bytes]:
        try:
            base = root.resolve(strict=True)
            target = (root / ref).resolve(strict=True)
        except (OSError, RuntimeError):
            return None
        if base not in target.parents or not target.is_file():  # a link pointing out of the archive
            return None
        try:
            return target.read_bytes()
        except OSError:
            return None


def create_route(supervisor: Any) -> Route:
    """For health/server.py's ``create_ops_component``: reads the archive and its settings at
    request time (the archive component is built after the health server, and reloads change it)."""

    def token() -> Optional[str]:
        return load_token(supervisor.cfg.health)

    return ImageRoute(supervisor._archive, lambda: supervisor.cfg.archive.require_token, token).route()
