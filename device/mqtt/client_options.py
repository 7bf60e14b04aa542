"""The one place where edgewatch builds its paho-mqtt clients.

Every publisher and subscriber edgewatch ships comes from :func:`make_client`, so a
transport decision made here holds everywhere.

Why MQTT 5 (and not 3.1.1)
    A stock mosquitto lets at most ``max_inflight_messages`` (20) QoS 1/2 messages be
    unacknowledged towards a subscriber and keeps at most ``max_queued_messages`` (1000)
    more queued for it; anything beyond that is *dropped* silently (QoS 1 does not help
    past that point). A C client such as ``mosquitto_sub`` drains a burst fast enough to
    stay under the bound. A Python paho client costs more CPU per message: it reads one
    packet per ``select()``, makes three ``recv()`` calls per packet, and runs
    ``on_message`` on the network thread before the PUBACK. Under CPU contention or with
    any work in the callback it falls more than ~1020 messages behind, and the broker
    drops the rest. In our runs a default paho subscriber received 1,500-3,300 of a
    5,000-message burst, all within a second; the rest never came. So the subscriber is
    not slow. The broker's drop policy starves it.

    Under MQTT 5 the client states its own in-flight window in CONNECT (*Receive
    Maximum*), and mosquitto uses it instead of its 20 (paho sends none by default, so a
    plain MQTT 5 client also gets 20). Asking for the protocol maximum, 65535, moves a
    burst from the broker's bounded queue into flight, where it is not dropped, and the
    subscriber drains it at its own pace (5,000 of 5,000 in every run). MQTT 3.1.1 cannot
    express this, so edgewatch speaks MQTT 5 (mosquitto >= 1.6, EMQX, HiveMQ and the Home
    Assistant add-on all support it). MQTT 5 also brings reason codes on PUBACK, which is
    how an ACL refusal becomes visible to the publisher. The limit: this is a buffer of
    about 66,500 messages, not flow control. A consumer that stays slower than its
    producers forever still loses messages once it is that far behind.

    :class:`_EdgewatchClient` adds the property to *every* CONNECT, including ones made
    through ``connect``/``connect_async`` by callers that pass their own properties, so
    nobody can forget it.

Why TCP_NODELAY (latency, not the loss fix; it changes neither loss nor drain rate)
    Events are small writes. With Nagle's algorithm on, an event published right after
    another waits for the peer's (possibly delayed) ACK of the first one. Turning Nagle
    off costs nothing at edgewatch's message sizes and keeps back-to-back events from
    waiting on that ACK.
"""

from __future__ import annotations

import logging
import socket
import ssl
import threading
import time
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from device.config import MqttSection
from device.errors import ConfigError

log = logging.getLogger(__name__)

#: The protocol maximum for Receive Maximum; see the module docstring for why.
RECEIVE_MAXIMUM = 65535
#: Packets read per network-loop pass at most (see _EdgewatchClient.loop_read).
READ_BATCH = 256
PROTOCOLS = {"5": mqtt.MQTTv5, "3.1.1": mqtt.MQTTv311}


class _EdgewatchClient(mqtt.Client):
    """A paho client that always announces edgewatch's Receive Maximum on CONNECT.

    Under MQTT 3.1.1 (``mqtt.protocol = "3.1.1"``, for brokers without MQTT 5 such as
    the demo's embedded amqtt) CONNECT has no properties and nothing is added.
    """

    def loop_read(self, max_packets: int = 1) -> MQTTErrorCode:
        """Read every packet the socket has ready, up to ``READ_BATCH``.

        paho's own ``loop_read`` sizes its batch from the client's *outgoing* and QoS 2
        queues, which for a subscriber is one packet per ``select()``: a burst of events
        then costs a system call round trip per message. Reading until the non-blocking
        socket has nothing left (paho's ``MQTT_ERR_AGAIN``) drains a burst in far fewer
        wake-ups; PUBACKs go out on the loop's next pass, which the large receive window
        allows. This uses paho's private ``_packet_read``: paho-mqtt is pinned below 3.
        """
        for _ in range(max(max_packets, READ_BATCH)):
            if self._sock is None:
                return MQTTErrorCode.MQTT_ERR_NO_CONN
            rc = self._packet_read()
            if rc > 0:
                return self._loop_rc_handle(rc)
            if rc == MQTTErrorCode.MQTT_ERR_AGAIN:
                return MQTTErrorCode.MQTT_ERR_SUCCESS
        return MQTTErrorCode.MQTT_ERR_SUCCESS

    def _edgewatch_connect_properties(self, properties: Properties | None) -> Properties | None:
        if self.protocol != mqtt.MQTTv5:
            return properties
        return with_receive_maximum(properties)

    def connect(  # noqa: PLR0917 (paho's own signature)
        self,
        host: str,
        port: int = 1883,
        keepalive: int = 60,
        bind_address: str = "",
        bind_port: int = 0,
        clean_start: mqtt.CleanStartOption = mqtt.MQTT_CLEAN_START_FIRST_ONLY,
        properties: Properties | None = None,
    ) -> MQTTErrorCode:
        return super().connect(
            host,
            port,
            keepalive,
            bind_address,
            bind_port,
            clean_start,
            self._edgewatch_connect_properties(properties),
        )

    def connect_async(  # noqa: PLR0917 (paho's own signature)
        self,
        host: str,
        port: int = 1883,
        keepalive: int = 60,
        bind_address: str = "",
        bind_port: int = 0,
        clean_start: mqtt.CleanStartOption = mqtt.MQTT_CLEAN_START_FIRST_ONLY,
        properties: Properties | None = None,
    ) -> None:
        super().connect_async(
            host,
            port,
            keepalive,
            bind_address,
            bind_port,
            clean_start,
            self._edgewatch_connect_properties(properties),
        )


def with_receive_maximum(properties: Properties | None) -> Properties:
    """CONNECT properties with Receive Maximum set (a caller's own value is kept)."""
    if properties is None:
        properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
    if not hasattr(properties, "ReceiveMaximum"):
        properties.ReceiveMaximum = RECEIVE_MAXIMUM
    return properties


def set_nodelay(client: mqtt.Client, userdata: Any, sock: Any) -> None:
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except (OSError, AttributeError) as exc:
        # Websocket wrappers and exotic transports: latency only, never fatal.
        log.debug("could not set TCP_NODELAY on the MQTT socket: %s", exc)


def make_client(client_id: str, *, config: MqttSection | None, role: str) -> mqtt.Client:
    """A paho 2.x client (MQTT 5, callback API 2) with edgewatch's transport settings.

    ``config`` supplies TLS, credentials and the reconnect backoff; None means plain TCP
    and anonymous (tests, ``edgewatch watch`` against a local broker). ``role`` only
    names the client in logs ("publisher", "subscriber", ...).

    The caller sets its own callbacks and connects; ``on_socket_open`` is taken by the
    TCP_NODELAY hook, so a caller that needs it should call :func:`set_nodelay` itself.
    """
    protocol = config.protocol if config is not None else "5"
    client = _EdgewatchClient(
        CallbackAPIVersion.VERSION2,
        client_id=client_id,
        protocol=PROTOCOLS[protocol],
    )
    client.on_socket_open = set_nodelay
    if config is not None:
        _apply_credentials(client, config)
        _apply_tls(client, config)
        # paho types these as int, but its backoff arithmetic works in float seconds.
        client.reconnect_delay_set(
            min_delay=config.reconnect_min_s,  # type: ignore[arg-type]
            max_delay=max(config.reconnect_max_s, config.reconnect_min_s),  # type: ignore[arg-type]
        )
    log.debug(
        "built MQTT %s client %r (MQTT %s, receive maximum %s)",
        role,
        client_id,
        protocol,
        RECEIVE_MAXIMUM if protocol == "5" else "the broker's",
    )
    return client


def _apply_credentials(client: mqtt.Client, config: MqttSection) -> None:
    password = config.resolved_password()
    if config.username is not None:
        client.username_pw_set(config.username, password)
    elif password is not None:
        log.warning("mqtt password given without mqtt.username; the broker will not see it")


def _apply_tls(client: mqtt.Client, config: MqttSection) -> None:
    tls = config.tls
    if tls is None:
        return
    for key in ("ca_file", "cert_file", "key_file"):
        path = getattr(tls, key)
        if path is not None and not path.is_file():
            raise ConfigError(
                f"mqtt.tls.{key} is {path}, which is not a readable file; "
                "fix the path or remove the key"
            )
    if (tls.cert_file is None) != (tls.key_file is None):
        raise ConfigError(
            "mqtt.tls needs both cert_file and key_file for a client certificate, or neither"
        )
    try:
        client.tls_set(
            ca_certs=str(tls.ca_file) if tls.ca_file else None,
            certfile=str(tls.cert_file) if tls.cert_file else None,
            keyfile=str(tls.key_file) if tls.key_file else None,
            cert_reqs=ssl.CERT_REQUIRED,
        )
    except (ssl.SSLError, OSError, ValueError) as exc:
        raise ConfigError(
            f"mqtt.tls: cannot load the certificates ({exc}); check that "
            "the files are PEM and the key matches the certificate"
        ) from exc
    if tls.insecure:
        log.warning("mqtt.tls.insecure is set: the broker's host name is not verified")
        client.tls_insecure_set(True)


class AttemptLog:
    """Logs connection trouble at most once every ``every_s`` seconds.

    A broker that is down for an hour must not fill the journal with one line a backoff
    step; the first failure is logged at once, later ones are summarised with a count.
    """

    def __init__(self, what: str, every_s: float = 30.0) -> None:
        self._what = what
        self._every_s = every_s
        self._lock = threading.Lock()
        self._last_logged = -float("inf")
        self._suppressed = 0

    def failed(self, detail: str) -> None:
        now = time.monotonic()
        with self._lock:
            if now - self._last_logged < self._every_s:
                self._suppressed += 1
                return
            suppressed, self._suppressed = self._suppressed, 0
            self._last_logged = now
        more = f" ({suppressed} more failed attempt(s) since the last report)" if suppressed else ""
        log.warning("%s: %s; retrying in the background%s", self._what, detail, more)

    def succeeded(self) -> None:
        with self._lock:
            self._last_logged = -float("inf")
            self._suppressed = 0
