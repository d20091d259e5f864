"""`edge-inspector check-config FILE`."""

from __future__ import annotations

import argparse

from edge_inspector.config.loader import dump_config, load_config


def cli_check_config(args: argparse.Namespace) -> int:
    cfg = load_config(args.file, args.overrides)
    if not args.quiet:
        print(dump_config(cfg), end="")
    print(f"{args.file}: OK (station {cfg.station.line}/{cfg.station.name}, camera {cfg.camera.type})")
    return 0
