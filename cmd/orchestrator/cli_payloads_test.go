package main

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/flotaio/flota/internal/fleet"
	"github.com/flotaio/flota/internal/sqlite"
)

func TestCLI_UpdateCreateTurnsDeltasAndCompressionOff(t *testing.T) {
	fake := &fakeEngineAPI{}
	ts := httptest.NewServer(fake)
	t.Cleanup(ts.Close)
	r := runCLI(t, ts.URL, "update", "create", "--firmware", "fw-1", "--no-delta", "--no-compress")
	require.Equal(t, exitOK, r.code, r.stderr)
	require.NotNil(t, fake.created)
	assert.True(t, fake.created.Policy.NoDelta)
	assert.True(t, fake.created.Policy.NoCompress)
}

func TestCLI_FirmwareAndUpdateDevicesShowPayloads(t *testing.T) {
	st, server := newAPI(t)
	ctx := context.Background()
	base, err := st.AddFirmware(ctx, fleet.Firmware{Name: "app", Version: "1.0.0"}, strings.NewReader("old"))
	require.NoError(t, err)
	fw, err := st.AddFirmware(ctx, fleet.Firmware{Name: "app", Version: "1.1.0"}, strings.NewReader("new"))
	require.NoError(t, err)
	now := time.Now().UTC()
	_, err = st.AddPayloads(ctx, []fleet.Payload{
		{FirmwareID: fw.ID, Encoding: fleet.EncodingDeflate, CreatedAt: now},
		{FirmwareID: fw.ID, Encoding: fleet.EncodingDelta, Base: base.ID, CreatedAt: now},
	})
	require.NoError(t, err)
	require.NoError(t, st.FinishPayload(ctx, fleet.Payload{FirmwareID: fw.ID, Encoding: fleet.EncodingDelta, Base: base.ID,
		State: fleet.PayloadReady, Size: 2048, SHA256: strings.Repeat("c", 64), Path: sqlite.PayloadDir + "/d"}))

	r := runCLI(t, server, "firmware", "list")
	require.Equal(t, exitOK, r.code, r.stderr)
	assert.Contains(t, r.stdout, "deflate pending, delta from 1.0.0 2.0 KiB")
	r = runCLI(t, server, "firmware", "list", "--json")
	require.Equal(t, exitOK, r.code, r.stderr)
	var fws []fleet.Firmware
	require.NoError(t, json.Unmarshal([]byte(r.stdout), &fws))
	for _, f := range fws {
		if f.ID == fw.ID {
			require.Len(t, f.Payloads, 2)
			assert.Equal(t, fleet.Payload{Encoding: fleet.EncodingDelta, Base: base.ID, BaseVersion: "1.0.0", BaseSHA256: base.SHA256,
				Size: 2048, SHA256: strings.Repeat("c", 64), State: fleet.PayloadReady, CreatedAt: f.Payloads[1].CreatedAt}, f.Payloads[1])
		}
	}

	u := fleet.Update{ID: "upd-1", FirmwareID: fw.ID, Policy: fleet.Policy{}.WithDefaults(), State: fleet.UpdateRunning}
	require.NoError(t, st.CreateUpdate(ctx, u, []fleet.Progress{{UpdateID: u.ID, DeviceID: "d1", State: fleet.StateQueued}}))
	require.NoError(t, st.SaveProgress(fleet.Progress{UpdateID: u.ID, DeviceID: "d1", State: fleet.StateDownloading, Attempts: 1,
		Encoding: fleet.EncodingDelta, PayloadSize: 2048, WireBytes: 3072}, 1))
	require.NoError(t, st.Flush(ctx))
	r = runCLI(t, server, "update", "devices", "upd-1")
	require.Equal(t, exitOK, r.code, r.stderr)
	assert.Contains(t, r.stdout, "PAYLOAD")
	assert.Regexp(t, `d1\s+downloading\s+0\s+1\s+-\s+delta\s+2\.0 KiB\s+3\.0 KiB`, r.stdout)
}

func TestCLI_UpdateStatusShowsBytesOnTheWireAgainstImages(t *testing.T) {
	var out bytes.Buffer
	writeStatus(&out, fleet.UpdateSummary{Update: fleet.Update{ID: "u1", State: fleet.UpdateRunning},
		BytesSent: 1258291, ImageBytes: 10905190, Encodings: map[string]int{fleet.EncodingDelta: 9, fleet.EncodingFull: 1}})
	assert.Regexp(t, `wire\s+1.2 MiB of 10.4 MiB images \(11%\)`, out.String())
	assert.Regexp(t, `payloads\s+delta 9, full 1`, out.String())
}
