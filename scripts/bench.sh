#!/usr/bin/env bash
# Every figure of BENCHMARKS.md, in one run: release build, stripped binary sizes, spool write and
# replay, hub ingest against a bare mosquitto_sub, and (when present) the agent beside a peer
# gateway. Installs the peers it needs (as ./test.sh does). Takes several minutes; run it on a quiet
# machine and read ratios, not absolute figures, on a shared one.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install-peers.sh
cargo build --release --bins
cargo build --release -p edge-agent --example spool_bench
cargo build --release -p hub --example ingest_bench
cargo build --release -p protocol --example decode_bench
cargo build --release -p hub --example store_bench
work=$(mktemp -d "${TMPDIR:-/tmp}/city-bench.XXXXXX")
trap 'rm -rf "$work"' EXIT

echo "## Machine"
echo "$(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(uname -sr)"
echo
echo "## Binary sizes (release, stripped)"
for b in edge-agent hub; do
    printf '%s: %s bytes\n' "$b" "$(stat -c %s "target/release/$b")"
done
echo
echo "## Spool write and replay (3 runs)"
for run in 1 2 3; do
    ./target/release/examples/spool_bench 2000 "$work/spool-$run"
    rm -rf "$work/spool-$run"
done
echo
echo "## Hub ingest vs a bare subscriber"
./target/release/examples/ingest_bench "${INGEST_READINGS:-1000000}" 2>/dev/null
echo
echo "### The store writer alone (1 and 4 gateways, live)"
./target/release/examples/store_bench 1000000 1 100 5 live
./target/release/examples/store_bench 1000000 4 100 5 live
echo
echo "### Envelope decoding"
./target/release/examples/decode_bench 9
echo
echo "### The hub on SQLite and on PostgreSQL (one gateway, Mosquitto; a throwaway local server)"
for run in 1 2 3; do
  ./target/release/examples/ingest_bench postgres 400000 2>/dev/null
done
echo
echo "### Several hub processes (--cluster) on one PostgreSQL and one Mosquitto"
for run in 1 2 3; do
  ./target/release/examples/ingest_bench cluster 400000 2>/dev/null
done
echo
echo "### Hub ingest latency at paced rates"
for rate in 10000 25000 50000; do
  ./target/release/examples/ingest_bench paced "$rate" 60 2>/dev/null
done
echo
echo "## Reading to task at 10,000 readings/s"
./target/release/examples/ingest_bench tasks 10000 60 2>/dev/null
echo
echo "## Hub soak (its own process; RSS mean per quarter of the run)"
for rate in 320 10000; do
  ./target/release/examples/ingest_bench soak "$rate" "${SOAK_S:-600}" 2>/dev/null
done
echo
if [[ -x scripts/bench-gateway.sh ]]; then
    echo "## Agent vs a peer gateway"
    ./scripts/bench-gateway.sh
fi
