package main

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestDelayer_RunsInOrderNoSoonerThanTheDelay(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	const d = 20 * time.Millisecond
	l := newDelayer(ctx, d)

	var mu sync.Mutex // guards ran, early
	var ran []int
	early := 0
	done := make(chan struct{})
	for i := range 50 {
		at := time.Now()
		l.after(func() {
			mu.Lock()
			defer mu.Unlock()
			if time.Since(at) < d {
				early++
			}
			ran = append(ran, i)
			if len(ran) == 50 {
				close(done)
			}
		})
	}
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("delayed actions did not run")
	}
	mu.Lock()
	defer mu.Unlock()
	assert.Zero(t, early, "no action runs before its delay")
	for i, v := range ran {
		require.Equal(t, i, v, "actions run in the order they were scheduled")
	}
	cancel()
	l.wait()
}

func TestDelayer_NoDelayRunsAtOnce(t *testing.T) {
	l := newDelayer(context.Background(), 0)
	ran := false
	l.after(func() { ran = true })
	assert.True(t, ran)
	l.wait()
}
