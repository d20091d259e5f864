"""The station's HTTP token: who may use the endpoints that need one.

The token comes from ``health.token_env`` / ``health.token_file``. A client presents it as
``Authorization: Bearer <token>``, or as ``?token=<token>`` where a browser cannot set a header (an
``<img src>``); compared in constant time.
"""

from __future__ import annotations

import hmac
from http.server import BaseHTTPRequestHandler
from typing import Any, Mapping, Optional, Sequence

from edge_inspector.config.secrets import read_secret


def load_token(health_cfg: Any) -> Optional[str]:
    """The configured token, or None when none is configured (ConfigError when it cannot be read)."""
    token = read_secret("health", "token_env", health_cfg.token_env, "token_file", health_cfg.token_file)
    return token or None  # an empty file is no token, not a token anyone matches by sending nothing


def presented_token(request: BaseHTTPRequestHandler, query: Mapping[str, Sequence[str]]) -> Optional[str]:
    header = request.headers.get("Authorization", "")
    if header.startswith("Bearer "):
        return header[len("Bearer "):].strip()
    values = query.get("token")
    return values[0] if values else None


def token_matches(presented: Optional[str], expected: Optional[str]) -> bool:
    """True only when a token is configured and the request carries exactly it."""
    if not expected or presented is None:
        return False
    return hmac.compare_digest(presented.encode(), expected.encode())
