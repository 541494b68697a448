package broker

import (
	"strings"
	"testing"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/stretchr/testify/assert"

	"github.com/flotaio/flota/internal/fleet"
)

func TestACL_CanWrite(t *testing.T) {
	for _, tc := range []struct {
		topic string
		want  bool
	}{
		{"flota/devices/A/up/ack", true},
		{"flota/devices/A/up/report", true},
		{"flota/devices/A/up/hello", true},
		{"flota/devices/A/up/status", true},
		{"flota/devices/A/up/x/y", false},
		{"flota/devices/A/up/anything-else", false},
		{"flota/devices/A/up/ack/x", false},
		{"flota/devices/A/up/acks", false},
		{"flota/devices/A/up/hell", false},
		{"flota/devices/A/up/", false},
		{"flota/devices/A/up", false},
		{"flota/devices/A/upx/ack", false},
		{"flota/devices/A/down/ack", false},
		{"flota/devices/AB/up/ack", false},
		{"flota/devices/B/up/ack", false},
		{"flota/devices//up/ack", false},
		{"flota/devices/A/up/+", false},
		{"flota/devices/A/up/#", false},
		{"flota/events/x", false},
		{"flota/status/devices/A", false},
		{"$SYS/x", false},
		{"", false},
	} {
		assert.Equal(t, tc.want, canWrite("A", tc.topic, defaultUpKinds), "write %q", tc.topic)
	}
}

func TestACL_CanRead(t *testing.T) {
	for _, tc := range []struct {
		topic string
		want  bool
	}{
		{"flota/devices/A/down/chunk", true},
		{"flota/devices/A/down/#", true},
		{"flota/devices/A/down/+", true},
		{"flota/devices/A/down", true},
		{"flota/events/updates/u1", true},
		{"flota/events/#", true},
		{"flota/events/updates/+", true},
		{"flota/events", true},
		{"flota/status/#", true},
		{"flota/status/devices/B", true},
		{"flota/devices/A/downx/chunk", false},
		{"flota/devices/A/up/ack", false},
		{"flota/devices/AB/down/chunk", false},
		{"flota/devices/B/down/chunk", false},
		{"flota/devices/+/down/#", false},
		{"flota/devices/#", false},
		{"flota/eventsx", false},
		{"flota/+/updates/u1", false},
		{"flota/#", false},
		{"flota", false},
		{"#", false},
		{"+/events/#", false},
		{"$SYS/#", false},
		{"$share/g/flota/events/#", false},
		{"", false},
	} {
		assert.Equal(t, tc.want, canRead("A", tc.topic), "read %q", tc.topic)
	}
}

// matches reports whether an MQTT topic filter matches a topic name.
func matches(filter, topic string) bool {
	if strings.HasPrefix(topic, "$") && (strings.HasPrefix(filter, "#") || strings.HasPrefix(filter, "+")) {
		return false
	}
	fs, ts := strings.Split(filter, "/"), strings.Split(topic, "/")
	for i, f := range fs {
		if f == "#" {
			return true
		}
		if i >= len(ts) || (f != "+" && f != ts[i]) {
			return false
		}
	}
	return len(fs) == len(ts)
}

// FuzzACL_FilterAllowsOnlyReadableTopics checks the property the ACL relies
// on: a filter passes only if every topic it matches passes.
func FuzzACL_FilterAllowsOnlyReadableTopics(f *testing.F) {
	for _, s := range [][2]string{
		{"flota/devices/A/down/#", "flota/devices/A/down"},
		{"flota/events/#", "flota/events"},
		{"flota/events/+", "flota/events/x"},
		{"flota/devices/+/down/#", "flota/devices/B/down/chunk"},
		{"flota/#", "flota/devices/B/down"},
		{"#", "flota/x"},
		{"flota/status/+/+", "flota/status/a/b"},
	} {
		f.Add("A", s[0], s[1])
	}
	f.Fuzz(func(t *testing.T, id, filter, topic string) {
		if !mqtt.IsValidFilter(filter, false) || !mqtt.IsValidFilter(topic, true) || !matches(filter, topic) {
			return
		}
		if !fleet.ValidDeviceID(id) {
			return // refused at connect
		}
		if canRead(id, filter) && !canRead(id, topic) {
			t.Fatalf("filter %q allowed for %q but matches unreadable topic %q", filter, id, topic)
		}
	})
}

func TestHook_ACLCheckDoesNotAllocate(t *testing.T) {
	b := New(Options{})
	h := &hook{b: b}
	cl := b.srv.NewClient(nil, "tcp", "dev-1", false)
	b.clients.set(cl, &clientState{role: fleet.RoleDevice})
	down := "flota/devices/dev-1/down/chunk"
	up := "flota/devices/dev-1/up/ack"
	allocs := testing.AllocsPerRun(1000, func() {
		if !h.OnACLCheck(cl, down, false) || !h.OnACLCheck(cl, up, true) {
			t.Fatal("denied")
		}
	})
	assert.Zero(t, allocs)
}

func TestHook_ACLMonitorReadsEventsAndStatusOnly(t *testing.T) {
	b := New(Options{})
	h := &hook{b: b}
	cl := b.srv.NewClient(nil, "tcp", "ops", false)
	b.clients.set(cl, &clientState{role: fleet.RoleMonitor})
	for _, topic := range []string{"flota/events/#", "flota/status/updates/u1", "flota/events"} {
		assert.True(t, h.OnACLCheck(cl, topic, false), topic)
		assert.False(t, h.OnACLCheck(cl, topic, true), "write %s", topic)
	}
	for _, topic := range []string{"flota/devices/ops/down/#", "flota/devices/ops/up/hello", "flota/#", "#", "$SYS/#"} {
		assert.False(t, h.OnACLCheck(cl, topic, false), topic)
		assert.False(t, h.OnACLCheck(cl, topic, true), "write %s", topic)
	}
	// A connection whose role was never resolved (not authenticated) gets nothing.
	anon := b.srv.NewClient(nil, "tcp", "dev-2", false)
	assert.False(t, h.OnACLCheck(anon, "flota/events/x", false))
}

func BenchmarkHook_ACLCheck(b *testing.B) {
	br := New(Options{})
	h := &hook{b: br}
	cl := br.srv.NewClient(nil, "tcp", "dev-1", false)
	br.clients.set(cl, &clientState{role: fleet.RoleDevice})
	topic := "flota/devices/dev-1/down/chunk"
	for range b.N {
		if !h.OnACLCheck(cl, topic, false) {
			b.Fatal("denied")
		}
	}
}
