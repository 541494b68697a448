#!/bin/sh
# Confirm hook: marks the booted slot good, as `rauc status mark-good` does.
set -eu
echo "$FLOTA_VERSION" >"$DEVICE_ROOT/marked-good"
