package rollout

import (
	"log/slog"
	"testing"

	"github.com/stretchr/testify/assert"

	"github.com/flotaio/flota/internal/protocol"
)

// newInboxEngine returns an engine with only its inbox set up, as Open
// leaves it, for the handler's tests.
func newInboxEngine(size int) *Engine {
	e := New(nil, nil, slog.New(slog.DiscardHandler))
	e.QueueSize = size
	e.inbox = make(chan inbound, size)
	e.shared = size - size/4
	return e
}

func TestEngine_QuotaCountsEachDeviceApartAndKeepsRoomForPresence(t *testing.T) {
	e := newInboxEngine(400)
	ack, report := protocol.UpTopic("a", protocol.KindAck), protocol.UpTopic("a", protocol.KindReport)
	for i := 0; i < 100; i++ {
		e.handle(ack, nil)
		e.handle(report, nil)
	}
	assert.Len(t, e.inbox, DefaultAckQuota+DefaultMessageQuota)
	assert.EqualValues(t, 200-DefaultAckQuota-DefaultMessageQuota, e.Stats().QuotaDrops)

	// Taking one message frees one place of its kind for that device.
	m := <-e.inbox
	e.taken(m)
	e.handle(protocol.UpTopic("a", m.kind), nil)
	e.handle(protocol.UpTopic("a", m.kind), nil)
	assert.EqualValues(t, 200-DefaultAckQuota-DefaultMessageQuota+1, e.Stats().QuotaDrops)

	// Other devices fill the shared part; presence still has its quarter.
	for i := 0; len(e.inbox) < e.shared; i++ {
		e.handle(protocol.UpTopic(string(rune('b'+i%20))+"x", protocol.KindHello), nil)
	}
	e.handle(protocol.UpTopic("late", protocol.KindHello), nil)
	assert.EqualValues(t, 1, e.Stats().QueueDrops)
	e.opened.Store(true)
	for i := 0; i < 100; i++ {
		e.DevicePresence("late", i%2 == 0)
	}
	assert.Len(t, e.inbox, 400)
	assert.EqualValues(t, 1, e.Stats().QueueDrops)
}

// BenchmarkEngine_HandleAck measures the handler's cost per device message,
// the queue hand-off and the loop's side of the quota included.
func BenchmarkEngine_HandleAck(b *testing.B) {
	e := newInboxEngine(DefaultQueueSize)
	topic := protocol.UpTopic("dev-000123", protocol.KindAck)
	payload := []byte(`{"v":1,"handle":7,"offset":16384}`)
	b.ReportAllocs()
	for b.Loop() {
		e.handle(topic, payload)
		e.taken(<-e.inbox)
	}
}
