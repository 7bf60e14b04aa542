"""The MQTT topic layout of the design, in one place."""

from __future__ import annotations

from dataclasses import dataclass

ONLINE = "online"
OFFLINE = "offline"


@dataclass(frozen=True)
class Topics:
    """Topics of one device under a prefix (``edgewatch`` unless configured)."""

    prefix: str
    device: str

    @property
    def base(self) -> str:
        return f"{self.prefix}/{self.device}"

    @property
    def availability(self) -> str:
        return f"{self.base}/availability"

    @property
    def state(self) -> str:
        return f"{self.base}/state"

    @property
    def stats(self) -> str:
        return f"{self.base}/stats"

    def events(self, source: str) -> str:
        return f"{self.base}/events/{source}"

    def event_snapshot(self, source: str) -> str:
        """JPEGs of detection events' best sightings (raw bytes, retained)."""
        return f"{self.base}/events/{source}/snapshot"

    def command(self, name: str) -> str:
        return f"{self.base}/cmd/{name}"

    def command_result(self, name: str) -> str:
        return f"{self.base}/cmd/{name}/result"

    def snapshot(self, source: str) -> str:
        """A JPEG of a source's latest frame, published on the `snapshot` command."""
        return f"{self.base}/snapshot/{source}"

    @property
    def models_push(self) -> str:
        return f"{self.base}/models/push"

    @property
    def models_push_progress(self) -> str:
        """The device's answers to chunked pushes: what it has received so far."""
        return f"{self.base}/models/push/progress"

    @property
    def models_status(self) -> str:
        return f"{self.base}/models/status"

    def examples(self, request_id: str) -> str:
        """Hard examples sent in answer to one `collect` command."""
        return f"{self.base}/examples/{request_id}"

    def group_models_push(self, group: str) -> str:
        return f"{self.prefix}/group/{group}/models/push"


def parse_device_topic(prefix: str, topic: str) -> tuple[str, str] | None:
    """Split ``<prefix>/<device>/<rest>`` into (device, rest); None for other topics."""
    head = f"{prefix}/"
    if not topic.startswith(head):
        return None
    device, _, rest = topic[len(head) :].partition("/")
    if not device or not rest or device == "group":
        return None
    return device, rest
