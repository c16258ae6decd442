#!/usr/bin/env bash
# The whole test suite: installs the real peers it needs when missing, then runs every test.
set -euo pipefail
cd "$(dirname "$0")"
./scripts/install-peers.sh
export CITY_PEER_PYTHON="$PWD/.venv/bin/python"
export CITY_PEER_MOSQUITTO="$(command -v mosquitto || echo /usr/sbin/mosquitto)"
cargo build --workspace --bins
cargo test --workspace --no-fail-fast
