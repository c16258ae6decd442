#!/usr/bin/env bash
# The whole test suite: installs the real peers it needs when missing, then runs every test and ends
# with one summary line of all test binaries.
set -euo pipefail
cd "$(dirname "$0")"
./scripts/install-peers.sh
export CITY_PEER_PYTHON="$PWD/.venv/bin/python"
export CITY_PEER_MOSQUITTO="$(command -v mosquitto || echo /usr/sbin/mosquitto)"
# The system tests run the real binaries (hub demo, edge-agent), so build them first.
# A clean checkout gains nothing from incremental caches, and they cost gigabytes of disk.
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"
cargo build --workspace --bins
# The agent for 64-bit Raspberry Pi OS, which tests/tests/raspberry_pi.rs runs under qemu-user.
cargo build --target aarch64-unknown-linux-gnu -p edge-agent --bin edge-agent
log=$(mktemp)
# A throwaway PostgreSQL server: the store's tests run on SQLite and on PostgreSQL.
pgdir=$(mktemp -d /tmp/city-pg.XXXXXX)
trap 'rm -f "$log"; ./scripts/postgres.sh stop "$pgdir"' EXIT
CITY_TEST_POSTGRES="$(./scripts/postgres.sh start "$pgdir")"
export CITY_TEST_POSTGRES CITY_REQUIRE_POSTGRES=1
status=0
cargo test --workspace --all-targets --no-fail-fast 2>&1 | tee "$log" || status=$?
summary=$(awk '/^test result:/ { for (i = 1; i < NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } } END { printf "%d passed, %d failed", p, f }' "$log")
echo "tests: $summary"
exit "$status"
