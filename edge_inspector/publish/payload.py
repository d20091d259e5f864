"""MQTT payloads of the contract (GUIDE.md, docs/mqtt.md) and a validator for subscribers.

The builders return plain dicts; the JSON Schema files in docs/schemas/ describe the same shapes
and tests check every builder against them. ``parse_result`` / ``parse_plc`` validate received
payloads without third-party packages and fail with one line naming the bad field.
"""

from __future__ import annotations

import json
import math
import re
import time
from datetime import datetime, timezone
from typing import Any, Mapping, Optional

from edge_inspector import __version__
from edge_inspector.errors import InputError
from edge_inspector.postprocess.verdict import Verdict

RESULT_SCHEMA = "edge-inspector.result/1"
# PLC payload version 2 = version 1's six integers + ``schema`` + ``part_ref``. An integer, not a
# string like the other topics': PLCs map this payload onto a fixed layout of DINTs.
PLC_SCHEMA = 2
STATUS_SCHEMA = "edge-inspector.status/1"
HEALTH_SCHEMA = "edge-inspector.health/1"
REPLY_SCHEMA = "edge-inspector.reply/1"
COMMAND_SCHEMA = "edge-inspector.command/1"
PLC_RES = {"OK": 1, "NG": 2, "ERROR": 3}
_INT32_MIN, _INT32_MAX = -(2**31), 2**31 - 1
# seq runs 1..SEQ_MAX on every topic (the PLC payload is 32-bit signed) and then wraps to 1;
# the outbox enforces it, results and PLC messages validate it (docs/mqtt.md "seq range and wrap").
SEQ_MAX = _INT32_MAX
_TS_RE = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")


class PayloadError(InputError):
    """A payload that does not follow the contract; the message names the field."""


# ---------------------------------------------------------------------------------- builders
def format_ts(epoch_s: float) -> str:
    """UTC ISO-8601 with milliseconds and 'Z': 2026-11-28T16:15:36.123Z."""
    dt = datetime.fromtimestamp(epoch_s, tz=timezone.utc)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"


def station_dict(line: str, name: str) -> dict:
    return {"line": line, "name": name}


def _finite_or_none(value: Optional[float]) -> Optional[float]:
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def result_frame_id(frame_id: str, session: Optional[int]) -> str:
    """``s<session>-<camera frame id>``: camera counters restart with the daemon, the outbox's
    session counter does not (publish/outbox.py), so the pair is unique across restarts."""
    return str(frame_id) if session is None else f"s{session}-{frame_id}"


def camera_frame_id(frame_id: str) -> str:
    """The camera's own id inside a result's ``frame_id`` (inverse of ``result_frame_id``)."""
    return re.sub(r"^s\d+-", "", str(frame_id))


def build_result(verdict: Verdict, *, station: Mapping[str, str], model: Mapping[str, str],
                 session: Optional[int] = None) -> dict:
    """The result payload WITHOUT ``seq`` (the outbox assigns it when it stores the row).

    A non-finite score on an OK/NG verdict means the model failed: it is published as ERROR
    (score null) rather than as a pass/fail the model did not really produce. An ERROR carries
    ``threshold: null``: no decision was made with a threshold, and an MES that charts the
    threshold must not pick up one from a part that was never inspected.
    A verdict without an announced part gets the ``frame_id`` as its generated ``part_id``.
    """
    kind = verdict.verdict
    if kind not in PLC_RES:
        raise PayloadError(f"result payload: verdict must be OK, NG or ERROR, not {kind!r} (frame {verdict.frame_id})")
    score = _finite_or_none(verdict.score)
    error = verdict.error
    if score is None and verdict.score is not None and kind != "ERROR":
        error = f"model score is not finite ({verdict.score}); verdict {kind} withdrawn"
        kind = "ERROR"
    threshold = _finite_or_none(verdict.threshold)
    frame_id = result_frame_id(verdict.frame_id, session)
    payload: dict[str, Any] = {
        "schema": RESULT_SCHEMA,
        "frame_id": frame_id,
        "ts": format_ts(verdict.ts_wall),
        "station": {"line": station["line"], "name": station["name"]},
        "verdict": kind,
        "score": None if score is None else round(score, 6),
        "threshold": None if threshold is None or kind == "ERROR" else round(threshold, 6),
        "defects": [] if kind == "ERROR" else [d.to_dict() for d in verdict.defects],
        "model": {"name": model["name"], "sha256": model["sha256"]},
        "part_id": verdict.part_id or frame_id,
        "part_ref": int(verdict.part_ref or 0),
    }
    if verdict.part_id is None:
        payload["part_id_generated"] = True
    if verdict.product is not None:
        payload["product"] = str(verdict.product)
    if verdict.context:
        payload["context"] = {str(k): str(v) for k, v in verdict.context.items()}
    if kind == "ERROR":
        # One line: subscribers show it in an HMI cell; tracebacks belong in the daemon's log.
        text = (error or "").strip()
        payload["error"] = text.splitlines()[0] if text else "unspecified error"
    if verdict.archive_ref:
        payload["archive"] = str(verdict.archive_ref)
        if verdict.heatmap_ref:
            payload["heatmap"] = str(verdict.heatmap_ref)
        if verdict.image_url:  # archive.base_url set: fetch by GET (archive/http.py)
            payload["image_url"] = verdict.image_url
        if verdict.heatmap_url:
            payload["heatmap_url"] = verdict.heatmap_url
    return payload


def _clamp_int32(value: float) -> int:
    return int(max(_INT32_MIN, min(_INT32_MAX, round(value))))


def _plc_seq(seq: Any) -> int:
    seq = int(seq)
    if not 1 <= seq <= SEQ_MAX:  # the outbox never hands one out; refuse rather than send garbage to a PLC
        raise PayloadError(f"plc payload: seq {seq} outside 1..{SEQ_MAX}")
    return seq


def build_plc(result: Mapping[str, Any]) -> dict:
    """Flat integer payload for PLCs, derived from a stored result (so both carry the same seq).

    ``x0``/``y0`` are the centroid of the highest-score defect; 0 when there is none. Integers are
    clamped to the signed 32-bit range (a PLC DINT).
    """
    defects = result.get("defects") or []
    x0 = y0 = 0
    if defects:
        top = max(defects, key=lambda d: d["score"])
        x0, y0 = _clamp_int32(top["centroid"][0]), _clamp_int32(top["centroid"][1])
    score = result.get("score")
    part_ref = result.get("part_ref", 0)  # rows stored before version 2 have none
    return {
        "schema": PLC_SCHEMA,
        "seq": _plc_seq(result["seq"]),
        "res": PLC_RES[result["verdict"]],
        "score_milli": 0 if score is None else _clamp_int32(score * 1000),
        "n_def": len(defects),
        "x0": x0,
        "y0": y0,
        "part_ref": _clamp_int32(part_ref) if _is_int(part_ref) else 0,
    }


def build_status(
    online: bool,
    *,
    station: Mapping[str, str],
    ts: Optional[float] = None,
    **fields: Any,
) -> dict:
    """Retained status payload. ``fields`` (model, camera, mqtt, outbox_depth, ...) are merged."""
    payload: dict[str, Any] = {
        "schema": STATUS_SCHEMA,
        "online": bool(online),
        "ts": format_ts(time.time() if ts is None else ts),
        "station": {"line": station["line"], "name": station["name"]},
        "version": __version__,
    }
    for key, value in fields.items():
        if key not in ("schema", "online", "ts", "station"):
            payload[key] = value
    return payload


def build_health(counters: Mapping[str, Any], *, station: Mapping[str, str], ts: Optional[float] = None, **sections) -> dict:
    """Periodic health payload: pipeline ``counters`` (name → number) plus publisher sections."""
    clean: dict[str, float | int] = {}
    for key, value in counters.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise PayloadError(f"health payload: counters.{key} must be a finite number, not {value!r}")
        clean[str(key)] = value
    payload: dict[str, Any] = {
        "schema": HEALTH_SCHEMA,
        "ts": format_ts(time.time() if ts is None else ts),
        "station": {"line": station["line"], "name": station["name"]},
        "counters": clean,
    }
    payload.update(sections)
    return payload


def dumps(payload: Mapping[str, Any]) -> str:
    return json.dumps(payload, separators=(",", ":"), allow_nan=False)


# -------------------------------------------------------------------------------- validation
def _fail(what: str, field: str, message: str) -> PayloadError:
    return PayloadError(f"{what} payload: field '{field}' {message}")


def _load(data: bytes | str, what: str) -> dict:
    try:
        obj = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise PayloadError(f"{what} payload: not valid JSON ({exc})") from None
    if not isinstance(obj, dict):
        raise PayloadError(f"{what} payload: must be a JSON object, not {type(obj).__name__}")
    return obj


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return (isinstance(v, (int, float)) and not isinstance(v, bool)) and math.isfinite(v)


def _require(obj: dict, field: str, what: str, prefix: str = "") -> Any:
    if field not in obj:
        raise _fail(what, prefix + field, "is missing")
    return obj[field]


def _check_station(value: Any, what: str) -> None:
    if not isinstance(value, dict):
        raise _fail(what, "station", "must be an object {line, name}")
    for key in ("line", "name"):
        v = _require(value, key, what, "station.")
        if not isinstance(v, str) or not v:
            raise _fail(what, f"station.{key}", "must be a non-empty string")


def _check_ts(value: Any, what: str) -> None:
    if not isinstance(value, str) or not _TS_RE.match(value):
        raise _fail(what, "ts", f"must be UTC ISO-8601 with milliseconds and 'Z', not {value!r}")


def parse_result(data: bytes | str) -> dict:
    """Validate a received ``P/result`` payload and return it as a dict.

    Raises PayloadError with one line naming the first bad field. Unknown extra fields are
    accepted (forward compatibility, see docs/mqtt.md); missing or mistyped ones are not.
    """
    what = "result"
    obj = _load(data, what)
    if _require(obj, "schema", what) != RESULT_SCHEMA:
        raise _fail(what, "schema", f"must be {RESULT_SCHEMA!r}, not {obj['schema']!r}")
    seq = _require(obj, "seq", what)
    if not _is_int(seq) or not 1 <= seq <= SEQ_MAX:
        raise _fail(what, "seq", f"must be an integer in 1..{SEQ_MAX}, not {seq!r}")
    frame_id = _require(obj, "frame_id", what)
    if not isinstance(frame_id, str) or not frame_id:
        raise _fail(what, "frame_id", "must be a non-empty string")
    _check_ts(_require(obj, "ts", what), what)
    _check_station(_require(obj, "station", what), what)
    verdict = _require(obj, "verdict", what)
    if verdict not in PLC_RES:
        raise _fail(what, "verdict", f"must be OK, NG or ERROR, not {verdict!r}")
    for key in ("score", "threshold"):
        v = _require(obj, key, what)
        if v is not None and not _is_num(v):
            raise _fail(what, key, f"must be a number or null, not {v!r}")
        if v is None and verdict != "ERROR":
            raise _fail(what, key, f"may be null only when verdict is ERROR (verdict {verdict})")
    defects = _require(obj, "defects", what)
    if not isinstance(defects, list):
        raise _fail(what, "defects", "must be a list")
    for i, d in enumerate(defects):
        name = f"defects[{i}]"
        if not isinstance(d, dict):
            raise _fail(what, name, "must be an object")
        bbox = _require(d, "bbox", what, name + ".")
        if not (isinstance(bbox, list) and len(bbox) == 4 and all(_is_int(v) and v >= 0 for v in bbox)):
            raise _fail(what, name + ".bbox", f"must be [x, y, w, h] of 4 integers >= 0, not {bbox!r}")
        centroid = _require(d, "centroid", what, name + ".")
        if not (isinstance(centroid, list) and len(centroid) == 2 and all(_is_num(v) for v in centroid)):
            raise _fail(what, name + ".centroid", f"must be [x, y] of 2 numbers, not {centroid!r}")
        area = _require(d, "area_px", what, name + ".")
        if not _is_int(area) or area < 0:
            raise _fail(what, name + ".area_px", f"must be an integer >= 0, not {area!r}")
        score = _require(d, "score", what, name + ".")
        if not _is_num(score):
            raise _fail(what, name + ".score", f"must be a number, not {score!r}")
    model = _require(obj, "model", what)
    if not isinstance(model, dict):
        raise _fail(what, "model", "must be an object {name, sha256}")
    name = _require(model, "name", what, "model.")
    if not isinstance(name, str) or not name:
        raise _fail(what, "model.name", "must be a non-empty string")
    sha = _require(model, "sha256", what, "model.")
    if not isinstance(sha, str) or not _SHA256_RE.match(sha):
        raise _fail(what, "model.sha256", "must be 64 lowercase hex digits")
    if verdict == "ERROR":
        err = _require(obj, "error", what)
        if not isinstance(err, str) or not err:
            raise _fail(what, "error", "must be a non-empty string when verdict is ERROR")
    elif "error" in obj:
        raise _fail(what, "error", f"must be absent unless verdict is ERROR (verdict {verdict})")
    if "archive" in obj and (not isinstance(obj["archive"], str) or not obj["archive"]):
        raise _fail(what, "archive", "must be a non-empty string when present")
    for key in ("part_id", "product"):  # absent in results stored before part identity existed
        if key in obj and (not isinstance(obj[key], str) or not obj[key]):
            raise _fail(what, key, "must be a non-empty string when present")
    if "part_ref" in obj and (not _is_int(obj["part_ref"]) or not 0 <= obj["part_ref"] <= _INT32_MAX):
        raise _fail(what, "part_ref", f"must be an integer in 0..{_INT32_MAX}, not {obj['part_ref']!r}")
    if "context" in obj and not (isinstance(obj["context"], dict) and all(isinstance(v, str) for v in obj["context"].values())):
        raise _fail(what, "context", "must be an object of strings")
    return obj


def parse_plc(data: bytes | str) -> dict:
    """Validate a received ``P/plc`` payload (integers; version 1 without ``schema``/``part_ref``)."""
    what = "plc"
    obj = _load(data, what)
    if "schema" in obj and obj["schema"] != PLC_SCHEMA:  # version 1 had no schema field
        raise _fail(what, "schema", f"must be {PLC_SCHEMA}, not {obj['schema']!r}")
    for key in ("seq", "res", "score_milli", "n_def", "x0", "y0", "part_ref"):
        if key == "part_ref" and key not in obj:
            continue
        v = _require(obj, key, what)
        if not _is_int(v) or not (_INT32_MIN <= v <= _INT32_MAX):
            raise _fail(what, key, f"must be a 32-bit integer, not {v!r}")
    if obj["res"] not in (1, 2, 3):
        raise _fail(what, "res", f"must be 1 (OK), 2 (NG) or 3 (ERROR), not {obj['res']!r}")
    if obj["seq"] < 1:
        raise _fail(what, "seq", f"must be >= 1, not {obj['seq']!r}")
    if obj["n_def"] < 0:
        raise _fail(what, "n_def", f"must be >= 0, not {obj['n_def']!r}")
    return obj


def check_model_info(model: Mapping[str, Any]) -> dict:
    """Validate the publisher's ``model_info`` once at start-up instead of on every result."""
    if not isinstance(model, Mapping):
        raise PayloadError("model_info must be a mapping {name, sha256}")
    name, sha = model.get("name"), model.get("sha256")
    if not isinstance(name, str) or not name:
        raise PayloadError("model_info: field 'name' must be a non-empty string")
    if not isinstance(sha, str) or not _SHA256_RE.match(sha):
        raise PayloadError(f"model_info: field 'sha256' must be 64 lowercase hex digits, not {sha!r}")
    return {"name": name, "sha256": sha}
