#!/bin/sh
# Reboot hook: the bootloader switches to slot b, and the system stops the
# agent (the test starts it again, as the next boot does).
set -eu
cp "$DEVICE_ROOT/slot-b.version" "$DEVICE_ROOT/version"
echo boot >>"$DEVICE_ROOT/boots"
kill -TERM "$FLOTA_AGENT_PID"
