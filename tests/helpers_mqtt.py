"""A plain MQTT probe for tests: publishes raw payloads and records what arrives."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as mqtt

from device.mqtt.client_options import make_client


@dataclass(frozen=True)
class Message:
    topic: str
    payload: bytes
    retain: bool


class Probe:
    """Subscribes to ``topics`` on connect; ``messages`` is everything received."""

    def __init__(self, host: str, port: int, *topics: str) -> None:
        self._topics = topics
        self._lock = threading.Lock()
        self._messages: list[Message] = []
        self.subscribed = threading.Event()
        self.client = make_client(f"probe-{time.monotonic_ns()}", config=None, role="probe")
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = self._on_message
        self.client.connect(host, port)
        self.client.loop_start()
        assert self.subscribed.wait(5), "probe did not subscribe"

    def _on_connect(self, client: mqtt.Client, *args: Any) -> None:
        if self._topics:
            client.subscribe([(topic, 1) for topic in self._topics])
        else:
            self.subscribed.set()

    def _on_subscribe(self, *args: Any) -> None:
        self.subscribed.set()

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        with self._lock:
            self._messages.append(Message(message.topic, bytes(message.payload), message.retain))

    @property
    def messages(self) -> list[Message]:
        with self._lock:
            return list(self._messages)

    def clear(self) -> None:
        with self._lock:
            self._messages.clear()

    def publish(self, topic: str, payload: bytes | str, retain: bool = False) -> None:
        self.client.publish(topic, payload, qos=1, retain=retain).wait_for_publish(5)

    def wait_for(
        self, predicate: Callable[[Message], bool], timeout: float = 10.0
    ) -> Message | None:
        deadline = time.monotonic() + timeout
        seen = 0
        while time.monotonic() < deadline:
            messages = self.messages
            for message in messages[seen:]:
                if predicate(message):
                    return message
            seen = len(messages)
            time.sleep(0.05)
        return None

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
