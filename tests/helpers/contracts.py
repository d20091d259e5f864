"""The published JSON Schemas (docs/schemas/) as validators: every test that receives a payload
from a station checks it against the contract MES and PLC developers code against."""

from __future__ import annotations

import functools
import json
from pathlib import Path

import jsonschema

SCHEMAS = Path(__file__).resolve().parents[2] / "docs" / "schemas"
# topic's last level -> schema file (commands: P/reply/<name> and response topics -> reply)
TOPIC_SCHEMAS = {"result": "result", "plc": "plc", "status": "status", "health": "health", "reply": "reply"}


@functools.lru_cache(maxsize=None)
def validator(name: str) -> jsonschema.Draft202012Validator:
    schema = json.loads((SCHEMAS / f"{name}.schema.json").read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema, format_checker=jsonschema.FormatChecker())


def schema_errors(name: str, payload) -> list[str]:
    return [f"{'/'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}" for e in validator(name).iter_errors(payload)]


def assert_valid(name: str, payload) -> None:
    errors = schema_errors(name, payload)
    assert not errors, f"{name} payload violates docs/schemas/{name}.schema.json: {errors}; payload {payload}"


def command_validator(command: str) -> jsonschema.Draft202012Validator:
    schema = json.loads((SCHEMAS / "command.schema.json").read_text())
    return jsonschema.Draft202012Validator(schema["$defs"][command])
