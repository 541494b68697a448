#!/usr/bin/env bash
# rabbitmq-cluster.sh: a RabbitMQ cluster with the MQTT plugin on loopback,
# for flota's external broker mode (tests, benchmarks, trying it out).
#
#   rabbitmq-cluster.sh start DIR [NODES]   start NODES nodes (default 3), clustered
#   rabbitmq-cluster.sh kill DIR N          SIGKILL node N (1-based)
#   rabbitmq-cluster.sh restart DIR N       start node N again, wait until it serves MQTT
#   rabbitmq-cluster.sh stop DIR            stop every node and the cluster's epmd
#
# Everything lives in DIR: an Erlang cookie (HOME=DIR), each node's config,
# mnesia and log directories, and cluster.env, which `start` writes and the
# other commands read:
#
#   NODES=3 EPMD_PORT=… EPMD_PID=…
#   NODE_1=flota-1@localhost AMQP_PORT_1=… MQTT_PORT_1=… DIST_PORT_1=…
#   PID_1=…   (the node's Erlang VM; empty once killed or stopped)
#
# The cluster has its own epmd (ERL_EPMD_PORT), node names and ports, so it
# neither sees nor disturbs a RabbitMQ or Erlang node already on the machine.
# Ports: BASE_PORT (default: a free block picked at random in 20000-29999),
# epmd on BASE_PORT, node N on BASE_PORT+10N+{1 AMQP, 2 MQTT, 3 dist}.
#
# Why three nodes by default: RabbitMQ 3.10's MQTT plugin registers client
# IDs in a Raft group spanning the cluster, and refuses every MQTT connection
# while it has no majority. Two nodes keep no majority when one dies; three
# do. docs/BROKERS.md says what flota relies on.
#
# Users (the same as testdata/mosquitto): flota-orchestrator (password
# "secret"; the whole flota/ tree) and flota-device, the account of every
# anonymous MQTT client, confined to its own topics by topic permissions
# with {client_id} expansion. Every MQTT session queue has a mirror on a
# second node. As root it runs the nodes as root.
set -euo pipefail
export PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"

RABBIT_LIB=${RABBIT_LIB:-/usr/lib/rabbitmq/bin}
START_TIMEOUT=${START_TIMEOUT:-120}

die() {
  echo "rabbitmq-cluster: $*" >&2
  exit 1
}

usage() {
  sed -n '4,7p' "$0" | sed 's/^# //' >&2
  exit 2
}

# port_used PORT: something listens on 127.0.0.1:PORT.
port_used() {
  (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

# node_env N: the environment of node N's rabbitmq-server and rabbitmqctl.
node_env() {
  local n=$1 d="$DIR/node$n"
  export HOME="$DIR" ERL_EPMD_PORT="$EPMD_PORT"
  export RABBITMQ_NODENAME="flota-$n@localhost" RABBITMQ_USE_LONGNAME=false
  export RABBITMQ_NODE_IP_ADDRESS=127.0.0.1
  local amqp="AMQP_PORT_$n" dist="DIST_PORT_$n"
  export RABBITMQ_NODE_PORT="${!amqp}" RABBITMQ_DIST_PORT="${!dist}"
  export RABBITMQ_CONFIG_FILE="$d/rabbitmq.conf"
  export RABBITMQ_ENABLED_PLUGINS_FILE="$d/enabled_plugins"
  export RABBITMQ_MNESIA_BASE="$d/mnesia" RABBITMQ_LOG_BASE="$d/log"
  export RABBITMQ_PLUGINS_EXPAND_DIR="$d/plugins-expand"
  export RABBITMQ_PID_FILE="$d/pid" RABBITMQ_CONF_ENV_FILE="$d/none.conf"
  export RABBITMQ_ADVANCED_CONFIG_FILE="$d/advanced.config"
  # exec the VM in place of the script: $! is the VM's PID.
  export RUNNING_UNDER_SYSTEMD=true
}

ctl() {
  local n=$1
  shift
  (node_env "$n" && "$RABBIT_LIB/rabbitmqctl" -q "$@")
}

# write_node_config N: rabbitmq.conf and the plugin list of node N.
write_node_config() {
  local n=$1 d="$DIR/node$n" mqtt="MQTT_PORT_$n"
  mkdir -p "$d/log" "$d/mnesia"
  echo '[rabbitmq_mqtt].' >"$d/enabled_plugins"
  echo '[].' >"$d/advanced.config"
  {
    echo "listeners.tcp.default = 127.0.0.1:$((BASE_PORT + 10 * n + 1))"
    echo "mqtt.listeners.tcp.default = 127.0.0.1:${!mqtt}"
    echo "mqtt.allow_anonymous = true"
    echo "mqtt.default_user = flota-device"
    echo "mqtt.default_pass = flota-device"
    echo "mqtt.vhost = /"
    echo "mqtt.exchange = amq.topic"
    # The orchestrator's session queue receives every device's acks.
    echo "mqtt.prefetch = 100"
    echo "log.console = false"
    echo "log.file.level = warning"
    echo "cluster_formation.peer_discovery_backend = classic_config"
    local i
    for ((i = 1; i <= NODES; i++)); do
      echo "cluster_formation.classic_config.nodes.$i = flota-$i@localhost"
    done
    # A killed node's connections close at once on loopback; the rest go on.
    echo "cluster_partition_handling = ignore"
    echo "vm_memory_high_watermark.relative = 0.2"
    echo "disk_free_limit.absolute = 50MB"
  } >"$d/rabbitmq.conf"
}

start_node() {
  local n=$1
  (
    node_env "$n"
    exec "$RABBIT_LIB/rabbitmq-server" >>"$DIR/node$n/log/stdout.log" 2>&1
  ) &
  set_env "PID_$n" $!
}

wait_node() {
  local n=$1
  local mqtt="MQTT_PORT_$n" pid="PID_$n" t0=$SECONDS
  until port_used "${!mqtt}"; do
    kill -0 "${!pid}" 2>/dev/null || die "node $n exited at start; see $DIR/node$n/log"
    ((SECONDS - t0 < START_TIMEOUT)) || die "node $n: no MQTT listener after ${START_TIMEOUT}s; see $DIR/node$n/log"
    sleep 0.2
  done
}

# wait_mqtt N: node N accepts an MQTT connection. A listening port is not
# enough: until the MQTT plugin's client ID registry has formed across the
# cluster, CONNECT is answered "server unavailable". Needs mosquitto_pub
# (mosquitto-clients); without it, only the port is checked.
wait_mqtt() {
  local n=$1
  local mqtt="MQTT_PORT_$n" t0=$SECONDS
  command -v mosquitto_pub >/dev/null || return 0
  until mosquitto_pub -h 127.0.0.1 -p "${!mqtt}" -i "flota-ready-$n" -u flota-orchestrator -P secret \
    -t flota/ready -n -q 1 2>/dev/null; do
    ((SECONDS - t0 < START_TIMEOUT)) || die "node $n: MQTT connections refused after ${START_TIMEOUT}s; see $DIR/node$n/log"
    sleep 0.5
  done
}

# set_env NAME VALUE: record in cluster.env and in this shell.
set_env() {
  printf -v "$1" '%s' "$2"
  if grep -q "^$1=" "$DIR/cluster.env" 2>/dev/null; then
    sed -i "s|^$1=.*|$1=$2|" "$DIR/cluster.env"
  else
    echo "$1=$2" >>"$DIR/cluster.env"
  fi
}

load_env() {
  [ -f "$DIR/cluster.env" ] || die "$DIR/cluster.env: no cluster started there"
  # shellcheck disable=SC1091
  . "$DIR/cluster.env"
}

pick_base_port() {
  local base p ok try
  for try in $(seq 1 50); do
    base=$((20000 + (RANDOM % 1000) * 10))
    ok=1
    for ((p = base; p <= base + 10 * NODES + 9; p++)); do
      if port_used "$p"; then
        ok=0
        break
      fi
    done
    if [ $ok = 1 ]; then
      echo "$base"
      return
    fi
  done
  die "no free block of ports found"
}

cmd_start() {
  NODES=${1:-3}
  mkdir -p "$DIR"
  DIR=$(cd "$DIR" && pwd)
  [ ! -f "$DIR/cluster.env" ] || die "$DIR/cluster.env exists: stop that cluster first"
  BASE_PORT=${BASE_PORT:-$(pick_base_port)}
  EPMD_PORT=$BASE_PORT
  : >"$DIR/cluster.env"
  set_env NODES "$NODES"
  set_env BASE_PORT "$BASE_PORT"
  set_env EPMD_PORT "$EPMD_PORT"
  # The cookie every node and rabbitmqctl read from $HOME.
  head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$DIR/.erlang.cookie"
  chmod 400 "$DIR/.erlang.cookie"
  # Our own epmd, so that stop can end it by PID.
  epmd -port "$EPMD_PORT" -address 127.0.0.1 >"$DIR/epmd.log" 2>&1 &
  set_env EPMD_PID $!
  local n
  for ((n = 1; n <= NODES; n++)); do
    set_env "NODE_$n" "flota-$n@localhost"
    set_env "AMQP_PORT_$n" $((BASE_PORT + 10 * n + 1))
    set_env "MQTT_PORT_$n" $((BASE_PORT + 10 * n + 2))
    set_env "DIST_PORT_$n" $((BASE_PORT + 10 * n + 3))
    write_node_config "$n"
  done
  # Node 1 boots first; classic peer discovery then joins the others to
  # it. Booted all at once, nodes can find each other before any has its
  # tables ("tables_not_present") and one may never come up.
  start_node 1
  wait_node 1
  for ((n = 2; n <= NODES; n++)); do
    start_node "$n"
  done
  for ((n = 2; n <= NODES; n++)); do
    wait_node "$n"
  done
  setup_users
  for ((n = 1; n <= NODES; n++)); do
    wait_mqtt "$n"
  done
  echo "rabbitmq-cluster: $NODES nodes up in ${SECONDS}s, MQTT on$(for ((n = 1; n <= NODES; n++)); do v="MQTT_PORT_$n"; printf ' 127.0.0.1:%s' "${!v}"; done)" >&2
}

# setup_users creates the orchestrator's and the devices' accounts and their
# permissions (docs/BROKERS.md, "RabbitMQ").
setup_users() {
  ctl 1 add_user flota-orchestrator secret >/dev/null
  ctl 1 set_permissions -p / flota-orchestrator '.*' '.*' '.*'
  ctl 1 add_user flota-device flota-device >/dev/null
  # Queues: an MQTT client declares mqtt-subscription-{client ID}qos0/qos1
  # and binds it to amq.topic. The topic permissions below decide which
  # routing keys (MQTT topics, with / and . swapped) it may bind and publish.
  ctl 1 set_permissions -p / flota-device '^mqtt-subscription-.*' '^(mqtt-subscription-.*|amq\.topic)$' '^(mqtt-subscription-.*|amq\.topic)$'
  ctl 1 set_topic_permissions -p / flota-device amq.topic \
    '^flota\.devices\.{client_id}\.up\.' \
    '^flota\.(devices\.{client_id}\.down\.|events\.|status\.)'
  ctl 1 delete_user guest >/dev/null 2>&1 || true
  # An MQTT client's subscriptions are a durable queue on the node it
  # connected to, clean session or not. When that node dies the queue is
  # down, and RabbitMQ refuses the client's subscription on every other node
  # until the node returns. With a mirror on a second node it survives one
  # node's death: the orchestrator resumes its session elsewhere, a device
  # subscribes again.
  ctl 1 set_policy -p / --apply-to queues mqtt-sessions '^mqtt-subscription-' \
    '{"ha-mode":"exactly","ha-params":2,"ha-sync-mode":"automatic"}' >/dev/null
}

cmd_kill() {
  load_env
  local n=$1 pid="PID_$1"
  [ -n "${!pid:-}" ] || die "node $n is not running"
  kill -KILL "${!pid}" 2>/dev/null || true
  set_env "PID_$n" ""
}

cmd_restart() {
  load_env
  local n=$1 pid="PID_$1"
  [ -z "${!pid:-}" ] || ! kill -0 "${!pid}" 2>/dev/null || die "node $n is running"
  start_node "$n"
  wait_node "$n"
  wait_mqtt "$n"
  echo "rabbitmq-cluster: node $n up in ${SECONDS}s" >&2
}

cmd_stop() {
  [ -f "$DIR/cluster.env" ] || return 0
  load_env
  local n pid
  for ((n = 1; n <= NODES; n++)); do
    pid="PID_$n"
    [ -n "${!pid:-}" ] && kill -TERM "${!pid}" 2>/dev/null || true
  done
  for ((n = 1; n <= NODES; n++)); do
    pid="PID_$n"
    [ -n "${!pid:-}" ] || continue
    local t0=$SECONDS
    while kill -0 "${!pid}" 2>/dev/null; do
      if ((SECONDS - t0 > 30)); then
        kill -KILL "${!pid}" 2>/dev/null || true
        break
      fi
      sleep 0.2
    done
    set_env "PID_$n" ""
  done
  [ -n "${EPMD_PID:-}" ] && kill -TERM "$EPMD_PID" 2>/dev/null || true
  set_env EPMD_PID ""
  rm -f "$DIR/cluster.env"
}

[ $# -ge 2 ] || usage
command -v "$RABBIT_LIB/rabbitmq-server" >/dev/null || die "rabbitmq-server not installed (apt-get install rabbitmq-server)"
cmd=$1
DIR=$2
shift 2
case $cmd in
start) cmd_start "$@" ;;
kill) [ $# = 1 ] || usage; cmd_kill "$1" ;;
restart) [ $# = 1 ] || usage; cmd_restart "$1" ;;
stop) cmd_stop ;;
*) usage ;;
esac
