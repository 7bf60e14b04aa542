#!/usr/bin/env bash
# Prove that the device side of edgewatch runs on linux/arm64 without a Raspberry Pi.
#
#   sudo deploy/arm64-check.sh             # or: make arm64-check
#   sudo deploy/arm64-check.sh --fresh     # throw the cached arm64 root away first
#
# It builds (once) a Debian arm64 root with debootstrap and runs it under qemu-user
# emulation, then, inside that root: a venv with the `device` and `demo` extras of this
# working tree (pip fetches aarch64 wheels from PyPI), `edgewatch check-config` on the
# demo's config, and `edgewatch demo` (embedded broker, bundled model and video) with
# `edgewatch watch --json` subscribed to it. It prints what ran (uname -m inside the root,
# the Python version, the TFLite backend that loaded, the demo's log and the events seen)
# and a verdict; the exit status is 0 only for PASS.
#
# Why a Debian root and not only wheels: `pip download --platform` proves that wheels
# exist, not that they import and run. Under emulation the real aarch64 numpy, OpenCV
# and LiteRT binaries load and invoke the model, as they would on a Pi.
#
# The root is cached (default: .arm64-root/ in the checkout, git-ignored), so a second
# run only copies the working tree in, reinstalls the project and reruns the demo.
# Emulation is slow: on two cores the first run took about ten minutes, the next about one.
#
# Needs root (debootstrap, chroot, mounts) and binfmt_misc for aarch64 (qemu-user-static
# registers it); the host packages qemu-user-static, binfmt-support and debootstrap are
# installed with apt-get when missing. Network: a Debian mirror and PyPI.
#
# Environment overrides: ARM64_ROOT (the cached root), ARM64_SUITE (default bookworm,
# the Debian of Raspberry Pi OS Bookworm: Python 3.11), ARM64_MIRROR (default: the
# host's own Debian mirror from its apt sources, else deb.debian.org), ARM64_DURATION
# (demo seconds, default 20), ARM64_CPU (the emulated CPU, default cortex-a72).
#
# The emulated CPU is a Raspberry Pi 4's (Cortex-A72; cortex-a76 is a Pi 5's), not
# qemu's default "max": under "max" (every extension qemu 7.2 implements: SVE2, SME,
# I8MM, ...) the bundled int8 model computes a different answer and the daemon's golden
# smoke test refuses it (output off by 0.996), while cortex-a72, cortex-a76, neoverse-n1
# and a64fx all match the converter. Whether qemu's emulation or LiteRT's kernels for
# those extensions are at fault cannot be told here; no Pi has them.
set -euo pipefail

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_DIR=$(dirname "$SCRIPT_DIR")

ROOT=${ARM64_ROOT:-$REPO_DIR/.arm64-root}
SUITE=${ARM64_SUITE:-bookworm}
MIRROR=${ARM64_MIRROR:-}
DURATION=${ARM64_DURATION:-20}
CPU=${ARM64_CPU:-cortex-a72}
FRESH=0
ARGS=("$@")

# Where things live inside the root.
readonly SRC=/opt/edgewatch-src
readonly VENV=/opt/edgewatch-venv
readonly STAMPS=/var/lib/arm64-check
readonly HOST_CA=/etc/ssl/arm64-check-host-ca.crt
readonly CPUINFO=$STAMPS/cpuinfo
readonly DEMO_CONFIG=$SRC/deploy/demo/device.toml

usage() {
    cat <<EOF
usage: $0 [--fresh] [--root DIR] [--suite SUITE] [--mirror URL] [--duration S] [--cpu MODEL]

--fresh        delete the cached arm64 root and build it again
--root DIR     the cached arm64 root (default: .arm64-root in the checkout)
--suite S      Debian suite for the root (default: bookworm)
--mirror URL   Debian mirror (default: the host's apt mirror, else deb.debian.org)
--duration S   how long the demo runs (default: 20)
--cpu MODEL    the emulated CPU (default: cortex-a72, a Pi 4; cortex-a76 is a Pi 5)
EOF
}

while [ $# -gt 0 ]; do
    case "$1" in
        --fresh) FRESH=1; shift ;;
        --root) ROOT=${2:?--root needs a folder}; shift 2 ;;
        --suite) SUITE=${2:?--suite needs a name}; shift 2 ;;
        --mirror) MIRROR=${2:?--mirror needs a URL}; shift 2 ;;
        --duration) DURATION=${2:?--duration needs seconds}; shift 2 ;;
        --cpu) CPU=${2:?--cpu needs a qemu CPU model}; shift 2 ;;
        -h|--help) usage; exit 0 ;;
        *) usage >&2; echo "arm64-check: unknown argument $1" >&2; exit 2 ;;
    esac
done

die() { echo "arm64-check: ERROR: $*" >&2; exit 1; }
say() { echo "arm64-check: $*"; }

case "$DURATION" in ''|*[!0-9]*) die "--duration must be whole seconds, got '$DURATION'" ;; esac
if [ "$(id -u)" != 0 ]; then
    command -v sudo >/dev/null || die "run as root: debootstrap, chroot and mounts need it"
    exec sudo ARM64_ROOT="$ROOT" ARM64_SUITE="$SUITE" ARM64_MIRROR="$MIRROR" \
        ARM64_DURATION="$DURATION" ARM64_CPU="$CPU" "$0" "${ARGS[@]}"
fi
mkdir -p "$ROOT"
ROOT=$(cd "$ROOT" && pwd)
[ "$ROOT" != / ] || die "--root / would turn this machine into the arm64 root"

# --- timing ------------------------------------------------------------------------

CHECK_STARTED=$SECONDS
TIMINGS=()

# step NAME COMMAND...: run one step with a header and its duration.
step() {
    local name=$1 started=$SECONDS
    shift
    echo
    echo "==> $name"
    "$@"
    local took=$((SECONDS - started))
    TIMINGS+=("$(printf '%-34s %5ds' "$name" "$took")")
    echo "    ($name: ${took}s)"
}

# --- the host ----------------------------------------------------------------------

ensure_host_tools() {
    local missing=()
    command -v debootstrap >/dev/null || missing+=(debootstrap)
    command -v qemu-aarch64-static >/dev/null || missing+=(qemu-user-static)
    command -v update-binfmts >/dev/null || missing+=(binfmt-support)
    if [ ${#missing[@]} -gt 0 ]; then
        say "installing host packages: ${missing[*]}"
        command -v apt-get >/dev/null || die "no apt-get here: install ${missing[*]} yourself"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    else
        say "host tools present: debootstrap, qemu-aarch64-static, update-binfmts"
    fi
    command -v unshare >/dev/null || die "unshare (util-linux) is missing"
    say "$(qemu-aarch64-static --version | head -n 1)"
}

BINFMT_DIR=/proc/sys/fs/binfmt_misc
BINFMT_ENTRY=$BINFMT_DIR/qemu-aarch64

# The kernel must hand aarch64 ELF files to qemu: debootstrap's second stage, dpkg's
# maintainer scripts, `python -m venv` and pip all start further aarch64 programs, which
# a one-off `qemu-aarch64-static -L ROOT prog` cannot follow. So binfmt_misc is required.
ensure_binfmt() {
    if [ ! -e "$BINFMT_DIR/register" ]; then
        say "binfmt_misc is not mounted; mounting it"
        mount -t binfmt_misc binfmt_misc "$BINFMT_DIR" ||
            die "cannot mount binfmt_misc (a container without the privilege?); run this" \
                "on a host or a privileged container, where qemu-user-static can register"
    fi
    if [ ! -e "$BINFMT_ENTRY" ] || ! grep -qx enabled "$BINFMT_ENTRY"; then
        say "registering qemu-aarch64 with binfmt_misc"
        update-binfmts --enable qemu-aarch64 ||
            die "update-binfmts could not register qemu-aarch64 (see above)"
    fi
    grep -qx enabled "$BINFMT_ENTRY" || die "binfmt_misc entry qemu-aarch64 is not enabled"
    local interpreter flags
    interpreter=$(awk '$1 == "interpreter" { print $2 }' "$BINFMT_ENTRY")
    flags=$(awk '$1 == "flags:" { print $2 }' "$BINFMT_ENTRY")
    say "binfmt_misc: qemu-aarch64 enabled, interpreter $interpreter, flags ${flags:-none}"
    # Without F (fix binary) the kernel looks the interpreter up inside the chroot.
    if [[ "$flags" != *F* ]]; then
        say "no F flag: copying the interpreter into the root"
        install -D -m 0755 "$(command -v qemu-aarch64-static)" "$ROOT$interpreter"
    fi
}

# The host's own Debian mirror (same network rules as its apt), else deb.debian.org.
detect_mirror() {
    local files=() uri
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list \
             /etc/apt/sources.list.d/*.sources; do
        [ -f "$f" ] && files+=("$f")
    done
    uri=""
    if [ ${#files[@]} -gt 0 ]; then
        uri=$(grep -hE '^[[:space:]]*(URIs:|deb[[:space:]])' "${files[@]}" |
            sed -E 's/^[[:space:]]*URIs:[[:space:]]*//; s/^[[:space:]]*deb[[:space:]]+(\[[^]]*\][[:space:]]+)?//' |
            tr ' ' '\n' | grep -E '^https?://[^ ]*/debian/?$' | head -n 1 || true)
    fi
    echo "${uri:-http://deb.debian.org/debian}"
}

# The CA bundle this host trusts, copied into the root for pip: behind a TLS-inspecting
# proxy the root's own ca-certificates would refuse PyPI.
host_ca_bundle() {
    local candidate
    for candidate in "${PIP_CERT:-}" "${SSL_CERT_FILE:-}" "${REQUESTS_CA_BUNDLE:-}" \
                     /etc/ssl/certs/ca-certificates.crt /etc/pki/tls/certs/ca-bundle.crt; do
        if [ -n "$candidate" ] && [ -f "$candidate" ]; then echo "$candidate"; return; fi
    done
}

# --- inside the root -----------------------------------------------------------------

# in_root COMMAND...: run COMMAND chrooted into the arm64 root, in a private mount
# namespace (so /proc, /sys and /dev vanish with the process: nothing to unmount, even
# after Ctrl-C) and a clean environment (the host's pip settings name host paths).
in_root() {
    local envs=(PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
        HOME=/root LANG=C.UTF-8 DEBIAN_FRONTEND=noninteractive PYTHONUNBUFFERED=1 QEMU_CPU="$CPU"
        PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_DEFAULT_TIMEOUT=120 PIP_ROOT_USER_ACTION=ignore)
    [ ! -f "$ROOT$HOST_CA" ] || envs+=("PIP_CERT=$HOST_CA" "SSL_CERT_FILE=$HOST_CA")
    local var
    for var in http_proxy https_proxy no_proxy HTTP_PROXY HTTPS_PROXY NO_PROXY; do
        [ -z "${!var:-}" ] || envs+=("$var=${!var}")
    done
    # shellcheck disable=SC2016  # $root, $cpuinfo and "$@" belong to the inner shell
    unshare --mount --propagation private -- /bin/sh -c '
        root=$1; cpuinfo=$2; shift 2
        mount -t proc proc "$root/proc"
        [ ! -f "$root$cpuinfo" ] || mount --bind "$root$cpuinfo" "$root/proc/cpuinfo"
        mount --rbind /sys "$root/sys"
        mount --rbind /dev "$root/dev"
        exec chroot "$root" /usr/bin/env -i "$@"
    ' in_root "$ROOT" "$CPUINFO" "${envs[@]}" "$@"
}

# qemu-user (7.2, Debian bookworm's) shows the host's x86 /proc/cpuinfo to the arm64
# programs. LiteRT's CPU detection (the cpuinfo library under XNNPACK and ruy) parses it
# when an interpreter is created and crashes on x86 content (SIGSEGV in
# Interpreter()). A Raspberry Pi 4's own /proc/cpuinfo (Cortex-A72), one block per host
# CPU (the part number of the emulated --cpu), is bound over it inside the root.
write_cpuinfo() {
    local cpu count part
    count=$(nproc)
    case "$CPU" in
        cortex-a53) part=0xd03 ;;
        cortex-a55) part=0xd05 ;;
        cortex-a76) part=0xd0b ;;
        neoverse-n1) part=0xd0c ;;
        *) part=0xd08 ;;  # cortex-a72
    esac
    mkdir -p "$(dirname "$ROOT$CPUINFO")"
    for ((cpu = 0; cpu < count; cpu++)); do
        printf 'processor\t: %d\nBogoMIPS\t: 108.00\nFeatures\t: fp asimd evtstrm crc32 cpuid\n' "$cpu"
        printf 'CPU implementer\t: 0x41\nCPU architecture: 8\nCPU variant\t: 0x0\n'
        printf 'CPU part\t: %s\nCPU revision\t: 3\n\n' "$part"
    done > "$ROOT$CPUINFO"
    say "an arm64 /proc/cpuinfo ($CPU, part $part, x $count) stands in for qemu's x86 one"
}

stamp() { [ -e "$ROOT$STAMPS/$1" ]; }
set_stamp() { mkdir -p "$ROOT$STAMPS" && date -u +%FT%TZ > "$ROOT$STAMPS/$1"; }

# --- the steps ---------------------------------------------------------------------

prepare_root_folder() {
    if [ "$FRESH" = 1 ]; then
        say "--fresh: deleting $ROOT"
        rm -rf --one-file-system "$ROOT"
        mkdir -p "$ROOT"
    elif [ -n "$(ls -A "$ROOT")" ] && ! stamp debootstrap-1; then
        say "$ROOT holds an unfinished first stage; starting it again"
        rm -rf --one-file-system "$ROOT"
        mkdir -p "$ROOT"
    fi
}

debootstrap_first_stage() {
    if stamp debootstrap-1; then say "cached: first stage of $ROOT"; return; fi
    MIRROR=${MIRROR:-$(detect_mirror)}
    say "debootstrap --foreign --arch=arm64 $SUITE from $MIRROR into $ROOT"
    # python3 and python3-venv come in with the base system: one dpkg run under emulation
    # instead of a second apt-get pass.
    debootstrap --arch=arm64 --foreign --variant=minbase \
        --include=ca-certificates,python3,python3-venv \
        "$SUITE" "$ROOT" "$MIRROR"
    set_stamp debootstrap-1
}

debootstrap_second_stage() {
    if stamp debootstrap-2; then say "cached: second stage"; return; fi
    say "debootstrap --second-stage, emulated (the slow part of a first run)"
    in_root /debootstrap/debootstrap --second-stage ||
        die "the second stage failed (log: $ROOT/debootstrap/debootstrap.log if it is" \
            "still there); run again with --fresh"
    set_stamp debootstrap-2
}

ensure_python() {
    cp -L /etc/resolv.conf "$ROOT/etc/resolv.conf"
    write_cpuinfo
    local ca
    ca=$(host_ca_bundle)
    if [ -n "$ca" ]; then install -m 0644 "$ca" "$ROOT$HOST_CA"; fi
    if [ -x "$ROOT/usr/bin/python3" ] && in_root dpkg -s python3-venv >/dev/null 2>&1; then
        say "python3 and python3-venv present"
    else
        say "installing python3 and python3-venv with apt-get inside the root"
        in_root apt-get update -qq
        in_root apt-get install -y -qq python3 python3-venv
    fi
    [ -x "$ROOT$VENV/bin/python" ] || in_root python3 -m venv "$VENV"
    say "venv $VENV: $(in_root "$VENV/bin/python" --version)"
}

# The working tree as git sees it (tracked and untracked, minus ignored files), copied
# fresh each run so the check is of exactly what is checked out here.
copy_working_tree() {
    rm -rf --one-file-system "${ROOT:?}$SRC"
    mkdir -p "$ROOT$SRC"
    if git -C "$REPO_DIR" rev-parse --is-inside-work-tree >/dev/null 2>&1; then
        git -C "$REPO_DIR" ls-files -z --cached --others --exclude-standard |
            (cd "$REPO_DIR" && tar --null --ignore-failed-read -T - -cf -) |
            tar -C "$ROOT$SRC" -xf -
    else
        tar -C "$REPO_DIR" --exclude=./.venv --exclude=./.arm64-root --exclude=./.git \
            -cf - . | tar -C "$ROOT$SRC" -xf -
    fi
    say "copied $(find "$ROOT$SRC" -type f | wc -l) files to $SRC"
}

# The device and demo extras, editable: `edgewatch demo` finds deploy/demo next to its
# package. ai-edge-litert first; tflite-runtime with numpy<2 where it has no wheel, as
# deploy/install-pi.sh does on a Pi.
install_project() {
    local pip=("$VENV/bin/python" -m pip install --progress-bar off)
    if in_root "${pip[@]}" -e "${SRC}[device,demo]"; then
        say "installed edgewatch[device,demo] with ai-edge-litert"
    else
        say "the device extra did not install (no ai-edge-litert wheel for this Python?);" \
            "falling back to tflite-runtime with numpy<2"
        in_root "${pip[@]}" "numpy<2" tflite-runtime opencv-python-headless \
            "prometheus_client>=0.20" -e "${SRC}[demo]"
    fi
}

ARCH=""
PYVER=""
BACKEND=""

describe_root() {
    ARCH=$(in_root uname -m)
    PYVER=$(in_root "$VENV/bin/python" -c 'import platform; print(platform.python_version())')
    local report
    report=$(in_root "$VENV/bin/python" - <<'EOF'
import importlib.metadata as md
import platform

import cv2
import numpy

from device.runtime import find_backend

backend = find_backend()
package = {"ai-edge-litert": "ai-edge-litert", "tflite-runtime": "tflite-runtime"}.get(
    backend.name, "tensorflow"
)
print(f"backend={backend.name} {md.version(package)}")
print(f"machine={platform.machine()} numpy={numpy.__version__} opencv={cv2.__version__}")
print(f"edgewatch={md.version('edgewatch')}")
EOF
    )
    BACKEND=$(sed -n 's/^backend=//p' <<<"$report")
    say "uname -m inside the root: $ARCH"
    say "python: $PYVER"
    say "TFLite backend: $BACKEND"
    sed -n 's/^\(machine\|edgewatch\)=/\1=/p' <<<"$report" | sed 's/^/arm64-check: /'
    [ "$ARCH" = aarch64 ] || die "the root reports $ARCH, not aarch64: emulation is not in effect"
}

CHECK_CONFIG_RC=0
check_config() {
    in_root "$VENV/bin/edgewatch" check-config "$DEMO_CONFIG" || CHECK_CONFIG_RC=$?
    say "check-config exit status: $CHECK_CONFIG_RC"
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

free_port() {
    local port tries=0
    while [ $tries -lt 50 ]; do
        port=$((20000 + RANDOM % 20000))
        port_open "$port" || { echo "$port"; return; }
        tries=$((tries + 1))
    done
    die "no free port found"
}

DEMO_RC=0
EVENTS_FILE=""
DEMO_LOG=""

# The demo logs its daemon's lines but not its events, so `edgewatch watch --json` (the
# project's own subscriber, inside the root too) listens once the embedded broker is up.
run_demo() {
    local port watch_config watch_pid demo_pid waited=0
    port=$(free_port)
    # A watch config: the demo's own, pointed at this port and at MQTT 3.1.1, which is
    # all the embedded amqtt broker speaks.
    watch_config=$SRC/deploy/demo/arm64-watch.toml
    sed -e "s/^port = .*/port = $port\nprotocol = \"3.1.1\"/" \
        "$ROOT$DEMO_CONFIG" > "$ROOT$watch_config"
    DEMO_LOG=$(mktemp)
    EVENTS_FILE=$(mktemp)
    say "edgewatch demo --duration $DURATION --no-watch --port $port"
    in_root "$VENV/bin/edgewatch" demo --duration "$DURATION" --no-watch --port "$port" \
        > "$DEMO_LOG" 2>&1 &
    demo_pid=$!
    # Started at once, not once the broker is up: its own imports take seconds under
    # emulation, and its client retries until the embedded broker listens.
    say "edgewatch watch --device demo --json (MQTT 3.1.1, same port)"
    in_root "$VENV/bin/edgewatch" watch --config "$watch_config" --device demo --json \
        > "$EVENTS_FILE" 2>&1 &
    watch_pid=$!
    # The demo's log line tells when the broker listens (a probe connection would make
    # amqtt log an error).
    local ready="broker (amqtt) listening on 127.0.0.1:$port"
    while ! grep -qF "$ready" "$DEMO_LOG"; do
        if ! kill -0 "$demo_pid" 2>/dev/null; then break; fi
        if [ $waited -ge 300 ]; then say "broker not up after ${waited}s"; break; fi
        sleep 1
        waited=$((waited + 1))
    done
    if grep -qF "$ready" "$DEMO_LOG"; then say "embedded broker up after ${waited}s"; fi
    wait "$demo_pid" || DEMO_RC=$?
    kill -TERM "$watch_pid" 2>/dev/null || true
    wait "$watch_pid" 2>/dev/null || true
    echo "--- the demo's log ---"
    sed 's/^/    /' "$DEMO_LOG"
    echo "--- events seen by edgewatch watch ($(grep -c '^{' "$EVENTS_FILE" || true)) ---"
    sed 's/^/    /' "$EVENTS_FILE"
    say "demo exit status: $DEMO_RC"
    rm -f "$ROOT$watch_config"
}

count_events() { grep '^{' "$EVENTS_FILE" | grep -c "\"type\": *\"$1\"" || true; }

verdict() {
    local starts updates ends labels loaded failures=()
    starts=$(count_events start)
    updates=$(count_events update)
    ends=$(count_events end)
    labels=$(grep '^{' "$EVENTS_FILE" | grep -o '"label": *"[^"]*"' | sed 's/.*"\([^"]*\)"$/\1/' |
        sort -u | paste -sd, - | sed 's/,/, /g' || true)
    loaded=$(grep -m 1 'device.runtime: loaded' "$DEMO_LOG" | sed 's/.*device.runtime: //' || true)
    [ "$ARCH" = aarch64 ] || failures+=("uname -m is $ARCH")
    [ -n "$BACKEND" ] || failures+=("no TFLite backend")
    [ "$CHECK_CONFIG_RC" = 0 ] || failures+=("check-config exited $CHECK_CONFIG_RC")
    [ "$DEMO_RC" = 0 ] || failures+=("demo exited $DEMO_RC")
    [ -n "$loaded" ] || failures+=("the daemon never loaded the model")
    [ "$starts" -gt 0 ] || failures+=("no start event arrived")
    echo
    echo "==> summary"
    row() { printf '    %-24s: %s\n' "$1" "$2"; }
    row "machine inside the root" "$ARCH (Debian $SUITE, qemu-user CPU $CPU via binfmt_misc)"
    row "python" "$PYVER"
    row "TFLite backend" "$BACKEND"
    row "model" "${loaded:-not loaded}"
    row "check-config" "exit $CHECK_CONFIG_RC"
    row "demo (${DURATION} s)" "exit $DEMO_RC"
    row "events" "$starts start, $updates update, $ends end; labels: ${labels:-none}"
    echo "    timings:"
    local line
    for line in "${TIMINGS[@]}"; do echo "      $line"; done
    echo "      total                              $((SECONDS - CHECK_STARTED))s"
    rm -f "$DEMO_LOG" "$EVENTS_FILE"
    if [ ${#failures[@]} -eq 0 ]; then
        echo "VERDICT: PASS: the device side runs on linux/arm64 (emulated)"
    else
        echo "VERDICT: FAIL: $(IFS=';'; echo "${failures[*]}")"
        exit 1
    fi
}

say "arm64 root: $ROOT (suite $SUITE)"
prepare_root_folder
step "host tools" ensure_host_tools
step "binfmt_misc" ensure_binfmt
step "debootstrap, first stage" debootstrap_first_stage
step "debootstrap, second stage" debootstrap_second_stage
step "python3 and venv" ensure_python
step "copy the working tree" copy_working_tree
step "pip install .[device,demo]" install_project
step "what runs" describe_root
step "edgewatch check-config" check_config
step "edgewatch demo" run_demo
verdict
