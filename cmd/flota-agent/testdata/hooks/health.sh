#!/bin/sh
# Health check after booting a new version: unhealthy while
# $DEVICE_ROOT/unhealthy exists.
set -eu
if [ -e "$DEVICE_ROOT/unhealthy" ]; then
	echo "service did not come up" >&2
	exit 1
fi
echo "healthy on $FLOTA_VERSION"
