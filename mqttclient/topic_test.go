package mqttclient

import (
	"fmt"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestCovers_Filters(t *testing.T) {
	tests := []struct {
		a, b string
		want bool
	}{
		{"flota/devices/+/up/#", "flota/devices/+/up/status", true},
		{"flota/devices/+/up/#", "flota/devices/d1/up/#", true},
		{"flota/devices/+/up/#", "flota/devices/+/up", true},
		{"flota/devices/+/up/status", "flota/devices/+/up/#", false},
		{"flota/devices/d1/up/#", "flota/devices/+/up/status", false},
		{"flota/#", "flota/events/#", true},
		{"flota/events/#", "flota/status/#", false},
		{"a/b", "a/b", true},
		{"a/+", "a/b/c", false},
		{"a/+/c", "a/#", false},
		{"#", "a/#", true},
	}
	for _, tt := range tests {
		t.Run(tt.a+" "+tt.b, func(t *testing.T) {
			assert.Equal(t, tt.want, covers(tt.a, tt.b))
		})
	}
}

func TestMinimal_DropsCoveredAndDuplicateFilters(t *testing.T) {
	got := minimal([]string{
		"flota/devices/+/up/status",
		"flota/events/#",
		"flota/devices/+/up/#",
		"flota/events/#",
		"flota/status/#",
	})
	require.Equal(t, []string{"flota/events/#", "flota/devices/+/up/#", "flota/status/#"}, got)
	assert.Equal(t, []string{"flota/devices/+/up/status"}, minimal([]string{"flota/devices/+/up/status"}))
	assert.Empty(t, minimal(nil))
}

func TestDecodeStatus(t *testing.T) {
	tests := []struct {
		in      string
		online  bool
		conn    uint32
		wantErr bool
	}{
		{`{"v":1,"online":true}`, true, 0, false},
		{`{"v":1,"online":false}`, false, 0, false},
		{`{"v":1,"online":false,"conn":4294967295}`, false, 4294967295, false},
		{`{"online":true,"v":1,"extra":"ignored","conn":7}`, true, 7, false},
		{`{"v":1,"online":false,"conn":-1}`, false, 0, true},
		{`{"v":1,"online":false,"conn":4294967296}`, false, 0, true},
		{`{"v":1,"online":false,"conn":"7"}`, false, 0, true},
		{`{"v":2,"online":true}`, false, 0, true},
		{`{"v":1}`, false, 0, true},
		{`{"online":true}`, false, 0, true},
		{`{"v":1,"online":"yes"}`, false, 0, true},
		{`not json`, false, 0, true},
		{`{"v":1,"online":true,"pad":"` + string(make([]byte, 300)) + `"}`, false, 0, true},
	}
	for _, tt := range tests {
		online, conn, err := decodeStatus([]byte(tt.in))
		if tt.wantErr {
			assert.Error(t, err, tt.in)
			continue
		}
		require.NoError(t, err, tt.in)
		assert.Equal(t, tt.online, online, tt.in)
		assert.Equal(t, tt.conn, conn, tt.in)
	}
}

func FuzzDecodeStatus(f *testing.F) {
	f.Add([]byte(`{"v":1,"online":true}`))
	f.Add([]byte(`{"v":1,"online":false}`))
	f.Add([]byte(`{"v":1,"online":null}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		online, conn, err := decodeStatus(b)
		if err != nil {
			return
		}
		// Whatever decodes re-decodes the same from its canonical form.
		canon := fmt.Appendf(nil, `{"v":1,"online":%t,"conn":%d}`, online, conn)
		again, againConn, err := decodeStatus(canon)
		require.NoError(t, err)
		require.Equal(t, online, again)
		require.Equal(t, conn, againConn)
	})
}
