"""`edge-inspector` command line (GUIDE.md: CLI contract).

Exit codes: 0 success, 2 bad input (one line on stderr naming the file or key), 1 other failure.
Each subcommand's work lives in its stage's module; this file only parses and dispatches, so
that `run` never imports the training side (and so never imports torch).
"""

from __future__ import annotations

import argparse
import faulthandler
import importlib
import os
import signal
import sys
from typing import Callable, Sequence

from edge_inspector import __version__
from edge_inspector.errors import InspectorError
from edge_inspector.lightings import DEFAULT_TRAIN_LIGHTING, TRAIN_LIGHTINGS

# subcommand -> "module:function"; the function takes the argparse Namespace and returns an exit code.
_HANDLERS: dict[str, str] = {
    "train": "edge_inspector.training.train:cli_train",
    "evaluate": "edge_inspector.training.evaluate:cli_evaluate",
    "export": "edge_inspector.training.export:cli_export",
    "quantize": "edge_inspector.training.quantize:cli_quantize",
    "bench": "edge_inspector.inference.bench:cli_bench",
    "run": "edge_inspector.supervisor:cli_run",
    "check-config": "edge_inspector.config.check:cli_check_config",
    "demo": "edge_inspector.demo.runner:cli_demo",
}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="edge-inspector", description="Production-line edge inspection daemon")
    p.add_argument("--version", action="version", version=f"edge-inspector {__version__}")
    p.add_argument("--log-level", default=os.environ.get("EDGE_INSPECTOR_LOG_LEVEL", "INFO"))
    p.add_argument("--debug", action="store_true", help="show tracebacks for internal errors")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    t = sub.add_parser("train", help="train a model bundle from train/good images")
    t.add_argument("--data", required=True, help="MVTec-style category folder (reads only train/good)")
    t.add_argument("--out", required=True, help="MODEL_DIR to write")
    t.add_argument("--head", choices=["default", "aegan", "ae", "knn"], default="default")
    t.add_argument("--iterations", type=int, default=None, help="training iterations (default depends on head)")
    t.add_argument("--image-size", type=int, default=256,
                   help="model input size budget: about SIZE² pixels (the input side when --geometry square)")
    t.add_argument("--geometry", choices=["keep_aspect", "square"], default="keep_aspect",
                   help="model input shape: the training frames' aspect ratio (default) or SIZE×SIZE")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    t.add_argument("--far-target", type=float, default=0.01, help="target false-alarm rate for the threshold (default 1%%)")
    t.add_argument("--holdout", type=float, default=0.15, help="fraction of train/good held out for calibration")
    t.add_argument("--calibration", choices=["holdout", "crossfit_tail", "train_pooled"], default="train_pooled",
                   help="threshold rule: the hold-out pooled with the training images' own scores behind a "
                        "two-sample check, the hold-out alone where the check refuses (train_pooled, default); "
                        "the hold-out alone (holdout); or a tail fit to the hold-out plus leave-one-out "
                        "training scores where the map allows it (crossfit_tail); all are recorded (docs/model.md)")
    t.add_argument("--validation", default=None, help="optional labelled folder (MVTec layout) for the F1-optimal threshold")
    t.add_argument("--lighting", choices=TRAIN_LIGHTINGS, default=DEFAULT_TRAIN_LIGHTING,
                   help=f"lighting normalisation the bundle is trained with and the station runs (default: "
                        f"{DEFAULT_TRAIN_LIGHTING}; none trains without one; docs/benchmarks.md \"Light stress\")")
    t.add_argument("--extra-good", default=None, metavar="DIR",
                   help="more good images to train on (never held out): a folder of images, or a feedback folder "
                        "written by the operator page (its test/good)")
    t.add_argument("--no-export", action="store_true", help="skip writing model.onnx (torch checkpoint only)")

    e = sub.add_parser("evaluate", help="evaluate a model bundle on a labelled test set")
    e.add_argument("--model", required=True)
    e.add_argument("--data", required=True)
    e.add_argument("--json", required=True, dest="json_out")
    e.add_argument("--report", default=None, help="write a human report (PNG plots + index.html) here")

    x = sub.add_parser("export", help="export a trained model to ONNX with a torch parity check")
    x.add_argument("--model", required=True)
    x.add_argument("--out", required=True)

    q = sub.add_parser("quantize", help="copy a bundle with its backbone quantised to INT8 (calibrated on train/good)")
    q.add_argument("--model", required=True, help="the float bundle (left unchanged)")
    q.add_argument("--data", required=True, help="dataset folder whose train/good images calibrate the ranges")
    q.add_argument("--out", required=True, help="new bundle directory (must not exist or be empty)")
    q.add_argument("--images", type=int, default=64, help="calibration images (a seeded sample of train/good)")
    q.add_argument("--seed", type=int, default=0)

    b = sub.add_parser("bench", help="latency/throughput/RSS of the exported model through the runtime engine")
    b.add_argument("--model", required=True)
    b.add_argument("--json", dest="json_out", default=None)
    b.add_argument("--runs", type=int, default=200)
    b.add_argument("--threads", type=int, default=0)

    r = sub.add_parser("run", help="run the inspection daemon")
    r.add_argument("--config", required=True)
    r.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    r.add_argument("--max-frames", type=int, default=None)

    c = sub.add_parser("check-config", help="validate a station config and what `run` needs (model, state paths, health port)")
    c.add_argument("file")
    c.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    c.add_argument("--quiet", action="store_true")
    c.add_argument("--schema-only", action="store_true", help="only the config's own rules (no model, paths or port)")
    c.add_argument("--ignore-port", action="store_true", help="do not check that health.port is free (the station is running)")

    d = sub.add_parser("demo", help="synthetic parts → train → emulated camera → broker → verdicts")
    d.add_argument("--workdir", default=None, help="keep demo files here (default: a temp dir)")
    d.add_argument("--parts", type=int, default=40)
    d.add_argument("--camera", choices=["pylon", "folder"], default="pylon")
    d.add_argument("--lighting", choices=TRAIN_LIGHTINGS, default=None,
                   help="train the demo model with this lighting normalisation (default: train's default)")
    return p


def _resolve(target: str) -> Callable[[argparse.Namespace], int]:
    module, _, func = target.partition(":")
    return getattr(importlib.import_module(module), func)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from edge_inspector.logging import native_output_to_log, quiet_native_env, setup_logging

    setup_logging(args.log_level)
    daemon = args.command == "run"
    if daemon:
        quiet_native_env()  # before onnxruntime/OpenCV are imported: journal hygiene
        # `kill -USR1 <pid>`: every thread's stack into the journal, for a daemon that hangs
        # (no debugger on a station; systemd would only SIGKILL it).
        faulthandler.register(signal.SIGUSR1, all_threads=True)
    try:
        # The journal (stderr not a terminal): native libraries' stderr becomes JSON log lines.
        # Left before the one-line error below is printed (the CLI contract's plain line).
        with native_output_to_log(enabled=daemon and not sys.stderr.isatty()):
            return int(_resolve(_HANDLERS[args.command])(args) or 0)
    except InspectorError as exc:
        _fatal(args.command, f"edge-inspector {args.command}: error: {exc}", exc.exit_code)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"edge-inspector {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - last line of defence: one line, not a traceback
        if args.debug or os.environ.get("EDGE_INSPECTOR_DEBUG"):
            raise
        msg = str(exc).splitlines()[0] if str(exc) else ""
        _fatal(args.command, f"edge-inspector {args.command}: internal error: {exc.__class__.__name__}: {msg} "
                             "(rerun with --debug for details)", 1)
        return 1


def _fatal(command: str, message: str, exit_code: int) -> None:
    """The one line that says why a command failed. For the daemon with JSON logs on (the
    journal) it is a JSON ``run_failed`` line like every other, so ``jq 'select(.level=="error")'``
    shows why a station did not start; ``message`` carries the same text a terminal shows."""
    from edge_inspector.logging import get_logger, json_logs_on

    if command == "run" and json_logs_on():
        get_logger("edge_inspector.cli").error("run_failed", message=message, exit_code=exit_code)
    else:
        print(message, file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
