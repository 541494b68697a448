//go:build race

package broker

// raceEnabled: the race detector instruments every memory access, which
// makes frames larger.
const raceEnabled = true
