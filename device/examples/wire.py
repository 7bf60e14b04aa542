"""What `collect` puts on the wire, and the bounds that keep a command from making the
device publish without limit.

Each example goes out as one :class:`ExampleMessage`, QoS 1, on
``<prefix>/<device>/examples/<request_id>``: the example's sidecar as stored, and its
data file base64-encoded (JSON has no bytes; a third more on the wire is the price of a
message that any MQTT tool can show and any language can parse). Audio clips and log
windows will travel in the same message; ``example.kind`` and ``example.media_type``
say what the data is.
"""

from __future__ import annotations

import base64
import binascii
import hashlib

from pydantic import BaseModel, ConfigDict, Field

from device.examples.meta import ExampleMeta

EXAMPLE_MESSAGE_SCHEMA = 1

#: Examples one `collect` command sends at most, and by default.
MAX_COLLECT_ITEMS = 500
DEFAULT_COLLECT_ITEMS = 50
#: Data bytes one `collect` command sends at most (before base64); the rest waits for
#: the next command. At least one example is always sent.
MAX_COLLECT_BYTES = 8 * 1024 * 1024
#: Ids one `forget` command may name.
MAX_FORGET_IDS = 1000
#: A collect request id becomes a topic level: no wildcards, no slashes.
REQUEST_ID_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"


class ExampleMessage(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)

    schema_version: int = Field(EXAMPLE_MESSAGE_SCHEMA, alias="schema")
    device: str
    request_id: str = Field(pattern=REQUEST_ID_PATTERN)
    #: This example's position in the answer (from 0) and the answer's size, so a
    #: receiver knows when it has everything.
    index: int = Field(ge=0)
    count: int = Field(ge=1)
    example: ExampleMeta
    #: The data file, standard base64.
    data: str

    @classmethod
    def build(
        cls, meta: ExampleMeta, data: bytes, *, device: str, request_id: str, index: int, count: int
    ) -> ExampleMessage:
        return cls(
            device=device,
            request_id=request_id,
            index=index,
            count=count,
            example=meta,
            data=base64.b64encode(data).decode("ascii"),
        )

    def to_bytes(self) -> bytes:
        return self.model_dump_json(by_alias=True).encode("utf-8")

    def data_bytes(self) -> bytes:
        """The data file, checked against the sidecar's size and sha256 (ValueError if
        it does not match: damaged in transit or by a broken sender)."""
        try:
            data = base64.b64decode(self.data, validate=True)
        except binascii.Error as exc:
            raise ValueError(f"example {self.example.id}: data is not base64 ({exc})") from exc
        if len(data) != self.example.bytes or (
            hashlib.sha256(data).hexdigest() != self.example.sha256
        ):
            raise ValueError(
                f"example {self.example.id}: data does not match its size and sha256"
            )
        return data
