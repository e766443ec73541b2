#!/usr/bin/env bash
# Idle memory of the gateway with the water-tank example (docs/benchmarks.md): starts a
# Mosquitto on a free port for its uplink, runs `fieldgate run -c config/water-tank.toml`
# (its RS-485 port is absent here, so the Modbus adapter retries with backoff: the gateway is
# idle but for that), waits, and prints the kernel's counters for the process.
#
#   deploy/idle-rss.sh [BINARY] [SECONDS]     (default target/release/fieldgate, 30)
#
# RSS counts the binary's code pages mapped into the process (file-backed, clean: shared and
# dropped first under memory pressure) as well as private memory (RssAnon: heap, stacks).
set -euo pipefail
cd "$(dirname "$0")/.."
bin="${1:-target/release/fieldgate}"
secs="${2:-30}"
[ -x "$bin" ] || { echo "no $bin: cargo build --release -p fieldgate" >&2; exit 2; }
command -v mosquitto >/dev/null || [ -x /usr/sbin/mosquitto ] || { echo "needs mosquitto (apt-get install mosquitto)" >&2; exit 2; }
mosq="$(command -v mosquitto || echo /usr/sbin/mosquitto)"
dir="$(mktemp -d)"
port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
printf 'listener %s 127.0.0.1\nallow_anonymous true\n' "$port" > "$dir/mosquitto.conf"
"$mosq" -c "$dir/mosquitto.conf" > "$dir/mosquitto.log" 2>&1 &
mpid=$!
MQTT_PASSWORD=unused \
FIELDGATE_GATEWAY__DATA_DIR="$dir/data" \
FIELDGATE_UPLINKS__0__URL="mqtt://127.0.0.1:$port" \
FIELDGATE_HTTP__LISTEN=127.0.0.1:0 \
    "$bin" run -c config/water-tank.toml > "$dir/gateway.log" 2>&1 &
gpid=$!
trap 'kill $gpid $mpid 2>/dev/null; wait 2>/dev/null; rm -rf "$dir"' EXIT
sleep "$secs"
kill -0 "$gpid" 2>/dev/null || { echo "the gateway stopped:" >&2; cat "$dir/gateway.log" >&2; exit 1; }
echo "binary: $bin ($(stat -c %s "$bin") bytes)"
grep -E '^(VmRSS|VmHWM|RssAnon|RssFile|Threads)' "/proc/$gpid/status"
