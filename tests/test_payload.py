"""Payload builders follow docs/schemas/*.schema.json; parse_result names the bad field."""

from __future__ import annotations

import json

import pytest

jsonschema = pytest.importorskip("jsonschema")

from edge_inspector.postprocess.verdict import Defect, Verdict  # noqa: E402
from edge_inspector.publish.payload import (  # noqa: E402
    PayloadError,
    build_health,
    build_plc,
    build_result,
    build_status,
    check_model_info,
    format_ts,
    parse_plc,
    parse_result,
)

from tests.helpers.contracts import SCHEMAS, validator  # noqa: E402

STATION = {"line": "L1", "name": "S7"}
MODEL = {"name": "bottle-knn", "sha256": "ab" * 32}


def _verdict(kind="NG", **kw) -> Verdict:
    base = dict(
        frame_id="cam0-000042", verdict=kind, score=0.8731, threshold=0.5, ts_wall=1764346536.1234, ts_grab=1.0,
        defects=[
            Defect(bbox=(10, 20, 30, 40), centroid=(25.04, 40.0), area_px=900, score=0.7),
            Defect(bbox=(400, 80, 20, 30), centroid=(411.6, 95.5), area_px=310, score=0.95),
        ],
    )
    base.update(kw)
    return Verdict(**base)


def _stored(result: dict, seq: int = 18231) -> dict:
    """What the outbox stores and subscribers receive: the result with its seq."""
    return json.loads(json.dumps({"seq": seq, **result}))


def test_ng_result_has_every_contract_field_and_validates():
    result = _stored(build_result(_verdict(), station=STATION, model=MODEL))
    assert set(result) == {"schema", "seq", "frame_id", "ts", "station", "verdict", "score", "threshold", "defects", "model",
                           "part_id", "part_id_generated", "part_ref"}
    assert result["part_id"] == result["frame_id"] == "cam0-000042" and result["part_ref"] == 0
    assert result["schema"] == "edge-inspector.result/1"
    assert result["ts"] == "2025-11-28T16:15:36.123Z"
    assert result["station"] == STATION and result["model"] == MODEL
    assert result["defects"][1] == {"bbox": [400, 80, 20, 30], "centroid": [411.6, 95.5], "area_px": 310, "score": 0.95}
    validator("result").validate(result)
    assert parse_result(json.dumps(result)) == result


def test_error_result_carries_one_line_error_and_no_defects():
    v = _verdict("ERROR", score=None, threshold=None, error="decode failed: truncated JPEG\nTraceback ...")
    result = _stored(build_result(v, station=STATION, model=MODEL))
    assert result["error"] == "decode failed: truncated JPEG" and result["defects"] == [] and result["score"] is None
    validator("result").validate(result)
    parse_result(json.dumps(result))


def test_ok_result_with_archive_reference():
    result = _stored(build_result(_verdict("OK", score=0.1, defects=[], archive_ref="2025/11/28/cam0-000042.png"),
                                  station=STATION, model=MODEL))
    assert result["archive"] == "2025/11/28/cam0-000042.png" and "error" not in result
    validator("result").validate(result)


def test_non_finite_score_is_published_as_error_not_as_a_pass():
    result = _stored(build_result(_verdict("OK", score=float("nan")), station=STATION, model=MODEL))
    assert result["verdict"] == "ERROR" and result["score"] is None and "not finite" in result["error"]
    validator("result").validate(result)


def test_plc_payload_from_highest_score_defect():
    plc = build_plc(_stored(build_result(_verdict(), station=STATION, model=MODEL)))
    assert plc == {"schema": 2, "seq": 18231, "res": 2, "score_milli": 873, "n_def": 2, "x0": 412, "y0": 96, "part_ref": 0}
    validator("plc").validate(plc)
    assert parse_plc(json.dumps(plc)) == plc


@pytest.mark.parametrize("kind,res", [("OK", 1), ("ERROR", 3)])
def test_plc_without_defects_has_zero_position(kind, res):
    v = _verdict(kind, defects=[], score=None if kind == "ERROR" else 0.2, error="x" if kind == "ERROR" else None)
    plc = build_plc(_stored(build_result(v, station=STATION, model=MODEL), seq=5))
    assert plc["res"] == res and plc["x0"] == plc["y0"] == plc["n_def"] == 0
    validator("plc").validate(plc)


def test_status_and_health_validate():
    status = build_status(True, station=STATION, model=MODEL, camera="open", mqtt={"client_id": "c", "protocol": "5"},
                          outbox_depth=3, since=format_ts(0), session=4, state="ready")
    validator("status").validate(json.loads(json.dumps(status)))
    validator("status").validate(build_status(False, station=STATION, reason="connection_lost", session=4))
    with pytest.raises(jsonschema.ValidationError):  # the values docs/mqtt.md lists, nothing else
        validator("status").validate(build_status(True, station=STATION, session=4, camera="ok"))
    health = build_health({"frames": 10, "dropped": 0, "latency_ms_p99": 12.5}, station=STATION,
                          outbox={"depth": 0, "evicted_total": 0, "last_seq": 10},
                          mqtt={"connected": True, "published": 10, "acked": 10, "replayed": 0, "plc_published": 10,
                                "plc_skipped": 0, "rejected": 0, "reconnects": 0, "inflight": 0})
    validator("health").validate(health)
    with pytest.raises(PayloadError, match=r"counters\.frames must be a finite number"):
        build_health({"frames": "ten"}, station=STATION)


def _good() -> dict:
    return _stored(build_result(_verdict(), station=STATION, model=MODEL))


@pytest.mark.parametrize(
    "mutate,field",
    [
        (lambda p: p.pop("seq"), "'seq' is missing"),
        (lambda p: p.update(seq="7"), "'seq' must be an integer"),
        (lambda p: p.update(ts="2025-11-28 16:15:36"), "'ts' must be UTC ISO-8601"),
        (lambda p: p.update(verdict="MAYBE"), "'verdict' must be OK, NG or ERROR"),
        (lambda p: p.update(score=None), "'score' may be null only when verdict is ERROR"),
        (lambda p: p["defects"][1].update(bbox=[1, 2, 3]), "'defects[1].bbox' must be [x, y, w, h]"),
        (lambda p: p["defects"][0].pop("area_px"), "'defects[0].area_px' is missing"),
        (lambda p: p["station"].pop("line"), "'station.line' is missing"),
        (lambda p: p["model"].update(sha256="nope"), "'model.sha256' must be 64"),
        (lambda p: p.update(verdict="ERROR"), "'error' is missing"),
        (lambda p: p.update(error="boom"), "'error' must be absent unless verdict is ERROR"),
        (lambda p: p.update(schema="edge-inspector.result/2"), "'schema' must be"),
    ],
)
def test_parse_result_names_the_bad_field_in_one_line(mutate, field):
    payload = _good()
    mutate(payload)
    with pytest.raises(PayloadError) as err:
        parse_result(json.dumps(payload))
    message = str(err.value)
    assert field in message and "\n" not in message
    # the JSON Schema rejects the same payloads
    assert list(validator("result").iter_errors(payload))


def test_parse_rejects_non_json_and_non_objects():
    with pytest.raises(PayloadError, match="not valid JSON"):
        parse_result(b"\xff{")
    with pytest.raises(PayloadError, match="must be a JSON object"):
        parse_result("[1]")
    with pytest.raises(PayloadError, match="'res' must be 1"):
        parse_plc('{"seq": 1, "res": 4, "score_milli": 0, "n_def": 0, "x0": 0, "y0": 0}')


def test_unknown_extra_fields_are_tolerated_for_forward_compatibility():
    payload = _good()
    payload["future_field"] = 1
    parse_result(json.dumps(payload))
    validator("result").validate(payload)


def test_model_info_is_checked_once_with_a_clear_message():
    with pytest.raises(PayloadError, match="'sha256' must be 64 lowercase hex"):
        check_model_info({"name": "m", "sha256": "ABC"})


@pytest.mark.parametrize("name", ["result", "plc", "status", "health", "reply"])
def test_docs_mqtt_examples_validate_against_the_published_schemas(name):
    """The first JSON example under each payload heading of docs/mqtt.md is what MES/PLC
    developers copy: it must stay valid against the schema the station is tested with."""
    import re

    md = (SCHEMAS.parent / "mqtt.md").read_text()
    match = re.search(rf"### `P/{name}[`/].*?```json\n(.*?)```", md, re.S)
    assert match, f"docs/mqtt.md has no JSON example for P/{name}"
    example = json.loads(match.group(1))
    errors = [e.message for e in validator(name).iter_errors(example)]
    assert not errors, errors


def test_command_schema_file_is_the_one_the_code_generates():
    from edge_inspector.publish.commands import command_json_schema

    on_disk = json.loads((SCHEMAS / "command.schema.json").read_text())
    assert on_disk == json.loads(json.dumps(command_json_schema())), (
        "regenerate: python -m edge_inspector.publish.commands > docs/schemas/command.schema.json")
    jsonschema.Draft202012Validator.check_schema(on_disk)


def test_part_identity_reaches_result_and_plc_and_validates():
    v = _verdict(part_id="DMC-4711", product="bottle-500ml", context={"job": "J1", "lot": "L7"}, part_ref=40817)
    result = _stored(build_result(v, station=STATION, model=MODEL, session=12))
    assert result["frame_id"] == "s12-cam0-000042" and result["part_id"] == "DMC-4711" and "part_id_generated" not in result
    assert result["product"] == "bottle-500ml" and result["context"] == {"job": "J1", "lot": "L7"}
    validator("result").validate(result)
    assert parse_result(json.dumps(result)) == result
    plc = build_plc(result)
    assert plc["part_ref"] == 40817 and plc["schema"] == 2
    validator("plc").validate(plc)


def test_error_result_has_null_threshold_as_documented():
    result = _stored(build_result(_verdict("ERROR", score=None, threshold=0.5, error="camera lost"), station=STATION, model=MODEL))
    assert result["threshold"] is None
    validator("result").validate(result)


def test_result_stored_before_part_identity_still_gives_a_valid_plc_message():
    """Rows in an outbox written by an older version carry no part fields: replayed as they are,
    and a PLC message built from one is still a complete version-2 message."""
    old = _good()
    for key in ("part_id", "part_id_generated", "part_ref"):
        old.pop(key)
    validator("result").validate(old)
    parse_result(json.dumps(old))
    assert build_plc(old)["part_ref"] == 0
