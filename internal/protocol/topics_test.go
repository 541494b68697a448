package protocol

import (
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
)

func TestTopics_Builders(t *testing.T) {
	tests := []struct{ got, want string }{
		{DownTopic("dev-1", KindOffer), "flota/devices/dev-1/down/offer"},
		{DownTopic("dev-1", KindChunk), "flota/devices/dev-1/down/chunk"},
		{DownTopic("dev-1", KindCancel), "flota/devices/dev-1/down/cancel"},
		{UpTopic("dev-1", KindHello), "flota/devices/dev-1/up/hello"},
		{UpTopic("dev-1", KindReport), "flota/devices/dev-1/up/report"},
		{UpTopic("dev-1", KindAck), "flota/devices/dev-1/up/ack"},
		{DownFilter("dev-1"), "flota/devices/dev-1/down/#"},
		{UpdateEventsTopic("upd-1"), "flota/events/updates/upd-1"},
		{UpdateStatusTopic("upd-1"), "flota/status/updates/upd-1"},
		{DeviceStatusTopic("dev-1"), "flota/status/devices/dev-1"},
	}
	for _, tt := range tests {
		assert.Equal(t, tt.want, tt.got)
	}
	// The filters cover the topics built above.
	assert.True(t, strings.HasPrefix(UpdateEventsTopic("u"), strings.TrimSuffix(EventsFilter, "#")))
	assert.True(t, strings.HasPrefix(UpdateStatusTopic("u"), strings.TrimSuffix(StatusFilter, "#")))
	assert.True(t, strings.HasPrefix(DeviceStatusTopic("d"), strings.TrimSuffix(StatusFilter, "#")))
	assert.Equal(t, Root+"/", DevicesRoot[:len(Root)+1])
	assert.Equal(t, "flota/devices/+/up/#", UpFilter)
}

func TestParseUpTopic(t *testing.T) {
	id64 := strings.Repeat("a", 64)
	tests := []struct {
		name     string
		topic    string
		wantID   string
		wantKind string
		wantOK   bool
	}{
		{"hello", "flota/devices/dev-1/up/hello", "dev-1", KindHello, true},
		{"report", "flota/devices/dev-1/up/report", "dev-1", KindReport, true},
		{"ack", "flota/devices/dev-1/up/ack", "dev-1", KindAck, true},
		{"unknown kind is returned as is", "flota/devices/dev-1/up/telemetry", "dev-1", "telemetry", true},
		{"every allowed character", "flota/devices/A-Z_a.z-0.9/up/ack", "A-Z_a.z-0.9", KindAck, true},
		{"64-character id", "flota/devices/" + id64 + "/up/ack", id64, KindAck, true},
		{"dot id", "flota/devices/./up/ack", ".", KindAck, true},

		{"65-character id", "flota/devices/" + id64 + "a/up/ack", "", "", false},
		{"inline is reserved", "flota/devices/inline/up/hello", "", "", false},
		{"empty id", "flota/devices//up/hello", "", "", false},
		{"id with space", "flota/devices/dev 1/up/hello", "", "", false},
		{"id with plus", "flota/devices/+/up/hello", "", "", false},
		{"id with hash", "flota/devices/#/up/hello", "", "", false},
		{"id with unicode", "flota/devices/dév/up/hello", "", "", false},
		{"id with dollar", "flota/devices/$sys/up/hello", "", "", false},
		{"wrong root", "flotb/devices/dev-1/up/hello", "", "", false},
		{"root with leading slash", "/flota/devices/dev-1/up/hello", "", "", false},
		{"upper-case root", "FLOTA/devices/dev-1/up/hello", "", "", false},
		{"events root", "flota/events/updates/u", "", "", false},
		{"status root", "flota/status/devices/dev-1", "", "", false},
		{"down offer", "flota/devices/dev-1/down/offer", "", "", false},
		{"down chunk", "flota/devices/dev-1/down/chunk", "", "", false},
		{"down cancel", "flota/devices/dev-1/down/cancel", "", "", false},
		{"no kind", "flota/devices/dev-1/up/", "", "", false},
		{"no kind level", "flota/devices/dev-1/up", "", "", false},
		{"only id", "flota/devices/dev-1", "", "", false},
		{"only root", "flota/devices/", "", "", false},
		{"extra level", "flota/devices/dev-1/up/hello/extra", "", "", false},
		{"trailing slash", "flota/devices/dev-1/up/hello/", "", "", false},
		{"nested id", "flota/devices/dev/1/up/hello", "", "", false},
		{"up twice", "flota/devices/dev-1/up/up/hello", "", "", false},
		{"empty", "", "", "", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			id, kind, ok := ParseUpTopic(tt.topic)
			assert.Equal(t, tt.wantOK, ok)
			assert.Equal(t, tt.wantID, id)
			assert.Equal(t, tt.wantKind, kind)
			if ok {
				assert.Equal(t, tt.topic, UpTopic(id, kind), "parse inverts UpTopic")
			}
		})
	}
}

func TestMatchTopic(t *testing.T) {
	tests := []struct {
		filter, topic string
		want          bool
	}{
		{"flota/devices/+/up/#", "flota/devices/d1/up/ack", true},
		{"flota/devices/+/up/#", "flota/devices/d1/up", true},
		{"flota/devices/+/up/#", "flota/devices/d1/down/ack", false},
		{"flota/devices/+/up/#", "flota/devices/up/ack", false},
		{"flota/devices/+/up/status", "flota/devices/d1/up/status", true},
		{"flota/devices/+/up/status", "flota/devices/d1/up/status/x", false},
		{"flota/devices/+/up/status", "flota/devices/d1/up", false},
		{"flota/events/#", "flota/events/updates/u1", true},
		{"flota/events/#", "flota/eventsx", false},
		{"flota/status/+", "flota/status", false},
		{"flota/status/+/+", "flota/status/devices/a", true},
		{"flota/+/devices/a", "flota/status/devices/a", true},
		{"flota/status/devices", "flota/status/devices/a", false},
		{"+/+/+/+", "flota/status/devices/a", true},
		{"+/+/+", "flota/status/devices/a", false},
		{"#", "flota/a", true},
		{"#", "$SYS/broker/uptime", false},
		{"+/broker/uptime", "$SYS/broker/uptime", false},
		{"$SYS/#", "$SYS/broker/uptime", true},
		{"a/+/#", "a/b", true},
		{"a/+", "a/", true},
		{"a/+", "a", false},
		{"a//b", "a//b", true},
		{"a/+/b", "a//b", true},
		{"a/b", "a/b", true},
		{"a/b", "a/b/c", false},
	}
	for _, tt := range tests {
		t.Run(tt.filter+" "+tt.topic, func(t *testing.T) {
			assert.Equal(t, tt.want, MatchTopic(tt.filter, tt.topic))
		})
	}
}
