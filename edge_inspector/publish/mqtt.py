"""MQTT publisher: outbox-first results, PLC messages, retained status with Last Will, health.

Thread model (why it looks like this)
- paho's network thread (``loop_start``) runs our callbacks while holding paho's internal
  ``_out_message_mutex`` (PUBACK handling). Any lock of ours taken inside a callback while another
  thread holds it and calls ``client.publish()`` (which needs that same paho mutex) deadlocks.
  So callbacks never wait on our state: they only put events on a queue.
- One worker thread of ours owns the in-flight window (mid → seq) and is the only one that
  publishes results: it drains the outbox in seq order, ``max_inflight`` at a time, and acks
  rows when their PUBACK event arrives. Because it handles events one by one, a PUBACK can never
  be processed before the mid it acknowledges has been recorded.
- ``publish_verdict`` runs on the caller's thread: it commits the result to the outbox (durable),
  wakes the worker and publishes the PLC message directly (PLC latency must not wait behind a
  replay backlog).
- On every (re)connect, paho would re-send the QoS 1 messages it still holds from the previous
  connection. We drop them instead (``drop_out_messages`` in on_connect) and replay from the
  outbox: one source of truth, seq order on the wire, and stale PLC messages are never re-sent.
"""

from __future__ import annotations

import logging
import queue
import socket
import ssl
import threading
import time
from typing import Any, Callable, Mapping, Optional

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edge_inspector.config.models import Config, MQTTConfig
from edge_inspector.config.secrets import read_secret
from edge_inspector.errors import ConfigError
from edge_inspector.faults import fault_point
from edge_inspector.logging import get_logger
from edge_inspector.postprocess.verdict import Verdict
from edge_inspector.publish.outbox import Outbox
from edge_inspector.publish.payload import (
    build_health,
    build_plc,
    build_result,
    build_status,
    check_model_info,
    dumps,
    HEALTH_SCHEMA,
    PLC_SCHEMA,
    RESULT_SCHEMA,
    STATUS_SCHEMA,
    PayloadError,
    format_ts,
    station_dict,
)
from edge_inspector.threads import start_supervised

log = get_logger(__name__)

StateCallback = Callable[[str, dict], None]
MessageCallback = Callable[[paho.MQTTMessage], None]


def read_password(mqtt_cfg: MQTTConfig) -> Optional[str]:
    """The broker password from ``password_env`` or ``password_file`` (never inline in YAML)."""
    password = read_secret("mqtt", "password_env", mqtt_cfg.password_env, "password_file", mqtt_cfg.password_file)
    if password is not None and not mqtt_cfg.username:
        raise ConfigError("mqtt.username is required when a password is configured")
    return password


def _configure_tls(client: paho.Client, mqtt_cfg: MQTTConfig) -> None:
    tls = mqtt_cfg.tls
    if not tls.enabled:
        return
    for key in ("ca_file", "cert_file", "key_file"):
        path = getattr(tls, key)
        if path is not None and not path.is_file():
            raise ConfigError(f"mqtt.tls.{key}: file not found: {path}")
    if tls.key_file and not tls.cert_file:
        raise ConfigError("mqtt.tls.key_file is set without mqtt.tls.cert_file")
    try:
        client.tls_set(
            ca_certs=str(tls.ca_file) if tls.ca_file else None,  # None: the system CA store
            certfile=str(tls.cert_file) if tls.cert_file else None,
            keyfile=str(tls.key_file) if tls.key_file else None,
            cert_reqs=ssl.CERT_REQUIRED,
            tls_version=ssl.PROTOCOL_TLS_CLIENT,
        )
    except (ssl.SSLError, OSError, ValueError) as exc:
        raise ConfigError(f"mqtt.tls: cannot load certificates ({tls.ca_file}, {tls.cert_file}, {tls.key_file}): {exc}") from None
    if tls.insecure:
        client.tls_insecure_set(True)


def _disable_nagle(client, userdata, sock) -> None:
    """Results and PLC messages are small packets sent back to back: with Nagle's algorithm the
    second waits for the broker's delayed ACK (~40 ms on Linux). paho does not set TCP_NODELAY."""
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except (OSError, AttributeError):  # not a TCP socket (e.g. websockets wrapper): leave it
        pass


class MqttPublisher:
    """Publishes verdicts per the MQTT contract (docs/mqtt.md) with the outbox as source of truth.

    Lifecycle: ``MqttPublisher(cfg, outbox, model_info)`` → ``start()`` → ``publish_verdict`` ... →
    ``stop(timeout)``. ``start`` does not wait for the broker: results queue in the outbox until a
    connection exists.
    """

    def __init__(
        self,
        cfg: Config,
        outbox: Outbox,
        model_info: Mapping[str, Any],
        on_state: Optional[StateCallback] = None,
        on_acked: Optional[Callable[[int], None]] = None,
    ):
        self.cfg = cfg
        self.outbox = outbox
        self._model = check_model_info(model_info)
        self.on_state = on_state
        # Called (publisher worker thread) with each seq the broker acknowledged: the moment a
        # result is safe at the broker, used for grab→PUBACK latency and on_published.
        self.on_acked = on_acked
        self._mqtt = cfg.mqtt
        self._station = station_dict(cfg.station.line, cfg.station.name)
        base = cfg.topic_base
        self.topics = {name: f"{base}/{name}" for name in ("result", "plc", "status", "health")}
        self._v5 = self._mqtt.protocol == "5"
        self._max_inflight = self._mqtt.max_inflight

        # Worker-owned state (only the worker thread touches these).
        self._events: "queue.Queue[tuple]" = queue.Queue()
        self._inflight: dict[int, int] = {}  # mid -> seq of results awaiting PUBACK
        self._last_sent_seq = 0
        self._replay_until_seq = 0
        self._link_up = False
        self._worker: Optional[threading.Thread] = None
        self._worker_stop = threading.Event()
        self._ack_backlog: set[int] = set()  # delivered seqs whose outbox ack could not be written yet
        # Liveness (read by any thread, written by the worker): when its loop last ran, and since
        # when results have waited on an up link without a PUBACK (None: not waiting).
        self._worker_beat = time.monotonic()
        self._waiting_since: Optional[float] = None

        # Shared, guarded by _lock (never held while calling into paho).
        self._lock = threading.Lock()
        self._stats = {
            "published": 0, "acked": 0, "replayed": 0, "plc_published": 0,
            "plc_skipped": 0, "rejected": 0, "reconnects": 0, "inflight": 0, "worker_errors": 0,
        }
        self._status_fields: dict[str, Any] = {}
        # Serialises build+publish of the retained status so that an older snapshot (built in
        # on_connect) can never be retained after a newer one (set_status from another thread).
        # Safe to hold across client.publish: paho's thread never waits on it while holding
        # paho's own locks (on_connect runs without them).
        self._status_lock = threading.Lock()
        self._subscriptions: dict[str, tuple[MessageCallback, int]] = {}
        self._connected_since: Optional[float] = None
        self._ever_connected = False
        self._started = False
        self._stopped = False

        self._client = self._make_client()

    # ------------------------------------------------------------------ client setup
    def _make_client(self) -> paho.Client:
        m = self._mqtt
        kwargs: dict[str, Any] = {"client_id": self.cfg.client_id, "reconnect_on_failure": True}
        if self._v5:
            kwargs["protocol"] = paho.MQTTv5
        else:
            kwargs["protocol"] = paho.MQTTv311
            kwargs["clean_session"] = True
        client = paho.Client(CallbackAPIVersion.VERSION2, **kwargs)
        password = read_password(m)
        if m.username:
            client.username_pw_set(m.username, password)
        _configure_tls(client, m)
        # Our own window bounds what is in flight; paho must neither hold back (its default cap
        # is 20) nor drop (max_queued) anything we hand it.
        client.max_inflight_messages_set(0)
        client.max_queued_messages_set(0)
        client.reconnect_delay_set(min_delay=m.reconnect_min_s, max_delay=m.reconnect_max_s)
        client.will_set(self.topics["status"], self._offline_payload("connection_lost"), qos=1, retain=True,
                        properties=self._data_properties(STATUS_SCHEMA, packet=PacketTypes.WILLMESSAGE))
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.on_connect_fail = self._on_connect_fail
        client.on_socket_open = _disable_nagle
        # paho's network thread re-raises a callback's exception by default and dies with it: no
        # more PUBACKs, no reconnects, while is_connected() may still say True. Log and go on.
        client.suppress_exceptions = True
        paho_log = logging.getLogger("paho.mqtt")
        paho_log.setLevel(logging.WARNING)  # its DEBUG/INFO lines are per packet
        client.enable_logger(paho_log)
        return client

    @property
    def session(self) -> Optional[int]:
        """The daemon start counter kept by the outbox (None for an outbox without one)."""
        return getattr(self.outbox, "session", None)

    def _offline_payload(self, reason: str) -> str:
        # ``session`` pairs this will with the online status (birth) of the same daemon start.
        return dumps(build_status(False, station=self._station, reason=reason, model=self.model, session=self.session))

    def _data_properties(self, schema: Any, packet: int = PacketTypes.PUBLISH, **extra: Any) -> Optional[Properties]:
        """MQTT 5 content type and user properties (schema, station) for broker-side routing."""
        if not self._v5:
            return None
        properties = Properties(packet)
        properties.ContentType = "application/json"
        properties.UserProperty = [("schema", str(schema)), ("station", f"{self._station['line']}/{self._station['name']}")]
        for key, value in extra.items():
            setattr(properties, key, value)
        return properties

    # ------------------------------------------------------------------ public API
    def start(self) -> None:
        """Connect in the background and start replaying the outbox. Returns at once."""
        if self._started:
            return
        self._started = True
        self._worker = start_supervised("mqtt-outbox", self._run_worker, self._worker_stop)
        m = self._mqtt
        connect_kwargs: dict[str, Any] = {"keepalive": m.keepalive_s}
        if self._v5:
            # Clean start: our durable state is the outbox, not a broker session.
            connect_kwargs["clean_start"] = True
        self._client.connect_async(m.host, m.port, **connect_kwargs)
        self._client.loop_start()
        log.info("mqtt_starting", host=m.host, port=m.port, protocol=m.protocol, client_id=self.cfg.client_id,
                 outbox_depth=self.outbox.depth())

    @property
    def model(self) -> dict:
        """``{"name", "sha256"}`` named in results without a ``verdict.model`` and in status."""
        return self._model

    @model.setter
    def model(self, info: Mapping[str, Any]) -> None:
        self._model = check_model_info(info)

    def publish_verdict(self, verdict: Verdict) -> int:
        """Store the verdict's result in the outbox (durable), then publish result and PLC message.

        Returns the result's seq. Raises OutboxFullError (outbox policy ``stop``) when the result
        could not be stored; then nothing was published, not even to the PLC.
        """
        result = build_result(verdict, station=self._station, model=self._model_for(verdict), session=self.session)
        seq = self.outbox.add(result)
        result["seq"] = seq
        self._events.put(("wake",))
        self._publish_plc(build_plc(result))
        return seq

    def publish_reply(self, topic: str, payload: bytes, correlation_data: Optional[bytes] = None) -> bool:
        """QoS 1 reply for request/response (commands); MQTT 5 carries Correlation Data.

        Not stored: a reply to a request made on a connection that is gone is not replayed.
        Returns False when not connected.
        """
        if not self._client.is_connected():
            return False
        properties = None
        if self._v5:
            properties = Properties(PacketTypes.PUBLISH)
            properties.ContentType = "application/json"
            if correlation_data is not None:
                properties.CorrelationData = correlation_data
        info = self._client.publish(topic, payload, qos=1, retain=False, properties=properties)
        return info.rc == MQTTErrorCode.MQTT_ERR_SUCCESS

    def subscribe(self, topic_filter: str, callback: MessageCallback, qos: int = 1) -> None:
        """Register ``callback(message)`` for ``topic_filter``; (re)subscribed on every connect.

        The callback runs on paho's network thread: keep it short and never call ``stop`` from it.
        """
        def guarded(_client, _userdata, message):
            try:
                callback(message)
            except Exception as exc:  # a bad handler must not kill the network thread
                log.error("mqtt_subscriber_failed", topic=message.topic, error=f"{type(exc).__name__}: {exc}")

        with self._lock:
            self._subscriptions[topic_filter] = (callback, qos)
        self._client.message_callback_add(topic_filter, guarded)
        if self._client.is_connected():
            self._client.subscribe(topic_filter, qos=qos)

    def topic(self, name: str) -> str:
        """Full topic ``{prefix}/{line}/{station}/{name}``, e.g. ``topic('cmd')``."""
        return f"{self.cfg.topic_base}/{name}"

    def set_status(self, **fields: Any) -> None:
        """Merge fields (camera=..., model=..., anything JSON) into the retained status and republish."""
        with self._lock:
            self._status_fields.update(fields)
        if self._client.is_connected() and not self._stopped:
            self._publish_online_status()

    def publish_health(self, counters: Mapping[str, Any], liveness: Optional[Mapping[str, Any]] = None,
                       **extra: Mapping[str, Any]) -> bool:
        """Publish pipeline ``counters`` plus outbox and MQTT counters on ``P/health`` (QoS 0),
        the daemon's ``liveness`` verdict (the /healthz body) when given, and ``extra`` sections
        from ops components (e.g. ``drift``).

        Returns False when not connected (health is periodic; a missed one is not replayed).
        """
        sections: dict[str, Any] = {name: dict(value) for name, value in extra.items()}
        if liveness is not None:
            sections["liveness"] = dict(liveness)
        payload = build_health(
            counters,
            station=self._station,
            outbox={"depth": self.outbox.depth(), "evicted_total": self.outbox.evicted_total,
                    "last_seq": self.outbox.last_seq, "disk_full": bool(getattr(self.outbox, "disk_full", None))},
            mqtt={"connected": self.connected, **self.stats},
            **sections,
        )
        if not self._client.is_connected():
            return False
        info = self._client.publish(self.topics["health"], dumps(payload), qos=0, properties=self._data_properties(HEALTH_SCHEMA))
        return info.rc == MQTTErrorCode.MQTT_ERR_SUCCESS

    def flush(self, timeout: float) -> bool:
        """Wait until the outbox is empty (every result acknowledged). True when it is."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.outbox.depth() == 0:
                return True
            time.sleep(0.02)
        return self.outbox.depth() == 0

    def stop(self, timeout: float = 10.0) -> None:
        """Drain what the broker will take within ``timeout``, publish offline status, disconnect.

        Results not acknowledged by then stay in the outbox and are replayed on the next start.
        """
        if not self._started or self._stopped:
            return
        self._stopped = True
        deadline = time.monotonic() + timeout
        while self._client.is_connected() and self.outbox.depth() > 0 and time.monotonic() < deadline:
            time.sleep(0.02)
        if self._client.is_connected():
            with self._status_lock:  # after any online status still being published
                info = self._client.publish(self.topics["status"], self._offline_payload("stopped"), qos=1, retain=True,
                                            properties=self._data_properties(STATUS_SCHEMA))
            try:
                info.wait_for_publish(timeout=max(0.5, deadline - time.monotonic()))
            except (RuntimeError, ValueError):
                pass  # disconnected meanwhile: the broker sends our Last Will instead
        self._client.disconnect()
        self._client.loop_stop()
        self._worker_stop.set()
        self._events.put(("stop",))
        if self._worker is not None:
            self._worker.join(timeout=max(0.5, deadline - time.monotonic()))  # a hung worker must not stretch the stop
        log.info("mqtt_stopped", outbox_depth=self.outbox.depth(), **self.stats)

    @property
    def connected(self) -> bool:
        return self._client.is_connected()

    def liveness(self) -> dict[str, float]:
        """Seconds since the outbox worker last ran its loop (``mqtt_worker``) and since results
        started waiting on an up link without any PUBACK (``delivery``; 0 when nothing waits or
        the broker is unreachable — an outage is a reported state, not a stall of this daemon)."""
        if self._stopped:  # being retired (shutdown, or replaced on reload): its worker ends on purpose
            return {"mqtt_worker": 0.0, "delivery": 0.0}
        now = time.monotonic()
        waiting = self._waiting_since
        return {"mqtt_worker": now - self._worker_beat, "delivery": 0.0 if waiting is None else now - waiting}

    @property
    def outbox_depth(self) -> int:
        return self.outbox.depth()

    @property
    def stats(self) -> dict[str, int]:
        """Counters: published (result sends incl. replays), acked, replayed, plc_published,
        plc_skipped (PLC messages not sent because disconnected), rejected (PUBACK with an error
        reason code), reconnects, inflight."""
        with self._lock:
            return dict(self._stats)

    @property
    def published(self) -> int:
        return self.stats["published"]

    @property
    def acked(self) -> int:
        return self.stats["acked"]

    @property
    def replayed(self) -> int:
        return self.stats["replayed"]

    # ------------------------------------------------------------------ publishing helpers
    def _count(self, key: str, n: int = 1) -> None:
        with self._lock:
            self._stats[key] += n

    def _model_for(self, verdict: Verdict) -> dict:
        # The model that scored this very frame (hot swaps change it between two frames). A
        # malformed one must not cost the verdict: fall back to the publisher's and say so.
        if verdict.model is None or verdict.model == self._model:
            return self._model
        try:
            return check_model_info(verdict.model)
        except PayloadError as exc:
            log.error("verdict_model_invalid", frame_id=verdict.frame_id, error=str(exc))
            return self._model

    def _publish_plc(self, plc: dict) -> None:
        # A PLC acts on the part in front of it now: a message that cannot go out now is useless
        # later, so it is never queued (MQTT 3.1.1 has no expiry to protect the PLC from it).
        if not self._client.is_connected():
            self._count("plc_skipped")
            return
        properties = self._data_properties(PLC_SCHEMA, MessageExpiryInterval=self._mqtt.plc_expiry_s)
        info = self._client.publish(self.topics["plc"], dumps(plc), qos=1, retain=False, properties=properties)
        self._count("plc_published" if info.rc == MQTTErrorCode.MQTT_ERR_SUCCESS else "plc_skipped")

    def _publish_online_status(self) -> None:
        with self._status_lock:
            with self._lock:
                extra = dict(self._status_fields)
                since = self._connected_since
            fields: dict[str, Any] = {
                "since": format_ts(since or time.time()),
                "model": self.model,
                "mqtt": {"client_id": self.cfg.client_id, "protocol": self._mqtt.protocol},
                "outbox_depth": self.outbox.depth(),
                "session": self.session,
            }
            fields.update(extra)
            payload = build_status(True, station=self._station, **fields)
            self._client.publish(self.topics["status"], dumps(payload), qos=1, retain=True,
                                 properties=self._data_properties(STATUS_SCHEMA))

    def _notify_state(self, state: str, **info: Any) -> None:
        if self.on_state is None:
            return
        try:
            self.on_state(state, info)
        except Exception as exc:
            log.error("mqtt_on_state_failed", state=state, error=f"{type(exc).__name__}: {exc}")

    # ------------------------------------------------------------------ paho callbacks (network thread)
    def _on_connect(self, client, _userdata, flags, reason_code, _properties) -> None:
        if reason_code.is_failure:
            log.error("mqtt_connect_refused", host=self._mqtt.host, port=self._mqtt.port,
                      message=f"broker {self._mqtt.host}:{self._mqtt.port} refused the connection: {reason_code}")
            self._notify_state("refused", reason=str(reason_code))
            return
        # Drop what paho kept from the previous connection; the worker replays from the outbox.
        client.drop_out_messages()
        with self._lock:
            self._connected_since = time.time()
            if self._ever_connected:
                self._stats["reconnects"] += 1
            self._ever_connected = True
            subscriptions = dict(self._subscriptions)
        try:
            self._publish_online_status()
        except Exception as exc:  # noqa: BLE001 - a bad status field must not keep results from flowing
            log.error("status_publish_failed", error=f"{type(exc).__name__}: {exc}")
        for topic_filter, (_cb, qos) in subscriptions.items():
            client.subscribe(topic_filter, qos=qos)
        self._events.put(("connected",))
        log.info("mqtt_connected", host=self._mqtt.host, port=self._mqtt.port, outbox_depth=self.outbox.depth())
        self._notify_state("connected", outbox_depth=self.outbox.depth())

    def _on_disconnect(self, _client, _userdata, _flags, reason_code, _properties) -> None:
        self._events.put(("disconnected",))
        if self._stopped:
            return
        log.warning("mqtt_disconnected", reason=str(reason_code), outbox_depth=self.outbox.depth())
        self._notify_state("disconnected", reason=str(reason_code))

    def _on_connect_fail(self, _client, _userdata) -> None:
        log.warning("mqtt_connect_failed", host=self._mqtt.host, port=self._mqtt.port)

    def _on_publish(self, _client, _userdata, mid, reason_code, _properties) -> None:
        self._events.put(("puback", mid, reason_code))

    # ------------------------------------------------------------------ worker (our thread)
    def _run_worker(self) -> None:
        while True:
            self._worker_beat = time.monotonic()
            try:
                event = self._events.get(timeout=0.5)
            except queue.Empty:
                event = ("tick",)  # periodic retry, e.g. after a publish returned "no connection"
            self._worker_beat = time.monotonic()
            kind = event[0]
            acked = False
            try:
                fault_point("mqtt.worker")
                if kind == "stop":
                    return
                if kind == "connected":
                    self._link_up = True
                    self._inflight.clear()
                    self._last_sent_seq = 0
                    self._replay_until_seq = self.outbox.last_seq
                elif kind == "disconnected":
                    self._link_up = False
                    self._inflight.clear()
                    self._last_sent_seq = 0
                elif kind == "puback":
                    acked = self._handle_puback(event[1], event[2])
                self._retry_acks()
                self._pump()
            except Exception as exc:  # keep the worker alive; rows stay in the outbox
                with self._lock:
                    self._stats["worker_errors"] += 1
                log.error("mqtt_worker_error", worker_event=kind, error=f"{type(exc).__name__}: {exc}",
                          detail="resending unacknowledged results from the outbox")
                # The event may be lost (e.g. a PUBACK): forget the window and resend from the
                # outbox, the source of truth. Duplicates are fine (subscribers deduplicate on seq);
                # a row waiting for a PUBACK that never comes is not.
                self._inflight.clear()
                self._last_sent_seq = 0
                time.sleep(0.1)
            self._track_delivery(acked)
            with self._lock:
                self._stats["inflight"] = len(self._inflight)

    def _track_delivery(self, acked: bool) -> None:
        """Delivery liveness: a result's PUBACK (or nothing left in flight) resets the clock;
        results in flight on an up link start it. A frozen broker or a wedged link then shows as
        a growing ``delivery`` age while paho still believes it is connected. (paho also reports
        QoS 0 sends such as P/health through on_publish: those prove nothing and do not count.)"""
        if not self._link_up or not self._inflight:
            self._waiting_since = None
        elif acked or self._waiting_since is None:
            self._waiting_since = time.monotonic()

    def _handle_puback(self, mid: int, reason_code) -> bool:
        """True when ``mid`` was one of our results and the broker took it."""
        seq = self._inflight.pop(mid, None)
        if seq is None:
            return False  # PLC, status, health, or a message of a previous connection
        if getattr(reason_code, "is_failure", False):
            # The broker refused it (e.g. not authorised): keep the row, retry on next connect.
            self._count("rejected")
            log.error("mqtt_result_rejected", seq=seq, reason=str(reason_code),
                      message=f"broker refused result seq {seq} on {self.topics['result']}: {reason_code}")
            return False
        try:
            removed = self.outbox.ack(seq)
        except Exception as exc:  # noqa: BLE001 - e.g. disk full: the broker has it, only our bookkeeping lags
            # Not a reason to resend everything: remember the seq and retry the ack each pass.
            if not self._ack_backlog:
                log.error("outbox_ack_failed", seq=seq, error=f"{type(exc).__name__}: {exc}",
                          detail="delivered; the row stays until the ack can be written (a duplicate after a restart at most)")
            self._ack_backlog.add(seq)
            self._count("acked")
            return True
        self._count("acked")
        if removed and self.on_acked is not None:
            try:
                self.on_acked(seq)
            except Exception:  # noqa: BLE001 - a failing listener must not stop the acks
                log.exception("on_acked_failed", seq=seq)
        return True

    def _retry_acks(self) -> None:
        for seq in sorted(self._ack_backlog):
            try:
                removed = self.outbox.ack(seq)
            except Exception:  # noqa: BLE001 - still no space: next pass
                return
            self._ack_backlog.discard(seq)
            if removed and self.on_acked is not None:
                try:
                    self.on_acked(seq)
                except Exception:  # noqa: BLE001
                    log.exception("on_acked_failed", seq=seq)

    def _pump(self) -> None:
        if not self._link_up:
            return
        room = self._max_inflight - len(self._inflight)
        if room <= 0:
            return
        properties = self._data_properties(RESULT_SCHEMA)  # rows of every age are result/1
        for seq, text in self.outbox.pending(limit=room, after_seq=self._last_sent_seq):
            info = self._client.publish(self.topics["result"], text, qos=1, retain=False, properties=properties)
            if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                break  # link went down under us: the next "connected" event replays from the outbox
            self._inflight[info.mid] = seq
            self._last_sent_seq = seq
            with self._lock:
                self._stats["published"] += 1
                if seq <= self._replay_until_seq:
                    self._stats["replayed"] += 1
