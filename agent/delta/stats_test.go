package delta

import "runtime"

// runtimeStats is what the memory tests read from the runtime.
type runtimeStats struct {
	totalAlloc uint64 // bytes allocated on the heap, ever
}

func (s *runtimeStats) read() {
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	s.totalAlloc = m.TotalAlloc
}
