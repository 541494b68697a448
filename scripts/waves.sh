#!/usr/bin/env bash
# scripts/waves.sh: one update over a large registered fleet (100,000 devices
# by default) whose devices connect in waves, as a fleet that wakes up in
# batches does. One process holds at most about 20,000 open files here, so
# each wave is its own devicesim process of at most WAVE devices, started
# when the previous one exited (--exit-when-updated). While a wave runs the
# orchestrator holds every other device of the update queued and offline,
# and picks each wave up as it connects.
#
# It samples the orchestrator's RSS (VmRSS of /proc/PID/status) every
# second into $OUT/rss.csv and prints a summary: registration, update
# creation, per-wave and total times, and RSS min/median/max per phase.
#
# Knobs (environment): DEVICES (100000), WAVE (19000), SIZE (16384 bytes),
# CONNECT_RATE (2000 connections/s per devicesim), MAX_IN_FLIGHT (500),
# REGISTER (sql or sim, see below), WINDOW (8: the update's chunk window, which also sizes the broker's
# per-client queues), OUT (a new temporary directory, kept), BIN (bin).
set -euo pipefail
cd "$(dirname "$0")/.."

BIN=${BIN:-bin}
DEVICES=${DEVICES:-100000}
WAVE=${WAVE:-19000}
SIZE=${SIZE:-16384}
CONNECT_RATE=${CONNECT_RATE:-2000}
MAX_IN_FLIGHT=${MAX_IN_FLIGHT:-500}
WINDOW=${WINDOW:-8}
OUT=${OUT:-$(mktemp -d -t flota-waves.XXXXXX)}

# Extra flags of `orchestrator serve`. The harness registers its devices
# straight in the store, without MQTT accounts, so they connect in the
# broker's development mode (--allow-anonymous); provisioning 100,000
# argon2id secrets would measure account creation, not the update.
SERVE_FLAGS=${SERVE_FLAGS:---allow-anonymous}

if [ "$WAVE" -ge 20000 ]; then
  echo "WAVE must stay below 20000: the orchestrator holds one socket per connected device" >&2
  exit 2
fi
mkdir -p "$OUT"
go build -o "$BIN/orchestrator" ./cmd/orchestrator
go build -o "$BIN/devicesim" ./cmd/devicesim

pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for _ in $(seq 50); do
    alive=0
    for p in "${pids[@]}"; do kill -0 "$p" 2>/dev/null && alive=1; done
    [ "$alive" = 0 ] && break
    sleep 0.2
  done
  for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT
trap 'exit 130' INT TERM

now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }
phase() { echo "$1" >"$OUT/phase"; echo "== $(date -u +%H:%M:%S) $1"; }
TOKEN=$("$BIN/orchestrator" token new --name waves --scope admin 2>"$OUT/api-tokens")
AUTH=(-H "Authorization: Bearer $TOKEN")
api() { curl -sf "${AUTH[@]}" "$API$1"; }

phase start
# shellcheck disable=SC2086 # SERVE_FLAGS is a list of flags
"$BIN/orchestrator" serve --data "$OUT/data" --mqtt 127.0.0.1:0 --http 127.0.0.1:0 --log-level warn \
  --window "$WINDOW" --api-token-file "$OUT/api-tokens" $SERVE_FLAGS 2>"$OUT/orchestrator.log" &
ORCH=$!
pids+=("$ORCH")
for _ in $(seq 200); do
  grep -q '^http listening on' "$OUT/orchestrator.log" && break
  sleep 0.1
done
API=$(sed -n 's/^http listening on //p' "$OUT/orchestrator.log")
MQTT=$(sed -n 's/^mqtt listening on //p' "$OUT/orchestrator.log")
[ -n "$API" ] && [ -n "$MQTT" ] || { cat "$OUT/orchestrator.log" >&2; exit 1; }
echo "   orchestrator pid $ORCH, mqtt $MQTT, api $API, output in $OUT"

# The RSS sampler: one line a second until the orchestrator exits.
T0=$(now)
(
  echo "seconds,rss_kib,phase"
  while [ -r "/proc/$ORCH/status" ]; do
    rss=$(awk '/^VmRSS:/ { print $2 }' "/proc/$ORCH/status" 2>/dev/null || true)
    [ -n "$rss" ] && echo "$(since "$T0"),$rss,$(cat "$OUT/phase")"
    sleep 1
  done
) >"$OUT/rss.csv" &
pids+=($!)

# Waves: sizes of WAVE devices, the last one the remainder.
waves=()
left=$DEVICES
while [ "$left" -gt 0 ]; do
  n=$((left < WAVE ? left : WAVE))
  waves+=("$n")
  left=$((left - n))
done

registered() { api /api/v1/fleet/summary | jq .total; }

# 1. Register the fleet. REGISTER=sim: each wave connects once (its hellos
# register the devices) and disconnects; slow on a loaded machine, and not
# what is measured. REGISTER=sql (default): the same rows (ID, model,
# version, no tags, offline) are inserted into the devices table with the
# sqlite3 CLI while the orchestrator runs, as an inventory import would.
phase register
t=$(now)
want=0
for i in "${!waves[@]}"; do
  want=$((want + waves[i]))
  if [ "${REGISTER:-sql}" = sql ]; then
    sqlite3 "$OUT/data/flota.db" ".timeout 10000" "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ${waves[i]})
      INSERT INTO devices (id, model, version, tags, first_seen, last_seen, online)
      SELECT printf('w%d-%05d', $((i + 1)), i), 'sim-a', '1.0.0', '{}', ts, ts, 0
      FROM n, (SELECT strftime('%Y-%m-%dT%H:%M:%S.000000000Z', 'now') AS ts)"
    continue
  fi
  "$BIN/devicesim" --broker "$MQTT" --devices "${waves[i]}" --id-prefix "w$((i + 1))-" --model sim-a \
    --version 1.0.0 --connect-rate "$CONNECT_RATE" >"$OUT/register$((i + 1)).out" 2>&1 &
  sim=$!
  pids+=("$sim")
  until [ "$(registered)" -ge "$want" ]; do
    kill -0 "$sim" 2>/dev/null || { echo "devicesim exited during registration" >&2; exit 1; }
    sleep 1
  done
  kill -INT "$sim"
  wait "$sim" || true
done
REGISTER_S=$(since "$t")
echo "   $(registered) devices registered (${REGISTER:-sql}) in ${REGISTER_S}s"
until [ "$(api /api/v1/fleet/summary | jq .online)" -eq 0 ]; do sleep 1; done

# 2. The update over every registered device.
phase create
head -c "$SIZE" /dev/urandom >"$OUT/app-2.0.0.bin"
FW=$(curl -sf "${AUTH[@]}" --data-binary @"$OUT/app-2.0.0.bin" "$API/api/v1/firmware?version=2.0.0&name=waves&model=sim-a" | jq -r .id)
CREATE_S=$(curl -sf "${AUTH[@]}" -o "$OUT/update.json" -w '%{time_total}' -H 'Content-Type: application/json' \
  -d "{\"firmware\":\"$FW\",\"selector\":{\"model\":\"sim-a\"},\"policy\":{\"max_in_flight\":$MAX_IN_FLIGHT,\"window\":$WINDOW}}" \
  "$API/api/v1/updates")
UPD=$(jq -r .id "$OUT/update.json")
echo "   update $UPD over $DEVICES devices created in ${CREATE_S}s"
TDEVPAGE=$(curl -sf "${AUTH[@]}" -o /dev/null -w '%{time_total}' "$API/api/v1/devices?limit=100&after=w3-10000")
TPAGE=$(curl -sf "${AUTH[@]}" -o /dev/null -w '%{time_total}' "$API/api/v1/updates/$UPD/devices?limit=100&after=w5-10000")
echo "   API pages during the update: devices ?after= ${TDEVPAGE}s, update devices ?after= ${TPAGE}s"

# 3. The waves. A wave ends when the orchestrator counts every device of
# it (and of the waves before) as succeeded or failed; its devicesim, told
# --exit-when-updated, has usually exited by then, and is stopped if not
# (a device whose connection dropped after its confirming hello does not
# count itself done). A wave whose update makes no progress for STALL
# seconds (a device that never answers its offers) is stopped and run
# again after the others, with the same --state-dir: its updated devices
# then say hello on 2.0.0 and only the rest are updated.
ended() { api "/api/v1/updates/$UPD" | jq '(.counts.succeeded // 0) + (.counts.failed // 0)'; }
run_wave() { # index, label, devices that must have ended
  local i=$1 sim last=-1 n quiet=0
  "$BIN/devicesim" --broker "$MQTT" --devices "${waves[i]}" --id-prefix "w$((i + 1))-" --model sim-a \
    --version 1.0.0 --connect-rate "$CONNECT_RATE" --reboot-delay 200ms --exit-when-updated 2.0.0 \
    --state-dir "$OUT/state/w$((i + 1))" --summary "$OUT/$2.json" >"$OUT/$2.out" 2>&1 &
  sim=$!
  pids+=("$sim")
  while :; do
    sleep 1
    n=$(ended)
    [ "$n" -ge "$3" ] && break
    kill -0 "$sim" 2>/dev/null || break # it counted its devices done
    if [ "$n" = "$last" ]; then quiet=$((quiet + 1)); else quiet=0; last=$n; fi
    if [ "$quiet" -ge "$STALL" ]; then
      echo "   $2: no progress for ${STALL}s, stopping it"
      kill -INT "$sim" 2>/dev/null || true
      wait "$sim" || true
      return 1
    fi
  done
  kill -INT "$sim" 2>/dev/null || true
  wait "$sim" || true
}
STALL=${STALL:-60}
T_UPDATE=$(now)
wave_s=()
stalled=()
done_before=0
for i in "${!waves[@]}"; do
  phase "wave$((i + 1))"
  t=$(now)
  done_before=$((done_before + waves[i]))
  run_wave "$i" "wave$((i + 1))" "$done_before" || stalled+=("$i")
  wave_s+=("$(since "$t")")
  succeeded=$(api "/api/v1/updates/$UPD" | jq '.counts.succeeded // 0')
  echo "   wave $((i + 1)): ${waves[i]} devices in ${wave_s[i]}s; update: $succeeded succeeded"
done
for i in "${stalled[@]}"; do
  phase "rerun$((i + 1))"
  t=$(now)
  run_wave "$i" "rerun$((i + 1))" "$DEVICES" || echo "   wave $((i + 1)) stalled again"
  wave_s[i]="${wave_s[i]} + rerun $(since "$t")"
  succeeded=$(api "/api/v1/updates/$UPD" | jq '.counts.succeeded // 0')
  echo "   wave $((i + 1)) again: update: $succeeded succeeded"
done
phase finish
for _ in $(seq 120); do
  state=$(api "/api/v1/updates/$UPD" | jq -r .state)
  [ "$state" != running ] && break
  sleep 1
done
UPDATE_S=$(since "$T_UPDATE")
api "/api/v1/updates/$UPD" >"$OUT/summary.json"
phase idle
sleep 5
kill -0 "$ORCH" || { echo "the orchestrator died" >&2; exit 1; }

echo
echo "== result ($OUT)"
echo "devices:            $DEVICES in ${#waves[@]} waves of at most $WAVE, image $SIZE bytes, max_in_flight $MAX_IN_FLIGHT"
echo "registration:       ${REGISTER_S}s"
echo "create update:      ${CREATE_S}s"
echo "update (all waves): ${UPDATE_S}s, final state $(jq -r .state "$OUT/summary.json"), counts $(jq -c .counts "$OUT/summary.json")"
for i in "${!wave_s[@]}"; do
  echo "  wave $((i + 1)):          ${waves[i]} devices, ${wave_s[i]}s"
done
echo "per wave, by the orchestrator's own progress rows (first offer to last confirmed boot):"
sqlite3 -readonly "$OUT/data/flota.db" ".timeout 10000" "SELECT '  ' || wave || ': ' || COUNT(*) || ' devices, '
    || SUM(state = 'succeeded') || ' succeeded in '
    || printf('%.1f', (julianday(MAX(finished_at)) - julianday(MIN(started_at))) * 86400) || ' s'
  FROM (SELECT substr(device_id, 1, instr(device_id, '-') - 1) AS wave, state, started_at, finished_at
        FROM progress WHERE update_id = '$UPD')
  GROUP BY wave ORDER BY MIN(started_at)"
echo "orchestrator RSS (MiB) per phase, sampled every second into rss.csv:"
awk -F, 'NR > 1 { n[$3]++; v[$3, n[$3]] = $2 / 1024; if (!($3 in seen)) { seen[$3] = 1; order[++k] = $3 } all[++m] = $2 / 1024 }
  function stats(name, cnt, arr,    i, j, t, s) {
    for (i = 1; i <= cnt; i++) s[i] = arr[i]
    for (i = 2; i <= cnt; i++) { t = s[i]; for (j = i - 1; j >= 1 && s[j] > t; j--) s[j + 1] = s[j]; s[j + 1] = t }
    printf "  %-10s samples %4d  min %7.1f  median %7.1f  max %7.1f\n", name, cnt, s[1], s[int((cnt + 1) / 2)], s[cnt]
  }
  END {
    for (p = 1; p <= k; p++) { delete a; for (i = 1; i <= n[order[p]]; i++) a[i] = v[order[p], i]; stats(order[p], n[order[p]], a) }
    stats("all", m, all)
  }' "$OUT/rss.csv"
