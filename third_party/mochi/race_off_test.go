//go:build !race

package mqtt

// raceEnabled says whether the tests run under the race detector.
const raceEnabled = false
