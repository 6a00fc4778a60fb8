#!/usr/bin/env bash
# Installs everything a fresh Debian / Raspberry Pi OS machine lacks to run and test iotgw:
# the real servers the test suite starts (mosquitto, VictoriaMetrics, InfluxDB 1.x), socat,
# buildah and mmdebstrap (tests/test_container.py builds and runs the image without a Docker
# engine), a virtualenv in .venv and the package with its test extras. Idempotent: safe to
# re-run, and apt is not touched when every command is already there.
set -euo pipefail
cd "$(dirname "$0")/.."

need_pkgs=()
for pair in mosquitto:mosquitto mosquitto_pub:mosquitto-clients victoria-metrics:victoria-metrics \
            influxd:influxdb socat:socat openssl:openssl buildah:buildah mmdebstrap:mmdebstrap; do
    cmd=${pair%%:*}; pkg=${pair##*:}
    command -v "$cmd" >/dev/null 2>&1 || [ -x "/usr/sbin/$cmd" ] || [ -x "/usr/bin/$cmd" ] || need_pkgs+=("$pkg")
done
if [ ${#need_pkgs[@]} -gt 0 ]; then
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    echo "bootstrap: installing Debian packages: ${need_pkgs[*]}"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need_pkgs[@]}"
    # The packages enable their own system services; the test suite starts private
    # instances on free ports and never uses these.
fi

PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e '.[test]'
echo "bootstrap: done (.venv ready)"
