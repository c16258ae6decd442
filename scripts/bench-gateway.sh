#!/usr/bin/env bash
# The edge agent beside a peer gateway doing the same work: poll 10 Modbus TCP devices of 100 holding
# registers once a second (1,000 readings/s; every value changes every poll) and publish the readings
# as JSON over MQTT at QoS 1 to a local Mosquitto. The peer is Node-RED 4 with
# node-red-contrib-modbus (pinned in scripts/bench/node-red/package.json, installed into
# .bench/node-red on first use). Each runs alone, alternately, ROUNDS times; for each run: readings
# delivered per second (counted by mosquitto_sub), RSS (max and mean of 1 s samples) and CPU (% of one
# core) from /proc over WINDOW seconds after WARMUP seconds. Prints a markdown table with medians.
#
# Environment: WINDOW (default 60), WARMUP (10), ROUNDS (3). Needs the release agent
# (cargo build --release --bins), mosquitto + mosquitto_sub, .venv with pymodbus (./test.sh makes
# them), node and npm.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
WINDOW=${WINDOW:-60}
WARMUP=${WARMUP:-10}
ROUNDS=${ROUNDS:-3}
UNITS=10
REGS=100
agent_bin=$root/target/release/edge-agent
python=$root/.venv/bin/python
[[ -x $agent_bin ]] || { echo "build the agent first: cargo build --release --bins" >&2; exit 1; }
[[ -x $python ]] || { echo "no .venv with pymodbus: run ./scripts/install-peers.sh" >&2; exit 1; }

# Node-RED, pinned, installed once.
nr=$root/.bench/node-red
if ! cmp -s scripts/bench/node-red/package.json "$nr/package.json" || [[ ! -d $nr/node_modules/node-red-contrib-modbus ]]; then
    mkdir -p "$nr"
    cp scripts/bench/node-red/package.json "$nr/package.json"
    (cd "$nr" && npm install --no-audit --no-fund --loglevel=error)
fi

work=$(mktemp -d "${TMPDIR:-/tmp}/gw-bench.XXXXXX")
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    if [[ ${keep:-0} == 1 ]]; then echo "logs kept in $work" >&2; else rm -rf "$work"; fi
}
trap cleanup EXIT
trap 'keep=1' ERR

free_port() { "$python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() {
    for _ in $(seq 100); do
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        sleep 0.1
    done
    echo "port $1 never opened" >&2
    return 1
}

mq_port=$(free_port)
cat > "$work/mosquitto.conf" <<EOF
user $(id -un)
listener $mq_port 127.0.0.1
allow_anonymous true
persistence false
log_dest file $work/mosquitto.log
EOF
mosquitto -c "$work/mosquitto.conf" & pids+=($!)
wait_port "$mq_port"
mb_port=$(free_port)
"$python" scripts/bench/modbus_sim.py "$mb_port" "$UNITS" > "$work/modbus.log" 2>&1 & pids+=($!)
wait_port "$mb_port"

# The agent: a profile of 100 u16 registers, 10 devices polled every second.
mkdir -p "$work/profiles"
{
    echo 'name = "bench-100"'
    echo 'description = "100 changing holding registers"'
    echo 'kind = "other"'
    for i in $(seq 0 $((REGS - 1))); do
        printf '[[field]]\nmetric = "r%d"\ntable = "holding"\naddress = %d\ntype = "u16"\nunit = "1"\n' "$i" "$i"
    done
} > "$work/profiles/bench-100.toml"
{
    cat <<EOF
gateway = "gw-bench"
[location]
lon = 118.78
lat = 32.04
road_segment = "rd-bench"
grid = "g-bench"
[uplink]
broker = "mqtt://127.0.0.1:$mq_port"
[agent]
status_listen = "127.0.0.1:$(free_port)"
[[bus]]
name = "bench"
type = "tcp"
host = "127.0.0.1:$mb_port"
timeout_ms = 500
EOF
    for u in $(seq 1 $UNITS); do
        printf '[[bus.device]]\nid = "dev-%d"\nunit = %d\nprofile = "bench-100"\nasset = "a-%d"\npoll_ms = 1000\n' "$u" "$u" "$u"
    done
} > "$work/gw.toml"
"$agent_bin" config check --profiles "$work/profiles" "$work/gw.toml" > "$work/check.log" 2>&1 \
    || { cat "$work/check.log" >&2; exit 1; }

# Node-RED: the same devices, a function node making one JSON message of named readings per poll.
nr_port=$(free_port)
mkdir -p "$work/nr"
"$python" - "$work/nr/flows.json" "$mb_port" "$mq_port" "$UNITS" "$REGS" <<'EOF'
import json, sys
out, mb, mq, units, regs = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
func = """
const ts = new Date().toISOString();
const unit = msg.modbusRequest ? msg.modbusRequest.unitid : 0;
const items = msg.payload.map((v, i) => ({kind: 'reading', device: 'dev-' + unit, metric: 'r' + i,
    observedAt: ts, value: v, unit: '1'}));
msg.topic = 'city/v1/gw/gw-nodered/up';
msg.payload = JSON.stringify({v: 1, gateway: 'gw-nodered', sentAt: ts, items: items});
return msg;
"""
flow = [{"id": "tab", "type": "tab", "label": "bench"},
        {"id": "mb", "type": "modbus-client", "name": "sim", "clienttype": "tcp", "bufferCommands": True,
         "stateLogEnabled": False, "queueLogEnabled": False, "failureLogEnabled": True, "tcpHost": "127.0.0.1",
         "tcpPort": mb, "tcpType": "DEFAULT", "serialPort": "", "serialType": "RTU-BUFFERD", "serialBaudrate": "9600",
         "serialDatabits": "8", "serialStopbits": "1", "serialParity": "none", "serialConnectionDelay": "100",
         "serialAsciiResponseStartDelimiter": "0x3A", "unit_id": "1", "commandDelay": "1", "clientTimeout": "1000",
         "reconnectOnTimeout": True, "reconnectTimeout": "2000", "parallelUnitIdsAllowed": True},
        {"id": "mq", "type": "mqtt-broker", "name": "local", "broker": "127.0.0.1", "port": mq,
         "clientid": "nodered-bench", "autoConnect": True, "usetls": False, "protocolVersion": "4",
         "keepalive": "60", "cleansession": True},
        {"id": "out", "type": "mqtt out", "z": "tab", "name": "", "topic": "", "qos": "1", "retain": "false",
         "broker": "mq", "wires": []},
        {"id": "fn", "type": "function", "z": "tab", "name": "to readings", "func": func, "outputs": 1,
         "wires": [["out"]]}]
for u in range(1, units + 1):
    flow.append({"id": f"read{u}", "type": "modbus-read", "z": "tab", "name": f"dev-{u}", "topic": "",
                 "showStatusActivities": False, "logIOActivities": False, "showErrors": True,
                 "showWarnings": True, "unitid": str(u), "dataType": "HoldingRegister", "adr": "0",
                 "quantity": str(regs), "rate": "1", "rateUnit": "s", "delayOnStart": False,
                 "startDelayTime": "", "server": "mb", "useIOFile": False, "ioFile": "",
                 "useIOForPayload": False, "emptyMsgOnFail": False, "wires": [["fn"], []]})
json.dump(flow, open(out, "w"))
EOF
cat > "$work/nr/settings.js" <<EOF
module.exports = {
    uiPort: $nr_port, uiHost: "127.0.0.1", flowFile: "flows.json", httpAdminRoot: false,
    httpNodeRoot: false, logging: { console: { level: "warn" } }, editorTheme: { projects: { enabled: false } },
};
EOF

# Samples one process: prints "readings_per_s rss_max_mib rss_mean_mib cpu_pct rss_first_mib
# rss_last_mib", the last two the mean RSS over the first and the last quarter of the window (at most
# 60 s each): equal within noise when memory stays flat (a soak: WINDOW=600 ROUNDS=1).
measure() {
    local pid=$1 topic=$2 tag=$3
    sleep "$WARMUP"
    kill -0 "$pid" 2>/dev/null || { echo "$tag exited during warm-up" >&2; return 1; }
    local hz ticks0 ticks1 rss sum=0 max=0 n=0 samples=()
    hz=$(getconf CLK_TCK)
    mosquitto_sub -h 127.0.0.1 -p "$mq_port" -q 1 -t "$topic" > "$work/$tag.sub" & local sub=$!
    ticks0=$(awk '{print $14 + $15}' "/proc/$pid/stat")
    for _ in $(seq "$WINDOW"); do
        sleep 1
        rss=$(awk '/VmRSS/ {print $2}' "/proc/$pid/status")
        sum=$((sum + rss)); n=$((n + 1)); ((rss > max)) && max=$rss; samples+=("$rss")
    done
    ticks1=$(awk '{print $14 + $15}' "/proc/$pid/stat")
    kill "$sub"; wait "$sub" 2>/dev/null || true
    local readings
    readings=$(grep -a -o '"kind":"reading"' "$work/$tag.sub" | wc -l)
    local q=$((n / 4 < 60 ? n / 4 : 60)); ((q > 0)) || q=1
    local first last
    first=$(printf '%s\n' "${samples[@]:0:q}" | awk '{s += $1} END {printf "%.1f", s / NR / 1024}')
    last=$(printf '%s\n' "${samples[@]: -q}" | awk '{s += $1} END {printf "%.1f", s / NR / 1024}')
    awk -v r="$readings" -v w="$WINDOW" -v mx="$max" -v s="$sum" -v n="$n" -v t=$((ticks1 - ticks0)) -v hz="$hz" \
        -v f="$first" -v l="$last" \
        'BEGIN { printf "%.0f %.1f %.1f %.2f %s %s\n", r / w, mx / 1024, s / n / 1024, 100 * t / hz / w, f, l }'
}

run_agent() {
    rm -rf "$work/agent-data"
    "$agent_bin" run --config "$work/gw.toml" --profiles "$work/profiles" --data-dir "$work/agent-data" \
        > "$work/agent.log" 2>&1 & local pid=$!
    measure "$pid" "city/v1/gw/gw-bench/up" agent
    kill -TERM "$pid"; wait "$pid" 2>/dev/null || true
}

run_nodered() {
    (cd "$work/nr" && exec node "$nr/node_modules/node-red/red.js" -u "$work/nr" -s "$work/nr/settings.js") \
        > "$work/nodered.log" 2>&1 & local pid=$!
    measure "$pid" "city/v1/gw/gw-nodered/up" nodered
    kill -TERM "$pid"; wait "$pid" 2>/dev/null || true
}

results=()
for round in $(seq "$ROUNDS"); do
    a=$(run_agent)
    n=$(run_nodered)
    echo "round $round: agent [$a]  node-red [$n]  (readings/s, RSS max MiB, RSS mean MiB, CPU %, RSS first/last quarter MiB)" >&2
    results+=("$a|$n")
done

printf '%s\n' "${results[@]}" | "$python" -c '
import sys, statistics as st
rows = [l.strip().split("|") for l in sys.stdin if l.strip()]
a = [list(map(float, r[0].split())) for r in rows]
n = [list(map(float, r[1].split())) for r in rows]
names = ["readings/s delivered", "RSS max (MiB)", "RSS mean (MiB)", "CPU (% of one core)",
         "RSS mean, first quarter of the window (MiB)", "RSS mean, last quarter of the window (MiB)"]
print("| figure | " + " | ".join(f"agent run {i+1}" for i in range(len(a))) + " | agent median | "
      + " | ".join(f"Node-RED run {i+1}" for i in range(len(n))) + " | Node-RED median | Node-RED ÷ agent |")
print("|---" * (2 * len(a) + 4) + "|")
for k, name in enumerate(names):
    am = st.median(x[k] for x in a); nm = st.median(x[k] for x in n)
    ratio = f"{nm / am:.1f}" if am else "-"
    print(f"| {name} | " + " | ".join(f"{x[k]:g}" for x in a) + f" | **{am:g}** | "
          + " | ".join(f"{x[k]:g}" for x in n) + f" | **{nm:g}** | {ratio} |")
'
