package httpapi

import (
	"bytes"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/hex"
	"net/http"
	"net/url"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/flotaio/flota/internal/fleet"
	"github.com/flotaio/flota/internal/protocol"
)

// signedUpload is the query of an upload of image signed with key.
func signedUpload(t *testing.T, key ed25519.PrivateKey, image []byte, allowDowngrade bool) url.Values {
	t.Helper()
	sum := sha256.Sum256(image)
	fw := protocol.FirmwareInfo{Name: "app", Version: "2.0.0", Model: "m1", Size: int64(len(image)),
		SHA256: hex.EncodeToString(sum[:]), AllowDowngrade: allowDowngrade}
	sig, err := protocol.SignFirmware(key, fw)
	require.NoError(t, err)
	q := url.Values{"name": {"app"}, "version": {"2.0.0"}, "model": {"m1"}, "signature": {sig}}
	if allowDowngrade {
		q.Set("allow_downgrade", "true")
	}
	return q
}

func TestServer_FirmwareKeepsSignature(t *testing.T) {
	// Without a public key the server stores what it is given.
	_, priv, err := ed25519.GenerateKey(nil)
	require.NoError(t, err)
	base := newTestAPI(t, &Server{})
	image := bytes.Repeat([]byte("signed"), 500)
	q := signedUpload(t, priv, image, true)

	var fw fleet.Firmware
	resp := call(t, "POST", base+"/api/v1/firmware?"+q.Encode(), bytes.NewReader(image), &fw)
	require.Equal(t, http.StatusCreated, resp.StatusCode)
	assert.Equal(t, q.Get("signature"), fw.Signature)
	assert.True(t, fw.AllowDowngrade)

	var got fleet.Firmware
	call(t, "GET", base+"/api/v1/firmware/"+fw.ID, nil, &got)
	assert.Equal(t, fw.Signature, got.Signature)
	assert.True(t, got.AllowDowngrade)
	assert.NoError(t, protocol.VerifyFirmware(priv.Public().(ed25519.PublicKey), protocol.FirmwareInfoOf(got)))

	callError(t, "POST", base+"/api/v1/firmware?version=1&signature=abc", bytes.NewReader(image), http.StatusBadRequest, "bad_signature")
	callError(t, "POST", base+"/api/v1/firmware?version=1&allow_downgrade=maybe", bytes.NewReader(image), http.StatusBadRequest, CodeInvalidInput)
}

func TestServer_FirmwarePublicKeyRefusesBadUploads(t *testing.T) {
	pub, priv, err := ed25519.GenerateKey(nil)
	require.NoError(t, err)
	_, other, err := ed25519.GenerateKey(nil)
	require.NoError(t, err)
	st := newTestStore(t)
	base := newTestAPI(t, &Server{Store: st, FirmwarePublicKey: pub})
	image := bytes.Repeat([]byte("firmware"), 700)

	callError(t, "POST", base+"/api/v1/firmware?version=2.0.0", bytes.NewReader(image), http.StatusBadRequest, "unsigned_firmware")
	q := signedUpload(t, other, image, false)
	callError(t, "POST", base+"/api/v1/firmware?"+q.Encode(), bytes.NewReader(image), http.StatusBadRequest, "bad_signature")
	q = signedUpload(t, priv, image, false)
	q.Set("allow_downgrade", "true") // not what was signed
	callError(t, "POST", base+"/api/v1/firmware?"+q.Encode(), bytes.NewReader(image), http.StatusBadRequest, "bad_signature")
	q = signedUpload(t, priv, image, false)
	callError(t, "POST", base+"/api/v1/firmware?"+q.Encode(), bytes.NewReader(append(image, 'x')), http.StatusBadRequest, "bad_signature")

	var list FirmwareList
	call(t, "GET", base+"/api/v1/firmware", nil, &list)
	assert.Empty(t, list.Firmware, "refused uploads keep nothing")

	var fw fleet.Firmware
	resp := call(t, "POST", base+"/api/v1/firmware?"+q.Encode(), bytes.NewReader(image), &fw)
	assert.Equal(t, http.StatusCreated, resp.StatusCode)
	assert.Equal(t, q.Get("signature"), fw.Signature)
}
