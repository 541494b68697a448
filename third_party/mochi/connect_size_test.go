package mqtt

import (
	"bytes"
	"io"
	"testing"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"
	"github.com/stretchr/testify/require"
)

// A CONNECT announcing more than MaximumConnectSize is refused after its
// fixed header, without waiting for (or making room for) its body (flota
// patch).
func TestServerReadConnectionPacketRefusesConnectOverLimit(t *testing.T) {
	s := newServer()
	defer s.Close()
	s.Options.MaximumConnectSize = 8192

	cl, r, _ := newTestClient()
	go func() {
		// CONNECT, remaining length 131,000, and no body.
		_, _ = r.Write([]byte{packets.Connect << 4, 0xb8, 0xff, 0x07})
	}()
	done := make(chan error, 1)
	go func() {
		_, err := s.readConnectionPacket(cl)
		done <- err
	}()
	select {
	case err := <-done:
		require.ErrorIs(t, err, packets.ErrPacketTooLarge)
	case <-time.After(10 * time.Second): // bounds a hang only
		_ = r.Close()
		t.Fatal("the server waited for the body of an oversized CONNECT")
	}
}

// A CONNECT of exactly MaximumConnectSize is read.
func TestServerReadConnectionPacketAcceptsConnectAtLimit(t *testing.T) {
	s := newServer()
	defer s.Close()
	raw := packets.TPacketData[packets.Connect].Get(packets.TConnectMqtt311).RawBytes
	s.Options.MaximumConnectSize = uint32(len(raw) - 2) // a one-byte remaining length

	cl, r, _ := newTestClient()
	go func() {
		_, _ = r.Write(raw)
		_ = r.Close()
	}()
	pk, err := s.readConnectionPacket(cl)
	require.NoError(t, err)
	require.Equal(t, *packets.TPacketData[packets.Connect].Get(packets.TConnectMqtt311).Packet, pk)
}

// trickle hands out data a few bytes per Read and records the largest
// buffer it was given.
type trickle struct {
	data    []byte
	step    int
	largest int
}

func (r *trickle) Read(p []byte) (int, error) {
	r.largest = max(r.largest, len(p))
	if len(r.data) == 0 {
		return 0, io.EOF
	}
	n := copy(p, r.data[:min(r.step, len(r.data))])
	r.data = r.data[n:]
	return n, nil
}

func TestReadGrowing_ReadsExactlyNBytes(t *testing.T) {
	for _, n := range []int{0, 1, 511, 512, 513, 5000, 70000} {
		for _, step := range []int{1, 7, 4096, 1 << 20} {
			data := bytes.Repeat([]byte("0123456789abcdef"), n/16+2)
			src := &trickle{data: data, step: step}
			got, err := readGrowing(src, n)
			require.NoError(t, err, "n %d step %d", n, step)
			require.Equal(t, data[:n], got, "n %d step %d", n, step)
			require.LessOrEqual(t, src.largest, max(n, readGrowingStart), "n %d step %d: read past n", n, step)
		}
	}
}

// A peer that announces 131,000 bytes and sends 100 makes the reader hold
// one buffer of readGrowingStart bytes, not 131,000.
func TestReadGrowing_HoldsWhatArrivedNotWhatWasAnnounced(t *testing.T) {
	src := &trickle{data: make([]byte, 100), step: 10}
	_, err := readGrowing(src, 131000)
	require.ErrorIs(t, err, io.ErrUnexpectedEOF)
	require.Equal(t, readGrowingStart, src.largest)

	src = &trickle{data: make([]byte, 3000), step: 1000}
	_, err = readGrowing(src, 131000)
	require.ErrorIs(t, err, io.ErrUnexpectedEOF)
	require.LessOrEqual(t, src.largest, 2*3000, "the buffer at most doubles what arrived")
}
