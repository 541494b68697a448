// SPDX-License-Identifier: MIT

package mqtt

import (
	"bytes"
	"io"
	"testing"

	"github.com/mochi-mqtt/server/v2/packets"
	"github.com/stretchr/testify/require"
)

// refusingHook refuses, by its reason code, every filter named in refuse
// (flota patch: hookRefused).
type refusingHook struct {
	HookBase
	refuse map[string]byte
	got    []byte // reason codes OnSubscribed saw
}

func (h *refusingHook) Provides(b byte) bool {
	return bytes.Contains([]byte{OnSubscribe, OnSubscribed, OnUnsubscribe}, []byte{b})
}

func (h *refusingHook) mark(pk packets.Packet) packets.Packet {
	pk.ReasonCodes = make([]byte, len(pk.Filters))
	for i, f := range pk.Filters {
		pk.ReasonCodes[i] = h.refuse[f.Filter]
	}
	return pk
}

func (h *refusingHook) OnSubscribe(_ *Client, pk packets.Packet) packets.Packet   { return h.mark(pk) }
func (h *refusingHook) OnUnsubscribe(_ *Client, pk packets.Packet) packets.Packet { return h.mark(pk) }
func (h *refusingHook) OnSubscribed(_ *Client, _ packets.Packet, codes []byte) {
	h.got = append([]byte(nil), codes...)
}

// TestServerProcessSubscribe_HookRefusesFilters checks that a filter an
// OnSubscribe hook refuses gets the hook's reason code and no subscription,
// while the other filters of the packet are subscribed.
func TestServerProcessSubscribe_HookRefusesFilters(t *testing.T) {
	s := newServer()
	h := &refusingHook{refuse: map[string]byte{"a/deep": packets.ErrTopicFilterInvalid.Code, "a/many": packets.ErrQuotaExceeded.Code}}
	require.NoError(t, s.AddHook(h, nil))
	cl, r, w := newTestClient()
	cl.Properties.ProtocolVersion = 5
	pk := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Subscribe}, PacketID: 7, Filters: packets.Subscriptions{
		{Filter: "a/deep"}, {Filter: "a/ok", Qos: 1}, {Filter: "a/many"},
	}}
	go func() {
		require.NoError(t, s.processSubscribe(cl, pk))
		_ = w.Close()
	}()
	_, err := io.ReadAll(r)
	require.NoError(t, err)

	require.Equal(t, []byte{packets.ErrTopicFilterInvalid.Code, 1, packets.ErrQuotaExceeded.Code}, h.got)
	_, ok := cl.State.Subscriptions.Get("a/ok")
	require.True(t, ok)
	require.Equal(t, 1, cl.State.Subscriptions.Len())
	require.Len(t, s.Topics.Subscribers("a/deep").Subscriptions, 0)
	require.Len(t, s.Topics.Subscribers("a/ok").Subscriptions, 1)

	// MQTT 3.1.1 has one failure code.
	cl3, r3, w3 := newTestClient()
	cl3.Properties.ProtocolVersion = 4
	go func() {
		require.NoError(t, s.processSubscribe(cl3, pk))
		_ = w3.Close()
	}()
	_, err = io.ReadAll(r3)
	require.NoError(t, err)
	require.Equal(t, []byte{0x80, 1, 0x80}, h.got)
}

// TestServerProcessUnsubscribe_HookRefusesFilters checks that a filter an
// OnUnsubscribe hook refuses is answered with its code and left subscribed.
func TestServerProcessUnsubscribe_HookRefusesFilters(t *testing.T) {
	s := newServer()
	h := &refusingHook{refuse: map[string]byte{"a/kept": packets.ErrTopicFilterInvalid.Code}}
	require.NoError(t, s.AddHook(h, nil))
	cl, r, w := newTestClient()
	cl.Properties.ProtocolVersion = 5
	for _, f := range []string{"a/kept", "a/gone"} {
		s.Topics.Subscribe(cl.ID, packets.Subscription{Filter: f})
		cl.State.Subscriptions.Add(f, packets.Subscription{Filter: f})
	}
	pk := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Unsubscribe}, PacketID: 8, Filters: packets.Subscriptions{
		{Filter: "a/kept"}, {Filter: "a/gone"},
	}}
	go func() {
		require.NoError(t, s.processUnsubscribe(cl, pk))
		_ = w.Close()
	}()
	buf, err := io.ReadAll(r)
	require.NoError(t, err)
	require.True(t, bytes.HasSuffix(buf, []byte{packets.ErrTopicFilterInvalid.Code, 0}), "UNSUBACK % x", buf)
	_, ok := cl.State.Subscriptions.Get("a/kept")
	require.True(t, ok)
	require.Equal(t, 1, cl.State.Subscriptions.Len())
	require.Len(t, s.Topics.Subscribers("a/kept").Subscriptions, 1)
	require.Len(t, s.Topics.Subscribers("a/gone").Subscriptions, 0)
}
