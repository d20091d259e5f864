"""Helpers for the fault-injection suite (tests/faults/): the real daemon with an injection plan
(``EDGE_INSPECTOR_FAULTS``, see edge_inspector/faults.py), its /healthz and /metrics, a small
tmpfs to fill up, and the daemon's JSON log lines."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import pytest

from tests.helpers.station import PYTHON, REPO


def start_daemon(config: Path, *extra: str, faults: str = "", log_path: Path,
                 env: Optional[dict[str, str]] = None) -> subprocess.Popen:
    """``edge-inspector run`` as a subprocess, with ``faults`` as its injection plan."""
    full_env = dict(os.environ, PYTHONUNBUFFERED="1")
    full_env.pop("NOTIFY_SOCKET", None)
    full_env.pop("EDGE_INSPECTOR_FAULTS", None)
    if faults:
        full_env["EDGE_INSPECTOR_FAULTS"] = faults
    full_env.update(env or {})
    return subprocess.Popen([PYTHON, "-m", "edge_inspector", "run", "--config", str(config), *extra],
                            cwd=str(REPO), env=full_env, stdout=subprocess.DEVNULL, stderr=open(log_path, "ab"))


def wait_until(predicate: Callable[[], Any], timeout: float, what: str, proc: Optional[subprocess.Popen] = None,
               log_path: Optional[Path] = None) -> Any:
    """Poll ``predicate`` until it returns something truthy; fail naming ``what`` (and the log tail)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            break
        time.sleep(0.1)
    tail = log_path.read_text()[-3000:] if log_path is not None and log_path.exists() else ""
    exited = f" (daemon exited {proc.returncode})" if proc is not None and proc.poll() is not None else ""
    raise AssertionError(f"timed out after {timeout}s waiting for {what}{exited}\n{tail}")


def http_get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except OSError:
        return 0, ""


def healthz(port: int) -> tuple[int, dict]:
    code, body = http_get(port, "/healthz")
    return code, (json.loads(body) if body else {})


def metric(port: int, name: str, **labels: str) -> Optional[float]:
    """One sample's value from /metrics (None when absent)."""
    _code, text = http_get(port, "/metrics")
    want = ",".join(f'{k}="{v}"' for k, v in labels.items())
    for line in text.splitlines():
        if line.startswith(name + ("{" + want + "}" if want else " ")):
            return float(line.rsplit(" ", 1)[1])
    return None


def log_events(log_path: Path, event: Optional[str] = None) -> list[dict]:
    found = []
    for line in log_path.read_text().splitlines():
        try:
            obj = json.loads(line)
        except ValueError:
            continue
        if isinstance(obj, dict) and (event is None or obj.get("event") == event):
            found.append(obj)
    return found


def assert_contiguous(seqs, first: int = 1) -> None:
    """MES view: every seq from ``first`` to the highest received, no gap, no step back."""
    seqs = sorted(set(seqs))
    assert seqs, "no results received"
    assert seqs == list(range(first, seqs[-1] + 1)), f"seq gap: {seqs}"


@contextlib.contextmanager
def small_tmpfs(path: Path, size: str = "1m") -> Iterator[Path]:
    """A ``size`` tmpfs mounted at ``path`` (root only, as in CI); unmounted afterwards."""
    if os.geteuid() != 0:
        pytest.skip("a full filesystem needs a tmpfs mount: run the fault suite as root (CI does)")
    path.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip()})")
    try:
        yield path
    finally:
        for _ in range(20):
            if subprocess.run(["umount", str(path)], capture_output=True).returncode == 0:
                break
            time.sleep(0.25)  # a daemon still closing its files
        else:
            subprocess.run(["umount", "-l", str(path)], capture_output=True)


def fill_disk(folder: Path, name: str = "filler.bin") -> Path:
    """Write zeros into ``folder`` until its filesystem is full; returns the filler file."""
    filler = folder / name
    with open(filler, "ab", buffering=0) as fh:
        for size in (65536, 4096, 512, 1):  # down to the last byte the filesystem will take
            chunk = b"\0" * size
            try:
                while True:
                    fh.write(chunk)
            except OSError:
                continue
    return filler
