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

// BenchmarkAgent_HandleChunkDelta is the data path of a simulated device
// applying a delta: decode a 4 KiB frame of a bsdiff payload (1 MiB of new
// bytes, carried as they are), reconstruct, hash, ack.
func BenchmarkAgent_HandleChunkDelta(b *testing.B) {
	const chunk = 4096
	base := newImage(1 << 20)
	p := newDeltaPairInserting(b, 1<<20, 1<<20)
	imgs := NewImages()
	b.SetBytes(chunk)
	b.ReportAllocs()
	b.ResetTimer()
	for done := 0; done < b.N; {
		b.StopTimer()
		a, _ := newOfflineAgent(Config{ID: "dev-1", Model: "m", Version: "1", Seed: 1, Image: imgs.Add(base.data), Images: imgs})
		of := p.offer("u1", 1)
		of.ChunkSize = chunk
		a.handleDown(protocol.KindOffer, protocol.Encode(of))
		frames := make([][]byte, 0, len(p.payload)/chunk+1)
		for off := 0; off < len(p.payload); off += chunk {
			frames = append(frames, protocol.AppendFrame(nil, protocol.Frame{Handle: 1, Offset: uint32(off), Payload: p.payload[off:min(off+chunk, len(p.payload))]}))
		}
		b.StartTimer()
		for _, f := range frames[:len(frames)-1] { // the last one would install
			a.handleDown(protocol.KindChunk, f)
			if done++; done == b.N {
				break
			}
		}
		b.StopTimer()
		stopDecoder(a.held)
		b.StartTimer()
	}
}
