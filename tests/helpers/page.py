"""A daemon with its operator page on a free port, and small HTTP helpers for the page's endpoints."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Optional

from tests.helpers.broker import free_port
from tests.helpers.station import start_daemon, station_config, write_config

TOKEN = "operator-test-token"


def page_station(tmp: Path, mqtt_port: int, model_dir: Path, images: Path, token: Optional[str] = TOKEN,
                 **sections: Any) -> tuple[Path, str]:
    """Write a station YAML whose health server (and page) listens on a free loopback port; the
    camera loops over ``images`` until the test stops the daemon. Returns (config, base URL)."""
    port = free_port()
    health: dict[str, Any] = {"enabled": True, "host": "127.0.0.1", "port": port}
    if token is not None:
        (tmp / "token").write_text(token + "\n", encoding="utf-8")
        health["token_file"] = str(tmp / "token")
    sections.setdefault("camera", {})
    sections["camera"] = {"loop": True, "fps": 10.0, **sections["camera"]}
    sections["ui"] = {"feedback_path": str(tmp / "feedback"), **sections.get("ui", {})}
    cfg = station_config(tmp, mqtt_port, model_dir, images, health=health, **sections)
    return write_config(tmp / "station.yaml", cfg), f"http://127.0.0.1:{port}"


def start_page_daemon(tmp: Path, *args, **kwargs):
    config, url = page_station(tmp, *args, **kwargs)
    proc = start_daemon(config, log_path=tmp / "daemon.log")
    return proc, url


def request(url: str, method: str = "GET", body: Any = None, token: Optional[str] = None,
            timeout: float = 5) -> tuple[int, bytes, dict]:
    data = None if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
    headers = {"Content-Type": "application/json"} if data is not None else {}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    req = urllib.request.Request(url, method=method, data=data, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, resp.read(), dict(resp.headers)
    except urllib.error.HTTPError as err:
        return err.code, err.read(), dict(err.headers)


def get_json(url: str) -> Any:
    code, body, _ = request(url)
    assert code == 200, (url, code, body[:200])
    return json.loads(body)


def wait_state(base: str, predicate, timeout: float = 60, what: str = "page state", proc=None) -> dict:
    """Poll /ui/api/state until ``predicate(state)``; fails early when the daemon exits."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"daemon exited with {proc.returncode} while waiting for {what}")
        try:
            last = get_json(base + "/ui/api/state")
            if predicate(last):
                return last
        except (OSError, AssertionError):
            pass
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}; last state: {str(last)[:500]}")


def feedback(base: str, card: int, label: str = "good", token: Optional[str] = TOKEN, who: str = "anna",
             why: str = "false alarm") -> tuple[int, dict]:
    code, body, _ = request(base + "/ui/feedback", "POST", {"card": card, "label": label, "who": who, "why": why}, token)
    return code, json.loads(body)
