// Package pahostore is the message store flota's paho clients use: paho's
// MemoryStore, except that Get hands out a copy of a stored PUBLISH.
//
// On a reconnect paho's resume sets the DUP flag on every stored QoS 1/2
// PUBLISH it sends again. With the plain MemoryStore that packet is the very
// one paho may still be writing to the old or the new connection, a data
// race inside paho (eclipse-paho/paho.mqtt.golang#703, open for v1.5.1).
// A copy per Get leaves the packet being written alone; the payload is shared
// and never written. The copy leaves out RemainingLength, the one field
// paho's writer sets while it sends a packet (Write computes it again).
// SUBSCRIBE and UNSUBSCRIBE packets come back as stored: paho v1.5.1 stores
// them only with ResumeSubs, which flota's clients leave off, and without it
// resume deletes any it finds instead of sending it again.
package pahostore

import (
	mqtt "github.com/eclipse/paho.mqtt.golang"
	"github.com/eclipse/paho.mqtt.golang/packets"
)

// Store is a mqtt.Store that copies PUBLISH packets on Get.
type Store struct {
	*mqtt.MemoryStore
}

// New returns an empty Store.
func New() *Store { return &Store{MemoryStore: mqtt.NewMemoryStore()} }

// Get returns the packet stored under key; a PUBLISH is a shallow copy
// without its RemainingLength.
func (s *Store) Get(key string) packets.ControlPacket {
	pk := s.MemoryStore.Get(key)
	if p, ok := pk.(*packets.PublishPacket); ok {
		return &packets.PublishPacket{
			FixedHeader: packets.FixedHeader{MessageType: p.MessageType, Dup: p.Dup, Qos: p.Qos, Retain: p.Retain},
			TopicName:   p.TopicName,
			MessageID:   p.MessageID,
			Payload:     p.Payload,
		}
	}
	return pk
}
