"""Pipeline benchmark: folder camera at a fixed rate → preprocess → ONNX → postprocess → outbox →
real mosquitto, measuring end-to-end latency from frame grab to the broker's PUBACK.

    .venv/bin/python benchmarks/pipeline_benchmark.py --frames 2000 --fps 20 --json benchmarks/results/pipeline.json

Two phases, each a fresh ``Supervisor`` in this process (the same code path as ``edge-inspector
run``; a process of its own would add nothing but a harder way to read PUBACK times):

1. *sustained*: ``--frames`` frames at ``--fps`` (default 2000 at 20 fps ≈ 100 s). Latency =
   PUBACK time (the outbox row's removal, see supervisor.AckReportingOutbox) minus the frame's
   grab timestamp, both on the monotonic clock. RSS is read when the pipeline reports ready and
   again at the end.
2. *max sustainable fps*: ``--max-fps-frames`` frames with pacing off (a triggered replay
   applies back-pressure, so nothing is dropped and the rate is what the slowest stage allows).

Images: MVTec AD bottle test images (900×900 colour) when ../shared/datasets is present, else
synthetic 1280×960 grey frames. Model: ``--model DIR``, else the hand-built tiny bundle
(tests/helpers/tiny_bundle.py) at ``--image-size`` — then the figures measure the pipeline around
the model, not the model (see the model section of docs/benchmarks.md for that cost).
Prints one JSON document.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from edge_inspector.config.models import Config  # noqa: E402
from edge_inspector.inference.bench import rss_mb  # noqa: E402
from edge_inspector.inference.bundle import load_bundle  # noqa: E402
from edge_inspector.logging import setup_logging  # noqa: E402
from edge_inspector.observer import PipelineObserver  # noqa: E402
from edge_inspector.supervisor import Supervisor  # noqa: E402
from tests.helpers.broker import Mosquitto  # noqa: E402

RSS_SAMPLE_EVERY = 250
DATASET_IMAGES = REPO.parent / "shared" / "datasets" / "mvtec_ad" / "bottle" / "test"


def percentiles(values: list[float]) -> dict:
    if not values:
        return {}
    a = np.asarray(values) * 1000.0
    return {"p50": round(float(np.percentile(a, 50)), 2), "p90": round(float(np.percentile(a, 90)), 2),
            "p99": round(float(np.percentile(a, 99)), 2), "max": round(float(a.max()), 2), "n": int(a.size)}


class Measure(PipelineObserver):
    """Grab→PUBACK latency per seq, per-stage times, drops, RSS at ready."""

    def __init__(self):
        self.lock = threading.Lock()
        self.latency: list[float] = []
        self.acked_at: list[float] = []
        self.stages: dict[str, list[float]] = {}
        self.drops = 0
        self.rss_ready = None
        self.verdicts = {"OK": 0, "NG": 0, "ERROR": 0}
        self.rss_samples: list[tuple[int, float]] = []  # (results acknowledged, RSS MB): leak or warm-up?

    def on_published(self, seq, verdict):
        now = time.monotonic()
        if verdict is None:
            return
        with self.lock:
            self.latency.append(now - verdict.ts_grab)
            self.acked_at.append(now)
            self.verdicts[verdict.verdict] += 1
            if len(self.latency) % RSS_SAMPLE_EVERY == 0:
                self.rss_samples.append((len(self.latency), round(rss_mb(), 1)))

    def on_stage_latency(self, stage, seconds):
        with self.lock:
            self.stages.setdefault(stage, []).append(seconds)

    def on_drop(self, stage, reason):
        self.drops += 1

    def on_state(self, component, state, detail=""):
        if component == "pipeline" and state == "ready":
            self.rss_ready = rss_mb()


def prepare_images(work: Path) -> tuple[Path, str]:
    if DATASET_IMAGES.is_dir():
        return DATASET_IMAGES, "mvtec_ad/bottle/test (900x900 colour)"
    import cv2

    folder = work / "images"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(20):
        img = np.full((960, 1280), 127, np.uint8)
        img += rng.integers(0, 8, img.shape, dtype=np.uint8)
        if i % 4 == 3:
            img[400:440, 600:680] = 255
        cv2.imwrite(str(folder / f"part_{i:03d}.png"), img)
    return folder, "synthetic 1280x960 grey"


def image_folder_flat(src: Path, work: Path) -> Path:
    """MVTec test images live in one subfolder per defect type: link them into one folder."""
    if not any(p.is_dir() for p in src.iterdir()):
        return src
    flat = work / "flat"
    flat.mkdir(exist_ok=True)
    for sub in sorted(p for p in src.iterdir() if p.is_dir()):
        for img in sorted(sub.glob("*.png")):
            os.symlink(img, flat / f"{sub.name}_{img.name}")
    return flat


def run_phase(work: Path, port: int, model_dir: Path, images: Path, frames: int, fps: float, threads: int, tag: str) -> dict:
    cfg = Config.model_validate({
        "station": {"line": "bench", "name": tag},
        "camera": {"type": "folder", "path": str(images), "fps": fps, "loop": True},
        "model": {"path": str(model_dir), "providers": ["cpu"], "intra_op_threads": threads, "warmup_runs": 5},
        "mqtt": {"host": "127.0.0.1", "port": port, "topic_prefix": "bench", "health_interval_s": 5.0},
        "outbox": {"path": str(work / f"outbox-{tag}.sqlite")},
        "archive": {"enabled": False, "path": str(work / "archive")},
        "health": {"enabled": False},
        "logging": {"level": "WARNING"},
    })
    measure = Measure()
    sup = Supervisor(cfg, max_frames=frames, observers=[measure])
    sup.start()
    t0 = time.monotonic()
    rc = sup.run()
    wall = time.monotonic() - t0
    status = sup.status()
    acked = measure.acked_at
    span = (acked[-1] - acked[0]) if len(acked) > 1 else float("nan")
    return {
        "exit_code": rc,
        "frames": frames,
        "verdicts_acked": len(measure.latency),
        "verdicts": measure.verdicts,
        "drops": measure.drops,
        "wall_s": round(wall, 2),
        "throughput_fps": round((len(acked) - 1) / span, 2) if len(acked) > 1 else None,
        "latency_grab_to_puback_ms": percentiles(measure.latency),
        "stage_ms": {k: percentiles(v) for k, v in sorted(measure.stages.items())},
        "rss_mb_ready": round(measure.rss_ready, 1) if measure.rss_ready else None,
        "rss_mb_end": round(rss_mb(), 1),
        "rss_mb_by_results": measure.rss_samples,
        "provider": (status.get("model") or {}).get("provider"),
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=2000)
    ap.add_argument("--fps", type=float, default=20.0)
    ap.add_argument("--max-fps-frames", type=int, default=600, help="frames for the unpaced phase (0 = skip)")
    ap.add_argument("--model", type=Path, default=None, help="MODEL_DIR (default: tiny test bundle)")
    ap.add_argument("--image-size", type=int, default=256, help="tiny bundle input size")
    ap.add_argument("--threads", type=int, default=0, help="onnxruntime intra-op threads (0 = auto)")
    ap.add_argument("--json", dest="json_out", type=Path, default=None)
    args = ap.parse_args(argv)
    setup_logging("WARNING", json_logs=True)

    with tempfile.TemporaryDirectory(prefix="ei-pipeline-bench-") as tmp:
        work = Path(tmp)
        if args.model is None:
            from tests.helpers.tiny_bundle import make_tiny_bundle

            model_dir = make_tiny_bundle(work / "model", image_size=args.image_size)
            model_note = f"tiny test bundle (|x| channel mean), {args.image_size}x{args.image_size}"
        else:
            model_dir = args.model
            model_note = str(args.model)
        bundle = load_bundle(model_dir)
        src, images_note = prepare_images(work)
        images = image_folder_flat(src, work)
        broker = Mosquitto(work / "broker").start()
        try:
            sustained = run_phase(work, broker.port, model_dir, images, args.frames, args.fps, args.threads, "sustained")
            unpaced = None
            if args.max_fps_frames:
                unpaced = run_phase(work, broker.port, model_dir, images, args.max_fps_frames, 1000.0, args.threads, "maxfps")
        finally:
            broker.stop()

    result = {
        "benchmark": "pipeline",
        "command": "benchmarks/pipeline_benchmark.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "model": model_note,
        "model_name": bundle.name,
        "image_size": bundle.image_size,
        "images": images_note,
        "cpu_count": os.cpu_count(),
        "affinity_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "python": platform.python_version(),
        "target_fps": args.fps,
        "sustained": sustained,
        "max_sustainable_fps": unpaced["throughput_fps"] if unpaced else None,
        "unpaced": unpaced,
        "rss_mb_start": sustained["rss_mb_ready"],
        "rss_mb_end": sustained["rss_mb_end"],
        "rss_growth_mb": round(sustained["rss_mb_end"] - sustained["rss_mb_ready"], 1) if sustained["rss_mb_ready"] else None,
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0, 1),
        "targets": {"p99_ms": 50.0, "rss_growth_mb": 20.0},
    }
    result["meets_targets"] = bool(
        sustained["latency_grab_to_puback_ms"].get("p99", float("inf")) <= 50.0
        and result["rss_growth_mb"] is not None and result["rss_growth_mb"] <= 20.0
        and sustained["drops"] == 0 and sustained["verdicts_acked"] == args.frames
    )
    text = json.dumps(result, indent=2)
    print(text)
    if args.json_out:
        args.json_out.parent.mkdir(parents=True, exist_ok=True)
        args.json_out.write_text(text + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
