package protocol

import (
	"crypto/ed25519"
	"crypto/x509"
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"math"
	"os"

	"github.com/flotaio/flota/internal/fleet"
)

// SignedMagic starts the signed encoding of a firmware (docs/PROTOCOL.md,
// "Firmware signature"): 16 ASCII bytes that name the format and its
// version, so that a signature made for anything else never verifies.
const SignedMagic = "flota-fw-sig-v1\n"

// Signature errors.
var (
	// ErrNoSignature: the offer or upload carries no signature.
	ErrNoSignature = errors.New("firmware is not signed")
	// ErrBadSignature: the signature does not verify with the public key
	// (a bad signature, another key, or fields that differ from the signed ones).
	ErrBadSignature = errors.New("firmware signature does not verify")
)

// FlagAllowDowngrade is bit 0 of the signed flags byte: a device may
// install this image over a newer version.
const FlagAllowDowngrade = 0x01

// FirmwareInfoOf is the FirmwareInfo an offer carries for fw.
func FirmwareInfoOf(fw fleet.Firmware) FirmwareInfo {
	return FirmwareInfo{
		ID: fw.ID, Name: fw.Name, Version: fw.Version, Model: fw.Model,
		Size: fw.Size, SHA256: fw.SHA256,
		AllowDowngrade: fw.AllowDowngrade, Signature: fw.Signature,
	}
}

// SignedBytes is the canonical byte encoding of the signed fields of fw:
//
//	magic    16 bytes  "flota-fw-sig-v1\n"
//	flags     1 byte   bit 0: allow_downgrade; other bits 0
//	name      2 bytes  length N, big-endian; then N bytes (UTF-8)
//	version   2 bytes  length N, big-endian; then N bytes
//	model     2 bytes  length N, big-endian; then N bytes ("" = any model)
//	size      8 bytes  big-endian
//	sha256   32 bytes  the raw digest (not hex)
//
// ID, Signature and the transfer fields are not signed.
func SignedBytes(fw FirmwareInfo) ([]byte, error) {
	sum, err := hex.DecodeString(fw.SHA256)
	if err != nil || len(sum) != 32 {
		return nil, fmt.Errorf("%w: sha256 %q is not 64 hex digits", ErrBadValue, fw.SHA256)
	}
	if fw.Size < 0 {
		return nil, fmt.Errorf("%w: size %d", ErrBadValue, fw.Size)
	}
	b := make([]byte, 0, len(SignedMagic)+1+6+len(fw.Name)+len(fw.Version)+len(fw.Model)+8+32)
	b = append(b, SignedMagic...)
	var flags byte
	if fw.AllowDowngrade {
		flags |= FlagAllowDowngrade
	}
	b = append(b, flags)
	for _, s := range []string{fw.Name, fw.Version, fw.Model} {
		if len(s) > math.MaxUint16 {
			return nil, fmt.Errorf("%w: a name, version or model of %d bytes", ErrBadValue, len(s))
		}
		b = binary.BigEndian.AppendUint16(b, uint16(len(s)))
		b = append(b, s...)
	}
	b = binary.BigEndian.AppendUint64(b, uint64(fw.Size))
	return append(b, sum...), nil
}

// SignFirmware signs the signed fields of fw with key and returns the
// signature as the offer carries it: standard base64 with padding.
func SignFirmware(key ed25519.PrivateKey, fw FirmwareInfo) (string, error) {
	msg, err := SignedBytes(fw)
	if err != nil {
		return "", err
	}
	return base64.StdEncoding.EncodeToString(ed25519.Sign(key, msg)), nil
}

// DecodeSignature decodes a signature as the offer carries it.
func DecodeSignature(s string) ([]byte, error) {
	sig, err := base64.StdEncoding.DecodeString(s)
	if err != nil || len(sig) != ed25519.SignatureSize {
		return nil, fmt.Errorf("%w: not %d bytes of standard base64", ErrBadSignature, ed25519.SignatureSize)
	}
	return sig, nil
}

// VerifyFirmware checks fw.Signature over the signed fields of fw with key.
// It returns nil, ErrNoSignature or an error wrapping ErrBadSignature.
func VerifyFirmware(key ed25519.PublicKey, fw FirmwareInfo) error {
	if fw.Signature == "" {
		return ErrNoSignature
	}
	if len(key) != ed25519.PublicKeySize {
		return fmt.Errorf("%w: no valid public key", ErrBadSignature)
	}
	sig, err := DecodeSignature(fw.Signature)
	if err != nil {
		return err
	}
	msg, err := SignedBytes(fw)
	if err != nil {
		return fmt.Errorf("%w: %w", ErrBadSignature, err)
	}
	if !ed25519.Verify(key, msg, sig) {
		return ErrBadSignature
	}
	return nil
}

// Key files are PEM: the private key as PKCS #8 ("PRIVATE KEY"), the public
// key as PKIX ("PUBLIC KEY"), the formats `openssl genpkey -algorithm
// ed25519` and `openssl pkey -pubout` write.

// MarshalPrivateKeyPEM encodes an ed25519 private key as PKCS #8 PEM.
func MarshalPrivateKeyPEM(key ed25519.PrivateKey) ([]byte, error) {
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, err
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), nil
}

// MarshalPublicKeyPEM encodes an ed25519 public key as PKIX PEM.
func MarshalPublicKeyPEM(key ed25519.PublicKey) ([]byte, error) {
	der, err := x509.MarshalPKIXPublicKey(key)
	if err != nil {
		return nil, err
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}), nil
}

// ParsePrivateKeyPEM reads an ed25519 private key written by
// MarshalPrivateKeyPEM (or openssl).
func ParsePrivateKeyPEM(b []byte) (ed25519.PrivateKey, error) {
	blk, _ := pem.Decode(b)
	if blk == nil || blk.Type != "PRIVATE KEY" {
		return nil, errors.New("not a PEM \"PRIVATE KEY\" block")
	}
	k, err := x509.ParsePKCS8PrivateKey(blk.Bytes)
	if err != nil {
		return nil, fmt.Errorf("parse private key: %w", err)
	}
	priv, ok := k.(ed25519.PrivateKey)
	if !ok {
		return nil, fmt.Errorf("private key is %T, not ed25519", k)
	}
	return priv, nil
}

// ParsePublicKeyPEM reads an ed25519 public key written by
// MarshalPublicKeyPEM (or openssl).
func ParsePublicKeyPEM(b []byte) (ed25519.PublicKey, error) {
	blk, _ := pem.Decode(b)
	if blk == nil || blk.Type != "PUBLIC KEY" {
		return nil, errors.New("not a PEM \"PUBLIC KEY\" block")
	}
	k, err := x509.ParsePKIXPublicKey(blk.Bytes)
	if err != nil {
		return nil, fmt.Errorf("parse public key: %w", err)
	}
	pub, ok := k.(ed25519.PublicKey)
	if !ok {
		return nil, fmt.Errorf("public key is %T, not ed25519", k)
	}
	return pub, nil
}

// ReadPublicKeyFile reads an ed25519 public key PEM file.
func ReadPublicKeyFile(path string) (ed25519.PublicKey, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read public key: %w", err)
	}
	k, err := ParsePublicKeyPEM(b)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return k, nil
}

// ReadPrivateKeyFile reads an ed25519 private key PEM file.
func ReadPrivateKeyFile(path string) (ed25519.PrivateKey, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read private key: %w", err)
	}
	k, err := ParsePrivateKeyPEM(b)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return k, nil
}
