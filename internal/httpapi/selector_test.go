package httpapi

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"regexp"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/flotaio/flota/internal/fleet"
	"github.com/flotaio/flota/internal/rollout"
)

func TestServer_CreateUpdateRefusesASelectorOverItsLimitsWith400(t *testing.T) {
	srv, base := engineAPI(t)
	st, eng := srv.Store, srv.Engine

	tags := func(n int) map[string]string {
		m := map[string]string{}
		for i := range n {
			m[fmt.Sprintf("tag%04d", i)] = fmt.Sprintf("value%04d", i)
		}
		return m
	}
	// A device registered by an operator with as many tags as a selector
	// may name.
	seedDevices(t, st, fleet.Device{ID: "tagged", Model: "m1", Version: "1.0", Tags: tags(fleet.MaxSelectorTags)})
	fw, err := st.AddFirmware(context.Background(), fleet.Firmware{Version: "2.0", Model: "m1"}, bytes.NewReader([]byte("image")))
	require.NoError(t, err)
	body := func(sel fleet.Selector) *bytes.Reader {
		b, err := json.Marshal(rollout.CreateRequest{FirmwareID: fw.ID, Selector: sel})
		require.NoError(t, err)
		return bytes.NewReader(b)
	}

	e := callError(t, "POST", base+"/api/v1/updates", body(fleet.Selector{Tags: tags(1000)}), http.StatusBadRequest, "selector_too_large")
	assert.Contains(t, e.Message, "tags: 1000, at most 256")

	ids := []string{"tagged"}
	for i := 1; i < fleet.MaxSelectorDevices; i++ {
		ids = append(ids, fmt.Sprintf("d%05d", i))
	}
	e = callError(t, "POST", base+"/api/v1/updates", body(fleet.Selector{Devices: append(ids, "one-more")}), http.StatusBadRequest, "selector_too_large")
	assert.Contains(t, e.Message, "device IDs: 10001, at most 10000")
	assert.Regexp(t, regexp.MustCompile(`(?m)^flota_http_selector_refused_total 2$`), scrape(t, base), "each refusal counted")

	var u fleet.UpdateSummary
	resp := call(t, "POST", base+"/api/v1/updates", body(fleet.Selector{Model: "m1", Tags: tags(fleet.MaxSelectorTags), Devices: ids}), &u)
	require.Equal(t, http.StatusCreated, resp.StatusCode, "a selector at the limits selects")
	s, err := eng.Summary(context.Background(), u.ID)
	require.NoError(t, err)
	assert.Equal(t, 1, s.Total)
}
