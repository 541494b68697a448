#!/usr/bin/env bash
# One fleet update through the embedded broker or through mosquitto (external
# broker mode, testdata/mosquitto), with the same devicesim fleet, for the
# side-by-side figures in docs/BENCHMARKS.md. Prints one line of results.
#
# usage: scripts/bench-broker.sh embedded|mosquitto [DEVICES (2000)] [SIZE (262144)]
# Needs bin/orchestrator and bin/devicesim (make build), mosquitto, python3.
set -euo pipefail
cd "$(dirname "$0")/.."

mode=${1:?usage: scripts/bench-broker.sh embedded|mosquitto [DEVICES] [SIZE]}
N=${2:-2000}
SIZE=${3:-262144}
BIN=${BIN:-bin}
work=$(mktemp -d)
ulimit -n "$(ulimit -Hn)"

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
MQ=$(free_port)
HTTP=$(free_port)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

# An admin API token: the token for the CLI, its hashed line for serve.
FLOTA_TOKEN=$("$BIN/orchestrator" token new --name bench --scope admin 2>"$work/api-tokens")
export FLOTA_TOKEN

if [ "$mode" = mosquitto ]; then
  cp testdata/mosquitto/flota.acl "$work/"
  mosquitto_passwd -c -b "$work/flota.passwd" flota-orchestrator secret
  sed -e "s#^listener .*#listener $MQ 127.0.0.1#" -e "s#^acl_file .*#acl_file $work/flota.acl#" \
    -e "s#^password_file .*#password_file $work/flota.passwd#" testdata/mosquitto/mosquitto.conf >"$work/mosquitto.conf"
  [ "$(id -u)" = 0 ] && echo "user root" >>"$work/mosquitto.conf"
  "$(command -v mosquitto || echo /usr/sbin/mosquitto)" -c "$work/mosquitto.conf" 2>"$work/mosquitto.log" &
  pids+=($!)
  broker_pid=$!
  for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$MQ") 2>/dev/null && break; sleep 0.05; done
  "$BIN/orchestrator" serve --data "$work/data" --http "127.0.0.1:$HTTP" --log-level error --api-token-file "$work/api-tokens" \
    --broker "tcp://127.0.0.1:$MQ" --broker-username flota-orchestrator --broker-password secret 2>"$work/orchestrator.log" &
  pids+=($!)
  orch_pid=$!
else
  "$BIN/orchestrator" serve --data "$work/data" --http "127.0.0.1:$HTTP" --mqtt "127.0.0.1:$MQ" --allow-anonymous --log-level error \
    --api-token-file "$work/api-tokens" 2>"$work/orchestrator.log" &
  pids+=($!)
  orch_pid=$!
  broker_pid=$orch_pid
fi
export FLOTA_SERVER="http://127.0.0.1:$HTTP"
for _ in $(seq 200); do "$BIN/orchestrator" device list >/dev/null 2>&1 && break; sleep 0.05; done

"$BIN/devicesim" --broker "tcp://127.0.0.1:$MQ" --devices "$N" --model sim-a --version 1.0.0 \
  --reboot-delay 1ms --connect-rate 1000 --exit-when-updated 1.1.0 >"$work/devicesim.log" 2>&1 &
pids+=($!)
online=0
for _ in $(seq 600); do
  online=$("$BIN/orchestrator" device list --online --json 2>/dev/null | python3 -c 'import json,sys; print(len(json.load(sys.stdin)))' 2>/dev/null || echo 0)
  [ "$online" -ge "$N" ] && break
  sleep 0.2
done
[ "$online" -ge "$N" ] || { echo "only $online of $N devices online" >&2; exit 1; }

head -c "$SIZE" /dev/urandom >"$work/fw.bin"
fw=$("$BIN/orchestrator" firmware add "$work/fw.bin" --version 1.1.0 --name app --model sim-a)
cpu() { awk '{print $14 + $15}' "/proc/$1/stat"; }
b0=$(cpu "$broker_pid")
o0=$(cpu "$orch_pid")
update=$("$BIN/orchestrator" update create --firmware "$fw" --max-in-flight 256 --window 8)
"$BIN/orchestrator" update watch "$update" --interval 100ms >/dev/null 2>&1 || true
b1=$(cpu "$broker_pid")
o1=$(cpu "$orch_pid")
"$BIN/orchestrator" update status "$update" --json >"$work/status.json"
python3 -c 'import json, sys, urllib.request
req = urllib.request.Request(sys.argv[1] + "/api/v1/stats", headers={"Authorization": "Bearer " + sys.argv[3]})
b = json.load(urllib.request.urlopen(req)).get("broker", {})
json.dump(b, open(sys.argv[2], "w"))' "$FLOTA_SERVER" "$work/broker.json" "$FLOTA_TOKEN"
python3 - "$work/status.json" "$work/broker.json" "$mode" "$N" "$SIZE" "$b0" "$b1" "$o0" "$o1" "$(getconf CLK_TCK)" <<'PY'
import json, sys
from datetime import datetime
s = json.load(open(sys.argv[1]))
broker = json.load(open(sys.argv[2]))
mode, n, size = sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
b0, b1, o0, o1, tck = map(float, sys.argv[6:11])
t = lambda k: datetime.fromisoformat(s[k].replace("Z", "+00:00"))
secs = (t("finished_at") - t("created_at")).total_seconds()
print(f"{mode}: {s['state']} {s['counts']} seconds={secs:.2f} devices/s={n/secs:.0f} "
      f"MiB/s={n*size/secs/2**20:.1f} resends={s['resends']} cpu_broker_s={(b1-b0)/tck:.1f} cpu_orchestrator_s={(o1-o0)/tck:.1f}")
keys = ("busy", "ack_timeouts", "publish_errors", "not_connected", "messages_dropped")
print("  broker stats:", {k: broker[k] for k in keys if k in broker})
PY
