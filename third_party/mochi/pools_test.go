package mqtt

import (
	"testing"

	"github.com/stretchr/testify/require"
)

func TestPayloadClass_SizesCoverTheRangeWithLittleWaste(t *testing.T) {
	seen := map[int]int{}
	for n := minPooledPayload; n <= maxPooledPayload; n++ {
		i, size, ok := payloadClass(n)
		require.True(t, ok, n)
		require.GreaterOrEqual(t, size, n)
		require.LessOrEqual(t, size-n, n/classesPerDoubling, "waste for %d", n)
		require.GreaterOrEqual(t, i, 0)
		require.Less(t, i, len(payloadPools))
		if prev, ok := seen[i]; ok {
			require.Equal(t, prev, size, "pool %d holds one size", i)
		}
		seen[i] = size
		j, again, ok := payloadClass(size)
		require.True(t, ok)
		require.Equal(t, i, j, "a buffer goes back to the pool it came from (%d)", n)
		require.Equal(t, size, again)
	}
	_, _, ok := payloadClass(minPooledPayload - 1)
	require.False(t, ok)
	_, _, ok = payloadClass(maxPooledPayload + 1)
	require.False(t, ok)
}

func TestCopyPayload_ReusesReturnedBuffersAndCopiesTheBytes(t *testing.T) {
	src := make([]byte, 16404)
	for i := range src {
		src[i] = byte(i)
	}
	a, pooled := copyPayload(src, true)
	require.True(t, pooled)
	require.Equal(t, src, a)
	require.Equal(t, 18432, cap(a))
	src[0] = 0xFF
	require.NotEqual(t, src[0], a[0], "a copy, not the caller's buffer")

	b, pooled := copyPayload(src, false)
	require.False(t, pooled)
	require.Equal(t, src, b)

	small, pooled := copyPayload([]byte("event"), true)
	require.False(t, pooled, "small payloads are not pooled")
	require.Equal(t, []byte("event"), small)

	none, pooled := copyPayload(nil, true)
	require.False(t, pooled)
	require.Nil(t, none)

	putPayload(a)
	putPayload(small) // not a pooled size: ignored
}
