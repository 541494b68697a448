package pahostore

import (
	"bytes"
	"io"
	"testing"

	"github.com/eclipse/paho.mqtt.golang/packets"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestStore_GetCopiesPublishSoResumeCannotRaceTheWriter(t *testing.T) {
	s := New()
	s.Open()
	defer s.Close()

	pub := packets.NewControlPacket(packets.Publish).(*packets.PublishPacket)
	pub.Qos, pub.MessageID, pub.TopicName, pub.Payload = 1, 7, "flota/devices/d/up/report", []byte(`{"v":1}`)
	s.Put("o.7", pub)

	got, ok := s.Get("o.7").(*packets.PublishPacket)
	require.True(t, ok)
	assert.NotSame(t, pub, got)
	got.Dup = true // what paho's resume does before sending it again
	assert.False(t, pub.Dup, "the packet paho may still be writing is untouched")
	assert.Equal(t, pub.Payload, got.Payload)
	assert.Equal(t, pub.MessageID, got.MessageID)

	sub := packets.NewControlPacket(packets.Subscribe).(*packets.SubscribePacket)
	sub.MessageID = 8
	s.Put("o.8", sub)
	assert.Same(t, sub, s.Get("o.8"), "other packets are returned as stored")
	assert.Nil(t, s.Get("o.9"))
}

func TestStore_GetDoesNotReadTheFieldPahosWriterSets(t *testing.T) {
	s := New()
	s.Open()
	defer s.Close()
	pub := packets.NewControlPacket(packets.Publish).(*packets.PublishPacket)
	pub.Qos, pub.Retain, pub.MessageID, pub.TopicName, pub.Payload = 1, true, 7, "flota/devices/d/up/status", []byte(`{"v":1}`)
	s.Put("o.7", pub)

	// paho's writer still sends the stored packet on the lost connection
	// (Write sets its RemainingLength) while resume gets it for the new one:
	// under -race, a copy that reads that field fails this test.
	written := make(chan error, 1)
	go func() { written <- pub.Write(io.Discard) }()
	got, ok := s.Get("o.7").(*packets.PublishPacket)
	require.True(t, ok)
	require.NoError(t, <-written)

	var want, have bytes.Buffer
	require.NoError(t, pub.Write(&want))
	require.NoError(t, got.Write(&have))
	assert.Equal(t, want.Bytes(), have.Bytes(), "the copy sends the same packet")
}
