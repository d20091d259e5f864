"""Remote commands on ``P/cmd/<name>``: reload, set-threshold, snapshot, status, trigger.

Request: publish a JSON object (or an empty payload for ``{}``) to ``P/cmd/<name>``, QoS 1.
With MQTT 5 set the *Response Topic* and *Correlation Data* properties; the reply goes to that
topic with the same correlation data. MQTT 3.1.1 clients get the reply on ``P/reply/<name>`` and
can match it with an optional ``"id"`` field (echoed back). Reply::

    {"ok": true,  "command": "set-threshold", "result": {...}, "id": "..."}
    {"ok": false, "command": "set-threshold", "error": "value: Input should be greater than 0"}

Every payload is validated (unknown fields are errors) and every error is one line, with the
request's ``id`` when it could be read (``busy`` replies included). Numbers are finite, bounded
and never booleans (``{"value": true}`` is not threshold 1.0): config/numbers.py. A payload over
``MAX_PAYLOAD_BYTES`` or nested too deeply for the JSON parser gets an error reply too. Who may
publish to ``P/cmd/#`` is the broker's job (deploy/mosquitto/acl.example).

Commands run one at a time on a worker thread of their own: a reload that loads and warms up a
new model takes seconds, and paho's network thread (keep-alives, PUBACKs) must never wait on it.
"""

from __future__ import annotations

import base64
import json
import queue
import threading
from dataclasses import dataclass
from typing import Annotated, Any, Callable, Literal, Optional

import cv2
import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from edge_inspector.acquisition.parts import PART_REF_MAX, PartTag

from edge_inspector.config.models import ProductName
from edge_inspector.config.numbers import THRESHOLD_RANGE, FiniteFloat, Integer, error_text
from edge_inspector.faults import fault_point
from edge_inspector.logging import get_logger
from edge_inspector.observer import PipelineControl
from edge_inspector.publish.payload import COMMAND_SCHEMA, REPLY_SCHEMA
from edge_inspector.threads import start_supervised

log = get_logger(__name__)

Reply = Callable[[str, bytes, Optional[bytes]], None]  # (topic, payload, correlation_data)


# --- payload schemas ---------------------------------------------------------------------------
# Commands are small JSON objects; anything larger is refused before it is parsed.
MAX_PAYLOAD_BYTES = 64 * 1024


class _Args(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=False, allow_inf_nan=False)
    id: Optional[str] = Field(None, max_length=128, description="echoed in the reply (for MQTT 3.1.1 clients)")
    # Optional: a commander that names the version it speaks is refused by a station that does
    # not speak it, instead of having fields misread.
    schema_version: Optional[Literal[COMMAND_SCHEMA]] = Field(None, alias="schema",  # type: ignore[valid-type]
                                                              description=f"{COMMAND_SCHEMA} when given")


class ReloadArgs(_Args):
    """Re-read the station's own config file (the path is fixed: a remote client never names files)."""


class SetThresholdArgs(_Args):
    value: FiniteFloat = Field(..., **THRESHOLD_RANGE, description="new image-score threshold; not persisted across restarts")


class SnapshotArgs(_Args):
    max_side: Integer = Field(1024, ge=16, le=8192, description="downscale so the longer side is at most this")
    format: Literal["jpeg", "png"] = "jpeg"
    quality: Integer = Field(85, ge=10, le=100, description="JPEG quality")
    seq: Optional[Integer] = Field(None, ge=1, le=2**31 - 1, strict=True,
                                   description="the archived frame of this result instead of the last grabbed frame")


class StatusArgs(_Args):
    pass


# One command may image a short burst of parts; bounded because each pylon trigger may wait up to
# camera.grab_timeout_ms for the camera, and the command worker serves one command at a time.
MAX_TRIGGERS_PER_COMMAND = 32


# Part identity (acquisition/parts.py): short, printable, no control characters (they end up in
# HMI cells, logs and file names of MES systems).
PartId = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[^\x00-\x1f\x7f]+$")]
ContextKey = Annotated[str, Field(min_length=1, max_length=32, pattern=r"^[A-Za-z0-9_.-]+$")]
ContextValue = Annotated[str, Field(max_length=128, pattern=r"^[^\x00-\x1f\x7f]*$")]


class _PartArgs(_Args):
    part_id: Optional[PartId] = Field(None, description="the part's id (serial, DMC); echoed in the result")
    product: Optional[ProductName] = Field(None, description="product / variant; echoed in the result")
    context: Optional[dict[ContextKey, ContextValue]] = Field(None, max_length=16,
                                                              description="short strings (job, lot, ...) echoed in the result")
    part_ref: Optional[Integer] = Field(None, ge=1, le=PART_REF_MAX, strict=True,
                                        description="integer echoed in the PLC message (default: derived from part_id)")

    def tag(self) -> Optional[PartTag]:
        if self.part_id is None and self.product is None and not self.context and self.part_ref is None:
            return None
        return PartTag.make(self.part_id, self.product, self.context, self.part_ref)


class TriggerArgs(_PartArgs):
    """Fire software triggers (camera.trigger.mode: software, software_source: command)."""

    count: Integer = Field(1, ge=1, le=MAX_TRIGGERS_PER_COMMAND, strict=True,
                       description="triggers to fire back to back; each one ends as one result")

    @model_validator(mode="after")
    def _one_id_per_part(self) -> "TriggerArgs":
        if self.count > 1 and (self.part_id is not None or self.part_ref is not None):
            raise ValueError("part_id/part_ref name one part: send count 1 per identified part")
        return self


class ProductArgs(_Args):
    """Put a product's recipe (config ``recipes.products``) in service from the next frame on."""

    product: ProductName = Field(..., description="one of recipes.products")


class PartArgs(_PartArgs):
    """Announce the part the next hardware trigger images (camera.trigger.mode: hardware)."""

    clear: bool = Field(False, strict=True, description="first drop every announcement still waiting (e.g. after a missed "
                                                        "trigger pulse put the queue out of step with the parts)")


COMMANDS: dict[str, type[_Args]] = {
    "reload": ReloadArgs,
    "set-threshold": SetThresholdArgs,
    "snapshot": SnapshotArgs,
    "status": StatusArgs,
    "trigger": TriggerArgs,
    "part": PartArgs,
    "product": ProductArgs,
}


def command_json_schema() -> dict:
    """JSON Schema of every command request, generated from the pydantic models above: the file
    docs/schemas/command.schema.json is this (a test keeps them equal)."""
    defs = {name: _standard_bounds(model.model_json_schema(by_alias=True)) for name, model in COMMANDS.items()}
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": "https://edge-inspector.example/schemas/command.schema.json",
        "title": "edge-inspector command requests (topic P/cmd/<command>)",
        "description": f"One JSON object per command, {COMMAND_SCHEMA}; the topic's last level names the command "
                       "(the matching $defs entry). An empty payload means {}. Generated from "
                       "edge_inspector/publish/commands.py: python -m edge_inspector.publish.commands > "
                       "docs/schemas/command.schema.json",
        "$defs": defs,
    }


# pydantic writes the bounds of an Optional[Integer] (a type with a BeforeValidator) under their
# Python names; JSON Schema readers only know the standard keywords.
_BOUND_KEYWORDS = {"ge": "minimum", "le": "maximum", "gt": "exclusiveMinimum", "lt": "exclusiveMaximum"}


def _standard_bounds(node: Any) -> Any:
    if isinstance(node, dict):
        numeric = node.get("type") in ("integer", "number")
        return {(_BOUND_KEYWORDS.get(k, k) if numeric else k): _standard_bounds(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_standard_bounds(v) for v in node]
    return node


def validation_message(err: ValidationError) -> str:
    """pydantic errors → one line: 'value: Input should be greater than 0; bogus: Extra inputs ...'."""
    parts = []
    for e in err.errors():
        where = ".".join(str(p) for p in e.get("loc", ())) or "payload"
        parts.append(f"{where}: {error_text(e)}")
    return "; ".join(parts)


@dataclass
class CommandRequest:
    name: str
    payload: bytes
    response_topic: Optional[str]
    correlation_data: Optional[bytes]


class CommandHandler:
    """Validates and executes commands against a PipelineControl, and sends the replies.

    ``reply(topic, payload_bytes, correlation_data)`` publishes one reply (QoS 1, not retained);
    ``paho_replier(client)`` builds one for a paho client. ``on_command(name, ok)`` is an optional
    hook for metrics.
    """

    def __init__(
        self,
        control: PipelineControl,
        topic_base: str,
        reply: Optional[Reply] = None,
        on_command: Optional[Callable[[str, bool], None]] = None,
        queue_size: int = 8,
    ):
        self.control = control
        self.topic_base = topic_base
        self.topic_filter = f"{topic_base}/cmd/+"
        self._reply = reply
        self._on_command = on_command
        self._queue: "queue.Queue[Optional[CommandRequest]]" = queue.Queue(maxsize=queue_size)
        self._thread: Optional[threading.Thread] = None

    # --- lifecycle --------------------------------------------------------------------------
    def start(self) -> "CommandHandler":
        if self._thread is None:
            self._thread = start_supervised("mqtt-commands", self._run)
        return self

    def stop(self, timeout: float = 5.0) -> None:
        if self._thread is None:
            return
        try:
            self._queue.put(None, timeout=timeout)
        except queue.Full:
            pass
        self._thread.join(timeout)
        self._thread = None

    # --- paho side (network thread: never block) ----------------------------------------------
    def on_message(self, message: Any) -> None:
        """paho MQTTMessage on ``P/cmd/<name>`` → queued for the worker (or an immediate 'busy')."""
        name = str(message.topic).rsplit("/", 1)[-1]
        props = getattr(message, "properties", None)
        request = CommandRequest(
            name=name,
            payload=bytes(message.payload or b""),
            response_topic=getattr(props, "ResponseTopic", None) if props is not None else None,
            correlation_data=getattr(props, "CorrelationData", None) if props is not None else None,
        )
        try:
            self._queue.put_nowait(request)
        except queue.Full:
            request_id = _request_id(parse_payload(request.payload)[0])
            self._send(request, _failure(name, f"busy: {self._queue.qsize()} commands already queued", request_id))

    def _run(self) -> None:
        while True:
            request = self._queue.get()
            if request is None:
                return
            fault_point("commands.handler")
            try:
                response = self.execute(request.name, request.payload)
            except Exception as exc:  # noqa: BLE001 - execute() never raises; if it did, the commander still hears
                log.exception("command_failed", command=request.name)
                response = _failure(request.name, f"internal error: {exc.__class__.__name__}")
            try:
                self._send(request, response)
            except Exception:  # noqa: BLE001 - the command thread must survive any one command
                log.exception("command_reply_failed", command=request.name)

    def _send(self, request: CommandRequest, response: dict) -> None:
        topic = self._reply_topic(request)
        if topic is None:
            log.warning("command_reply_refused", reason="response topic inside the station tree or with wildcards", command=request.name, response_topic=request.response_topic)
            return
        if self._reply is None:
            log.warning("command_reply_refused", reason="no reply transport", command=request.name)
            return
        response = {"schema": REPLY_SCHEMA, **response}
        self._reply(topic, json.dumps(response, default=_json_default).encode(), request.correlation_data)

    def _reply_topic(self, request: CommandRequest) -> Optional[str]:
        """The MQTT 5 response topic, or P/reply/<name>. A response topic may not point into this
        station's own tree (other than P/reply/...): a commander must not make the station publish
        a fake P/result or overwrite its retained P/status."""
        if not request.response_topic:
            return f"{self.topic_base}/reply/{request.name}"
        topic = request.response_topic
        if any(c in topic for c in "#+\0"):
            return None
        own = self.topic_base + "/"
        if topic.startswith(own) and not topic.startswith(own + "reply/"):
            return None
        return topic

    # --- execution --------------------------------------------------------------------------
    def execute(self, name: str, payload: bytes) -> dict:
        """Validate and run one command; never raises. The reply dict (see module docstring)."""
        response = self._execute(name, payload)
        ok = bool(response.get("ok"))
        if self._on_command is not None:
            try:
                self._on_command(name if name in COMMANDS else "unknown", ok)
            except Exception:  # noqa: BLE001
                pass
        level = log.info if ok else log.warning
        level("command", command=name, ok=ok, error=response.get("error"))
        return response

    def _execute(self, name: str, payload: bytes) -> dict:
        raw, problem = parse_payload(payload)
        request_id = _request_id(raw)
        schema = COMMANDS.get(name)
        if schema is None:
            return _failure(name, f"unknown command {name!r}; known: {', '.join(COMMANDS)}", request_id)
        if problem is not None:
            return _failure(name, problem, request_id)
        try:
            args = schema.model_validate(raw)
        except ValidationError as err:
            return _failure(name, validation_message(err), request_id)
        try:
            result = getattr(self, "_cmd_" + name.replace("-", "_"))(args)
        except _CommandFailed as exc:
            return _failure(name, str(exc), args.id)
        except Exception as exc:  # noqa: BLE001 - a failing command is a reply, not a crash
            log.exception("command_failed", command=name)
            return _failure(name, f"{type(exc).__name__}: {_one_line(str(exc))}", args.id)
        out = {"ok": True, "command": name, "result": result}
        if args.id is not None:
            out["id"] = args.id
        return out

    def _cmd_reload(self, args: ReloadArgs) -> dict:
        message = _granted(self.control.reload(None))
        return {"message": message}

    def _cmd_set_threshold(self, args: SetThresholdArgs) -> dict:
        message = _granted(self.control.set_threshold(args.value))
        return {"threshold": args.value, "message": message}

    def _cmd_snapshot(self, args: SnapshotArgs) -> dict:
        image = self.control.snapshot(args.seq) if args.seq is not None else self.control.snapshot()
        if image is None:
            raise _CommandFailed("no frame grabbed yet" if args.seq is None else
                                 f"no archived frame for seq {args.seq} (not kept, removed, or from before this start)")
        return encode_snapshot(image, args.max_side, args.format, args.quality)

    def _cmd_status(self, args: StatusArgs) -> dict:
        return dict(self.control.status())

    def _cmd_trigger(self, args: TriggerArgs) -> dict:
        tag = args.tag()
        message = _granted(self.control.trigger(args.count, tag) if tag is not None else self.control.trigger(args.count))
        return {"count": args.count, "message": message, **_tag_fields(tag)}

    def _cmd_product(self, args: ProductArgs) -> dict:
        message = _granted(self.control.select_product(args.product))
        return {"product": args.product, "message": message}

    def _cmd_part(self, args: PartArgs) -> dict:
        tag = args.tag()
        if tag is None and not args.clear:
            raise _CommandFailed("nothing to announce: give part_id, product, context or part_ref (or clear: true)")
        message = _granted(self.control.announce_part(tag, clear=args.clear))
        return {"message": message, **_tag_fields(tag)}


def _failure(name: str, message: str, request_id: Optional[str] = None) -> dict:
    """An error reply (module docstring), with the request's ``id`` when there is one."""
    out = {"ok": False, "command": name, "error": message}
    if request_id is not None:
        out["id"] = request_id
    return out


def _tag_fields(tag: Optional[PartTag]) -> dict:
    if tag is None:
        return {}
    out: dict[str, Any] = {"part_id": tag.part_id, "part_ref": tag.part_ref}
    if tag.product is not None:
        out["product"] = tag.product
    return out


def parse_payload(payload: bytes) -> tuple[Optional[dict], Optional[str]]:
    """Command payload → (JSON object, None) or (None, one-line reason). Never raises: a payload
    nested deeper than the parser's recursion limit is a reason, not a RecursionError."""
    if len(payload) > MAX_PAYLOAD_BYTES:
        return None, f"payload too large ({len(payload)} bytes, at most {MAX_PAYLOAD_BYTES})"
    try:
        text = payload.decode("utf-8").strip() if payload else ""
        raw = json.loads(text) if text else {}
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        return None, f"payload is not JSON: {_one_line(str(exc))}"
    except RecursionError:
        return None, "payload is not usable JSON: nested too deeply"
    if not isinstance(raw, dict):
        return None, f"payload must be a JSON object, got {type(raw).__name__}"
    return raw, None


def _request_id(raw: Optional[dict]) -> Optional[str]:
    """The request's ``id`` when it is one that a reply may carry (a short string)."""
    value = raw.get("id") if isinstance(raw, dict) else None
    return value if isinstance(value, str) and len(value) <= 128 else None


class _CommandFailed(Exception):
    """The pipeline refused the command; the message is the reply's one-line error."""


def _granted(outcome: tuple[bool, str]) -> str:
    """A control call's ``(ok, message)`` → the message, or _CommandFailed when it was refused."""
    ok, message = outcome
    if not ok:
        raise _CommandFailed(_one_line(message))
    return message


def encode_snapshot(image: np.ndarray, max_side: int, fmt: str, quality: int) -> dict:
    from edge_inspector.preprocess.core import to_bgr_uint8

    bgr = to_bgr_uint8(image)
    h, w = bgr.shape[:2]
    scale = min(1.0, max_side / max(h, w))
    if scale < 1.0:
        bgr = cv2.resize(bgr, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)
    if fmt == "jpeg":
        ok, buf = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, quality])
    else:
        ok, buf = cv2.imencode(".png", bgr)
    if not ok:
        raise _CommandFailed(f"cannot encode snapshot as {fmt}")
    return {
        "width": w,
        "height": h,
        "sent_width": bgr.shape[1],
        "sent_height": bgr.shape[0],
        "format": fmt,
        "encoding": "base64",
        "data": base64.b64encode(buf.tobytes()).decode("ascii"),
    }


def paho_replier(client: Any) -> Reply:
    """A Reply that publishes with a paho 2.x client (QoS 1, Correlation Data on MQTT 5)."""
    from paho.mqtt.client import MQTTv5
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    def reply(topic: str, payload: bytes, correlation_data: Optional[bytes]) -> None:
        properties = None
        if getattr(client, "protocol", None) == MQTTv5:
            properties = Properties(PacketTypes.PUBLISH)
            properties.ContentType = "application/json"
            if correlation_data is not None:
                properties.CorrelationData = correlation_data
        client.publish(topic, payload, qos=1, retain=False, properties=properties)

    return reply


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)


class CommandOps:
    """The supervisor's remote-command component: subscribes through the supervisor's current
    MqttPublisher (resubscribed by it on every reconnect) and replies through it.

    A reload may replace the publisher (new broker, credentials or station name): ``apply_config``
    then subscribes the new one, with the new topic if the station's topic base changed.
    """

    def __init__(self, supervisor: Any, on_command: Optional[Callable[[str, bool], None]] = None):
        self.supervisor = supervisor
        self.handler = CommandHandler(supervisor, supervisor.cfg.topic_base, reply=self._reply, on_command=on_command)
        self._subscribed: tuple[Any, str] | None = None  # (publisher, topic filter)

    def start(self) -> None:
        self.handler.start()
        self._subscribe()

    def stop(self) -> None:
        self.handler.stop()

    def apply_config(self, cfg: Any) -> str:
        if cfg.topic_base != self.handler.topic_base:
            self.handler.topic_base = cfg.topic_base
            self.handler.topic_filter = f"{cfg.topic_base}/cmd/+"
        return f"commands: {'subscribed ' + self.handler.topic_filter if self._subscribe() else 'unchanged'}"

    def _subscribe(self) -> bool:
        publisher = self.supervisor.publisher
        if publisher is None or self._subscribed == (publisher, self.handler.topic_filter):
            return False
        if not hasattr(publisher, "subscribe"):
            log.warning("commands_unavailable", reason="the publisher cannot subscribe", publisher=type(publisher).__name__)
            return False
        publisher.subscribe(self.handler.topic_filter, self.handler.on_message, qos=1)
        self._subscribed = (publisher, self.handler.topic_filter)
        log.info("commands_subscribed", topic=self.handler.topic_filter)
        return True

    def _reply(self, topic: str, payload: bytes, correlation_data: Optional[bytes]) -> None:
        publisher = self.supervisor.publisher
        publish_reply = getattr(publisher, "publish_reply", None)
        if publish_reply is not None:
            publish_reply(topic, payload, correlation_data)
        else:
            # MqttPublisher has no public way to publish with MQTT 5 properties (yet): use its
            # paho client directly. Replies are QoS 1 and never go through the outbox.
            paho_replier(publisher._client)(topic, payload, correlation_data)


def create_ops_component(supervisor: Any) -> CommandOps:
    """Hook for Supervisor._build_ops (after health.metrics, which counts the commands)."""
    from edge_inspector.health.metrics import find_metrics

    metrics = find_metrics(supervisor)
    return CommandOps(supervisor, on_command=metrics.on_command if metrics is not None else None)


if __name__ == "__main__":  # regenerates docs/schemas/command.schema.json (see command_json_schema)
    print(json.dumps(command_json_schema(), indent=2, ensure_ascii=False))
