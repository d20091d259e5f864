"""`edge-inspector demo`: the whole station on one machine, no camera and no broker needed.

1. generate synthetic machined parts (good, scratched, dented) in MVTec layout (demo/synthetic.py);
2. train a small model on the good ones only (training/train.py: train_bundle);
3. start an embedded MQTT broker (mosquitto if installed, else in-process amqtt; demo/broker.py);
4. run the real daemon (`edge-inspector run`) as a subprocess on pylon's emulated camera replaying
   the test parts (software trigger), or on the folder source;
5. subscribe to `P/result` as an MES would, print each verdict, then a summary against the ground
   truth (parts, NG caught, false alarms, latency).

Everything goes to a temp dir unless `--workdir` is given (then files are kept).
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Optional

import yaml

from edge_inspector.demo.broker import EmbeddedBroker, free_port, start_broker
from edge_inspector.demo.synthetic import generate_dataset, split_test_counts
from edge_inspector.errors import InspectorError

# Sizes chosen so the whole demo finishes in well under 3 minutes on 2 CPU cores.
IMAGE_PX = 160  # synthetic image side
MODEL_PX = 256  # model input side (measured: 128 px missed half the scratches; 256 px finds them)
N_TRAIN = 60  # good training parts
# The nearest-neighbour head trains in seconds (no gradient steps): the AE+GAN heads need
# minutes of CPU for a useful model, more than the demo's 3-minute budget on 2 cores.
# `edge-inspector train --head default` trains the station model on your images.
DEMO_HEAD = "knn"
TRAIN_ITERATIONS: Optional[int] = None  # knn: none; used if DEMO_HEAD is an AE head
# Threshold for ~5 % false alarms on held-out good parts: with only ~9 held-out images the
# calibration falls back to a Gaussian tail, and 1 % (the station default) is very conservative.
FAR_TARGET = 0.05
FPS = 10.0  # parts per second on the emulated line
# The emulated camera is software-triggered, as a station imaging parts on a conveyor would be:
# the daemon's trigger timer fires FPS triggers per second (camera.trigger.software_source:
# timer, the default) and waits when inference lags, so every part is imaged exactly once and
# none is dropped. The frame ids map every verdict to its part (see _frame_for).
PYLON_TRIGGER = "software"
TOPIC_PREFIX = "edge-inspector"
LINE, STATION = "demo", "station1"


class DemoError(InspectorError):
    """A demo step failed (message names the step; exit code 1)."""


def _say(msg: str = "") -> None:
    print(msg, flush=True)


@dataclass
class Received:
    payload: dict
    t_recv: float  # wall clock (time.time()) when the MES subscriber got it


@dataclass
class Frame:
    index: int
    file: str
    truth: str  # good | scratch | dent
    bbox: Optional[list]


@dataclass
class Outcome:
    results: list = field(default_factory=list)  # Received, in seq order, deduplicated
    status: list = field(default_factory=list)
    page_shown: int = 0  # parts the operator page counted while they passed


# ---------------------------------------------------------------------------------------- steps


def _make_line_folder(info, data_dir: Path, line_dir: Path, seed: int = 0) -> list[Frame]:
    """Copy the test parts into one folder in a shuffled 'production' order (f0001.png, ...)."""
    import random

    items = list(info.test_items)
    random.Random(seed).shuffle(items)
    line_dir.mkdir(parents=True, exist_ok=True)
    frames = []
    for i, it in enumerate(items, start=1):
        name = f"f{i:04d}.png"
        shutil.copyfile(data_dir / it["file"], line_dir / name)
        frames.append(Frame(i, name, it["type"], it["bbox"]))
    (line_dir.parent / "line_truth.json").write_text(json.dumps([f.__dict__ for f in frames], indent=1) + "\n")
    return frames


def pylon_emulator_available(timeout: float = 30.0) -> tuple[bool, str]:
    """True when pypylon imports and its camera emulator enumerates a device (probed in a child
    process so PYLON_CAMEMU never leaks into this one)."""
    try:
        import importlib.util

        if importlib.util.find_spec("pypylon") is None:
            return False, "pypylon is not installed"
    except (ImportError, ValueError):
        return False, "pypylon is not installed"
    code = (
        "from pypylon import pylon\n"
        "d = pylon.TlFactory.GetInstance().EnumerateDevices()\n"
        "print(len(d))\n"
    )
    env = dict(os.environ, PYLON_CAMEMU="1")
    try:
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return False, "pypylon's emulator did not answer in time"
    if out.returncode != 0:
        last = (out.stderr.strip().splitlines() or ["?"])[-1]
        return False, f"pypylon failed to load ({last})"
    try:
        n = int(out.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        n = 0
    return (n > 0, "" if n > 0 else "pypylon's emulator lists no camera")


def _train(data_dir: Path, model_dir: Path, model_px: int = MODEL_PX, lighting: Optional[str] = None) -> Path:
    try:
        from edge_inspector.training.train import train_bundle
    except ImportError as exc:
        raise DemoError(
            f"training is not available ({exc}); install the training extra: pip install -e '.[train]'"
        ) from None
    kwargs = dict(
        head=DEMO_HEAD,
        iterations=TRAIN_ITERATIONS,
        image_size=model_px,
        seed=0,
        device="cpu",
        far_target=FAR_TARGET,
        progress=False,
    )
    if lighting is not None:
        kwargs["lighting"] = lighting
    import contextlib
    import io
    import warnings

    # torch's export warnings and the trainer's progress go to WORKDIR/train.log, not the screen.
    buf = io.StringIO()
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(buf), contextlib.redirect_stderr(buf):
            warnings.simplefilter("ignore")
            try:
                out = train_bundle(data_dir, model_dir, augmented_copies=0, **kwargs)
            except TypeError:  # a train_bundle without the augmentation override
                out = train_bundle(data_dir, model_dir, **kwargs)
    finally:
        (model_dir.parent / "train.log").write_text(buf.getvalue())
    return Path(out)


def station_config(
    workdir: Path, camera: str, line_dir: Path, model_dir: Path, broker: EmbeddedBroker, n_frames: int,
    page_port: Optional[int] = None,
) -> dict:
    """The station YAML the demo runs (written to WORKDIR/station.yaml; a real one: config/station.example.yaml).
    ``page_port``: serve /metrics, /healthz and the operator page on 127.0.0.1 at that port."""
    cam: dict[str, Any] = {"type": camera, "path": str(line_dir), "fps": FPS, "loop": False}
    if camera == "pylon":
        cam["trigger"] = {"mode": PYLON_TRIGGER}
    return {
        "station": {"line": LINE, "name": STATION},
        "camera": cam,
        "model": {"path": str(model_dir), "providers": ["cpu"], "warmup_runs": 2},
        "postprocess": {"min_defect_area_px": 4},
        "mqtt": {
            "host": broker.host,
            "port": int(broker.port),
            "topic_prefix": TOPIC_PREFIX,
            "protocol": broker.protocol,
            "client_id": "edge-inspector-demo",
            "health_interval_s": 2.0,
        },
        "outbox": {"path": str(workdir / "state" / "outbox.sqlite")},
        "archive": {"enabled": True, "path": str(workdir / "state" / "archive")},
        "health": {"enabled": page_port is not None, "host": "127.0.0.1", "port": int(page_port or 0)},
        "ui": {"feedback_path": str(workdir / "state" / "feedback")},
        "logging": {"level": "WARNING", "json_logs": True},
    }


class MesSubscriber:
    """What an MES does: subscribe to P/result (QoS 1) and P/status, deduplicate on seq."""

    def __init__(self, broker: EmbeddedBroker, topic_base: str):
        import paho.mqtt.client as mqtt

        self.topic_base = topic_base
        self.queue: "queue.Queue[tuple[str, Received]]" = queue.Queue()
        self._connected = threading.Event()
        proto = mqtt.MQTTv5 if broker.protocol == "5" else mqtt.MQTTv311
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="demo-mes", protocol=proto)
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.client.connect(broker.host, broker.port, keepalive=30)
        self.client.loop_start()
        if not self._connected.wait(10):
            self.close()
            raise DemoError(f"MES subscriber could not connect to the broker on {broker.host}:{broker.port}")

    def _on_connect(self, client, userdata, flags, reason_code, properties=None):
        client.subscribe([(f"{self.topic_base}/result", 1), (f"{self.topic_base}/status", 1)])
        self._connected.set()

    def _on_message(self, client, userdata, msg):
        now = time.time()
        try:
            payload = json.loads(msg.payload.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            payload = {"_unparsable": msg.payload[:200].decode("utf-8", "replace")}
        kind = msg.topic.rsplit("/", 1)[-1]
        self.queue.put((kind, Received(payload, now)))

    def close(self) -> None:
        try:
            self.client.loop_stop()
            self.client.disconnect()
        except Exception:  # noqa: BLE001
            pass


# ------------------------------------------------------------------------------------- printing


def _frame_for(payload: dict, frames: list[Frame], arrival_index: int) -> Optional[Frame]:
    """Match a result to the replayed file. The folder source names frames ``<stem>-<n>``; the
    pylon source ``<serial>-<n>`` with n counting every grabbed image, and the emulator replays
    the folder in name order, looping (one file per trigger), so image n is file (n-1) mod
    len(files), even when frames were dropped in free run. Else fall back to arrival order."""
    import re

    from edge_inspector.publish.payload import camera_frame_id

    fid = camera_frame_id(payload.get("frame_id", ""))  # without the session part (s<session>-)
    by_stem = {Path(f.file).stem: f for f in frames}
    m = re.match(r"^(f\d{4,})-\d+$", fid)
    if m and m.group(1) in by_stem:
        return by_stem[m.group(1)]
    m = re.search(r"-(\d+)$", fid)
    if m and frames:
        return frames[(int(m.group(1)) - 1) % len(frames)]
    if 0 <= arrival_index < len(frames):
        return frames[arrival_index]
    return None


def _fmt_defects(defects: list) -> str:
    parts = []
    for d in defects[:3]:
        bbox = d.get("bbox") or ["?"] * 4
        s = d.get("score")
        s_txt = f" s={s:.2f}" if isinstance(s, (int, float)) else ""
        parts.append(f"[x={bbox[0]} y={bbox[1]} w={bbox[2]} h={bbox[3]}{s_txt}]")
    more = f" +{len(defects) - 3}" if len(defects) > 3 else ""
    return " ".join(parts) + more


def _judge(verdict: str, frame: Optional[Frame]) -> str:
    if frame is None:
        return "?"
    bad = frame.truth != "good"
    if verdict == "ERROR":
        return "error"
    if verdict == "NG":
        return "caught" if bad else "FALSE ALARM"
    return "MISSED" if bad else "ok"


def format_result(payload: dict, frame: Optional[Frame]) -> str:
    seq = payload.get("seq", "?")
    verdict = str(payload.get("verdict", "?"))
    score = payload.get("score")
    thr = payload.get("threshold")
    score_txt = f"{score:7.3f}" if isinstance(score, (int, float)) else "      ?"
    thr_txt = f"/{thr:.3f}" if isinstance(thr, (int, float)) else ""
    fid = str(payload.get("frame_id", "?"))
    line = f"seq={seq:<4} frame={fid:<14} {verdict:<5} score={score_txt}{thr_txt}"
    defects = payload.get("defects") or []
    if verdict == "ERROR" and payload.get("error"):
        line += f"  error: {payload['error']}"
    elif defects:
        line += f"  defects={len(defects)} {_fmt_defects(defects)}"
    truth = f"truth={frame.truth} -> {_judge(verdict, frame)}" if frame else ""
    return f"{line:<96} {truth}".rstrip()


def _parse_ts(ts: Any) -> Optional[float]:
    if not isinstance(ts, str):
        return None
    try:
        return datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def _percentile(values: list[float], q: float) -> float:
    vals = sorted(values)
    if not vals:
        return float("nan")
    k = (len(vals) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(vals) - 1)
    return vals[lo] + (vals[hi] - vals[lo]) * (k - lo)


def _overlaps(a: list, b: list, pad: int = 4) -> bool:
    ax, ay, aw, ah = a
    bx, by, bw, bh = b
    return ax - pad < bx + bw and bx - pad < ax + aw and ay - pad < by + bh and by - pad < ay + ah


def summarise(results: list[Received], frames: list[Frame]) -> dict:
    """Score the received verdicts against the ground truth of the inspected parts."""
    by_type: dict[str, dict[str, int]] = {}
    located = caught = false_alarms = errors = n_bad = n_good = 0
    latencies = []
    for i, r in enumerate(results):
        frame = _frame_for(r.payload, frames, i)
        verdict = r.payload.get("verdict")
        t = _parse_ts(r.payload.get("ts"))
        if t is not None:
            latencies.append((r.t_recv - t) * 1000.0)
        if frame is None:
            continue
        st = by_type.setdefault(frame.truth, {"n": 0, "ng": 0})
        st["n"] += 1
        if frame.truth == "good":
            n_good += 1
        else:
            n_bad += 1
        if verdict == "ERROR":
            errors += 1
        elif verdict == "NG":
            st["ng"] += 1
            if frame.truth == "good":
                false_alarms += 1
            else:
                caught += 1
                if frame.bbox and any(_overlaps(d.get("bbox", [0, 0, 0, 0]), frame.bbox) for d in r.payload.get("defects") or []):
                    located += 1
    return {
        "parts_expected": len(frames),
        "parts_inspected": len(results),
        "defective": n_bad,
        "good": n_good,
        "caught": caught,
        "located": located,
        "false_alarms": false_alarms,
        "errors": errors,
        "by_type": by_type,
        "latency_ms_median": _percentile(latencies, 0.5) if latencies else None,
        "latency_ms_p99": _percentile(latencies, 0.99) if latencies else None,
    }


# ------------------------------------------------------------------------------------ the demo


def _daemon_command(config_path: Path, n_frames: int) -> list[str]:
    return [sys.executable, "-m", "edge_inspector", "run", "--config", str(config_path), "--max-frames", str(n_frames)]


def _tail(path: Path, n: int = 5) -> str:
    try:
        lines = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return " | ".join(line.strip()[:200] for line in lines[-n:])


def run_demo(
    workdir: Path,
    parts: int = 40,
    camera: str = "pylon",
    n_train: int = N_TRAIN,
    image_px: int = IMAGE_PX,
    broker_kind: str = "auto",
    daemon_timeout_s: Optional[float] = None,
    model_px: int = MODEL_PX,
    lighting: Optional[str] = None,
) -> dict:
    """Run every step; return the summary dict. Raises DemoError naming the failed step."""
    t0 = time.monotonic()
    timings: dict[str, float] = {}
    workdir.mkdir(parents=True, exist_ok=True)
    data_dir = workdir / "parts"
    model_dir = workdir / "model"

    # 1. synthetic parts
    n_good, n_scratch, n_dent = split_test_counts(parts)
    _say(f"[1/5] generating synthetic parts: {n_train} good for training; {parts} test parts "
         f"({n_good} good, {n_scratch} scratched, {n_dent} dented), {image_px}x{image_px} px -> {data_dir}")
    t = time.monotonic()
    if data_dir.exists():
        shutil.rmtree(data_dir)
    info = generate_dataset(data_dir, n_train=n_train, n_test_good=n_good, n_test_scratch=n_scratch, n_test_dent=n_dent, size=image_px)
    line_dir = workdir / "line"
    if line_dir.exists():
        shutil.rmtree(line_dir)
    frames = _make_line_folder(info, data_dir, line_dir)
    timings["generate"] = time.monotonic() - t

    # 2. training
    _say(f"[2/5] training a small model on train/good only (head {DEMO_HEAD}, {model_px}px input, "
         f"lighting {lighting or 'the train default'}, CPU) -> {model_dir}")
    t = time.monotonic()
    if model_dir.exists():
        shutil.rmtree(model_dir)
    model_dir = _train(data_dir, model_dir, model_px, lighting)
    timings["train"] = time.monotonic() - t
    _say(f"      trained in {timings['train']:.0f} s")

    # 3. camera
    cam = camera
    if camera == "pylon":
        ok, why = pylon_emulator_available()
        if not ok:
            cam = "folder"
            _say(f"[3/5] camera: pylon emulator unavailable ({why}); FALLING BACK to the folder source")
        else:
            _say(f"[3/5] camera: Basler pylon camera emulator (PYLON_CAMEMU=1) replaying {len(frames)} parts, {PYLON_TRIGGER.replace('_', ' ')} at {FPS:g} frames/s")
    if cam == "folder":
        if camera == "folder":
            _say(f"[3/5] camera: folder source replaying {len(frames)} parts at {FPS:g} parts/s")

    # 4. broker + daemon + MES subscriber
    (workdir / "state").mkdir(parents=True, exist_ok=True)
    for stale in ("outbox.sqlite", "outbox.sqlite-wal", "outbox.sqlite-shm"):
        p = workdir / "state" / stale
        if p.exists():
            p.unlink()
    broker = start_broker(workdir, prefer=broker_kind)
    sub: Optional[MesSubscriber] = None
    proc: Optional[subprocess.Popen] = None
    log_path = workdir / "daemon.log"
    out = Outcome()
    try:
        _say(f"[4/5] MQTT broker: {broker.describe()}")
        page_port = free_port()
        page_url = f"http://127.0.0.1:{page_port}/"
        cfg = station_config(workdir, cam, line_dir, model_dir, broker, len(frames), page_port=page_port)
        cfg_path = workdir / "station.yaml"
        cfg_path.write_text("# written by `edge-inspector demo`; see config/station.example.yaml for every key\n" + yaml.safe_dump(cfg, sort_keys=False))
        _check_config(cfg_path)
        topic_base = f"{TOPIC_PREFIX}/{LINE}/{STATION}"
        sub = MesSubscriber(broker, topic_base)
        env = dict(os.environ)
        if cam == "pylon":
            env["PYLON_CAMEMU"] = "1"
        cmd = _daemon_command(cfg_path, len(frames))
        _say(f"[5/5] daemon: {' '.join(['edge-inspector'] + cmd[3:])}   (log: {log_path})")
        _say(f"      operator page: {page_url}  (live while the parts pass; read-only: no token configured)")
        _say(f"      MES view of {topic_base}/result:")
        t = time.monotonic()
        with open(log_path, "wb") as log_file:
            proc = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT)
        seen: set = set()
        if daemon_timeout_s is None:  # start-up and warm-up, then 3x the replay time
            daemon_timeout_s = 90.0 + 3.0 * len(frames) / FPS
        deadline = time.monotonic() + daemon_timeout_s
        exited_at: Optional[float] = None
        next_look = 0.0
        while True:
            _drain(sub, out, seen, frames)
            if time.monotonic() >= next_look:  # what an operator's browser would show now
                next_look = time.monotonic() + 0.2
                out.page_shown = max(out.page_shown, _page_parts(page_url))
            if len(out.results) >= len(frames) and proc.poll() is not None:
                break
            if proc.poll() is not None:
                exited_at = exited_at or time.monotonic()
                if time.monotonic() - exited_at > 3.0:  # late results after exit: replayed outbox, in flight
                    break
            if time.monotonic() > deadline:
                break
            time.sleep(0.05)
        timings["run"] = time.monotonic() - t
        if proc.poll() is None:
            if len(out.results) >= len(frames):
                _stop(proc, grace=15.0)
            else:
                _stop(proc, grace=5.0)
                raise DemoError(
                    f"daemon timed out after {daemon_timeout_s:.0f} s with {len(out.results)}/{len(frames)} verdicts; see {log_path}"
                )
        _drain(sub, out, seen, frames)
        rc = proc.returncode
        if rc not in (0, None) and len(out.results) < len(frames):
            raise DemoError(f"daemon exited with code {rc} after {len(out.results)}/{len(frames)} verdicts: {_tail(log_path, 2)} (log: {log_path})")
    finally:
        if proc is not None and proc.poll() is None:
            _stop(proc, grace=5.0)
        if sub is not None:
            sub.close()
        broker.stop()

    summary = summarise(out.results, frames)
    states = []
    for rec in out.status:
        state = "online" if rec.payload.get("online") else "offline"
        if not states or states[-1] != state:
            states.append(state)
    summary["station_status"] = states
    summary["page"] = {"url": page_url, "parts_shown": out.page_shown}
    summary.update(camera=cam, broker=broker.kind, timings=timings, total_s=time.monotonic() - t0, daemon_rc=proc.returncode if proc else None)
    (workdir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def _check_config(path: Path) -> None:
    from edge_inspector.config.loader import load_config

    try:
        load_config(path)
    except InspectorError as exc:
        raise DemoError(f"generated station config is invalid: {exc}") from None


def _drain(sub: MesSubscriber, out: Outcome, seen: set, frames: list[Frame]) -> None:
    while True:
        try:
            kind, rec = sub.queue.get_nowait()
        except queue.Empty:
            return
        if kind == "status":
            out.status.append(rec)
            continue
        seq = rec.payload.get("seq")
        if seq in seen:  # duplicates are allowed by QoS 1: an MES deduplicates on seq
            continue
        seen.add(seq)
        out.results.append(rec)
        _say("      " + format_result(rec.payload, _frame_for(rec.payload, frames, len(out.results) - 1)))


def _page_parts(url: str) -> int:
    """Parts the operator page has counted so far (0 while it is not up yet)."""
    import urllib.request

    try:
        with urllib.request.urlopen(url + "ui/api/state", timeout=0.5) as resp:
            counts = json.loads(resp.read())["stats"]["counts"]
        return int(sum(counts.values()))
    except (OSError, ValueError, KeyError, TypeError):
        return 0


def _stop(proc: subprocess.Popen, grace: float) -> None:
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


def print_summary(s: dict, workdir: Path, kept: bool) -> None:
    bt = s["by_type"]

    def frac(kind: str) -> str:
        d = bt.get(kind, {"n": 0, "ng": 0})
        return f"{kind} {d['ng']}/{d['n']}"

    kinds = [k for k in sorted(bt) if k != "good"]
    cam = f"pylon camera emulator ({PYLON_TRIGGER.replace('_', ' ')})" if s["camera"] == "pylon" else "folder source"
    _say("")
    _say("== demo summary ==")
    _say(f"parts inspected : {s['parts_inspected']}/{s['parts_expected']} via {cam}, broker {s['broker']}")
    _say(f"NG caught       : {s['caught']}/{s['defective']} defective parts flagged NG ({', '.join(frac(k) for k in kinds)}); "
         f"{s['located']} with a defect box on the true defect")
    _say(f"false alarms    : {s['false_alarms']}/{s['good']} good parts flagged NG")
    if s.get("page"):
        _say(f"operator page   : {s['page']['url']} showed {s['page']['parts_shown']} part(s) as they passed "
              "(the page ends with the daemon)")
    if s.get("station_status"):
        _say(f"station status  : {' -> '.join(s['station_status'])} (retained P/status, as the MES saw it)")
    if s["errors"]:
        _say(f"errors          : {s['errors']} ERROR verdicts")
    if s["latency_ms_median"] is not None:
        _say(f"latency         : median {s['latency_ms_median']:.0f} ms, p99 {s['latency_ms_p99']:.0f} ms (frame grab -> MES receipt, from the payload ts)")
    tm = s["timings"]
    _say(f"time            : {s['total_s']:.0f} s total (generate {tm.get('generate', 0):.0f} s, train {tm.get('train', 0):.0f} s, inspect {tm.get('run', 0):.0f} s)")
    if kept:
        _say(f"files           : {workdir} (station.yaml, model/, parts/, line/, train.log, daemon.log, state/archive/, summary.json)")
    else:
        _say("files           : removed (edge-inspector demo --workdir DIR keeps them)")


def _broker_choice() -> str:
    """EDGE_INSPECTOR_DEMO_BROKER=auto|mosquitto|amqtt (default auto: mosquitto when installed)."""
    choice = os.environ.get("EDGE_INSPECTOR_DEMO_BROKER", "auto").strip().lower() or "auto"
    if choice not in ("auto", "mosquitto", "amqtt"):
        raise DemoError(f"EDGE_INSPECTOR_DEMO_BROKER={choice}: use auto, mosquitto or amqtt")
    return choice


def cli_demo(args: argparse.Namespace) -> int:
    workdir_arg = getattr(args, "workdir", None)
    parts = int(getattr(args, "parts", 40) or 40)
    camera = getattr(args, "camera", "pylon") or "pylon"
    if parts < 1:
        print("edge-inspector demo: error: --parts must be at least 1", file=sys.stderr)
        return 2
    kept = workdir_arg is not None
    if str(getattr(args, "log_level", "INFO")).upper() == "INFO":
        # the demo prints its own progress; library info logs would drown it
        from edge_inspector.logging import setup_logging

        setup_logging("WARNING")
    workdir = Path(workdir_arg).resolve() if kept else Path(tempfile.mkdtemp(prefix="edge-inspector-demo-"))
    try:
        summary = run_demo(workdir, parts=parts, camera=camera, broker_kind=_broker_choice(),
                           lighting=getattr(args, "lighting", None))
    except InspectorError as exc:
        # keep the files of a failed run: the message may point at daemon.log
        where = "" if kept else f" (files kept in {workdir})"
        print(f"edge-inspector demo: error: {exc}{where}", file=sys.stderr)
        return 1
    except BaseException:
        if not kept:
            shutil.rmtree(workdir, ignore_errors=True)
        raise
    print_summary(summary, workdir, kept)
    if not kept:
        shutil.rmtree(workdir, ignore_errors=True)
    if summary["parts_inspected"] < summary["parts_expected"]:
        print(f"edge-inspector demo: error: only {summary['parts_inspected']}/{summary['parts_expected']} parts got a verdict", file=sys.stderr)
        return 1
    return 0
