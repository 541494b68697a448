package protocol

import (
	"bytes"
	"encoding/binary"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestCRC32C_KnownValues(t *testing.T) {
	tests := []struct {
		in   string
		want uint32
	}{
		{"", 0},
		{"123456789", 0xE3069283}, // the CRC-32C check value
		{"flota-chunk-0001", 0xFD1F22E4},
	}
	for _, tt := range tests {
		assert.Equal(t, tt.want, CRC32C([]byte(tt.in)), "CRC32C(%q)", tt.in)
	}
}

func frameCases() []Frame {
	return []Frame{
		{},
		{Payload: []byte{}},
		{Handle: 1, Offset: 0, Payload: []byte{0x00}},
		{Flags: FlagLast, Handle: 0x01020304, Offset: 16384, Payload: []byte("flota-chunk-0001")},
		{Flags: FlagLast, Handle: ^uint32(0), Offset: ^uint32(0), Payload: []byte{0xff, 0xfe}},
		{Flags: 0xfe, Handle: 7, Offset: 1 << 20, Payload: bytes.Repeat([]byte{0xa5}, 1024)},
		{Handle: 9, Offset: 3 << 16, Payload: bytes.Repeat([]byte{0x5a}, MaxChunkPayload)},
	}
}

func TestFrame_RoundTrip(t *testing.T) {
	for _, f := range frameCases() {
		b := AppendFrame(nil, f)
		require.Len(t, b, HeaderSize+len(f.Payload))
		got, err := DecodeFrame(b)
		require.NoError(t, err)
		assert.Equal(t, f.Flags, got.Flags)
		assert.Equal(t, f.Handle, got.Handle)
		assert.Equal(t, f.Offset, got.Offset)
		assert.Equal(t, len(f.Payload), len(got.Payload))
		assert.True(t, bytes.Equal(f.Payload, got.Payload))
		assert.Equal(t, f.Flags&FlagLast != 0, got.Last())
	}
}

func TestFrame_AppendKeepsPrefix(t *testing.T) {
	prefix := []byte("prefix")
	b := AppendFrame(bytes.Clone(prefix), Frame{Handle: 1, Payload: []byte("x")})
	assert.Equal(t, prefix, b[:len(prefix)])
	_, err := DecodeFrame(b[len(prefix):])
	assert.NoError(t, err)
}

func TestFrame_HeaderLayout(t *testing.T) {
	f := Frame{Flags: FlagLast, Handle: 0x0A0B0C0D, Offset: 0x11223344, Payload: []byte("abc")}
	b := AppendFrame(nil, f)
	assert.Equal(t, byte(Version), b[0], "version")
	assert.Equal(t, byte(FlagLast), b[1], "flags")
	assert.Equal(t, []byte{0, 0}, b[2:4], "reserved")
	assert.Equal(t, []byte{0x0A, 0x0B, 0x0C, 0x0D}, b[4:8], "handle, big-endian")
	assert.Equal(t, []byte{0x11, 0x22, 0x33, 0x44}, b[8:12], "offset, big-endian")
	assert.Equal(t, uint32(3), binary.BigEndian.Uint32(b[12:16]), "length")
	assert.Equal(t, CRC32C([]byte("abc")), binary.BigEndian.Uint32(b[16:20]), "crc")
	assert.Equal(t, []byte("abc"), b[20:])
}

func TestPutFrameHeader_EqualsAppendFrame(t *testing.T) {
	for _, f := range frameCases() {
		want := AppendFrame(nil, f)
		// A recycled buffer: the header area holds garbage before the call.
		b := bytes.Repeat([]byte{0xEE}, HeaderSize+len(f.Payload))
		copy(b[HeaderSize:], f.Payload)
		PutFrameHeader(b, f.Flags, f.Handle, f.Offset)
		assert.Equal(t, want, b, "frame %+v", f.Handle)
	}
}

func TestDecodeFrame_PayloadAliasesInput(t *testing.T) {
	b := AppendFrame(nil, Frame{Handle: 1, Payload: []byte("abcd")})
	f, err := DecodeFrame(b)
	require.NoError(t, err)
	b[HeaderSize] = 'z'
	assert.Equal(t, byte('z'), f.Payload[0])
}

func TestDecodeFrame_Validation(t *testing.T) {
	good := AppendFrame(nil, Frame{Flags: FlagLast, Handle: 0x01020304, Offset: 16384, Payload: []byte("flota-chunk-0001")})
	with := func(mut func(b []byte) []byte) []byte { return mut(bytes.Clone(good)) }
	setLen := func(n uint32) func([]byte) []byte {
		return func(b []byte) []byte { binary.BigEndian.PutUint32(b[12:], n); return b }
	}
	big := AppendFrame(nil, Frame{Payload: make([]byte, MaxChunkPayload+1)})

	tests := []struct {
		name string
		in   []byte
		want error // nil: accepted
	}{
		{"valid", good, nil},
		{"header only, empty payload", AppendFrame(nil, Frame{Handle: 3}), nil},
		{"reserved bytes are ignored", with(func(b []byte) []byte { b[2], b[3] = 0xAB, 0xCD; return b }), nil},
		{"unknown flag bits are ignored", with(func(b []byte) []byte { b[1] = 0xFF; return b }), nil},
		{"nil", nil, ErrShortFrame},
		{"empty", []byte{}, ErrShortFrame},
		{"one byte short of a header", good[:HeaderSize-1], ErrShortFrame},
		{"version 0", with(func(b []byte) []byte { b[0] = 0; return b }), ErrFrameVer},
		{"version 2", with(func(b []byte) []byte { b[0] = 2; return b }), ErrFrameVer},
		{"truncated payload", good[:len(good)-1], ErrFrameLength},
		{"trailing byte", append(bytes.Clone(good), 0), ErrFrameLength},
		{"length says more", with(setLen(17)), ErrFrameLength},
		{"length says less", with(setLen(15)), ErrFrameLength},
		{"length huge", with(setLen(0xFFFFFFFF)), ErrFrameLength},
		{"payload over the limit", big, ErrFrameLength},
		{"payload bit flipped", with(func(b []byte) []byte { b[len(b)-1] ^= 0x80; return b }), ErrFrameCRC},
		{"crc bit flipped", with(func(b []byte) []byte { b[16] ^= 0x01; return b }), ErrFrameCRC},
		{"crc zero", with(func(b []byte) []byte { copy(b[16:20], []byte{0, 0, 0, 0}); return b }), ErrFrameCRC},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f, err := DecodeFrame(tt.in)
			if tt.want == nil {
				require.NoError(t, err)
				assert.Equal(t, tt.in[HeaderSize:], f.Payload)
				return
			}
			require.ErrorIs(t, err, tt.want)
			assert.Zero(t, f)
		})
	}
}

func TestFrame_Last(t *testing.T) {
	assert.False(t, Frame{}.Last())
	assert.True(t, Frame{Flags: FlagLast}.Last())
	assert.True(t, Frame{Flags: 0xFF}.Last())
	assert.False(t, Frame{Flags: 0xFE}.Last())
}

func BenchmarkAppendFrame(b *testing.B) {
	f := Frame{Handle: 1, Offset: 0, Payload: make([]byte, 16*1024)}
	buf := make([]byte, 0, HeaderSize+len(f.Payload))
	b.SetBytes(int64(len(f.Payload)))
	for b.Loop() {
		buf = AppendFrame(buf[:0], f)
	}
}

func BenchmarkDecodeFrame(b *testing.B) {
	frame := AppendFrame(nil, Frame{Handle: 1, Offset: 0, Payload: make([]byte, 16*1024)})
	b.SetBytes(int64(len(frame) - HeaderSize))
	for b.Loop() {
		if _, err := DecodeFrame(frame); err != nil {
			b.Fatal(err)
		}
	}
}
