package httpapi

import (
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"net/http"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/flotaio/flota/internal/fleet"
)

// Every code the API can answer with is named in openapi.json, where
// programs look for them.
func TestOpenAPI_ErrorCodeListsEveryCodeTheAPIAnswers(t *testing.T) {
	var doc struct {
		Components struct {
			Schemas map[string]struct {
				Properties map[string]struct {
					Description string `json:"description"`
				} `json:"properties"`
			} `json:"schemas"`
		} `json:"components"`
	}
	require.NoError(t, json.Unmarshal(openAPIDoc, &doc))
	desc := doc.Components.Schemas["Error"].Properties["code"].Description
	codes := []string{CodeNotFound, CodeTooLarge, CodeInternal, CodeUnavailable, CodeInvalidInput,
		CodeInvalidPolicy, CodeMethodNotAllowed, CodeStoreUnavailable, CodeUnauthorized, CodeForbidden, codeTokenInFile}
	for _, s := range sentinels {
		codes = append(codes, s.code)
	}
	for _, c := range codes {
		assert.Regexp(t, `\b`+c+`\b`, desc, "Error.code in openapi.json")
	}
}

func TestDelete_AuditLogNamesWhoDeleted(t *testing.T) {
	var logs bytes.Buffer
	srv := &Server{Logger: slog.New(slog.NewTextHandler(&logs, nil))}
	base := newTestAPI(t, srv)
	require.NoError(t, srv.Store.SaveDevice(fleet.Device{ID: "d1", Model: "m1", Version: "1.0.0"}))
	fw, err := srv.Store.AddFirmware(context.Background(), fleet.Firmware{Version: "2.0.0"}, strings.NewReader("image"))
	require.NoError(t, err)
	require.NoError(t, srv.Store.Flush(context.Background()))

	for _, path := range []string{"/api/v1/devices/d1", "/api/v1/firmware/" + fw.ID} {
		req, err := http.NewRequest("DELETE", base+path, nil)
		require.NoError(t, err)
		req.Header.Set("Authorization", "Bearer "+testAdminToken)
		resp, err := http.DefaultClient.Do(req)
		require.NoError(t, err)
		resp.Body.Close()
		require.Equal(t, http.StatusNoContent, resp.StatusCode, path)
	}
	assert.Contains(t, logs.String(), `msg="device deleted" device=d1 by=ops`)
	assert.Contains(t, logs.String(), `msg="firmware deleted" firmware=`+fw.ID+` by=ops`)
}
