package agent

import (
	"testing"

	"github.com/flotaio/flota/internal/protocol"
)

// BenchmarkAgent_HandleChunk is the data path of a simulated device
// (devicesim): decode a 4 KiB frame, hash it, ack every other one. It must
// not allocate more than the frame decoding and the ack encoding do.
func BenchmarkAgent_HandleChunk(b *testing.B) {
	const chunk = 4096
	a, _ := newOfflineAgent(Config{ID: "dev-1", Model: "m", Version: "1", Seed: 1})
	a.out = func(string, byte, []byte) waiter { return doneToken{} }
	size := int64(chunk) * int64(b.N+1)
	a.handleDown(protocol.KindOffer, protocol.Encode(protocol.Offer{V: 1, Update: "u1", Handle: 1, ChunkSize: chunk, Window: 4,
		Firmware: protocol.FirmwareInfo{Version: "2", Size: size, SHA256: "00"}}))
	payload := make([]byte, chunk)
	frames := make([][]byte, 64)
	b.SetBytes(chunk)
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		f := &frames[i%len(frames)]
		*f = protocol.AppendFrame((*f)[:0], protocol.Frame{Handle: 1, Offset: uint32(int64(i) * chunk), Payload: payload})
		a.handleDown(protocol.KindChunk, *f)
	}
}
