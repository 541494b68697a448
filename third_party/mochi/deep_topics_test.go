// SPDX-License-Identifier: MIT

package mqtt

import (
	"strconv"
	"strings"
	"testing"

	"github.com/mochi-mqtt/server/v2/packets"
	"github.com/stretchr/testify/require"
)

// deepTopic returns a topic of n levels, "l0/l1/...".
func deepTopic(n int) string {
	var sb strings.Builder
	for i := 0; i < n; i++ {
		if i > 0 {
			sb.WriteByte('/')
		}
		sb.WriteString("l")
		sb.WriteString(strconv.Itoa(i))
	}
	return sb.String()
}

// BenchmarkTopicsIndex_Depth subscribes, routes a publish to, retains on,
// scans retained messages of, and unsubscribes from topics of growing
// depth: with the index walking the topic once (flota patch), ns/op grows
// in proportion to the depth, not its square.
func BenchmarkTopicsIndex_Depth(b *testing.B) {
	for _, depth := range []int{1000, 2000, 4000, 8000} {
		topic := deepTopic(depth)
		filter := topic[:strings.LastIndexByte(topic, '/')] + "/+"
		b.Run(strconv.Itoa(depth), func(b *testing.B) {
			for i := 0; i < b.N; i++ {
				x := NewTopicsIndex()
				x.Subscribe("c", packets.Subscription{Filter: filter})
				x.RetainMessage(packets.Packet{TopicName: topic, Payload: []byte("x")})
				if subs := x.Subscribers(topic); len(subs.Subscriptions) != 1 {
					b.Fatal("no subscriber")
				}
				if pks := x.Messages(filter); len(pks) != 1 {
					b.Fatal("no retained message")
				}
				x.Unsubscribe(filter, "c")
			}
		})
	}
}

// TestTopicsIndex_DeepTopics checks that subscriptions, retained messages,
// wildcards and unsubscription work at a depth far beyond any real topic.
func TestTopicsIndex_DeepTopics(t *testing.T) {
	topic := deepTopic(3000)
	parent := topic[:strings.LastIndexByte(topic, '/')]
	x := NewTopicsIndex()
	require.True(t, x.Subscribe("exact", packets.Subscription{Filter: topic}))
	require.True(t, x.Subscribe("plus", packets.Subscription{Filter: parent + "/+"}))
	require.True(t, x.Subscribe("hash", packets.Subscription{Filter: parent + "/#"}))
	require.True(t, x.Subscribe("shared", packets.Subscription{Filter: "$SHARE/g/" + topic}))
	require.True(t, x.Subscribe("other", packets.Subscription{Filter: parent + "/x"}))
	require.Equal(t, int64(1), x.RetainMessage(packets.Packet{FixedHeader: packets.FixedHeader{Retain: true}, TopicName: topic, Payload: []byte("x")}))

	subs := x.Subscribers(topic)
	require.Len(t, subs.Subscriptions, 3)
	require.Contains(t, subs.Subscriptions, "exact")
	require.Contains(t, subs.Subscriptions, "plus")
	require.Contains(t, subs.Subscriptions, "hash")
	require.Len(t, subs.Shared, 1)
	require.Len(t, x.Subscribers(parent).Subscriptions, 1, "# matches its parent level")

	require.Len(t, x.Messages(topic), 1)
	require.Len(t, x.Messages(parent+"/+"), 1)
	require.Len(t, x.Messages(parent+"/#"), 1)
	require.Len(t, x.Messages("l0/+/"+topic[len("l0/l1/"):]), 1)
	require.Empty(t, x.Messages(parent+"/x"))

	for _, c := range []struct{ filter, client string }{
		{topic, "exact"}, {parent + "/+", "plus"}, {parent + "/#", "hash"}, {"$SHARE/g/" + topic, "shared"}, {parent + "/x", "other"},
	} {
		require.True(t, x.Unsubscribe(c.filter, c.client), c.filter)
	}
	require.Equal(t, int64(-1), x.RetainMessage(packets.Packet{TopicName: topic}))
	require.Zero(t, x.root.particles.len(), "the index is empty again")
}
