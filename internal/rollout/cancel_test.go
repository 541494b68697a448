package rollout_test

import (
	"context"
	"strings"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/flotaio/flota/internal/fleet"
	"github.com/flotaio/flota/internal/protocol"
)

// cancelsOf collects the cancels sent to the scripted device s.
func cancelsOf(t *testing.T, s *scripted) <-chan protocol.Cancel {
	t.Helper()
	out := make(chan protocol.Cancel, 16)
	tok := s.c.Subscribe(protocol.DownTopic(s.id, protocol.KindCancel), 1, func(_ paho.Client, m paho.Message) {
		if !strings.HasSuffix(m.Topic(), "/cancel") {
			return
		}
		if cn, err := protocol.DecodeCancel(m.Payload()); err == nil {
			select {
			case out <- cn:
			default:
			}
		}
	})
	require.True(t, tok.WaitTimeout(5*time.Second))
	return out
}

func nextCancel(t *testing.T, ch <-chan protocol.Cancel) protocol.Cancel {
	t.Helper()
	select {
	case c := <-ch:
		return c
	case <-time.After(10 * time.Second):
		t.Fatal("no cancel")
	}
	return protocol.Cancel{}
}

// A device that missed the cancel of an update (docs/PROTOCOL.md §11) and
// says hello still holding that update's transfer after the update ended is
// cancelled again, with the transfer's own update and handle.
func TestEngine_HelloHoldingATransferOfAnEndedUpdateIsCancelledAgain(t *testing.T) {
	h := newHarness(t)
	d := newScripted(t, h, "stale", "1.0.0")
	h.waitDevices(1)
	cancels := cancelsOf(t, d)
	fw, _ := h.addFirmware(64*1024, "1.1.0")
	u := h.create(fw, fleet.Policy{ChunkSize: 1024, Window: 1}, fleet.Selector{})
	o := d.offer()
	d.report(o, fleet.StateAccepted, 0, "")
	eventually(t, 5*time.Second, func() bool { return h.deviceState(u.ID, "stale").State == fleet.StateDownloading }, "downloading")

	require.NoError(t, h.engine.Cancel(context.Background(), u.ID))
	first := nextCancel(t, cancels) // "lost": the device does not answer
	assert.Equal(t, fleet.ReasonOperator, first.Reason)
	s := h.waitEnd(u.ID, 10*time.Second)
	assert.Equal(t, fleet.UpdateCancelled, s.State)
	// Unanswered, the device is cancelled after the offer timeout.
	eventually(t, 10*time.Second, func() bool { return h.deviceState(u.ID, "stale").State == fleet.StateCancelled }, "cancelled")
	for len(cancels) > 0 { // copies of the first (overlapping subscriptions)
		<-cancels
	}

	d.hello("1.0.0", &protocol.Held{Update: o.Update, Handle: o.Handle, Offset: 1024, State: fleet.StateDownloading})
	again := nextCancel(t, cancels)
	assert.Equal(t, protocol.Cancel{V: 1, Update: o.Update, Handle: o.Handle, Reason: fleet.ReasonOperator}, again)
}
