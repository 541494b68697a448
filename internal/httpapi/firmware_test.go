package httpapi

import (
	"bytes"
	"crypto/ed25519"
	"net/http"
	"net/url"
	"os"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/flotaio/flota/internal/fleet"
)

func TestServer_FirmwareVersionMustBeSemantic(t *testing.T) {
	base := newTestAPI(t, &Server{})
	for _, v := range []string{"banana", "1.2.3.4", "1..2", "v", "2.0 beta", "-1"} {
		e := callError(t, "POST", base+"/api/v1/firmware?"+url.Values{"version": {v}}.Encode(), bytes.NewReader([]byte("image-"+v)), http.StatusBadRequest, CodeInvalidInput)
		assert.Contains(t, e.Message, "not a semantic version", v)
	}
	for _, v := range []string{"1", "1.2", "2.1.0", "v2.1.0", "2.1.0-rc.1", "2.1.0-rc.1+42"} {
		var fw fleet.Firmware
		resp := call(t, "POST", base+"/api/v1/firmware?"+url.Values{"version": {v}}.Encode(), bytes.NewReader([]byte("image-"+v)), &fw)
		assert.Equal(t, http.StatusCreated, resp.StatusCode, v)
	}
}

func TestServer_SameImageAndVersionIsStoredOnce(t *testing.T) {
	s := &Server{}
	base := newTestAPI(t, s)
	image := bytes.Repeat([]byte("same"), 1000)
	up := func(q url.Values, out any) *http.Response {
		return call(t, "POST", base+"/api/v1/firmware?"+q.Encode(), bytes.NewReader(image), out)
	}
	var a, b fleet.Firmware
	require.Equal(t, http.StatusCreated, up(url.Values{"version": {"1.0.0"}, "model": {"m1"}}, &a).StatusCode)
	resp := up(url.Values{"version": {"1.0.0"}, "model": {"m1"}, "name": {"again"}}, &b)
	assert.Equal(t, http.StatusOK, resp.StatusCode, "stored before")
	assert.Equal(t, a, b, "the same firmware, not a second one")

	var c fleet.Firmware
	assert.Equal(t, http.StatusCreated, up(url.Values{"version": {"1.0.1"}, "model": {"m1"}}, &c).StatusCode, "another version is another firmware")
	assert.NotEqual(t, a.ID, c.ID)

	var l FirmwareList
	call(t, "GET", base+"/api/v1/firmware", nil, &l)
	assert.Len(t, l.Firmware, 2)
}

func TestServer_UnsignedCopyOfASignedImageIsRefused(t *testing.T) {
	_, priv, err := ed25519.GenerateKey(nil)
	require.NoError(t, err)
	base := newTestAPI(t, &Server{})
	image := bytes.Repeat([]byte("signed"), 500)
	q := signedUpload(t, priv, image, false)
	var signed fleet.Firmware
	require.Equal(t, http.StatusCreated, call(t, "POST", base+"/api/v1/firmware?"+q.Encode(), bytes.NewReader(image), &signed).StatusCode)

	q.Del("signature")
	e := callError(t, "POST", base+"/api/v1/firmware?"+q.Encode(), bytes.NewReader(image), http.StatusConflict, "firmware_exists")
	assert.Contains(t, e.Message, signed.ID)

	// Signed again: the same firmware.
	var again fleet.Firmware
	assert.Equal(t, http.StatusOK, call(t, "POST", base+"/api/v1/firmware?"+signedUpload(t, priv, image, false).Encode(), bytes.NewReader(image), &again).StatusCode)
	assert.Equal(t, signed.ID, again.ID)
}

func TestServer_DeleteFirmwareOnlyWhenNoUpdateUsesIt(t *testing.T) {
	s := &Server{}
	base := newTestAPI(t, s)
	var used, shared, unused fleet.Firmware
	call(t, "POST", base+"/api/v1/firmware?version=1.0.0", bytes.NewReader([]byte("used")), &used)
	call(t, "POST", base+"/api/v1/firmware?version=1.0.0", bytes.NewReader([]byte("other")), &unused)
	call(t, "POST", base+"/api/v1/firmware?version=1.0.1", bytes.NewReader([]byte("other")), &shared)
	require.NoError(t, s.Store.CreateUpdate(t.Context(), fleet.Update{ID: "u-1", FirmwareID: used.ID,
		Policy: fleet.Policy{}.WithDefaults(), State: fleet.UpdateCompleted}, nil))

	e := callError(t, "DELETE", base+"/api/v1/firmware/"+used.ID, nil, http.StatusConflict, "firmware_in_use")
	assert.Contains(t, e.Message, "u-1")
	assert.FileExists(t, s.Store.FirmwarePath(used.SHA256))

	assert.Equal(t, http.StatusNoContent, deleteStatus(t, base+"/api/v1/firmware/"+unused.ID))
	callError(t, "GET", base+"/api/v1/firmware/"+unused.ID, nil, http.StatusNotFound, "firmware_not_found")
	assert.FileExists(t, s.Store.FirmwarePath(unused.SHA256), "another firmware has the same bytes")

	assert.Equal(t, http.StatusNoContent, deleteStatus(t, base+"/api/v1/firmware/"+shared.ID))
	_, err := os.Stat(s.Store.FirmwarePath(shared.SHA256))
	assert.ErrorIs(t, err, os.ErrNotExist, "the last firmware of an image takes its file")
	callError(t, "DELETE", base+"/api/v1/firmware/"+shared.ID, nil, http.StatusNotFound, "firmware_not_found")
}

// deleteStatus sends DELETE url with the admin token and returns the status
// of an answer without a body.
func deleteStatus(t *testing.T, url string) int {
	t.Helper()
	req, err := http.NewRequest("DELETE", url, nil)
	require.NoError(t, err)
	req.Header.Set("Authorization", "Bearer "+testAdminToken)
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	return resp.StatusCode
}
