#!/bin/sh
# Install hook of a simulated A/B device whose files are in $DEVICE_ROOT:
# checks the image against the offer, copies it to the inactive slot and
# records the slot's version. Fails when $DEVICE_ROOT/fail-install exists.
set -eu
image=$1
if [ -e "$DEVICE_ROOT/fail-install" ]; then
	echo "slot b is write-protected" >&2
	exit 1
fi
echo "$FLOTA_SHA256  $image" | sha256sum -c --quiet
cp "$image" "$DEVICE_ROOT/slot-b"
echo "$FLOTA_VERSION" >"$DEVICE_ROOT/slot-b.version"
cp "$DEVICE_ROOT/version" "$DEVICE_ROOT/slot-a.version"
echo "installed $FLOTA_VERSION into slot b"
