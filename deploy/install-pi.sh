#!/usr/bin/env bash
# Install the edgewatch daemon as a systemd service on Raspberry Pi OS (Bookworm, Trixie;
# arm64 or armhf) or any Debian-like system. Safe to run again: it upgrades the package
# and the unit, and never overwrites a config, a password file or a model you have.
#
#   sudo ./deploy/install-pi.sh                  # from a checkout: installs that checkout
#   sudo ./deploy/install-pi.sh edgewatch-0.1.0-py3-none-any.whl
#   sudo ./deploy/install-pi.sh --dry-run        # print what would be done
#
# What it does: a system user `edgewatch` (in the video, audio, render, plugdev and apex
# groups that exist), /etc/edgewatch (root:edgewatch 0750), /var/lib/edgewatch
# (edgewatch 0750), a venv in /opt/edgewatch/venv with edgewatch and a TFLite runtime,
# an example config, the systemd unit (enabled, not started: edit the config first).
#
# The TFLite runtime: ai-edge-litert where it installs (Python >= 3.10 on arm64 and
# x86-64); otherwise tflite-runtime, which has wheels only up to Python 3.11 and needs
# numpy<2 (armhf, older images). --runtime forces one.
set -euo pipefail

readonly USER_NAME=edgewatch
readonly VENV=/opt/edgewatch/venv
readonly CONF_DIR=/etc/edgewatch
readonly STATE_DIR=/var/lib/edgewatch
readonly UNIT_PATH=/etc/systemd/system/edgewatch.service
readonly EXTRA_GROUPS="video audio render plugdev apex"

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_DIR=$(dirname "$SCRIPT_DIR")

ROOT=""
DRY_RUN=0
NO_PIP=0
RUNTIME=auto
PYTHON=python3
EXAMPLE="$SCRIPT_DIR/examples/camera.toml"
PACKAGE=""

usage() {
    cat <<EOF
usage: $0 [options] [PACKAGE]

PACKAGE       a wheel, a source folder or a pip requirement; default: this checkout
              when the script runs from one, else the PyPI name 'edgewatch'
--root DIR    install under DIR (image building, tests); pip runs chrooted into DIR
--dry-run     print the commands instead of running them
--no-pip      skip the venv and the Python packages (user, folders, config, unit only)
--runtime R   auto (default), ai-edge-litert or tflite-runtime
--python PY   the interpreter for the venv (default python3)
--example F   the config copied to /etc/edgewatch/device.toml when there is none
EOF
}

die() { echo "install-pi: $*" >&2; exit 1; }
say() { echo "install-pi: $*"; }

while [ $# -gt 0 ]; do
    case "$1" in
        --root) ROOT=${2:?--root needs a folder}; shift 2 ;;
        --dry-run) DRY_RUN=1; shift ;;
        --no-pip) NO_PIP=1; shift ;;
        --runtime) RUNTIME=${2:?--runtime needs a value}; shift 2 ;;
        --python) PYTHON=${2:?--python needs an interpreter}; shift 2 ;;
        --example) EXAMPLE=${2:?--example needs a file}; shift 2 ;;
        -h|--help) usage; exit 0 ;;
        -*) usage >&2; die "unknown option $1" ;;
        *) [ -z "$PACKAGE" ] || die "only one PACKAGE, got '$PACKAGE' and '$1'"; PACKAGE=$1; shift ;;
    esac
done

case "$RUNTIME" in auto|ai-edge-litert|tflite-runtime) ;; *) die "--runtime: auto, ai-edge-litert or tflite-runtime" ;; esac
if [ -n "$ROOT" ]; then
    [ -d "$ROOT" ] || die "--root $ROOT is not a folder"
    ROOT=$(cd "$ROOT" && pwd)
    [ "$ROOT" != / ] || ROOT=""
fi
if [ -z "$PACKAGE" ]; then
    if [ -f "$REPO_DIR/pyproject.toml" ]; then PACKAGE=$REPO_DIR; else PACKAGE=edgewatch; fi
fi
[ "$DRY_RUN" = 1 ] || [ "$(id -u)" = 0 ] || die "run as root (sudo $0), or try --dry-run"
[ -f "$EXAMPLE" ] || die "example config $EXAMPLE not found; pass --example FILE"

# Run a command, or print it under --dry-run.
run() {
    if [ "$DRY_RUN" = 1 ]; then echo "+$(printf ' %q' "$@")"; else "$@"; fi
}

# A command inside the target system: chrooted when --root is given.
in_target() {
    if [ -n "$ROOT" ]; then run chroot "$ROOT" "$@"; else run "$@"; fi
}

# --- the system --------------------------------------------------------------------

describe_system() {
    local name="unknown system" codename=""
    if [ -f "$ROOT/etc/os-release" ]; then
        name=$(. "$ROOT/etc/os-release" && echo "${PRETTY_NAME:-$NAME}")
        codename=$(. "$ROOT/etc/os-release" && echo "${VERSION_CODENAME:-}")
    fi
    say "target: $name (${ROOT:-/}), machine $(uname -m)"
    case "$codename" in
        bookworm|trixie) ;;
        *) say "note: tested layouts are Raspberry Pi OS / Debian bookworm and trixie; continuing" ;;
    esac
}

# --- user, groups, folders ---------------------------------------------------------

# Field N of NAME's line in the target's passwd or group file.
db_field() { awk -F: -v n="$2" -v f="$3" '$1 == n { print $f }' "$ROOT/etc/$1" 2>/dev/null; }

root_args=()
[ -z "$ROOT" ] || root_args=(--root "$ROOT")

ensure_user() {
    if [ -n "$(db_field passwd "$USER_NAME" 1)" ]; then
        say "user $USER_NAME exists"
    else
        say "creating system user $USER_NAME"
        run useradd "${root_args[@]}" --system --user-group --home-dir "$STATE_DIR" \
            --no-create-home --shell /usr/sbin/nologin --comment "edgewatch daemon" "$USER_NAME"
    fi
    local group wanted=()
    for group in $EXTRA_GROUPS; do
        if [ -n "$(db_field group "$group" 1)" ]; then wanted+=("$group"); fi
    done
    if [ ${#wanted[@]} -gt 0 ]; then
        local joined
        joined=$(IFS=,; echo "${wanted[*]}")
        say "adding $USER_NAME to groups: $joined"
        run usermod "${root_args[@]}" --append --groups "$joined" "$USER_NAME"
    fi
}

# install -d with numeric ids from the target's own user database (under --root the
# host may have no such user, or another uid for it).
ensure_dir() {
    local path=$1 mode=$2 owner=$3 group=$4 uid gid
    uid=$(db_field passwd "$owner" 3)
    gid=$(db_field group "$group" 3)
    if [ "$DRY_RUN" = 1 ]; then uid=${uid:-"<$owner>"}; gid=${gid:-"<$group>"}; fi
    [ -n "$uid" ] && [ -n "$gid" ] || die "no user $owner or group $group in $ROOT/etc"
    run install -d -m "$mode" -o "$uid" -g "$gid" "$ROOT$path"
}

# Copy SRC to DEST unless DEST exists (a config someone may have edited).
install_once() {
    local src=$1 dest=$2 mode=$3 group=$4 gid
    if [ -e "$ROOT$dest" ]; then
        say "keeping existing $dest"
        return
    fi
    gid=$(db_field group "$group" 3)
    [ -n "$gid" ] || gid="<$group>"
    say "installing $dest"
    run install -m "$mode" -o 0 -g "$gid" "$src" "$ROOT$dest"
}

ensure_files() {
    ensure_dir "$CONF_DIR" 0750 root "$USER_NAME"
    ensure_dir "$STATE_DIR" 0750 "$USER_NAME" "$USER_NAME"
    ensure_dir "$STATE_DIR/models" 0750 "$USER_NAME" "$USER_NAME"
    install_once "$EXAMPLE" "$CONF_DIR/device.toml" 0640 "$USER_NAME"
    local env_template
    env_template=$(mktemp)
    printf '%s\n' \
        "# Read by systemd (as root) for edgewatch.service; keep it mode 0600." \
        "# EDGEWATCH_MQTT_PASSWORD=the-broker-password" > "$env_template"
    install_once "$env_template" "$CONF_DIR/environment" 0600 root
    rm -f "$env_template"
    local demo_model="$REPO_DIR/deploy/demo/models/shapes.ewm"
    if [ -f "$demo_model" ]; then
        install_once "$demo_model" "$STATE_DIR/models/shapes.ewm" 0640 "$USER_NAME"
    fi
}

# --- Python ------------------------------------------------------------------------

python_minor() {
    in_target "$PYTHON" -c 'import sys; print(sys.version_info[1] if sys.version_info[0] == 3 else 0)'
}

# PACKAGE as pip inside the target sees it: under --root a local path must lie inside
# DIR, since pip runs chrooted there.
target_package() {
    if [ -z "$ROOT" ] || [ ! -e "$PACKAGE" ]; then echo "$PACKAGE"; return; fi
    local path
    path=$(realpath "$PACKAGE")
    case "$path" in
        "$ROOT"/*) echo "${path#"$ROOT"}" ;;
        *) die "with --root, PACKAGE must be inside $ROOT (pip runs chrooted there): $PACKAGE" ;;
    esac
}

# PACKAGE with an extra added, unless it names extras already.
with_extra() {
    case "$1" in *\[*) echo "$1" ;; *) echo "$1[$2]" ;; esac
}

install_python() {
    if [ "$NO_PIP" = 1 ]; then
        say "--no-pip: leaving $VENV and the Python packages alone"
        return
    fi
    local minor package=$TARGET_PACKAGE pip=("$VENV/bin/python" -m pip install --upgrade)
    if [ "$DRY_RUN" = 1 ]; then minor=11; else minor=$(python_minor); fi
    [ "$minor" -ge 10 ] || die "edgewatch needs Python >= 3.10; $PYTHON is 3.$minor"
    [ -x "$ROOT$VENV/bin/python" ] || in_target "$PYTHON" -m venv "$VENV"
    in_target "${pip[@]}" pip

    local runtime=$RUNTIME
    if [ "$runtime" = auto ]; then
        if [ "$minor" -ge 12 ]; then
            runtime=ai-edge-litert   # tflite-runtime has no wheels past 3.11
        elif in_target "${pip[@]}" "ai-edge-litert>=1.2"; then
            runtime=ai-edge-litert
        else
            say "ai-edge-litert does not install here; falling back to tflite-runtime"
            runtime=tflite-runtime
        fi
    fi
    say "TFLite runtime: $runtime (Python 3.$minor)"
    if [ "$runtime" = ai-edge-litert ]; then
        in_target "${pip[@]}" "$(with_extra "$package" device)"
    else
        [ "$minor" -le 11 ] || die "tflite-runtime has no wheels for Python 3.$minor"
        # Not the device extra: it would pull ai-edge-litert, which is what failed. The
        # rest of the extra is named here instead; librosa (audio pipelines only) may
        # have no wheel on armhf, so it is tried on its own and its absence only reported.
        in_target "${pip[@]}" "numpy<2" tflite-runtime opencv-python-headless \
            "prometheus_client>=0.20" "tqdm>=4.66" "soundfile>=0.12" "sounddevice>=0.4.6" \
            "$package"
        if ! in_target "${pip[@]}" "numpy<2" "librosa>=0.10"; then
            say "librosa does not install here: audio (keyword) pipelines will not start"
        fi
    fi
    in_target "$VENV/bin/edgewatch" --version
}

# --- systemd -----------------------------------------------------------------------

install_unit() {
    say "installing $UNIT_PATH"
    run install -d -m 0755 "$ROOT/etc/systemd/system"
    run install -m 0644 -o 0 -g 0 "$SCRIPT_DIR/systemd/edgewatch.service" "$ROOT$UNIT_PATH"
    if [ -z "$ROOT" ] && [ -d /run/systemd/system ]; then
        run systemctl daemon-reload
        run systemctl enable edgewatch.service
    else
        say "systemd is not running here${ROOT:+ (installing into $ROOT)}; enable it on the" \
            "device with: systemctl enable --now edgewatch"
    fi
}

# Checked before anything changes.
TARGET_PACKAGE=""
[ "$NO_PIP" = 1 ] || TARGET_PACKAGE=$(target_package)

describe_system
ensure_user
ensure_files
install_python
install_unit
say "done. Next: edit $CONF_DIR/device.toml (and $CONF_DIR/environment), then"
say "  sudo -u $USER_NAME $VENV/bin/edgewatch check-config $CONF_DIR/device.toml"
say "  sudo systemctl start edgewatch && journalctl -u edgewatch -f"
