#!/usr/bin/env bash
# Installs the real test peers when they are missing: Mosquitto and its clients, socat (serial pty
# pairs), curl (a camera posting multipart events), openssl (test certificates), VictoriaMetrics (a
# server of the InfluxDB v2 write API), PostgreSQL, Chromium with chromedriver (the console in a real browser),
# and pymodbus in a project-local virtualenv (.venv). Safe to run again; does nothing when all are
# present. Used by ./test.sh; see ../shared/PEERS.md for why each peer.
set -euo pipefail
cd "$(dirname "$0")/.."

PYMODBUS_VERSION="3.6.9"   # classic ModbusSlaveContext API; answers pipelined requests (3.16 does not)

need_apt=()
command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || need_apt+=(mosquitto)
command -v mosquitto_pub >/dev/null 2>&1 || need_apt+=(mosquitto-clients)
command -v socat >/dev/null 2>&1 || need_apt+=(socat)
command -v curl >/dev/null 2>&1 || need_apt+=(curl ca-certificates)
command -v openssl >/dev/null 2>&1 || need_apt+=(openssl)
command -v victoria-metrics >/dev/null 2>&1 || [ -x /usr/bin/victoria-metrics ] || need_apt+=(victoria-metrics)
python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || need_apt+=(python3-venv)
# PostgreSQL: the hub's shared store when several hub processes run (scripts/postgres.sh starts a
# throwaway server for the tests).
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need_apt+=(postgresql)
# Headless Chromium and its WebDriver for the console's browser tests (tests/tests/console.rs).
[ -x /usr/bin/chromium ] || need_apt+=(chromium)
[ -x /usr/bin/chromedriver ] || need_apt+=(chromium-driver)
# The Raspberry Pi cross toolchain (linker and libc) and qemu-user, for the aarch64 agent's smoke test.
command -v aarch64-linux-gnu-gcc >/dev/null 2>&1 || need_apt+=(gcc-aarch64-linux-gnu libc6-dev-arm64-cross)
command -v qemu-aarch64 >/dev/null 2>&1 || need_apt+=(qemu-user)
# A Chinese font, or the console's screenshots show boxes where the Chinese should be (5 MB).
fc-list :lang=zh 2>/dev/null | grep -q . || need_apt+=(fonts-wqy-microhei)

if [ ${#need_apt[@]} -gt 0 ]; then
  echo "install-peers: installing ${need_apt[*]} from Debian" >&2
  SUDO=""
  [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi

if ! rustup target list --installed 2>/dev/null | grep -qx aarch64-unknown-linux-gnu; then
  echo "install-peers: adding the aarch64-unknown-linux-gnu Rust target" >&2
  rustup target add aarch64-unknown-linux-gnu
fi

if ! .venv/bin/python -c "import pymodbus, serial; assert pymodbus.__version__ == '$PYMODBUS_VERSION'" >/dev/null 2>&1; then
  echo "install-peers: installing pymodbus $PYMODBUS_VERSION into .venv" >&2
  python3 -m venv .venv
  .venv/bin/pip install -q --disable-pip-version-check "pymodbus[serial]==$PYMODBUS_VERSION"
fi
