"""What ``run`` will need, checked before it is needed: ``check-config`` runs all of it, ``run``
the parts a start would otherwise only discover late (a read-only state path under the unit,
a health port already taken).

Each check returns a one-line problem naming the key, or None. ``check-config`` is what
deploy/install.sh runs as the service user with the unit's environment, so "writable" means
writable *as the unit will see it*: under ``ProtectSystem=strict`` only the unit's
StateDirectory/CacheDirectory (``$STATE_DIRECTORY``, ``$CACHE_DIRECTORY``) are.
"""

from __future__ import annotations

import errno
import os
import socket
from pathlib import Path
from typing import Iterator, Mapping, Optional

from edge_inspector.config.models import Config
from edge_inspector.errors import ConfigError, InputError
from edge_inspector.instance import unit_writable_dirs


def _state_paths(cfg: Config) -> Iterator[tuple[str, Path, Path]]:
    """(key, configured path, the directory that must be writable)."""
    yield "outbox.path", cfg.outbox.path, cfg.outbox.path.parent
    if cfg.archive.enabled:
        yield "archive.path", cfg.archive.path, cfg.archive.path


def _inside(path: Path, folder: Path) -> bool:
    try:
        path.resolve().relative_to(folder.resolve())
        return True
    except ValueError:
        return False


def unit_view_problem(cfg: Config, environ: Optional[Mapping[str, str]] = None) -> Optional[str]:
    """Under the unit (``$STATE_DIRECTORY`` set): a state path outside the unit's writable
    directories is read-only there (ProtectSystem=strict) — say so instead of failing later with
    "Read-only file system"."""
    writable = unit_writable_dirs(environ)
    if not writable:
        return None
    for key, path, _ in _state_paths(cfg):
        if not any(_inside(path, folder) for folder in writable):
            return (f"{key}={path}: read-only for the service (the unit's ProtectSystem=strict leaves only "
                    f"{', '.join(map(str, writable))} writable); leave {key} out to use {writable[0]}")
    return None


def writable_problem(cfg: Config) -> Optional[str]:
    """Each state directory (or the nearest folder that exists above it, where it will be
    created) must be writable by this user on a read-write file system."""
    for key, path, folder in _state_paths(cfg):
        probe = folder
        while not probe.exists() and probe != probe.parent:
            probe = probe.parent
        if not probe.is_dir():
            return f"{key}={path}: {probe} is not a folder"
        read_only = bool(os.statvfs(probe).f_flag & os.ST_RDONLY)
        if read_only or not os.access(probe, os.W_OK | os.X_OK):
            why = "read-only file system" if read_only else f"no write permission for uid {os.getuid()}"
            return f"{key}={path}: cannot create or write it ({probe}: {why})"
    return None


def port_problem(cfg: Config) -> Optional[str]:
    """The health port must be free: another station (or anything else) on it is a start error,
    never a station that says READY while nobody can scrape it."""
    health = cfg.health
    if not health.enabled or health.port == 0:
        return None
    try:
        with socket.create_server((health.host, health.port), reuse_port=False) as _:
            return None
    except OSError as exc:
        return port_in_use_message(health.host, health.port, exc)


def port_in_use_message(host: str, port: int, exc: OSError) -> str:
    if exc.errno == errno.EADDRINUSE:
        why = "already in use (another station or program); give each station its own health.port"
    else:
        why = f"cannot listen there ({exc.strerror or exc})"
    return f"health.port={port} on health.host={host}: {why}"


def model_problems(cfg: Config) -> list[str]:
    """Every bundle the station may run: ``model.path`` (unless a recipe is in service from the
    start) and each product's ``model_path`` (a switch must not be the first to find it broken)."""
    from edge_inspector.pipeline.recipes import product_config

    runs = [] if cfg.recipes.default is not None else [("model.path", cfg)]
    runs += [(f"recipes.products.{name}.model_path", product_config(cfg, name)) for name in cfg.recipes.products]
    return [problem for key, run_cfg in runs if (problem := model_problem(run_cfg, key))]


def model_problem(cfg: Config, key: str = "model.path") -> Optional[str]:
    """The bundle must exist, match the config (ROI, lighting) and open in onnxruntime."""
    from edge_inspector.inference.bundle import load_bundle
    from edge_inspector.pipeline.runtime import build_preprocessor

    try:
        bundle = load_bundle(cfg.model.path)
        build_preprocessor(cfg, bundle)
        import onnxruntime as ort

        from edge_inspector.logging import quiet_native_libraries

        quiet_native_libraries()
        options = ort.SessionOptions()
        options.log_severity_level = 3
        ort.InferenceSession(str(bundle.onnx_path), sess_options=options, providers=["CPUExecutionProvider"])
    except InputError as exc:
        return f"{key}: {exc}"
    except Exception as exc:  # noqa: BLE001 - onnxruntime's errors are many; each is a bad file here
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        return f"{key}={cfg.model.path}: onnxruntime cannot load {cfg.model.path}/model.onnx ({first})"
    return None


def check_station(cfg: Config, *, check_port: bool = True) -> list[str]:
    """Every problem ``run`` would hit before READY=1, in start order."""
    problems = [*model_problems(cfg), unit_view_problem(cfg), writable_problem(cfg)]
    if check_port:
        problems.append(port_problem(cfg))
    return [p for p in problems if p]


def require_unit_view(cfg: Config) -> None:
    """For ``run``: fail at once (exit 2) on a state path the unit cannot write."""
    problem = unit_view_problem(cfg)
    if problem:
        raise ConfigError(problem)
