package agent

import (
	"errors"

	"github.com/flotaio/flota/internal/fleet"
	"github.com/flotaio/flota/internal/protocol"
)

// refusal says why a device provisioned with a public key refuses an offer
// before holding anything of it (docs/PROTOCOL.md §5.4, rules 3 and 4):
//
//   - the signature is missing, malformed, made with another key, or over
//     other fields than the offer's: failed, bad_signature;
//   - the (verified) version is lower than the one running, or either is not
//     a semantic version, and the signature does not allow a downgrade:
//     rejected, downgrade_refused.
//
// Without Config.PublicKey the agent verifies nothing and accepts any version
// (a development fleet); the SHA-256 is checked in every case.
func (a *Agent) refusal(fw protocol.FirmwareInfo) (fleet.DeviceState, fleet.Reason) {
	if a.cfg.PublicKey == nil {
		return "", ""
	}
	if err := protocol.VerifyFirmware(a.cfg.PublicKey, fw); err != nil {
		if !errors.Is(err, protocol.ErrNoSignature) {
			a.logger().Warn("offer refused: signature does not verify", "version", fw.Version, "sha256", fw.SHA256, "err", err)
		} else {
			a.logger().Warn("offer refused: unsigned firmware", "version", fw.Version)
		}
		return fleet.StateFailed, fleet.ReasonBadSignature
	}
	if fw.AllowDowngrade {
		return "", ""
	}
	if cmp, ok := fleet.CompareVersions(fw.Version, a.version); !ok || cmp < 0 {
		a.logger().Warn("offer refused: downgrade not allowed by the signature", "running", a.version, "offered", fw.Version)
		return fleet.StateRejected, fleet.ReasonDowngradeRefused
	}
	return "", ""
}
