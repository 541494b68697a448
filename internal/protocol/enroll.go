package protocol

import "strings"

// EnrollPrefix starts the MQTT password of a device that enrolls with the
// fleet's enrollment token (docs/PROTOCOL.md, "Connecting"):
//
//	enroll:<fleet token>:<device secret>
//
// The device secret is base64url, so it holds no ':'; the token may not
// either. A device may keep sending this form after it was approved.
const EnrollPrefix = "enroll:"

// EnrollPassword returns the enrollment form of the MQTT password.
func EnrollPassword(token, secret string) string {
	return EnrollPrefix + token + ":" + secret
}

// ParsePassword splits an MQTT password into the device secret and, in the
// enrollment form, the fleet token.
func ParsePassword(pw string) (secret, token string, enrolling bool) {
	rest, ok := strings.CutPrefix(pw, EnrollPrefix)
	if !ok {
		return pw, "", false
	}
	i := strings.LastIndexByte(rest, ':')
	if i < 0 {
		return pw, "", false
	}
	return rest[i+1:], rest[:i], true
}
