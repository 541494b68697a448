package main

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/flotaio/flota/internal/fleet"
	"github.com/flotaio/flota/internal/httpapi"
)

func TestClient_Health(t *testing.T) {
	_, server := newAPI(t)
	h, err := NewClient(server + "/").Health(context.Background())
	require.NoError(t, err)
	assert.Equal(t, httpapi.Health{Status: "ok", Version: "test"}, h)
}

func TestClient_AllDevicesPagesThrough(t *testing.T) {
	st, server := newAPI(t)
	n := httpapi.MaxPageSize + 5
	for i := range n {
		require.NoError(t, st.SaveDevice(fleet.Device{ID: fmt.Sprintf("d%05d", i), Model: "m"}))
	}
	require.NoError(t, st.Flush(context.Background()))

	c := NewClient(server)
	c.Token = testReadToken
	devs, err := c.AllDevices(context.Background(), DeviceQuery{Model: "m"})
	require.NoError(t, err)
	require.Len(t, devs, n)
	assert.Equal(t, "d00000", devs[0].ID)
	assert.Equal(t, fmt.Sprintf("d%05d", n-1), devs[n-1].ID)
}

func TestClient_ErrorAnswers(t *testing.T) {
	_, server := newAPI(t)
	c := NewClient(server)
	c.Token = testReadToken
	_, err := c.Device(context.Background(), "nope")
	var apiErr *APIError
	require.ErrorAs(t, err, &apiErr)
	assert.Equal(t, http.StatusNotFound, apiErr.Status)
	assert.Equal(t, "device_not_found", apiErr.Code)

	// A proxy's plain-text error still becomes an APIError.
	ts := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, "upstream down", http.StatusBadGateway)
	}))
	t.Cleanup(ts.Close)
	_, err = NewClient(ts.URL).ListFirmware(context.Background())
	require.ErrorAs(t, err, &apiErr)
	assert.Equal(t, "http_502", apiErr.Code)
	assert.Equal(t, "upstream down", apiErr.Message)
}
