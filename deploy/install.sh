#!/usr/bin/env bash
# Install, upgrade, roll back or remove edge-inspector on a station PC (Debian 12 / Ubuntu 22.04+). Run as root.
#
#   deploy/install.sh --source CHECKOUT-OR-WHEEL [--station line2-st3] [--gpu] [--enable] [--keep N]
#   deploy/install.sh --rollback                 # back to the newest older release that verified
#   deploy/install.sh --uninstall [--purge]      # remove releases, unit, host settings (--purge: config, models, state, user too)
#   options for every mode: --root DIR (install into a scratch root; nothing on the host is changed
#   but the service user), --dry-run (print the plan), --python PY (default /usr/bin/python3),
#   --wheelhouse DIR (offline: pip --no-index --find-links DIR)
#
# Layout it creates (docs/operations.md explains each piece):
#   /opt/edge-inspector/releases/<UTC stamp>/{venv,docs,VERIFIED}  one release per install, never modified
#   /opt/edge-inspector/current -> releases/<...>    the release in service; switched by one rename(2)
#   /opt/edge-inspector/venv -> current/venv, docs -> current/docs   fixed links the unit and the docs use
#   /opt/edge-inspector/models/                    model bundles, one folder per version (kept on uninstall)
#   /etc/edge-inspector/<station>.yaml             station config (never overwritten)
#   /var/lib/edge-inspector/<station>/             outbox, archive (the unit's StateDirectory=)
#   /etc/systemd/system/edge-inspector@.service, /etc/sysctl.d/, /etc/udev/rules.d/, /etc/tmpfiles.d/
#
# Transactional: the release is built and verified *as the service user* before anything the
# running stations use changes; a failure before the switch removes the half-built release and
# leaves the station as it was. Steps that need udev or a running systemd are skipped, with a
# line saying so, on hosts (containers) that have none.
set -euo pipefail

SERVICE_USER=edge-inspector
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/.." && pwd)"

SOURCE="" STATION="" GPU=0 ENABLE=0 DRY_RUN=0 MODE=install PURGE=0 KEEP=3 ROOT="" WHEELHOUSE=""
PYTHON="${PYTHON:-/usr/bin/python3}"

usage() { sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//'; exit "${1:-0}"; }
die() { echo "install.sh: $*" >&2; exit 2; }
say() { echo "install.sh: $*"; }
skip() { echo "install.sh: skipped: $*"; }
run() {  # every change goes through here so --dry-run shows the whole plan
    if [[ $DRY_RUN == 1 ]]; then printf '+ %s\n' "$*"; else "$@"; fi
}

while [[ $# -gt 0 ]]; do
    case "$1" in
        --source) SOURCE="${2:?--source needs a path}"; shift 2 ;;
        --station) STATION="${2:?--station needs a name}"; shift 2 ;;
        --gpu) GPU=1; shift ;;
        --enable) ENABLE=1; shift ;;
        --keep) KEEP="${2:?--keep needs a number}"; shift 2 ;;
        --rollback) MODE=rollback; shift ;;
        --uninstall) MODE=uninstall; shift ;;
        --purge) PURGE=1; shift ;;
        --root) ROOT="${2:?--root needs a directory}"; shift 2 ;;
        --wheelhouse) WHEELHOUSE="${2:?--wheelhouse needs a directory}"; shift 2 ;;
        --dry-run) DRY_RUN=1; shift ;;
        --python) PYTHON="${2:?--python needs an interpreter}"; shift 2 ;;
        -h|--help) usage 0 ;;
        *) echo "install.sh: unknown option $1" >&2; usage 2 ;;
    esac
done

[[ $DRY_RUN == 1 || $(id -u) == 0 ]] || die "run as root (or with --dry-run)"
if [[ -n $STATION && ! $STATION =~ ^[A-Za-z0-9_.-]+$ ]]; then
    die "--station '$STATION': letters, digits, _ . - only (it becomes a unit instance and a file name)"
fi
[[ $KEEP =~ ^[1-9][0-9]*$ ]] || die "--keep '$KEEP': a whole number of releases, at least 1"
if [[ -n $ROOT ]]; then
    [[ -d $ROOT ]] || die "--root $ROOT: no such directory"
    ROOT="$(cd "$ROOT" && pwd)"
fi

PREFIX="$ROOT/opt/edge-inspector"
CONF_DIR="$ROOT/etc/edge-inspector"
STATE_ROOT="$ROOT/var/lib/edge-inspector"
UNIT_DIR="$ROOT/etc/systemd/system"
UNIT=edge-inspector@.service

# Host actions that change the running system (kernel settings, udev, systemd) happen only on the
# real root; a scratch root gets the files and a line saying what was not applied.
host_step() {  # host_step "what" command...
    local what="$1"; shift
    if [[ -n $ROOT ]]; then skip "$what (--root: the running host is not changed)"; return 0; fi
    run "$@"
}
have_systemd() { [[ -z $ROOT && -d /run/systemd/system ]]; }
have_udev() { [[ -z $ROOT && -S /run/udev/control ]] && command -v udevadm >/dev/null; }

# Switch a symlink atomically: the unit sees the old or the new target, never none.
switch_link() {  # switch_link TARGET LINK
    run ln -sfn "$1" "$2.new"
    run mv -T "$2.new" "$2"
}

verified_releases() {  # newest last
    local dir
    for dir in $(ls -1d "$PREFIX"/releases/*/ 2>/dev/null | sort); do
        [[ -f $dir/VERIFIED ]] && basename "$dir"
    done
    return 0
}

current_release() { basename "$(readlink "$PREFIX/current" 2>/dev/null || true)"; }

# --- rollback: an older release that verified, still on disk, untouched -------------------------
if [[ $MODE == rollback ]]; then
    current="$(current_release)"
    previous=""
    for candidate in $(verified_releases); do
        [[ $candidate < $current ]] && previous="$candidate"
    done
    [[ -n $previous ]] || die "no older verified release under $PREFIX/releases to roll back to (in service: ${current:-none})"
    say "rolling back: $current -> $previous (venv and docs)"
    switch_link "releases/$previous" "$PREFIX/current"
    say "now restart the stations: systemctl restart 'edge-inspector@*'"
    exit 0
fi

# --- uninstall: the software goes; config, models and state stay unless --purge ------------------
if [[ $MODE == uninstall ]]; then
    if have_systemd; then
        for unit in $(systemctl list-units --all --plain --no-legend 'edge-inspector@*' | awk '{print $1}'); do
            run systemctl disable --now "$unit"
        done
    else
        skip "stopping and disabling edge-inspector@* units (no running systemd)"
    fi
    run rm -f "$UNIT_DIR/$UNIT" "$ROOT/etc/sysctl.d/90-edge-inspector-gige.conf" \
        "$ROOT/etc/udev/rules.d/70-edge-inspector-cameras.rules" "$ROOT/etc/tmpfiles.d/edge-inspector-usbfs.conf"
    if have_systemd; then run systemctl daemon-reload; else skip "systemctl daemon-reload (no running systemd)"; fi
    run rm -rf "$PREFIX/releases" "$PREFIX/current" "$PREFIX/venv" "$PREFIX/docs"
    if [[ $PURGE == 1 ]]; then
        run rm -rf "$PREFIX" "$CONF_DIR" "$STATE_ROOT" "$ROOT/var/cache/edge-inspector"
        if id "$SERVICE_USER" >/dev/null 2>&1; then run userdel "$SERVICE_USER"; fi
        say "uninstalled and purged (config, models, outbox, archive and the user $SERVICE_USER removed)"
    else
        say "uninstalled; kept $CONF_DIR (config), $PREFIX/models (models), $STATE_ROOT (outbox, archive) and the user $SERVICE_USER (--purge removes them)"
    fi
    exit 0
fi

[[ -n $SOURCE ]] || die "--source is required (a checkout of edge-inspector or a built wheel)"
[[ -e $SOURCE ]] || die "--source $SOURCE: no such file or directory"
[[ -z $WHEELHOUSE || -d $WHEELHOUSE ]] || die "--wheelhouse $WHEELHOUSE: no such directory"
command -v "$PYTHON" >/dev/null || die "--python $PYTHON: not found (Debian: apt-get install python3 python3-venv)"
SOURCE="$(cd "$(dirname "$SOURCE")" && pwd)/$(basename "$SOURCE")"

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

as_service_user() { run runuser -u "$SERVICE_USER" -- "$@"; }

# The venv links to this interpreter: the service user must be able to run it (a pyenv under
# /root, mode 0700, passes every check run as root and fails at the first start).
python_real="$(readlink -f "$(command -v "$PYTHON")")"
if [[ $DRY_RUN == 0 ]] && ! runuser -u "$SERVICE_USER" -- "$python_real" -c 'import venv' 2>/dev/null; then
    die "--python $PYTHON ($python_real): the service user $SERVICE_USER cannot run it or it lacks venv; use a system Python (default /usr/bin/python3; Debian: apt-get install python3-venv)"
fi

# --- release: built and verified aside; nothing in service changes until the switch -------------
stamp="$(date -u +%Y%m%dT%H%M%S.%NZ)"
release="$PREFIX/releases/$stamp"
switched=0
cleanup() {
    local rc=$?
    if [[ $DRY_RUN == 0 && $switched == 0 && -d $release ]]; then
        rm -rf "$release"
        echo "install.sh: failed before the switch; removed $release, the release in service is unchanged" >&2
    fi
    exit "$rc"
}
trap cleanup EXIT
pip_args=(--quiet --disable-pip-version-check)
if [[ -n $WHEELHOUSE ]]; then pip_args+=(--no-index --find-links "$WHEELHOUSE"); fi

run install -d -m 0755 "$PREFIX" "$PREFIX/releases" "$PREFIX/models" "$release"
run "$PYTHON" -m venv "$release/venv"
# The runtime only (no torch): `run` needs onnxruntime, not the training extra.
run "$release/venv/bin/pip" install "${pip_args[@]}" "$SOURCE"
if [[ $GPU == 1 ]]; then
    # onnxruntime and onnxruntime-gpu install the same module: replace, never stack them.
    run "$release/venv/bin/pip" uninstall --quiet --yes onnxruntime
    run "$release/venv/bin/pip" install "${pip_args[@]}" --no-deps "onnxruntime-gpu>=1.18"
fi
if [[ -d $REPO/docs ]]; then run cp -r "$REPO/docs" "$release/docs"; else run install -d "$release/docs"; fi
# Verify as the unit will run it: the service user, the release's own interpreter, the whole
# runtime import chain (the daemon's modules, onnxruntime, OpenCV, pypylon, paho).
as_service_user "$release/venv/bin/edge-inspector" --version
as_service_user "$release/venv/bin/python" -c 'import edge_inspector.supervisor, edge_inspector.acquisition.factory, edge_inspector.publish.mqtt, onnxruntime, cv2'
if [[ $DRY_RUN == 1 ]]; then
    echo "+ write $release/VERIFIED"
else
    "$release/venv/bin/edge-inspector" --version >"$release/VERIFIED"
fi

# --- host settings for cameras (files first; applying them needs the real host) -----------------
run install -d -m 0755 "$ROOT/etc/sysctl.d" "$ROOT/etc/udev/rules.d" "$ROOT/etc/tmpfiles.d" "$UNIT_DIR"
run install -m 0644 "$HERE/sysctl/90-edge-inspector-gige.conf" "$ROOT/etc/sysctl.d/"
run install -m 0644 "$HERE/udev/70-edge-inspector-cameras.rules" "$ROOT/etc/udev/rules.d/"
run install -m 0644 "$HERE/tmpfiles/edge-inspector-usbfs.conf" "$ROOT/etc/tmpfiles.d/"
# Kernel settings: a container or a locked-down host refuses them; the camera still works, only
# slower GigE/USB3 streams are at risk, so this warns instead of failing the install.
if [[ -n $ROOT ]]; then
    skip "sysctl --load, systemd-tmpfiles --create (--root: the running host is not changed)"
else
    run sysctl --quiet --load "$ROOT/etc/sysctl.d/90-edge-inspector-gige.conf" \
        || skip "sysctl --load refused (container?): net.core.rmem_max stays at $(cat /proc/sys/net/core/rmem_max 2>/dev/null || echo '?')"
    if command -v systemd-tmpfiles >/dev/null; then
        run systemd-tmpfiles --create "$ROOT/etc/tmpfiles.d/edge-inspector-usbfs.conf" \
            || skip "usbfs_memory_mb not set (no /sys/module/usbcore here?)"
    else
        skip "systemd-tmpfiles not installed: usbfs memory not set"
    fi
fi
if have_udev; then
    run udevadm control --reload
    run udevadm trigger --subsystem-match=usb --attr-match=idVendor=2676
else
    skip "udevadm reload/trigger (no running udev${ROOT:+ or --root}); the rule applies at the next boot or plug-in"
fi

# --- config and unit ------------------------------------------------------------------------------
run install -d -m 0750 -o root -g "$SERVICE_USER" "$CONF_DIR"
run install -d -m 0755 "$STATE_ROOT"
if [[ -n $STATION ]]; then
    cfg="$CONF_DIR/$STATION.yaml"
    if [[ -e $cfg ]]; then
        say "keeping existing $cfg"
    else
        line="${STATION%%-*}" name="${STATION#*-}"
        [[ $line != "$STATION" ]] || { line=line1; name="$STATION"; }
        if [[ $DRY_RUN == 1 ]]; then
            echo "+ write $cfg (station $line/$name; edit camera, model and mqtt before starting)"
        else
            # No state paths and no health.port: the daemon derives them from the instance name
            # (docs/configuration.md, "Per-instance defaults").
            (umask 027; cat >"$cfg" <<EOF
# Station $STATION — generated by deploy/install.sh; every key: config/station.example.yaml
# outbox, archive: /var/lib/edge-inspector/$STATION/; health.port: derived from "$STATION"
# (edge-inspector check-config prints it).
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
EOF
            )
            chgrp "$SERVICE_USER" "$cfg"
        fi
    fi
fi
if [[ -n $ROOT ]]; then
    # The unit names absolute paths; in a scratch root they point into it.
    run install -m 0644 /dev/null "$UNIT_DIR/$UNIT"
    if [[ $DRY_RUN == 0 ]]; then
        sed -e "s#/opt/edge-inspector/#$PREFIX/#g" -e "s#/etc/edge-inspector/#$CONF_DIR/#g" \
            "$REPO/systemd/$UNIT" >"$UNIT_DIR/$UNIT"
    fi
else
    run install -m 0644 "$REPO/systemd/$UNIT" "$UNIT_DIR/"
fi

# --- switch: one rename makes the new venv and its docs the ones in service -----------------------
switch_link "releases/$stamp" "$PREFIX/current"
switched=1
for link in venv docs; do
    if [[ "$(readlink "$PREFIX/$link" 2>/dev/null || true)" != "current/$link" ]]; then
        switch_link "current/$link" "$PREFIX/$link"
    fi
done
say "release in service: $release ($(cat "$release/VERIFIED" 2>/dev/null || echo 'dry run'))"

# --- prune: keep the newest --keep verified releases, always the one in service -----------------
keep_list="$(verified_releases | tail -n "$KEEP")"
for dir in $(ls -1d "$PREFIX"/releases/*/ 2>/dev/null | sort); do
    name="$(basename "$dir")"
    [[ $name == "$stamp" ]] && continue
    if ! grep -qxF "$name" <<<"$keep_list"; then
        say "pruning release $name"
        run rm -rf "$PREFIX/releases/$name"
    fi
done

if have_systemd; then run systemctl daemon-reload; else skip "systemctl daemon-reload (no running systemd${ROOT:+ or --root})"; fi

# --- the station: check what `run` needs, as the unit will run it -------------------------------
if [[ -n $STATION ]]; then
    check=(env "EDGE_INSPECTOR_INSTANCE=$STATION" "STATE_DIRECTORY=$STATE_ROOT/$STATION"
           "$PREFIX/venv/bin/edge-inspector" check-config --quiet)
    if have_systemd && systemctl is-active --quiet "edge-inspector@$STATION"; then
        check+=(--ignore-port)  # the running instance holds its own port
    fi
    run install -d -m 0750 -o "$SERVICE_USER" -g "$SERVICE_USER" "$STATE_ROOT/$STATION"
    if ! as_service_user "${check[@]}" "$CONF_DIR/$STATION.yaml"; then
        echo "install.sh: station $STATION is installed but not ready to start (the line above says why);" \
             "fix it, then: systemctl enable --now edge-inspector@$STATION" >&2
        [[ $ENABLE == 1 ]] && exit 2
        exit 0
    fi
    if ! have_systemd; then
        skip "starting edge-inspector@$STATION (no running systemd${ROOT:+ or --root})"
    elif [[ $ENABLE == 1 ]]; then
        run systemctl enable --now "edge-inspector@$STATION"
    else
        run systemctl try-restart "edge-inspector@$STATION"
    fi
fi
say "installed: $release"
