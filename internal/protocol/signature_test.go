package protocol

import (
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/flotaio/flota/internal/fleet"
	"github.com/flotaio/flota/internal/testtool"
)

// goldenKey is the test signing key of the golden vectors, made from a
// fixed seed so that the vectors are reproducible. It signs nothing real.
var goldenKey = ed25519.NewKeyFromSeed(func() []byte {
	s := sha256.Sum256([]byte("flota golden test key: never use it for real firmware"))
	return s[:]
}())

// goldenSignature is the signature in offer_signed.json: goldenKey over the
// golden offer's firmware (ed25519 signatures are deterministic).
const goldenSignature = "ECJC9Q3FhHiOsgKQ7Xs9LrbjTk0nbYGRU9TyF/zU3b1niUn8hPELzQSh+m6LCBOuUA08rPM6OVUbIARFgLSYAw=="

// goldenSignedFirmware is the firmware of the golden offer, signed.
var goldenSignedFirmware = FirmwareInfo{
	ID: "fw-8c1d2e3f4a5b", Name: "sensor-fw", Version: "1.5.0", Model: "esp32-c3",
	Size: goldenSize, SHA256: goldenSHA256, Signature: goldenSignature,
}

// signatureVectors are the generated files of the signature example in
// docs/PROTOCOL.md, by path relative to goldenDir.
func signatureVectors() map[string][]byte {
	msg, err := SignedBytes(goldenSignedFirmware)
	if err != nil {
		panic(err)
	}
	priv, err := MarshalPrivateKeyPEM(goldenKey)
	if err != nil {
		panic(err)
	}
	pub, err := MarshalPublicKeyPEM(goldenKey.Public().(ed25519.PublicKey))
	if err != nil {
		panic(err)
	}
	fw := goldenSignedFirmware
	sig, err := SignFirmware(goldenKey, fw)
	if err != nil {
		panic(err)
	}
	fw.Signature = sig
	offer := Encode(Offer{V: 1, Update: goldenUpdate, Handle: goldenHandle, Attempt: 1, Firmware: fw, ChunkSize: 16384, Window: 8})
	return map[string][]byte{
		"signature/signed.bin":    msg,
		"signature/signed.hex":    []byte(xxd(msg)),
		"signature/test.key":      priv,
		"signature/test.pub":      pub,
		"signature/signature.b64": []byte(sig + "\n"),
		"offer_signed.json":       offer,
	}
}

func TestSignedBytes_Layout(t *testing.T) {
	// The encoding spelled out field by field, as docs/PROTOCOL.md shows it.
	want, err := hex.DecodeString("" +
		hex.EncodeToString([]byte("flota-fw-sig-v1\n")) + // magic
		"00" + // flags: no downgrade
		"0009" + hex.EncodeToString([]byte("sensor-fw")) + // name
		"0005" + hex.EncodeToString([]byte("1.5.0")) + // version
		"0008" + hex.EncodeToString([]byte("esp32-c3")) + // model
		"0000000000004010" + // size 16400
		goldenSHA256) // the digest, raw
	require.NoError(t, err)
	got, err := SignedBytes(goldenSignedFirmware)
	require.NoError(t, err)
	assert.Equal(t, want, got)
	assert.Len(t, got, 16+1+2+9+2+5+2+8+8+32)

	down := goldenSignedFirmware
	down.AllowDowngrade = true
	got, err = SignedBytes(down)
	require.NoError(t, err)
	assert.Equal(t, byte(FlagAllowDowngrade), got[16], "allow_downgrade is bit 0 of the flags byte")

	anyModel := goldenSignedFirmware
	anyModel.Model = ""
	got, err = SignedBytes(anyModel)
	require.NoError(t, err)
	assert.Equal(t, []byte{0, 0}, got[16+1+2+9+2+5:16+1+2+9+2+5+2], "any model is a zero length")
}

func TestSignedBytes_Refuses(t *testing.T) {
	for name, fw := range map[string]FirmwareInfo{
		"short digest":  {Name: "n", Version: "1", Size: 1, SHA256: "abcd"},
		"not hex":       {Name: "n", Version: "1", Size: 1, SHA256: strings.Repeat("zz", 32)},
		"negative size": {Name: "n", Version: "1", Size: -1, SHA256: goldenSHA256},
		"name too long": {Name: strings.Repeat("n", 1<<16), Version: "1", Size: 1, SHA256: goldenSHA256},
	} {
		t.Run(name, func(t *testing.T) {
			_, err := SignedBytes(fw)
			assert.ErrorIs(t, err, ErrBadValue)
		})
	}
}

func TestGolden_Signature(t *testing.T) {
	dir := filepath.Join(goldenDir, "signature")
	pub, err := ReadPublicKeyFile(filepath.Join(dir, "test.pub"))
	require.NoError(t, err)
	priv, err := ReadPrivateKeyFile(filepath.Join(dir, "test.key"))
	require.NoError(t, err)
	assert.Equal(t, goldenKey, priv)
	assert.Equal(t, priv.Public(), pub)

	msg, err := os.ReadFile(filepath.Join(dir, "signed.bin"))
	require.NoError(t, err)
	b64, err := os.ReadFile(filepath.Join(dir, "signature.b64"))
	require.NoError(t, err)
	sig, err := base64.StdEncoding.DecodeString(strings.TrimSpace(string(b64)))
	require.NoError(t, err)
	assert.True(t, ed25519.Verify(pub, msg, sig), "signature.b64 is test.key's signature of signed.bin")

	b, err := os.ReadFile(filepath.Join(goldenDir, "offer_signed.json"))
	require.NoError(t, err)
	o, err := DecodeOffer(b)
	require.NoError(t, err)
	assert.Equal(t, strings.TrimSpace(string(b64)), o.Firmware.Signature)
	assert.NoError(t, VerifyFirmware(pub, o.Firmware))
}

func TestVerifyFirmware(t *testing.T) {
	pub := goldenKey.Public().(ed25519.PublicKey)
	otherPub, _, err := ed25519.GenerateKey(nil)
	require.NoError(t, err)
	require.NoError(t, VerifyFirmware(pub, goldenSignedFirmware))

	t.Run("unsigned fields may change", func(t *testing.T) {
		fw := goldenSignedFirmware
		fw.ID = "fw-other"
		assert.NoError(t, VerifyFirmware(pub, fw))
	})
	t.Run("no signature", func(t *testing.T) {
		fw := goldenSignedFirmware
		fw.Signature = ""
		assert.ErrorIs(t, VerifyFirmware(pub, fw), ErrNoSignature)
	})
	t.Run("another key", func(t *testing.T) {
		assert.ErrorIs(t, VerifyFirmware(otherPub, goldenSignedFirmware), ErrBadSignature)
	})
	t.Run("no key", func(t *testing.T) {
		assert.ErrorIs(t, VerifyFirmware(nil, goldenSignedFirmware), ErrBadSignature)
	})
	bad := map[string]func(fw *FirmwareInfo){
		"name":            func(fw *FirmwareInfo) { fw.Name = "sensor-fx" },
		"version":         func(fw *FirmwareInfo) { fw.Version = "1.5.1" },
		"model":           func(fw *FirmwareInfo) { fw.Model = "" },
		"size":            func(fw *FirmwareInfo) { fw.Size++ },
		"sha256":          func(fw *FirmwareInfo) { fw.SHA256 = strings.Repeat("0", 64) },
		"upper-case hex":  func(fw *FirmwareInfo) { fw.SHA256 = strings.ToUpper(fw.SHA256[:2]) + fw.SHA256[2:] },
		"allow_downgrade": func(fw *FirmwareInfo) { fw.AllowDowngrade = true },
		"signature bit":   func(fw *FirmwareInfo) { fw.Signature = flipBase64(fw.Signature) },
		"short signature": func(fw *FirmwareInfo) { fw.Signature = fw.Signature[:40] },
		"not base64":      func(fw *FirmwareInfo) { fw.Signature = "!" + fw.Signature[1:] },
	}
	for name, change := range bad {
		t.Run(name, func(t *testing.T) {
			fw := goldenSignedFirmware
			change(&fw)
			if name == "upper-case hex" {
				// Hex digits decode case-insensitively: same bytes, still valid.
				assert.NoError(t, VerifyFirmware(pub, fw))
				return
			}
			assert.ErrorIs(t, VerifyFirmware(pub, fw), ErrBadSignature)
		})
	}
}

// flipBase64 flips one bit of the decoded signature.
func flipBase64(s string) string {
	b, err := base64.StdEncoding.DecodeString(s)
	if err != nil {
		panic(err)
	}
	b[10] ^= 0x01
	return base64.StdEncoding.EncodeToString(b)
}

func TestFirmwareInfoOf_CarriesSignedFields(t *testing.T) {
	fw := fleet.Firmware{ID: "fw-1", Name: "n", Version: "2.0.0", Model: "m", Size: 5, SHA256: goldenSHA256,
		AllowDowngrade: true, Signature: "sig"}
	assert.Equal(t, FirmwareInfo{ID: "fw-1", Name: "n", Version: "2.0.0", Model: "m", Size: 5, SHA256: goldenSHA256,
		AllowDowngrade: true, Signature: "sig"}, FirmwareInfoOf(fw))
}

func TestParseKeyPEM_Refuses(t *testing.T) {
	pubPEM, err := MarshalPublicKeyPEM(goldenKey.Public().(ed25519.PublicKey))
	require.NoError(t, err)
	privPEM, err := MarshalPrivateKeyPEM(goldenKey)
	require.NoError(t, err)
	_, err = ParsePublicKeyPEM(privPEM)
	assert.ErrorContains(t, err, "PUBLIC KEY")
	_, err = ParsePrivateKeyPEM(pubPEM)
	assert.ErrorContains(t, err, "PRIVATE KEY")
	_, err = ParsePublicKeyPEM([]byte("not pem"))
	assert.Error(t, err)
	_, err = ReadPublicKeyFile(filepath.Join(t.TempDir(), "missing.pub"))
	assert.ErrorContains(t, err, "read public key")
}

func TestParseKeyPEM_OpenSSLKeys(t *testing.T) {
	// Keys made with openssl work as well as those of keys generate.
	openssl := testtool.Path(t, "openssl")
	dir := t.TempDir()
	key, pubFile := filepath.Join(dir, "k.pem"), filepath.Join(dir, "k.pub")
	out, err := exec.Command(openssl, "genpkey", "-algorithm", "ed25519", "-out", key).CombinedOutput()
	require.NoError(t, err, string(out))
	out, err = exec.Command(openssl, "pkey", "-in", key, "-pubout", "-out", pubFile).CombinedOutput()
	require.NoError(t, err, string(out))
	priv, err := ReadPrivateKeyFile(key)
	require.NoError(t, err)
	pub, err := ReadPublicKeyFile(pubFile)
	require.NoError(t, err)
	fw := goldenSignedFirmware
	fw.Signature, err = SignFirmware(priv, fw)
	require.NoError(t, err)
	assert.NoError(t, VerifyFirmware(pub, fw))
}

// FuzzVerifyFirmware feeds offers' firmware fields, as a device receives
// them, to the verifier: it must never panic, and must accept only the
// golden signature over the golden fields.
func FuzzVerifyFirmware(f *testing.F) {
	fw := goldenSignedFirmware
	f.Add(fw.Name, fw.Version, fw.Model, fw.Size, fw.SHA256, false, fw.Signature)
	f.Add("", "", "", int64(0), "", true, "")
	f.Add("n", "1", "m", int64(-1), strings.Repeat("0", 64), false, strings.Repeat("A", 88))
	pub := goldenKey.Public().(ed25519.PublicKey)
	f.Fuzz(func(t *testing.T, name, version, model string, size int64, sum string, down bool, sig string) {
		in := FirmwareInfo{Name: name, Version: version, Model: model, Size: size, SHA256: sum, AllowDowngrade: down, Signature: sig}
		if err := VerifyFirmware(pub, in); err == nil {
			msg, err := SignedBytes(in)
			require.NoError(t, err)
			want, err := SignedBytes(goldenSignedFirmware)
			require.NoError(t, err)
			assert.Equal(t, want, msg, "only the signed fields verify")
		}
	})
}
