"""Per-instance defaults: what a station run by ``edge-inspector@<instance>`` takes when its config
leaves the state paths or the health port out.

The unit sets ``EDGE_INSPECTOR_INSTANCE=%i``, and systemd sets ``STATE_DIRECTORY`` (from
``StateDirectory=edge-inspector/%i``). Two instances on one PC therefore get their own outbox,
archive and /metrics port without anyone editing a number, and a config copied from another
station cannot silently share its outbox.

Rules (docs/configuration.md, "Per-instance defaults"):

* relative ``outbox.path`` / ``archive.path`` resolve against the state directory: ``$STATE_DIRECTORY``
  under the unit, else the config file's folder; left out, they are ``outbox.sqlite`` and
  ``archive`` there under the unit (``state/outbox.sqlite``, ``state/archive`` by hand);
* ``health.port`` left out: ``9310 + crc32(instance) mod 600`` (9310..9909) under the unit, else 9310.
  A port that is taken anyway (hash collision, another program) is a start error (exit 2).
"""

from __future__ import annotations

import os
import zlib
from pathlib import Path
from typing import Mapping, Optional

INSTANCE_ENV = "EDGE_INSPECTOR_INSTANCE"
BASE_PORT = 9310
PORT_RANGE = 600  # 9310..9909: clear of Prometheus' own exporters' registered ports (9100..9300)

# (section, key, default under the unit, default by hand)
STATE_KEYS = (
    ("outbox", "path", "outbox.sqlite", "state/outbox.sqlite"),
    ("archive", "path", "archive", "state/archive"),
)


def instance_name(environ: Optional[Mapping[str, str]] = None) -> Optional[str]:
    env = os.environ if environ is None else environ
    return env.get(INSTANCE_ENV) or None


def instance_port(instance: str) -> int:
    """Stable across runs, hosts and Python versions (crc32, not hash())."""
    return BASE_PORT + zlib.crc32(instance.encode("utf-8")) % PORT_RANGE


def unit_writable_dirs(environ: Optional[Mapping[str, str]] = None) -> list[Path]:
    """Directories systemd made writable for this service (ProtectSystem=strict leaves only these
    and the private /tmp); empty when not run by the unit."""
    env = os.environ if environ is None else environ
    dirs = []
    for var in ("STATE_DIRECTORY", "CACHE_DIRECTORY", "LOGS_DIRECTORY", "RUNTIME_DIRECTORY"):
        dirs += [Path(p) for p in env.get(var, "").split(":") if p]
    return dirs


def state_directory(environ: Optional[Mapping[str, str]] = None) -> Optional[Path]:
    env = os.environ if environ is None else environ
    first = env.get("STATE_DIRECTORY", "").split(":")[0]
    return Path(first) if first else None


def apply_instance_defaults(data: dict, config_dir: Path, environ: Optional[Mapping[str, str]] = None) -> None:
    """Fill and resolve the state paths and the health port in the raw config ``data`` (before
    validation, after ``--set``), following the rules in the module docstring."""
    state_dir = state_directory(environ)
    base = state_dir or config_dir
    for section, key, unit_default, manual_default in STATE_KEYS:
        node = data.setdefault(section, {})
        if not isinstance(node, dict):
            continue  # the schema reports the wrong type
        value = node.get(key)
        if value is None:
            value = unit_default if state_dir is not None else manual_default
        if isinstance(value, str) and value:
            path = Path(value).expanduser()
            node[key] = str(path if path.is_absolute() else base / path)
    instance = instance_name(environ)
    health = data.setdefault("health", {})
    if isinstance(health, dict) and health.get("port") is None:
        if instance:
            health["port"] = instance_port(instance)
        else:
            health.pop("port", None)  # `port: null` by hand: the schema's default
