"""Class 1 of issue 8 for remote commands (``P/cmd/<name>``): every argument of every command is a
bounded, finite number (not a boolean), every malformed payload gets a one-line error reply —
deep nesting included — and every reply, ``busy`` too, echoes the request's ``id``.

The argument tests walk the command schemas, so an argument added without a range fails here."""

from __future__ import annotations

import json
import threading
from types import SimpleNamespace

import numpy as np
import pytest

from edge_inspector.publish.commands import COMMANDS, CommandHandler
from tests.helpers.fake_control import FakeControl
from tests.helpers.bad_inputs import NON_NUMBERS_JSON, numeric_fields

BASE = "ei/l1/st1"
ARGUMENTS = [(name, field) for name, schema in COMMANDS.items() for field in numeric_fields(schema)]


@pytest.fixture
def handler():
    control = FakeControl()
    control.frame = np.full((48, 64), 127, np.uint8)  # so that a valid snapshot succeeds
    return CommandHandler(control, BASE)


def _valid_payload(name: str) -> dict:
    return {"value": 0.7} if name == "set-threshold" else {}


def test_the_walk_finds_every_numeric_argument():
    assert {(n, f.key) for n, f in ARGUMENTS} >= {("set-threshold", "value"), ("snapshot", "max_side"),
                                                   ("snapshot", "quality"), ("trigger", "count")}


@pytest.mark.parametrize("name, field", ARGUMENTS, ids=lambda a: a if isinstance(a, str) else a.key)
def test_every_numeric_argument_has_a_range_and_refuses_everything_outside_it(handler, name, field):
    assert field.lower is not None and field.upper is not None, f"{name}.{field.key}: declare Field(ge/gt=..., le/lt=...)"
    bad = [json.dumps(v) for v in field.out_of_range()] + list(NON_NUMBERS_JSON.values())
    for text in bad:
        payload = dict(_valid_payload(name), id="r-7")
        raw = json.dumps(payload)[:-1] + f', "{field.key}": {text}}}'
        reply = handler.execute(name, raw.encode())
        assert reply["ok"] is False, (text, reply)
        assert reply["error"].startswith(f"{field.key}: ") and "\n" not in reply["error"], reply
        assert reply["id"] == "r-7"
    good = handler.execute(name, json.dumps({**_valid_payload(name), field.key: field.in_range()}).encode())
    assert good["ok"] is True, good
    assert handler.control.threshold in (0.5, 0.7, field.in_range())


def test_true_is_not_a_threshold(handler):
    reply = handler.execute("set-threshold", b'{"value": true, "id": "t"}')
    assert reply == {"ok": False, "command": "set-threshold", "error": "value: expected a number, got true", "id": "t"}
    assert handler.control.threshold == 0.5


@pytest.mark.parametrize("depth", [200, 5000, 100_000])
def test_deeply_nested_payload_gets_an_error_reply(handler, depth):
    payload = ('{"id": "deep", "value": ' + "[" * depth + "]" * depth + "}").encode()
    reply = handler.execute("set-threshold", payload)
    assert reply["ok"] is False and "\n" not in reply["error"]
    assert "nested" in reply["error"] or "too large" in reply["error"] or "value:" in reply["error"], reply
    assert handler.control.threshold == 0.5


def test_nested_payload_over_the_worker_thread_gets_a_reply():
    """What the broker path does: on_message → queue → worker → reply (a RecursionError used to
    kill the reply and only log)."""
    replies = []
    done = threading.Event()

    def reply(topic, payload, correlation):
        replies.append((topic, json.loads(payload)))
        done.set()

    handler = CommandHandler(FakeControl(), BASE, reply=reply).start()
    try:
        message = SimpleNamespace(topic=f"{BASE}/cmd/status", payload=b"[" * 50_000 + b"]" * 50_000, properties=None)
        handler.on_message(message)
        assert done.wait(5), "no reply"
    finally:
        handler.stop()
    topic, body = replies[0]
    assert topic == f"{BASE}/reply/status" and body["ok"] is False


def test_oversized_payload_is_refused_without_parsing(handler):
    big = json.dumps({"id": "big", "value": 0.7, "pad": "x" * 200_000}).encode()
    reply = handler.execute("set-threshold", big)
    assert reply["ok"] is False and "too large" in reply["error"] and "\n" not in reply["error"]
    assert handler.control.threshold == 0.5


def test_busy_reply_echoes_the_id():
    replies = []
    gate = threading.Event()

    class SlowControl(FakeControl):
        def status(self):
            gate.wait(5)
            return super().status()

    handler = CommandHandler(SlowControl(), BASE, reply=lambda t, p, c: replies.append(json.loads(p)), queue_size=1).start()
    try:
        for i in range(4):  # one running, one queued, the rest refused as busy
            handler.on_message(SimpleNamespace(topic=f"{BASE}/cmd/status", payload=json.dumps({"id": f"q{i}"}).encode(),
                                               properties=None))
        busy = [r for r in replies if r["error"].startswith("busy")] if replies else []
        assert busy, replies
        assert {r["id"] for r in busy} <= {"q1", "q2", "q3"} and all("id" in r for r in busy)
    finally:
        gate.set()
        handler.stop()


@pytest.mark.parametrize(
    "name, payload",
    [
        ("reboot", b'{"id": "u1"}'),
        ("set-threshold", b'{"id": "u1", "value": }'),
    ],
)
def test_error_replies_echo_the_id_when_it_can_be_read(handler, name, payload):
    reply = handler.execute(name, payload)
    assert reply["ok"] is False
    if name == "reboot":
        assert reply["id"] == "u1"
