package httpapi

import (
	"fmt"
	"net/url"
	"strconv"

	"github.com/flotaio/flota/internal/fleet"
	"github.com/flotaio/flota/internal/protocol"
)

// signatureParams reads an upload's signature and allow_downgrade query
// parameters into meta. A signature must at least be 64 bytes of base64.
func signatureParams(q url.Values, meta *fleet.Firmware) error {
	if v := q.Get("allow_downgrade"); v != "" {
		b, err := strconv.ParseBool(v)
		if err != nil {
			return fleet.Errorf(fleet.ErrInvalidInput, "allow_downgrade %q is not a boolean", v)
		}
		meta.AllowDowngrade = b
	}
	meta.Signature = q.Get("signature")
	if meta.Signature != "" {
		if _, err := protocol.DecodeSignature(meta.Signature); err != nil {
			return fmt.Errorf("signature: %w", err)
		}
	}
	return nil
}

// verifyFirmware refuses an upload that does not verify with the server's
// firmware public key. Without a key every upload is kept: the devices
// verify what they install.
func (s *Server) verifyFirmware(fw fleet.Firmware) error {
	if s.FirmwarePublicKey == nil {
		return nil
	}
	if err := protocol.VerifyFirmware(s.FirmwarePublicKey, protocol.FirmwareInfoOf(fw)); err != nil {
		return fmt.Errorf("%w (checked with the server's --firmware-public-key over name, version, model, size, SHA-256 and allow_downgrade)", err)
	}
	return nil
}
