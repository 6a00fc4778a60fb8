#!/usr/bin/env bash
# Install iotgw on a Raspberry Pi (Raspberry Pi OS / Debian 12) or any systemd Linux box.
#
#   sudo deploy/install.sh              install or upgrade (idempotent: safe to re-run)
#   sudo deploy/install.sh --uninstall  remove the program and the unit; keep config + data
#   sudo deploy/install.sh --uninstall --purge   ... and delete /etc/iotgw, /var/lib/iotgw
#   deploy/install.sh --root DIR        install into DIR as if it were / (tests, images):
#                                       no useradd, chown or systemctl; prints them instead
#
# What it does:
#   /opt/iotgw/venv           a virtualenv with iotgw from this checkout (pip)
#   /opt/iotgw/share          docs, the example config, the Grafana dashboard
#   /usr/local/bin/iotgw      -> /opt/iotgw/venv/bin/iotgw
#   user/group iotgw          system user, no login, in group dialout (serial ports)
#   /etc/iotgw/               config (0750 root:iotgw); gateway.yaml written once, never
#                             overwritten; gateway.example.yaml refreshed every time
#   /etc/iotgw/credentials/   secrets for LoadCredential= (0700 root)
#   /var/lib/iotgw/           buffer and file sink (0750 iotgw:iotgw)
#   /etc/systemd/system/iotgw.service, enabled; started only when --start is given or
#                             it was already running (then restarted: an upgrade)
#
# Options: --python PY (default python3, needs >= 3.11), --wheels DIR (pip --no-index
# --find-links DIR: offline install), --pip-args "..." (extra pip arguments), --start.
set -euo pipefail

SRC=$(cd "$(dirname "$0")/.." && pwd)
ROOT=""
PYTHON=python3
WHEELS=""
PIP_ARGS=${IOTGW_PIP_ARGS:-}
UNINSTALL=0
PURGE=0
START=0

usage() { sed -n '2,28p' "$0" | sed 's/^# \{0,1\}//'; exit "${1:-0}"; }

while [ $# -gt 0 ]; do
    case "$1" in
        --root) ROOT=${2:?--root needs a directory}; shift 2 ;;
        --root=*) ROOT=${1#--root=}; shift ;;
        --python) PYTHON=${2:?}; shift 2 ;;
        --wheels) WHEELS=${2:?}; shift 2 ;;
        --pip-args) PIP_ARGS=${2?}; shift 2 ;;
        --uninstall) UNINSTALL=1; shift ;;
        --purge) PURGE=1; shift ;;
        --start) START=1; shift ;;
        -h|--help) usage 0 ;;
        *) echo "install.sh: unknown option $1" >&2; usage 2 ;;
    esac
done
# DESTDIR, as make install uses it, means the same as --root.
[ -z "$ROOT" ] && [ -n "${DESTDIR:-}" ] && ROOT=$DESTDIR
if [ -n "$ROOT" ]; then
    mkdir -p "$ROOT"
    ROOT=$(cd "$ROOT" && pwd)
fi

OPT=$ROOT/opt/iotgw
ETC=$ROOT/etc/iotgw
VAR=$ROOT/var/lib/iotgw
UNIT=$ROOT/etc/systemd/system/iotgw.service
USER_NAME=iotgw

say() { echo "install.sh: $*"; }
# System changes that make no sense inside a --root: run them for real, or show them.
system() {
    if [ -n "$ROOT" ]; then
        echo "install.sh: skipped (--root): $*"
    else
        "$@"
    fi
}

if [ -z "$ROOT" ] && [ "$(id -u)" -ne 0 ]; then
    echo "install.sh: run as root (sudo), or use --root DIR" >&2
    exit 1
fi

# -- uninstall --------------------------------------------------------------------------
if [ "$UNINSTALL" -eq 1 ]; then
    if [ -z "$ROOT" ] && systemctl list-unit-files iotgw.service >/dev/null 2>&1; then
        systemctl disable --now iotgw.service 2>/dev/null || true
    else
        system systemctl disable --now iotgw.service
    fi
    rm -f "$UNIT" "$ROOT/usr/local/bin/iotgw"
    system systemctl daemon-reload
    rm -rf "$OPT"
    if [ "$PURGE" -eq 1 ]; then
        rm -rf "$ETC" "$VAR"
        if [ -z "$ROOT" ] && id "$USER_NAME" >/dev/null 2>&1; then
            userdel "$USER_NAME" || true
        else
            system userdel "$USER_NAME"
        fi
        say "removed iotgw, its config, its data and user $USER_NAME"
    else
        say "removed iotgw; kept $ETC and $VAR (--purge deletes them)"
    fi
    exit 0
fi

# -- checks -----------------------------------------------------------------------------
if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
    echo "install.sh: $PYTHON is missing or older than 3.11 (apt-get install python3 python3-venv)" >&2
    exit 1
fi

# -- user -------------------------------------------------------------------------------
if [ -z "$ROOT" ]; then
    if ! id "$USER_NAME" >/dev/null 2>&1; then
        useradd --system --user-group --home-dir /var/lib/iotgw --no-create-home \
            --shell /usr/sbin/nologin --comment "iotgw edge gateway" "$USER_NAME"
        say "created system user $USER_NAME"
    fi
    getent group dialout >/dev/null || groupadd --system dialout
    usermod -a -G dialout "$USER_NAME"
else
    system useradd --system --user-group --home-dir /var/lib/iotgw --no-create-home \
        --shell /usr/sbin/nologin "$USER_NAME"
    system usermod -a -G dialout "$USER_NAME"
fi

# -- directories ------------------------------------------------------------------------
install -d -m 0755 "$OPT" "$OPT/share" "$OPT/share/doc" "$ROOT/etc/systemd/system"
install -d -m 0750 "$ETC"
install -d -m 0700 "$ETC/credentials"
install -d -m 0750 "$VAR"
system chown root:"$USER_NAME" "$ETC"
system chown "$USER_NAME":"$USER_NAME" "$VAR"

# -- program ----------------------------------------------------------------------------
# Build from a copy, so pip's in-tree build leaves the checkout untouched.
STAGE=$(mktemp -d)
trap 'rm -rf "$STAGE"' EXIT
(cd "$SRC" && tar cf - --exclude='__pycache__' --exclude='*.egg-info' --exclude='tests' \
    pyproject.toml README.md gateway drivers demo) | (cd "$STAGE" && tar xf -)
if [ ! -x "$OPT/venv/bin/python" ]; then
    "$PYTHON" -m venv "$OPT/venv"
    say "created $OPT/venv"
fi
pip_opts=(-q --disable-pip-version-check)
[ -n "$WHEELS" ] && pip_opts+=(--no-index --find-links "$WHEELS")
# shellcheck disable=SC2206  # deliberate word splitting of user-given pip arguments
[ -n "$PIP_ARGS" ] && pip_opts+=($PIP_ARGS)
"$OPT/venv/bin/python" -m pip install "${pip_opts[@]}" --upgrade "$STAGE"
VERSION=$("$OPT/venv/bin/python" -c 'import gateway; print(gateway.__version__)')
say "installed iotgw $VERSION into $OPT/venv"

# -- files ------------------------------------------------------------------------------
install -m 0644 "$SRC/deploy/gateway.example.yaml" "$OPT/share/gateway.example.yaml"
install -m 0640 "$SRC/deploy/gateway.example.yaml" "$ETC/gateway.example.yaml"
if [ ! -e "$ETC/gateway.yaml" ]; then
    install -m 0640 "$SRC/deploy/gateway.example.yaml" "$ETC/gateway.yaml"
    say "wrote $ETC/gateway.yaml from the example: describe the compound there"
else
    say "kept the existing $ETC/gateway.yaml"
fi
system chown root:"$USER_NAME" "$ETC/gateway.yaml" "$ETC/gateway.example.yaml"
for doc in operations.md scaling.md; do
    [ -f "$SRC/docs/$doc" ] && install -m 0644 "$SRC/docs/$doc" "$OPT/share/doc/$doc"
done
if [ -d "$SRC/deploy/grafana" ]; then
    rm -rf "$OPT/share/grafana"
    cp -r "$SRC/deploy/grafana" "$OPT/share/grafana"
    chmod -R u=rwX,go=rX "$OPT/share/grafana"
fi
install -m 0644 "$SRC/deploy/iotgw.service" "$UNIT"
install -d -m 0755 "$ROOT/usr/local/bin"
ln -sfn /opt/iotgw/venv/bin/iotgw "$ROOT/usr/local/bin/iotgw"

# -- systemd ----------------------------------------------------------------------------
if [ -n "$ROOT" ]; then
    system systemctl daemon-reload
    system systemctl enable iotgw.service
else
    systemctl daemon-reload
    systemctl enable iotgw.service >/dev/null
    if [ "$START" -eq 1 ] || systemctl is-active --quiet iotgw.service; then
        systemctl restart iotgw.service
        say "iotgw (re)started: systemctl status iotgw; iotgw status /etc/iotgw/gateway.yaml"
    else
        say "enabled, not started: edit /etc/iotgw/gateway.yaml, run"
        say "  $OPT/venv/bin/iotgw check /etc/iotgw/gateway.yaml && systemctl start iotgw"
    fi
fi
say "done"
