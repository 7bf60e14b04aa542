"""Config sections of the three log sources, and the factory that opens one.

One ``[sources.NAME]`` table per source, told apart by ``kind``; each maps one-to-one
onto the options dataclass of its class (docs/logs.md has what each parameter does).
They live here rather than in device/config.py, which takes them into its ``Source``
union, so the config module does not grow with every source kind; they import nothing
from it (device/config.py imports this module).
"""

from __future__ import annotations

import glob
import shutil
import socket
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from device.errors import SourceError
from device.logs.journal import DEFAULT_COMMAND, JournalOptions, JournalSource
from device.logs.record import LogSource
from device.logs.syslog import SyslogOptions, SyslogSource
from device.logs.tail import StartAt, TailOptions, TailSource


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class LogFileSourceConfig(_Section):
    """Files followed like ``tail -F`` (rotation by rename and by copytruncate)."""

    kind: Literal["logfile"] = "logfile"
    #: Glob patterns or paths; a new file that matches is read from its first line.
    paths: tuple[str, ...] = Field(min_length=1)
    #: Without a saved position: "end" reads only new lines, "beginning" whole files.
    start_at: StartAt = "end"
    poll_interval_s: float = Field(0.25, gt=0.0, le=60.0)
    rotate_wait_s: float = Field(2.0, ge=0.0)
    max_line_bytes: int = Field(16_384, ge=64, le=16 * 1024 * 1024)
    #: A last line without its newline is handed out after this long (None: wait).
    partial_line_timeout_s: float | None = Field(None, gt=0.0)
    max_files: int = Field(128, ge=1)

    def open(self, name: str, state_dir: Path) -> TailSource:
        options = TailOptions(
            start_at=self.start_at,
            poll_interval_s=self.poll_interval_s,
            rotate_wait_s=self.rotate_wait_s,
            max_line_bytes=self.max_line_bytes,
            partial_line_timeout_s=self.partial_line_timeout_s,
            max_files=self.max_files,
        )
        return TailSource(name, list(self.paths), state_dir / f"{name}.tail.json", options)

    def describe(self) -> str:
        return f"log files {', '.join(self.paths)}"

    def check(self, name: str) -> str:
        """What check-config says: how many files match now (none is not an error: a
        file that appears later is read from its first line)."""
        del name
        matches = sum(len(glob.glob(pattern)) for pattern in self.paths)
        if matches == 0:
            return f"{self.describe()}: no file matches yet (read as soon as one appears)"
        return f"{self.describe()}: {matches} file(s) match"


class JournalSourceConfig(_Section):
    """The systemd journal through ``journalctl -f -o json``; the cursor is kept."""

    kind: Literal["journal"] = "journal"
    #: Only these units (`journalctl -u`); empty: the whole journal.
    units: tuple[str, ...] = ()
    #: Further journalctl arguments (e.g. ["-p", "warning"] or ["_COMM=sshd"]).
    extra_args: tuple[str, ...] = ()
    command: tuple[str, ...] = DEFAULT_COMMAND
    start_at: StartAt = "end"
    max_message_chars: int = Field(16_384, ge=64)
    restart_min_s: float = Field(1.0, gt=0.0)
    restart_max_s: float = Field(60.0, gt=0.0)

    def open(self, name: str, state_dir: Path) -> JournalSource:
        unit_args = tuple(arg for unit in self.units for arg in ("-u", unit))
        options = JournalOptions(
            command=self.command,
            extra_args=(*unit_args, *self.extra_args),
            start_at=self.start_at,
            max_message_chars=self.max_message_chars,
            restart_min_s=self.restart_min_s,
            restart_max_s=self.restart_max_s,
        )
        return JournalSource(name, state_dir / f"{name}.journal.json", options)

    def describe(self) -> str:
        return f"journal {', '.join(self.units) or '(all units)'}"

    def check(self, name: str) -> str:
        """SourceError when journalctl cannot run here."""
        program = self.command[0]
        if shutil.which(program) is None:
            raise SourceError(
                f"source {name}: {program} is not installed or not on PATH; the journal "
                "source needs systemd's journalctl (or follow the log files instead)"
            )
        return f"{self.describe()}: {program} found"


class SyslogSourceConfig(_Section):
    """A syslog listener (RFC 3164 and 5424) for devices that forward their logs."""

    kind: Literal["syslog"] = "syslog"
    #: Loopback by default; "0.0.0.0" to take logs from the network.
    host: str = "127.0.0.1"
    #: None turns a transport off; at least one must stay on.
    udp_port: int | None = Field(5514, ge=0, le=65535)
    tcp_port: int | None = Field(5514, ge=0, le=65535)
    max_message_bytes: int = Field(16_384, ge=480, le=1024 * 1024)
    max_clients: int = Field(64, ge=1)
    client_idle_timeout_s: float = Field(300.0, gt=0.0)

    @model_validator(mode="after")
    def _one_transport(self) -> SyslogSourceConfig:
        if self.udp_port is None and self.tcp_port is None:
            raise ValueError("a syslog source needs udp_port, tcp_port or both")
        return self

    def open(self, name: str, state_dir: Path) -> SyslogSource:
        del state_dir  # a network source has no position to keep
        options = SyslogOptions(
            host=self.host,
            udp_port=self.udp_port,
            tcp_port=self.tcp_port,
            max_message_bytes=self.max_message_bytes,
            max_clients=self.max_clients,
            client_idle_timeout_s=self.client_idle_timeout_s,
        )
        return SyslogSource(name, options)

    def describe(self) -> str:
        ports = [f"udp {self.udp_port}" if self.udp_port is not None else "",
                 f"tcp {self.tcp_port}" if self.tcp_port is not None else ""]  # fmt: skip
        return f"syslog on {self.host} ({', '.join(p for p in ports if p)})"

    def check(self, name: str) -> str:
        """SourceError when a port cannot be bound (in use, or below 1024 without the
        capability); binds and releases at once."""
        for kind, port in (("udp", self.udp_port), ("tcp", self.tcp_port)):
            if port is None:
                continue
            family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
            sock_type = socket.SOCK_DGRAM if kind == "udp" else socket.SOCK_STREAM
            with socket.socket(family, sock_type) as sock:
                if kind == "tcp":
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                try:
                    sock.bind((self.host, port))
                except OSError as exc:
                    raise SourceError(
                        f"source {name}: cannot listen on {kind} {self.host}:{port} ({exc}); "
                        "pick a free port (ports below 1024 need root or CAP_NET_BIND_SERVICE)"
                    ) from exc
        return f"{self.describe()}: ports free"


LogSourceConfig = LogFileSourceConfig | JournalSourceConfig | SyslogSourceConfig
LOG_SOURCE_KINDS = ("logfile", "journal", "syslog")


def open_log_source(name: str, config: LogSourceConfig, state_dir: Path) -> LogSource:
    """The source a config section describes; positions are kept under ``state_dir``."""
    return config.open(name, state_dir)
