#!/usr/bin/env bash
# make demo: an embedded-broker orchestrator updates a simulated fleet of
# 200 devices from 1.0.0 to 1.1.0, end to end, and cleans up after itself.
#
# Knobs: DEVICES (200), SIZE (1048576 bytes), BIN (bin).
set -euo pipefail
cd "$(dirname "$0")/.."

BIN=${BIN:-bin}
DEVICES=${DEVICES:-200}
SIZE=${SIZE:-1048576}

. scripts/lib.sh
MQTT_PORT=$(free_port 1883)
HTTP_PORT=$(free_port 8080)
export FLOTA_SERVER="http://127.0.0.1:$HTTP_PORT"
use_workdir flota-demo

echo "== starting the orchestrator (embedded MQTT broker on 127.0.0.1:$MQTT_PORT, API on $FLOTA_SERVER)"
"$BIN/orchestrator" serve --data "$WORK/data" --mqtt "127.0.0.1:$MQTT_PORT" --http "127.0.0.1:$HTTP_PORT" \
  >"$WORK/orchestrator.log" 2>&1 &
pids+=($!)
# The first start prints an admin API token once (only its hash is kept).
for _ in $(seq 100); do
  FLOTA_TOKEN=$(sed -n 's/^api admin token .*): //p' "$WORK/orchestrator.log")
  [ -n "$FLOTA_TOKEN" ] && break
  sleep 0.1
done
export FLOTA_TOKEN
for _ in $(seq 100); do
  "$BIN/orchestrator" device list >/dev/null 2>&1 && break
  sleep 0.1
done

echo "== generating a firmware signing key pair (the devices get the public key)"
"$BIN/orchestrator" keys generate --out "$WORK/keys" | sed 's/^/   /'

echo "== provisioning MQTT accounts: $DEVICES devices (secrets in a 0600 CSV file) and a read-only monitor"
"$BIN/orchestrator" device provision --prefix sim- --count "$DEVICES" --out "$WORK/creds.csv"
# Its secret goes to mosquitto_sub's options file, never to a command line.
"$BIN/orchestrator" monitor add demo-monitor --out "$WORK/mqtt/mosquitto_sub" 2>/dev/null

echo "== starting devicesim: $DEVICES devices of model sim-a on 1.0.0, each with its own secret"
"$BIN/devicesim" --broker "tcp://127.0.0.1:$MQTT_PORT" --devices "$DEVICES" --id-prefix sim- --credentials "$WORK/creds.csv" \
  --model sim-a --version 1.0.0 --public-key "$WORK/keys/firmware.pub" \
  --tags site=demo --reboot-delay 500ms --summary "$WORK/summary.json" --exit-when-updated 1.1.0 \
  >"$WORK/devicesim.out" 2>"$WORK/devicesim.log" &
sim=$!
pids+=($sim)
for _ in $(seq 300); do
  n=$("$BIN/orchestrator" device list --online --json 2>/dev/null | grep -o '"id"' | wc -l || true)
  [ "$n" -ge "$DEVICES" ] && break
  sleep 0.1
done
echo "   $n devices registered and online"

echo "== adding firmware 1.1.0 ($SIZE bytes), signed"
head -c "$SIZE" /dev/urandom >"$WORK/app-1.1.0.bin"
FW=$("$BIN/orchestrator" firmware add "$WORK/app-1.1.0.bin" --version 1.1.0 --name demo-app --model sim-a \
  --sign-key "$WORK/keys/firmware.key")
echo "   firmware $FW"

UPD=$("$BIN/orchestrator" update create --firmware "$FW" --select model=sim-a)
echo "== update $UPD started; watch its events live from another terminal with:"
echo "   XDG_CONFIG_HOME=$WORK/mqtt mosquitto_sub -h 127.0.0.1 -p $MQTT_PORT -t 'flota/events/#' -v"
echo "   or open the dashboard at $FLOTA_SERVER/ and sign in with the admin token"
echo "   $FLOTA_TOKEN (set DEVICES=2000 SIZE=8388608 for a longer rollout)"
echo

status=0
"$BIN/orchestrator" update watch "$UPD" || status=$?
echo
"$BIN/orchestrator" update status "$UPD"

# devicesim exits by itself once every device confirmed the new version.
for _ in $(seq 100); do kill -0 "$sim" 2>/dev/null || break; sleep 0.1; done
kill -INT "$sim" 2>/dev/null || true
wait "$sim" 2>/dev/null || true
echo
echo "== devicesim summary"
cat "$WORK/devicesim.out"
exit "$status"
