#!/usr/bin/env bash
# deps.sh: make sure the programs and libraries the tests use are installed.
# Run as root (CI, containers) it installs what is missing from Debian
# packages; otherwise it stops at once with the one command to run.
set -euo pipefail
# mosquitto installs to /usr/sbin, which a non-login shell may lack.
export PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"

need=()
# want PACKAGE TEST...: PACKAGE is needed unless the command TEST succeeds.
want() {
  local pkg=$1
  shift
  "$@" >/dev/null 2>&1 || need+=("$pkg")
}
want mosquitto command -v mosquitto
want mosquitto-clients command -v mosquitto_sub
want sqlite3 command -v sqlite3
want gcc command -v gcc
want chromium command -v chromium
want chromium-driver command -v chromedriver
want rabbitmq-server test -x /usr/lib/rabbitmq/bin/rabbitmq-server

[ ${#need[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -ne 0 ]; then
  echo "the tests need Debian packages that are not installed; run:" >&2
  echo "  sudo apt-get install -y ${need[*]}" >&2
  exit 1
fi
echo "installing ${need[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq "${need[@]}"
