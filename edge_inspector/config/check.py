"""`edge-inspector check-config FILE`: the schema, then what `run` will need (preflight.py)."""

from __future__ import annotations

import argparse

from edge_inspector.config.loader import dump_config, load_config
from edge_inspector.errors import ConfigError


def cli_check_config(args: argparse.Namespace) -> int:
    cfg = load_config(args.file, args.overrides)
    if not args.quiet:
        print(dump_config(cfg), end="")
    if not args.schema_only:
        from edge_inspector.preflight import check_station

        problems = check_station(cfg, check_port=not args.ignore_port)
        if problems:
            more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
            raise ConfigError(f"{args.file}: {problems[0]}{more}")
    print(f"{args.file}: OK (station {cfg.station.line}/{cfg.station.name}, camera {cfg.camera.type}, "
          f"outbox {cfg.outbox.path}, health {'port ' + str(cfg.health.port) if cfg.health.enabled else 'off'})")
    return 0
