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
  "$@" >/dev/null 2>&1 && return
  [[ " ${need[*]} " == *" $pkg "* ]] || need+=("$pkg")
}
# Every program a test runs has its line (internal/testtool checks).
want mosquitto command -v mosquitto
want mosquitto command -v mosquitto_passwd
want mosquitto-clients command -v mosquitto_sub
want mosquitto-clients command -v mosquitto_pub
want sqlite3 command -v sqlite3
want gcc command -v gcc
want gcc command -v cc
want chromium command -v chromium
want chromium-driver command -v chromedriver
want systemd command -v systemd-analyze
# The C agent (agents/c): its Linux program, unit tests, fuzz target and
# Cortex-M4 footprint check.
want libmosquitto-dev test -e /usr/include/mosquitto.h
want libsodium-dev test -e /usr/include/sodium.h
want clang command -v clang
want gcc-arm-none-eabi command -v arm-none-eabi-gcc
want make command -v make
want git command -v git
want openssl command -v openssl
want coreutils command -v stdbuf
want util-linux command -v prlimit
want mount command -v mount
want mount command -v umount
want bash command -v bash
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
