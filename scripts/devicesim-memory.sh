#!/usr/bin/env bash
# Measures what devicesim costs per device against a real orchestrator in its
# own process (docs/BENCHMARKS.md, "devicesim memory"):
#   1. idle: DEVICES devices connect and stay idle for IDLE; the summary's
#      "process" object is read at the end;
#   2. update: a new devicesim fleet takes an update of SIZE bytes with
#      MAX_IN_FLIGHT devices at a time; its peaks cover the update.
# Prints both "process" objects and the update's summary figures.
#
# Knobs: DEVICES (10000), SIZE (262144), MAX_IN_FLIGHT (500), IDLE (20s),
# CONNECT_RATE (1000), BIN (bin), SIM_FLAGS (extra devicesim flags), SIM_ENV
# (devicesim's extra environment, e.g. GOMEMLIMIT=600MiB), PHASES ("idle update").
set -euo pipefail
cd "$(dirname "$0")/.."

BIN=${BIN:-bin}
DEVICES=${DEVICES:-10000}
SIZE=${SIZE:-262144}
MAX_IN_FLIGHT=${MAX_IN_FLIGHT:-500}
IDLE=${IDLE:-20s}
CONNECT_RATE=${CONNECT_RATE:-1000}
SIM_FLAGS=${SIM_FLAGS:-}
SIM_ENV=${SIM_ENV:-}
PHASES=${PHASES:-idle update}
ulimit -n "$(ulimit -Hn)"

. scripts/lib.sh
MQTT_PORT=$(free_port 21883)
HTTP_PORT=$(free_port 28080)
export FLOTA_SERVER="http://127.0.0.1:$HTTP_PORT"
use_workdir flota-simmem

"$BIN/orchestrator" serve --data "$WORK/data" --mqtt "127.0.0.1:$MQTT_PORT" --http "127.0.0.1:$HTTP_PORT" \
  --log-level warn >"$WORK/orchestrator.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do
  "$BIN/orchestrator" device list >/dev/null 2>&1 && break
  sleep 0.1
done

sim() { # sim NAME FLAGS...
  local name=$1
  shift
  # shellcheck disable=SC2086
  env $SIM_ENV "$BIN/devicesim" --broker "tcp://127.0.0.1:$MQTT_PORT" --devices "$DEVICES" --model sim-a --version 1.0.0 \
    --connect-rate "$CONNECT_RATE" --reboot-delay 1ms --summary "$WORK/$name.json" $SIM_FLAGS "$@" \
    >"$WORK/$name.out" 2>"$WORK/$name.log"
}
process() { # the "process" object of a summary
  python3 -c 'import json,sys; print(json.dumps(json.load(open(sys.argv[1]))["process"], indent=1))' "$1"
}

if [[ " $PHASES " == *" idle "* ]]; then
echo "== idle: $DEVICES devices connected for $IDLE after the ramp"
ramp=$(python3 -c "print($DEVICES / $CONNECT_RATE + 5)")
sim idle --duration "$(python3 -c "import re; print(str($ramp + float(re.sub('s$','','$IDLE'))) + 's')")"
grep -E '^(connected|memory)' "$WORK/idle.out"
process "$WORK/idle.json"
fi
[[ " $PHASES " == *" update "* ]] || exit 0

echo "== update: $DEVICES devices x $SIZE bytes, $MAX_IN_FLIGHT in flight"
sim update --exit-when-updated 1.1.0 &
sim_pid=$!
pids+=($sim_pid)
for _ in $(seq 600); do
  n=$(curl -fsS "$FLOTA_SERVER/api/v1/devices?online=true&limit=1" 2>/dev/null |
    python3 -c 'import json,sys; print(json.load(sys.stdin).get("total",0))' 2>/dev/null || echo 0)
  [ "$n" -ge "$DEVICES" ] && break
  sleep 0.5
done
head -c "$SIZE" /dev/urandom >"$WORK/fw.bin"
FW=$("$BIN/orchestrator" firmware add "$WORK/fw.bin" --version 1.1.0 --name mem --model sim-a)
"$BIN/orchestrator" update create --firmware "$FW" --select model=sim-a --max-in-flight "$MAX_IN_FLIGHT" >/dev/null
wait "$sim_pid"
grep -E '^(updated|failed|device_time|memory|elapsed)' "$WORK/update.out"
process "$WORK/update.json"
