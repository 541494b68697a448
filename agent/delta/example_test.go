package delta_test

import (
	"bytes"
	"fmt"

	"github.com/flotaio/flota/agent/delta"
)

// A delta made on the orchestrator, decoded on a device whose power fails
// mid-payload: it resumes from the last checkpoint it kept.
func Example() {
	base := bytes.Repeat([]byte("firmware 1.0, the same code in every build; "), 4000)
	target := bytes.Replace(base, []byte("1.0"), []byte("1.1"), 100)

	var payload bytes.Buffer
	if _, err := delta.Diff(&payload, base, target, delta.DiffOptions{}); err != nil {
		panic(err)
	}

	// The device gets the first half, then loses power.
	var image bytes.Buffer
	d, _ := delta.NewDecoder(delta.BSDiff, bytes.NewReader(base), int64(len(base)), &image, delta.Checkpoint{})
	d.Write(payload.Bytes()[:payload.Len()/2])
	cp := d.Checkpoint() // saved, with the image's first cp.Target bytes
	d.Close()

	// After the reboot: truncate the image to the checkpoint and go on.
	image.Truncate(int(cp.Target))
	d, _ = delta.NewDecoder(delta.BSDiff, bytes.NewReader(base), int64(len(base)), &image, cp)
	d.ExpectTarget(int64(len(target)))
	d.Write(payload.Bytes()[cp.Payload:])
	err := d.Close()

	fmt.Println(cp.Target > 0, err, bytes.Equal(image.Bytes(), target), payload.Len() < len(target)/20)
	// Output: true <nil> true true
}
