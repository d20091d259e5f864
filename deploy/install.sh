#!/usr/bin/env bash
# Install or upgrade edge-inspector on a station PC (Debian/Ubuntu, systemd). Run as root.
#
#   sudo deploy/install.sh --source /path/to/checkout-or-wheel [--station line2-st3] [--gpu] [--enable]
#   sudo deploy/install.sh --rollback            # point /opt/edge-inspector/venv back at the previous release
#   deploy/install.sh --dry-run ...              # print what would be done (no root needed)
#
# Layout it creates (docs/operations.md explains each piece):
#   /opt/edge-inspector/releases/<version>-<UTC stamp>/venv   one virtualenv per install, never modified
#   /opt/edge-inspector/venv -> releases/<...>/venv            the release in service (the unit runs it)
#   /opt/edge-inspector/models/                                model bundles, one folder per version
#   /etc/edge-inspector/<station>.yaml                         station config (never overwritten)
#   /var/lib/edge-inspector/<station>/                         outbox, archive (StateDirectory=)
#   /etc/systemd/system/edge-inspector@.service                the unit
#   /etc/sysctl.d/90-edge-inspector-gige.conf                  GigE receive buffers
#   /etc/udev/rules.d/70-edge-inspector-cameras.rules          Basler USB access for the service group
#   /etc/tmpfiles.d/edge-inspector-usbfs.conf                  USB3 Vision buffer memory
set -euo pipefail

PREFIX=/opt/edge-inspector
CONF_DIR=/etc/edge-inspector
SERVICE_USER=edge-inspector
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/.." && pwd)"

SOURCE="" STATION="" GPU=0 ENABLE=0 DRY_RUN=0 ROLLBACK=0 PYTHON="${PYTHON:-python3}"

usage() { sed -n '2,8p' "$0" | sed 's/^# \{0,1\}//'; exit "${1:-0}"; }
die() { echo "install.sh: $*" >&2; exit 2; }
run() {  # every change goes through here so --dry-run shows the whole plan
    if [[ $DRY_RUN == 1 ]]; then printf '+ %s\n' "$*"; else "$@"; fi
}

while [[ $# -gt 0 ]]; do
    case "$1" in
        --source) SOURCE="${2:?--source needs a path}"; shift 2 ;;
        --station) STATION="${2:?--station needs a name}"; shift 2 ;;
        --gpu) GPU=1; shift ;;
        --enable) ENABLE=1; shift ;;
        --rollback) ROLLBACK=1; shift ;;
        --dry-run) DRY_RUN=1; shift ;;
        --python) PYTHON="${2:?}"; shift 2 ;;
        -h|--help) usage 0 ;;
        *) echo "install.sh: unknown option $1" >&2; usage 2 ;;
    esac
done

[[ $DRY_RUN == 1 || $(id -u) == 0 ]] || die "run as root (or with --dry-run)"
if [[ -n $STATION && ! $STATION =~ ^[A-Za-z0-9_.-]+$ ]]; then
    die "--station '$STATION': letters, digits, _ . - only (it becomes a unit instance and a file name)"
fi

# --- rollback: the previous release is still on disk, untouched -----------------------------------
if [[ $ROLLBACK == 1 ]]; then
    current="$(readlink -f "$PREFIX/venv" || true)"
    # The newest release older than the one in service (release names sort by their UTC stamp).
    previous=""
    for candidate in $(ls -1d "$PREFIX"/releases/*/venv 2>/dev/null | sort); do
        [[ $candidate < $current ]] && previous="$candidate"
    done
    [[ -n $previous ]] || die "no previous release under $PREFIX/releases to roll back to"
    echo "rolling back: $current -> $previous"
    run ln -sfn "$previous" "$PREFIX/venv.new"
    run mv -T "$PREFIX/venv.new" "$PREFIX/venv"
    echo "now restart the stations: systemctl restart 'edge-inspector@*'"
    exit 0
fi

[[ -n $SOURCE ]] || die "--source is required (a checkout of edge-inspector or a built wheel)"
[[ -e $SOURCE ]] || die "--source $SOURCE: no such file or directory"

# --- service user: camera and GPU device groups ---------------------------------------------------
if ! id "$SERVICE_USER" >/dev/null 2>&1; then
    run useradd --system --user-group --home-dir /var/lib/edge-inspector --no-create-home \
        --shell /usr/sbin/nologin --comment "edge-inspector daemon" "$SERVICE_USER"
fi
# video: /dev/video* (UVC) and on some distributions /dev/nvidia*; render: GPU render nodes;
# plugdev: USB cameras (see deploy/udev). Only groups that exist on this system are added.
for group in video render plugdev; do
    if getent group "$group" >/dev/null; then run usermod -a -G "$group" "$SERVICE_USER"; fi
done

# --- release: a fresh venv per install, switched atomically ---------------------------------------
stamp="$(date -u +%Y%m%dT%H%M%SZ)"
release="$PREFIX/releases/$stamp"
run install -d -m 0755 "$PREFIX" "$PREFIX/releases" "$PREFIX/models" "$release"
run "$PYTHON" -m venv "$release/venv"
run "$release/venv/bin/pip" install --quiet --upgrade pip
run "$release/venv/bin/pip" install --quiet "$SOURCE"
if [[ $GPU == 1 ]]; then
    # onnxruntime and onnxruntime-gpu install the same module: replace, never stack them.
    run "$release/venv/bin/pip" uninstall --quiet --yes onnxruntime
    run "$release/venv/bin/pip" install --quiet --no-deps "onnxruntime-gpu>=1.18"
fi
run "$release/venv/bin/edge-inspector" --version
if [[ -d $REPO/docs ]]; then run cp -r "$REPO/docs" "$release/docs"; fi
run ln -sfn "$release/venv" "$PREFIX/venv.new"
run mv -T "$PREFIX/venv.new" "$PREFIX/venv"   # rename(2): the unit sees the old or the new venv, never half
run ln -sfn "$release/docs" "$PREFIX/docs.new"
run mv -T "$PREFIX/docs.new" "$PREFIX/docs"

# --- host settings for cameras --------------------------------------------------------------------
run install -m 0644 "$HERE/sysctl/90-edge-inspector-gige.conf" /etc/sysctl.d/
run sysctl --quiet --load /etc/sysctl.d/90-edge-inspector-gige.conf
run install -m 0644 "$HERE/udev/70-edge-inspector-cameras.rules" /etc/udev/rules.d/
run udevadm control --reload
run udevadm trigger --subsystem-match=usb --attr-match=idVendor=2676
run install -m 0644 "$HERE/tmpfiles/edge-inspector-usbfs.conf" /etc/tmpfiles.d/
run systemd-tmpfiles --create /etc/tmpfiles.d/edge-inspector-usbfs.conf

# --- config and unit ------------------------------------------------------------------------------
run install -d -m 0750 -o root -g "$SERVICE_USER" "$CONF_DIR"
if [[ -n $STATION ]]; then
    cfg="$CONF_DIR/$STATION.yaml"
    if [[ -e $cfg ]]; then
        echo "keeping existing $cfg"
    else
        # Absolute state paths: relative ones resolve against /etc/edge-inspector, which the
        # unit's ProtectSystem=strict makes read-only.
        line="${STATION%%-*}" name="${STATION#*-}"
        [[ $line != "$STATION" ]] || { line=line1; name="$STATION"; }
        if [[ $DRY_RUN == 1 ]]; then
            echo "+ write $cfg (station $line/$name; edit camera, model and mqtt before starting)"
        else
            umask 027
            cat >"$cfg" <<EOF
# Station $STATION — generated by deploy/install.sh; every key: config/station.example.yaml
station:
  line: $line
  name: $name
camera:
  type: pylon
  serial: null
model:
  path: $PREFIX/models/current
mqtt:
  host: localhost
  port: 1883
outbox:
  path: /var/lib/edge-inspector/$STATION/outbox.sqlite
archive:
  path: /var/lib/edge-inspector/$STATION/archive
EOF
            chgrp "$SERVICE_USER" "$cfg"
        fi
    fi
fi
run install -m 0644 "$REPO/systemd/edge-inspector@.service" /etc/systemd/system/
run systemctl daemon-reload

if [[ -n $STATION ]]; then
    run "$PREFIX/venv/bin/edge-inspector" check-config --quiet "$CONF_DIR/$STATION.yaml"
    if [[ $ENABLE == 1 ]]; then
        run systemctl enable --now "edge-inspector@$STATION"
    else
        run systemctl try-restart "edge-inspector@$STATION"
    fi
fi
echo "edge-inspector installed: $release"
