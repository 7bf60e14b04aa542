"""deploy/: the systemd unit, the Pi install script, the broker's ACL, the example config.

Everything runs for real: `systemd-analyze verify` and `security` on the unit file as
shipped; the install script as root against a throwaway root that looks like Raspberry
Pi OS (useradd --root edits its passwd and group files); mosquitto with the shipped
configuration and ACL (paths and port rewritten to a temporary folder) and paho clients
logging in as devices. What cannot exist here: a running systemd (the script's
`systemctl enable` is skipped, as it is in an image build) and PyPI (the pip steps run
chrooted against a stand-in interpreter that records what it was asked to install).
"""

from __future__ import annotations

import configparser
import getpass
import os
import re
import shutil
import stat
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from device.config import MqttSection, TlsSection, load_config
from device.mqtt.client_options import make_client
from tests.conftest import free_port, wait_for_port
from tests.test_mqtt_tls import _certificate, _write_key

REPO = Path(__file__).resolve().parent.parent
DEPLOY = REPO / "deploy"
UNIT = DEPLOY / "systemd" / "edgewatch.service"
INSTALL = DEPLOY / "install-pi.sh"
EXAMPLE = DEPLOY / "examples" / "camera.toml"
MOSQUITTO_CONF = DEPLOY / "mosquitto" / "edgewatch.conf"
MOSQUITTO_ACL = DEPLOY / "mosquitto" / "edgewatch.acl"

needs_root = pytest.mark.skipif(
    os.geteuid() != 0, reason="useradd --root and chown need root (make test runs as root)"
)


def _systemd_analyze() -> str:
    binary = shutil.which("systemd-analyze")
    if binary is None:
        pytest.fail("systemd-analyze is missing; `make test` installs the systemd package")
    return binary


def _unit_values(key: str) -> list[str]:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read(UNIT)
    return [
        value
        for section in parser.sections()
        for name, value in parser.items(section)
        if name == key
    ]


# --- the systemd unit ----------------------------------------------------------------


@pytest.fixture
def unit_root(tmp_path: Path) -> Path:
    """A root holding the unit as installed, the binary its ExecStart names (verify
    checks that it is executable) and systemd's own units (its dependencies)."""
    root = tmp_path / "root"
    (root / "etc/systemd/system").mkdir(parents=True)
    shutil.copy(UNIT, root / "etc/systemd/system/edgewatch.service")
    executable = root / _unit_values("ExecStart")[0].split()[0].lstrip("/")
    executable.parent.mkdir(parents=True)
    executable.write_text("#!/bin/sh\n")
    executable.chmod(0o755)
    system_units = next(
        path for path in (Path("/usr/lib/systemd/system"), Path("/lib/systemd/system"))
        if path.is_dir()
    )  # fmt: skip
    shutil.copytree(system_units, root / "usr/lib/systemd/system", symlinks=True)
    return root


def _verify(root: Path) -> subprocess.CompletedProcess[str]:
    unit = root / "etc/systemd/system/edgewatch.service"
    return subprocess.run(
        [_systemd_analyze(), "verify", "--man=no", f"--root={root}", str(unit)],
        capture_output=True,
        text=True,
        check=False,
    )


def test_unit_passes_systemd_analyze_verify(unit_root: Path) -> None:
    result = _verify(unit_root)
    # verify exits 0 on unknown keys and unparsable values and only warns: no output at all.
    assert result.returncode == 0 and result.stdout + result.stderr == "", result.stderr


def test_verify_does_catch_a_broken_unit(unit_root: Path) -> None:
    """The check above is worth something: a typo'd key and value are reported."""
    unit = unit_root / "etc/systemd/system/edgewatch.service"
    text = unit.read_text().replace("ProtectSystem=strict", "ProtectSystem=strikt\nProtectSytem=1")
    unit.write_text(text)
    result = _verify(unit_root)
    assert "protect system value" in result.stderr  # "Failed to parse ...: strikt"
    assert "Unknown key 'ProtectSytem'" in result.stderr


def test_unit_hardening_exposure_is_low(unit_root: Path) -> None:
    unit = unit_root / "etc/systemd/system/edgewatch.service"
    result = subprocess.run(
        [_systemd_analyze(), "security", "--offline=yes", f"--root={unit_root}",
         "--no-pager", "--threshold=30", str(unit)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    match = re.search(r"Overall exposure level for edgewatch.service: (\d+\.\d+)", result.stdout)
    assert match is not None, result.stdout + result.stderr
    assert result.returncode == 0, f"exposure {match.group(1)} is above 3.0"


def test_unit_is_a_notify_service_with_watchdog() -> None:
    assert _unit_values("Type") == ["notify"]
    assert _unit_values("NotifyAccess") == ["main"]
    assert _unit_values("WatchdogSec") == ["30"]
    assert _unit_values("Restart") == ["on-failure"]
    assert _unit_values("User") == ["edgewatch"]
    assert _unit_values("ExecStart") == [
        "/opt/edgewatch/venv/bin/edgewatch run --config /etc/edgewatch/device.toml"
    ]
    assert _unit_values("StateDirectory") == ["edgewatch"]
    assert set(_unit_values("SupplementaryGroups")[0].split()) == {"video", "audio"}


# --- the install script --------------------------------------------------------------

OS_RELEASE = """PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"
NAME="Debian GNU/Linux"
VERSION_ID="12"
VERSION="12 (bookworm)"
VERSION_CODENAME=bookworm
ID=debian
"""
# Raspberry Pi OS's groups, and its first user `pi` in them.
PI_GROUPS = [
    ("root", 0), ("adm", 4), ("dialout", 20), ("audio", 29), ("video", 44), ("plugdev", 46),
    ("users", 100), ("input", 101), ("render", 105), ("netdev", 106), ("spi", 994),
    ("i2c", 995), ("gpio", 997), ("pi", 1000),
]  # fmt: skip
LOGIN_DEFS = "SYS_UID_MIN 100\nSYS_UID_MAX 999\nSYS_GID_MIN 100\nSYS_GID_MAX 999\n"


def make_pi_root(root: Path) -> Path:
    """The parts of a Raspberry Pi OS Bookworm image that the install script touches."""
    (root / "etc").mkdir(parents=True)
    (root / "usr/sbin").mkdir(parents=True)
    (root / "etc/os-release").write_text(OS_RELEASE)
    (root / "etc/rpi-issue").write_text("Raspberry Pi reference 2024-11-19\n")
    (root / "etc/login.defs").write_text(LOGIN_DEFS)
    (root / "etc/passwd").write_text(
        "root:x:0:0:root:/root:/bin/bash\npi:x:1000:1000:,,,:/home/pi:/bin/bash\n"
    )
    (root / "etc/shadow").write_text("root:*:20000:0:99999:7:::\npi:*:20000:0:99999:7:::\n")
    members = {name: "" if name in ("root", "pi") else "pi" for name, _ in PI_GROUPS}
    (root / "etc/group").write_text(
        "".join(f"{name}:x:{gid}:{members[name]}\n" for name, gid in PI_GROUPS)
    )
    (root / "etc/gshadow").write_text(
        "".join(f"{name}:*::{members[name]}\n" for name, _ in PI_GROUPS)
    )
    for name in ("shadow", "gshadow"):
        (root / "etc" / name).chmod(0o640)
    nologin = root / "usr/sbin/nologin"
    nologin.write_text("#!/bin/sh\nexit 1\n")
    nologin.chmod(0o755)
    return root


def run_install(root: Path, *args: str, env: dict[str, str] | None = None) -> str:
    result = subprocess.run(
        ["bash", str(INSTALL), "--root", str(root), *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        check=False,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout + result.stderr


def db(root: Path, name: str) -> dict[str, list[str]]:
    lines = (root / "etc" / name).read_text().splitlines()
    return {line.split(":")[0]: line.split(":") for line in lines}


def mode_owner(path: Path) -> tuple[int, int, int]:
    info = path.stat()
    return stat.S_IMODE(info.st_mode), info.st_uid, info.st_gid


@needs_root
def test_install_in_a_pi_root_and_again(tmp_path: Path) -> None:
    root = make_pi_root(tmp_path / "pi")
    output = run_install(root, "--no-pip")
    assert "Debian GNU/Linux 12 (bookworm)" in output
    assert "systemd is not running here" in output  # no systemctl against the host

    users, groups = db(root, "passwd"), db(root, "group")
    user = users["edgewatch"]
    uid, gid = int(user[2]), int(user[3])
    assert 100 <= uid <= 999  # a system user
    assert user[5:] == ["/var/lib/edgewatch", "/usr/sbin/nologin"]
    assert groups["edgewatch"][2] == str(gid)
    for group in ("video", "audio", "render", "plugdev"):
        assert groups[group][3].split(",") == ["pi", "edgewatch"], group
    for group in ("gpio", "i2c", "dialout"):
        assert "edgewatch" not in groups[group][3]
    assert not (root / "var/lib/edgewatch/.bashrc").exists()  # no home skeleton

    assert mode_owner(root / "etc/edgewatch") == (0o750, 0, gid)
    assert mode_owner(root / "var/lib/edgewatch") == (0o750, uid, gid)
    assert mode_owner(root / "var/lib/edgewatch/models") == (0o750, uid, gid)
    config = root / "etc/edgewatch/device.toml"
    assert config.read_bytes() == EXAMPLE.read_bytes()
    assert mode_owner(config) == (0o640, 0, gid)
    assert mode_owner(root / "etc/edgewatch/environment") == (0o600, 0, 0)
    model = root / "var/lib/edgewatch/models/shapes.ewm"
    assert model.read_bytes() == (DEPLOY / "demo/models/shapes.ewm").read_bytes()
    unit = root / "etc/systemd/system/edgewatch.service"
    assert unit.read_bytes() == UNIT.read_bytes()
    assert not (root / "opt/edgewatch").exists()  # --no-pip

    # Second run: the operator has edited the config; nothing is duplicated or replaced.
    config.write_text(config.read_text().replace('id = "pi-camera"', 'id = "pi-porch"'))
    before = {name: (root / "etc" / name).read_text() for name in ("passwd", "group")}
    output = run_install(root, "--no-pip")
    assert "user edgewatch exists" in output
    assert "keeping existing /etc/edgewatch/device.toml" in output
    assert 'id = "pi-porch"' in config.read_text()
    assert {name: (root / "etc" / name).read_text() for name in before} == before


@needs_root
def test_dry_run_changes_nothing(tmp_path: Path) -> None:
    root = make_pi_root(tmp_path / "pi")
    before = sorted(str(p.relative_to(root)) for p in root.rglob("*"))
    output = run_install(root, "--dry-run", "edgewatch")
    assert sorted(str(p.relative_to(root)) for p in root.rglob("*")) == before
    assert "+ useradd --root" in output
    assert "-m venv /opt/edgewatch/venv" in output
    assert "--comment edgewatch\\ daemon" in output  # printed as a shell would need it


@needs_root
def test_package_outside_the_root_is_refused_before_any_change(tmp_path: Path) -> None:
    root = make_pi_root(tmp_path / "pi")
    result = subprocess.run(
        ["bash", str(INSTALL), "--root", str(root), str(REPO)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert result.returncode != 0 and "must be inside" in result.stderr
    assert "edgewatch" not in db(root, "passwd")


def test_example_config_is_valid() -> None:
    config = load_config(EXAMPLE)
    assert config.mqtt.port == 8883 and config.mqtt.tls is not None
    assert config.mqtt.username == config.device.id  # what the broker's ACL expects
    assert config.device.state_dir == Path("/var/lib/edgewatch")
    assert config.pipelines["main"].model == Path("/var/lib/edgewatch/models/shapes.ewm")


# --- the arm64 check (make arm64-check) -------------------------------------------------
# Its real run emulates a whole Debian root for many minutes, so it is never run here;
# these only catch a script that would fail before it starts.

ARM64_CHECK = DEPLOY / "arm64-check.sh"


def test_arm64_check_script_parses() -> None:
    result = subprocess.run(
        ["bash", "-n", str(ARM64_CHECK)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck is not installed")
def test_arm64_check_script_passes_shellcheck() -> None:
    result = subprocess.run(
        ["shellcheck", str(ARM64_CHECK)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout


def test_arm64_check_refuses_bad_arguments_before_doing_anything() -> None:
    usage = subprocess.run(
        ["bash", str(ARM64_CHECK), "--help"], capture_output=True, text=True, check=False
    )
    assert usage.returncode == 0 and "--fresh" in usage.stdout
    bad = subprocess.run(
        ["bash", str(ARM64_CHECK), "--duration", "soon"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert bad.returncode != 0 and "whole seconds" in bad.stderr


def test_arm64_check_is_not_part_of_make_test() -> None:
    makefile = (REPO / "Makefile").read_text()
    test_rule = next(line for line in makefile.splitlines() if line.startswith("test:"))
    assert "arm64" not in test_rule
    assert "\narm64-check:" in makefile


# The pip steps, chrooted into the target like an image build, against a stand-in
# interpreter: it reports the Python minor version it is told to, and its venv's pip
# records its arguments and refuses ai-edge-litert when told to (as on armhf).
FAKE_PYTHON = """#!/bin/bash
case "$1" in
    -c) echo "$FAKE_MINOR" ;;
    -m) [ "$2" = venv ] && mkdir -p "$3/bin" && cp /usr/bin/fake-venv-python "$3/bin/python" \\
            && cp /usr/bin/fake-edgewatch "$3/bin/edgewatch" ;;
esac
"""
FAKE_VENV_PYTHON = """#!/bin/bash
shift 3  # -m pip install
echo "$*" >> /pip.log
case "$*" in *ai-edge-litert*) [ "$FAKE_LITERT" = ok ] || exit 1 ;; esac
exit 0
"""
FAKE_EDGEWATCH = '#!/bin/bash\necho "edgewatch 0.1.0"\n'


def _copy_with_libraries(root: Path, program: str) -> None:
    """A host binary and the shared libraries it loads, at the same paths in root."""
    binary = Path(shutil.which(program) or program).resolve()
    paths = [binary]
    ldd = subprocess.run(["ldd", str(binary)], capture_output=True, text=True, check=True)
    paths += [Path(p) for p in re.findall(r"(/\S+) \(0x", ldd.stdout)]
    for path in paths:
        target = root / str(path).lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path.resolve(), target)


@pytest.fixture(scope="module")
def chroot_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = make_pi_root(tmp_path_factory.mktemp("chroot") / "pi")
    for link in ("bin", "lib", "lib64", "sbin"):
        (base / "usr" / link).mkdir(parents=True, exist_ok=True)
        (base / link).symlink_to(f"usr/{link}")
    for program in ("bash", "mkdir", "cp"):
        _copy_with_libraries(base, program)
    for name, text in (
        ("python3", FAKE_PYTHON),
        ("fake-venv-python", FAKE_VENV_PYTHON),
        ("fake-edgewatch", FAKE_EDGEWATCH),
    ):
        path = base / "usr/bin" / name
        path.write_text(text)
        path.chmod(0o755)
    return base


def _pip_calls(chroot_base: Path, tmp_path: Path, minor: int, litert: str) -> tuple[list[str], str]:
    root = tmp_path / "pi"
    shutil.copytree(chroot_base, root, symlinks=True)
    output = run_install(
        root, "edgewatch", env={"FAKE_MINOR": str(minor), "FAKE_LITERT": litert, "PATH":
                                "/usr/sbin:/usr/bin:/sbin:/bin"}
    )  # fmt: skip
    assert "edgewatch 0.1.0" in output  # the venv's console script ran
    assert (root / "opt/edgewatch/venv/bin/python").is_file()
    return (root / "pip.log").read_text().splitlines(), output


@needs_root
def test_python_313_gets_ai_edge_litert(chroot_base: Path, tmp_path: Path) -> None:
    calls, _ = _pip_calls(chroot_base, tmp_path, 13, litert="ok")
    assert calls == ["--upgrade pip", "--upgrade edgewatch[device]"]


@needs_root
def test_python_311_prefers_ai_edge_litert(chroot_base: Path, tmp_path: Path) -> None:
    calls, output = _pip_calls(chroot_base, tmp_path, 11, litert="ok")
    assert calls == [
        "--upgrade pip",
        "--upgrade ai-edge-litert>=1.2",
        "--upgrade edgewatch[device]",
    ]
    assert "TFLite runtime: ai-edge-litert (Python 3.11)" in output


@needs_root
def test_python_311_falls_back_to_tflite_runtime(chroot_base: Path, tmp_path: Path) -> None:
    calls, output = _pip_calls(chroot_base, tmp_path, 11, litert="fail")
    assert calls[-2:] == [
        "--upgrade numpy<2 tflite-runtime opencv-python-headless prometheus_client>=0.20 "
        "tqdm>=4.66 soundfile>=0.12 sounddevice>=0.4.6 edgewatch",
        "--upgrade numpy<2 librosa>=0.10",  # tried apart: audio only, may lack armhf wheels
    ]
    assert "falling back to tflite-runtime" in output


@needs_root
def test_old_python_is_refused(chroot_base: Path, tmp_path: Path) -> None:
    root = tmp_path / "pi"
    shutil.copytree(chroot_base, root, symlinks=True)
    result = subprocess.run(
        ["bash", str(INSTALL), "--root", str(root), "edgewatch"],
        capture_output=True, text=True, env={**os.environ, "FAKE_MINOR": "9"}, check=False,
    )  # fmt: skip
    assert result.returncode != 0
    assert "needs Python >= 3.10" in result.stderr


# --- the broker: mosquitto with the shipped config and ACL ---------------------------


@dataclass(frozen=True)
class AclBroker:
    port: int
    ca_file: Path
    passwords: dict[str, str]


@pytest.fixture
def acl_broker(tmp_path: Path) -> Iterator[AclBroker]:
    """The shipped edgewatch.conf with its /etc/mosquitto paths moved into tmp_path and
    its port made free; the ACL file is used exactly as shipped."""
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = _certificate("edgewatch test CA", ca_key, None, ca_key, ca=True)
    server_key = ec.generate_private_key(ec.SECP256R1())
    server_cert = _certificate("localhost", server_key, ca_cert.subject, ca_key, ca=False)
    etc = tmp_path / "mosquitto"
    (etc / "certs").mkdir(parents=True)
    (etc / "certs/ca.crt").write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    (etc / "certs/server.crt").write_bytes(server_cert.public_bytes(serialization.Encoding.PEM))
    _write_key(etc / "certs/server.key", server_key)
    shutil.copy(MOSQUITTO_ACL, etc / "edgewatch.acl")
    passwords = {user: f"{user}-secret" for user in ("pi-porch", "pi-garage", "workstation")}
    passwd_tool = shutil.which("mosquitto_passwd") or "mosquitto_passwd"
    for index, (user, password) in enumerate(passwords.items()):
        create = ["-c"] if index == 0 else []
        subprocess.run(
            [passwd_tool, "-b", *create, str(etc / "passwd"), user, password], check=True
        )
    port = free_port()
    config = MOSQUITTO_CONF.read_text()
    for old, new in (("listener 8883\n", f"listener {port} 127.0.0.1\n"),
                     ("/etc/mosquitto/", f"{etc}/")):  # fmt: skip
        assert old in config, f"{MOSQUITTO_CONF} changed: no {old!r}; update this test"
        config = config.replace(old, new)
    (etc / "edgewatch.conf").write_text(f"user {getpass.getuser()}\npersistence false\n{config}")
    binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    process = subprocess.Popen(
        [binary, "-c", str(etc / "edgewatch.conf")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        try:
            wait_for_port("127.0.0.1", port)
        except TimeoutError:
            process.kill()
            assert process.stderr is not None
            pytest.fail(f"mosquitto refused the config: {process.stderr.read().decode()}")
        yield AclBroker(port, etc / "certs/ca.crt", passwords)
    finally:
        process.terminate()
        process.wait(5)
        assert process.stderr is not None
        process.stderr.close()


@dataclass
class Client:
    """A paho client (edgewatch's own factory: MQTT 5, TLS) that records PUBACK reason
    codes and received topics."""

    client: mqtt.Client
    acks: dict[int, int] = field(default_factory=dict)
    received: list[str] = field(default_factory=list)
    subscribed: threading.Event = field(default_factory=threading.Event)
    connected: threading.Event = field(default_factory=threading.Event)

    def publish(self, topic: str) -> int:
        """Publish at QoS 1 and return the broker's PUBACK reason code."""
        info = self.client.publish(topic, b"x", qos=1)
        deadline = time.monotonic() + 5
        while info.mid not in self.acks and time.monotonic() < deadline:
            time.sleep(0.01)
        return self.acks[info.mid]

    def subscribe(self, pattern: str) -> None:
        self.subscribed.clear()
        self.client.subscribe(pattern, qos=1)
        assert self.subscribed.wait(5)


@pytest.fixture
def connect(acl_broker: AclBroker) -> Iterator[Any]:
    clients: list[Client] = []

    def make(user: str, password: str | None = None) -> Client:
        section = MqttSection(
            host="localhost",
            port=acl_broker.port,
            username=user,
            password=password or acl_broker.passwords[user],
            password_env=None,
            tls=TlsSection(ca_file=acl_broker.ca_file),
        )
        paho = make_client(f"test-{user}", config=section, role="test")
        wrapped = Client(paho)
        paho.on_publish = lambda _c, _u, mid, rc, _p: wrapped.acks.__setitem__(mid, rc.value)
        paho.on_message = lambda _c, _u, msg: wrapped.received.append(msg.topic)
        paho.on_subscribe = lambda *_args: wrapped.subscribed.set()

        def on_connect(_c: Any, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
            if reason == 0:
                wrapped.connected.set()

        paho.on_connect = on_connect
        paho.connect("localhost", acl_broker.port)
        paho.loop_start()
        clients.append(wrapped)
        return wrapped

    yield make
    for wrapped in clients:
        wrapped.client.disconnect()
        wrapped.client.loop_stop()


NOT_AUTHORIZED = 135
NO_MATCHING_SUBSCRIBERS = 16  # accepted, and nobody subscribes to it


def test_device_publishes_only_under_its_own_prefix(connect: Any) -> None:
    observer = connect("workstation")
    assert observer.connected.wait(5)
    observer.subscribe("edgewatch/#")
    device = connect("pi-porch")
    assert device.connected.wait(5)
    assert device.publish("edgewatch/pi-porch/events/cam") == 0
    assert device.publish("edgewatch/pi-garage/events/cam") == NOT_AUTHORIZED
    assert device.publish("edgewatch/pi-porch2/events/cam") == NOT_AUTHORIZED
    assert device.publish("edgewatch/group/outdoor/models/push") == NOT_AUTHORIZED
    assert (
        device.publish("homeassistant/binary_sensor/pi-porch/cam_person/config")
        == NO_MATCHING_SUBSCRIBERS
    )
    assert (
        device.publish("homeassistant/binary_sensor/pi-garage/cam_person/config") == NOT_AUTHORIZED
    )
    time.sleep(0.5)
    assert observer.received == ["edgewatch/pi-porch/events/cam"]


def test_device_reads_only_its_own_commands_and_pushes(connect: Any) -> None:
    device = connect("pi-porch")
    assert device.connected.wait(5)
    device.subscribe("edgewatch/#")  # asks for everything; the ACL filters delivery
    workstation = connect("workstation")
    assert workstation.connected.wait(5)
    sent = [
        "edgewatch/pi-porch/cmd/snapshot",
        "edgewatch/pi-garage/cmd/snapshot",
        "edgewatch/pi-porch/models/push",
        "edgewatch/pi-garage/models/push",
        "edgewatch/group/outdoor/models/push",  # pi-porch is in outdoor
        "edgewatch/group/garage/models/push",  # it is not in garage
    ]
    for topic in sent:
        assert workstation.publish(topic) == 0, topic
    time.sleep(0.5)
    assert device.received == [
        "edgewatch/pi-porch/cmd/snapshot",
        "edgewatch/pi-porch/models/push",
        "edgewatch/group/outdoor/models/push",
    ]


def test_workstation_cannot_pose_as_a_device(connect: Any) -> None:
    workstation = connect("workstation")
    assert workstation.connected.wait(5)
    assert workstation.publish("edgewatch/pi-porch/events/cam") == NOT_AUTHORIZED
    assert workstation.publish("edgewatch/pi-porch/availability") == NOT_AUTHORIZED


def test_wrong_password_is_refused(connect: Any) -> None:
    intruder = connect("pi-porch", password="guess")
    assert not intruder.connected.wait(2)


@pytest.mark.parametrize(
    "example", sorted((DEPLOY / "examples").glob("*.toml")), ids=lambda path: path.name
)
def test_every_example_config_is_valid(example: Path) -> None:
    """Each shipped example loads as it is (its models and sources exist only on a Pi)."""
    config = load_config(example)
    assert config.pipelines
    for pipeline in config.pipelines.values():
        assert pipeline.source in config.sources
