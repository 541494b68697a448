#!/usr/bin/env bash
# The fleet benchmark of delta payloads (docs/BENCHMARKS.md, "Delta and
# compressed payloads"): in one run, against one orchestrator, two fleets of
# DEVICES devices on slow links take the same update from v1 to v2:
#   1. delta: devices that run v1 (--image) and decode both encodings;
#   2. full:  devices that run v1 but decode nothing (--caps ''): whole images.
# v1 is the first SIZE bytes of the orchestrator binary (real code); v2 is v1
# with 1% of its bytes changed in 10 places and one 4 KiB insertion.
# Prints, per fleet, the update's wall time (create to completed), the bytes
# sent against the image bytes, and the devices' time from offer to boot.
#
# Knobs: DEVICES (500), SIZE (1048576), BANDWIDTH (20KB), LATENCY (300ms),
# MAX_IN_FLIGHT (DEVICES), UPDATE_FLAGS ("--chunk-size 4096 --window 4": 16 KiB
# in flight, under the 2 s ack timeout at 20 KB/s), BIN (bin), FLEETS ("delta full").
set -euo pipefail
[ -n "${TRACE:-}" ] && set -x
cd "$(dirname "$0")/.."

BIN=${BIN:-bin}
DEVICES=${DEVICES:-500}
SIZE=${SIZE:-1048576}
BANDWIDTH=${BANDWIDTH:-20KB}
LATENCY=${LATENCY:-300ms}
MAX_IN_FLIGHT=${MAX_IN_FLIGHT:-$DEVICES}
FLEETS=${FLEETS:-delta full}
UPDATE_FLAGS=${UPDATE_FLAGS:---chunk-size 4096 --window 4}
ulimit -n "$(ulimit -Hn)"

. scripts/lib.sh
MQTT_PORT=$(free_port 22883)
HTTP_PORT=$(free_port 29080)
export FLOTA_SERVER="http://127.0.0.1:$HTTP_PORT"
use_workdir flota-delta

"$BIN/orchestrator" serve --data "$WORK/data" --mqtt "127.0.0.1:$MQTT_PORT" --http "127.0.0.1:$HTTP_PORT" \
  --log-level warn >"$WORK/orchestrator.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do
  grep -q '^api admin token ' "$WORK/orchestrator.log" && break
  sleep 0.1
done
FLOTA_TOKEN=$(sed -n 's/^api admin token .*: //p' "$WORK/orchestrator.log")
export FLOTA_TOKEN
AUTH=(-H "Authorization: Bearer $FLOTA_TOKEN")

head -c "$SIZE" "$BIN/orchestrator" >"$WORK/v1.bin"
python3 - "$WORK/v1.bin" "$WORK/v2.bin" <<'EOF'
import random, sys
b = bytearray(open(sys.argv[1], 'rb').read())
r = random.Random(22)
per = len(b) // 100 // 10  # 1% of the bytes, in 10 places
for i in range(10):
    at = r.randrange(len(b) - per)
    b[at:at + per] = bytes(r.randrange(256) for _ in range(per))
mid = len(b) // 3
b[mid:mid] = bytes(r.randrange(256) for _ in range(4096))
open(sys.argv[2], 'wb').write(b)
EOF
"$BIN/orchestrator" firmware add "$WORK/v1.bin" --version 1.0.0 --name bench --model sim-a >/dev/null
FW2=$("$BIN/orchestrator" firmware add "$WORK/v2.bin" --version 1.1.0 --name bench --model sim-a)
for _ in $(seq 600); do # the payloads are built in the background
  "$BIN/orchestrator" firmware list --json | python3 -c '
import json, sys
fw = [f for f in json.load(sys.stdin) if f["id"] == sys.argv[1]][0]
sys.exit(0 if {p["encoding"] for p in fw.get("payloads", []) if p["state"] != "pending"} >= {"delta", "deflate"} else 1)' "$FW2" && break
  sleep 0.5
done
echo "== v1 $(stat -c %s "$WORK/v1.bin") bytes, v2 $(stat -c %s "$WORK/v2.bin") bytes; payloads of v2:"
"$BIN/orchestrator" firmware list --json | python3 -c '
import json, sys
for f in json.load(sys.stdin):
    for p in f.get("payloads", []):
        print("  %s %s: %d bytes (%s)" % (f["version"], p["encoding"], p["size"], p["state"]))'

fleet() { # fleet NAME CAPS
  local name=$1 caps=$2
  "$BIN/orchestrator" device provision --prefix "$name-" --count "$DEVICES" --model sim-a --out "$WORK/$name.csv" >/dev/null 2>&1
  "$BIN/devicesim" --broker "tcp://127.0.0.1:$MQTT_PORT" --devices "$DEVICES" --id-prefix "$name-" --model sim-a \
    --credentials "$WORK/$name.csv" \
    --version 1.0.0 --image "$WORK/v1.bin" --caps "$caps" --tags "fleet=$name" \
    --bandwidth "$BANDWIDTH" --latency "$LATENCY" --keepalive 0 --reboot-delay 1s \
    --exit-when-updated 1.1.0 --summary "$WORK/$name.json" >"$WORK/$name.out" 2>"$WORK/$name.log" &
  local sim_pid=$!
  pids+=($sim_pid)
  for _ in $(seq 600); do
    n=$(curl -fsS "${AUTH[@]}" "$FLOTA_SERVER/api/v1/devices?online=true&prefix=$name-&limit=1" 2>/dev/null |
      python3 -c 'import json,sys; print(json.load(sys.stdin).get("total",0))' 2>/dev/null || echo 0)
    [ "$n" -ge "$DEVICES" ] && break
    sleep 0.5
  done
  local start end id
  start=$(date +%s.%N)
  # shellcheck disable=SC2086 # UPDATE_FLAGS is a list of flags
  id=$("$BIN/orchestrator" update create --firmware "$FW2" --select "model=sim-a,tag:fleet=$name" --max-in-flight "$MAX_IN_FLIGHT" $UPDATE_FLAGS)
  "$BIN/orchestrator" update watch "$id" --interval 500ms >/dev/null || true
  end=$(date +%s.%N)
  wait "$sim_pid" || true
  echo "== $name: $DEVICES devices, --caps '$caps', $BANDWIDTH, $LATENCY one way"
  python3 -c "print('  update time      %.1f s' % ($end - $start))"
  "$BIN/orchestrator" update status "$id" --json | python3 -c '
import json, sys
s = json.load(sys.stdin)
print("  states           %s" % s["counts"])
print("  encodings        %s" % s.get("encodings"))
print("  bytes sent       %d of %d image bytes (%.2f%%)" % (s["bytes_sent"], s["image_bytes"], 100.0 * s["bytes_sent"] / max(s["image_bytes"], 1)))'
  grep -E '^(updated|failed|device_time|memory)' "$WORK/$name.out" | sed 's/^/  /'
}

for f in $FLEETS; do
  case $f in
  delta) fleet delta "deflate,bsdiff" ;;
  full) fleet full "" ;;
  esac
done
