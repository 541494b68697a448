#!/bin/sh
# Rollback hook: marks slot b bad and reboots into slot a, as
# `rauc status mark-bad` followed by a reboot does.
set -eu
cp "$DEVICE_ROOT/slot-a.version" "$DEVICE_ROOT/version"
echo rollback >>"$DEVICE_ROOT/boots"
kill -TERM "$FLOTA_AGENT_PID"
