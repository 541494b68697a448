package fleet

import (
	"unicode/utf8"

	"github.com/Masterminds/semver/v3"
)

// CheckDeviceID returns nil if id may name a device or a monitor account
// (ValidDeviceID), else an ErrInvalidInput that says what is wrong with it
// in words: the character not allowed, the length, or the reserved name.
func CheckDeviceID(id string) error {
	const allowed = "letters, digits, '.', '_' and '-'"
	switch {
	case id == "":
		return Errorf(ErrInvalidInput, "empty ID: use 1 to 64 %s", allowed)
	case id == "inline":
		return Errorf(ErrInvalidInput, "ID %q is reserved by the MQTT broker: choose another", id)
	case len(id) > 64:
		return Errorf(ErrInvalidInput, "ID %.20q... is %d characters long: at most 64", id, len(id))
	}
	for i, r := range id {
		if r == utf8.RuneError || !(r < utf8.RuneSelf && (r == '.' || r == '_' || r == '-' ||
			'a' <= r && r <= 'z' || 'A' <= r && r <= 'Z' || '0' <= r && r <= '9')) {
			return Errorf(ErrInvalidInput, "ID %q: %q at position %d is not allowed; an ID holds %s only",
				id, string(r), i+1, allowed)
		}
	}
	return nil
}

// CheckVersion returns nil if v is a firmware version CompareVersions can
// order: a semantic version, leniently read (1, 1.2, 1.2.3, v1.2.3, with
// an optional -pre-release and +build: 2.1.0-rc.1+42), else an
// ErrInvalidInput saying so. Versions decide upgrades, downgrades and
// selector ranges (version=<2.0.0): one that cannot be ordered would make
// each of them a guess.
func CheckVersion(v string) error {
	if _, err := semver.NewVersion(v); err != nil {
		return Errorf(ErrInvalidInput, "version %q is not a semantic version (want MAJOR[.MINOR[.PATCH]][-PRERELEASE][+BUILD], e.g. 2.1.0 or 2.1.0-rc.1)", v)
	}
	return nil
}
