# Shell helpers shared by the scripts in this directory (sourced).

# free_port N prints the first port from N to N+200 nobody listens on.
free_port() {
  local p
  for p in $(seq "$1" $(($1 + 200))); do
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
      echo "$p"
      return
    fi
  done
  echo "no free port near $1" >&2
  exit 1
}

# use_workdir NAME makes a temporary directory WORK and, at exit, stops the
# processes listed in the array pids and removes WORK.
use_workdir() {
  WORK=$(mktemp -d -t "$1.XXXXXX")
  pids=()
  trap cleanup EXIT
}

cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
