"""publish stage: durable outbox (SQLite) → MQTT result / plc / status / health (docs/mqtt.md)."""

from edge_inspector.publish.mqtt import MqttPublisher, read_password
from edge_inspector.publish.outbox import Outbox, OutboxError, OutboxFullError
from edge_inspector.publish.payload import (
    RESULT_SCHEMA,
    PayloadError,
    build_health,
    build_plc,
    build_result,
    build_status,
    parse_plc,
    parse_result,
)

__all__ = [
    "MqttPublisher",
    "Outbox",
    "OutboxError",
    "OutboxFullError",
    "PayloadError",
    "RESULT_SCHEMA",
    "build_health",
    "build_plc",
    "build_result",
    "build_status",
    "parse_plc",
    "parse_result",
    "read_password",
]
