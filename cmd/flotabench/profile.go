package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"time"
)

// profileSeconds is the length of the CPU profile --profile takes.
const profileSeconds = 10

// profiler takes the orchestrator's profiles during the update (--profile):
// a heap profile as it starts (heap-start.pprof), a CPU profile of the first
// profileSeconds, then a heap profile (heap.pprof), from the orchestrator's
// --debug-addr listener. Both heap profiles are taken after a forced
// collection (gc=1), so that they are up to date: what the update allocated
// in between is
// go tool pprof -sample_index=alloc_space -base heap-start.pprof heap.pprof.
// The first is taken once the update was created, so its first moments
// count in neither.
type profiler struct {
	base string // http://host:port/debug/pprof/
	dir  string
	wg   sync.WaitGroup
	err  error // the first failure, read after wait
}

// start begins the profiles in a tracked goroutine.
func (p *profiler) start(ctx context.Context) {
	p.wg.Go(func() {
		hc := &http.Client{Timeout: (profileSeconds + 30) * time.Second}
		if err := p.fetch(ctx, hc, "heap?gc=1", "heap-start.pprof"); err != nil {
			p.err = err
			return
		}
		if err := p.fetch(ctx, hc, fmt.Sprintf("profile?seconds=%d", profileSeconds), "cpu.pprof"); err != nil {
			p.err = err
			return
		}
		p.err = p.fetch(ctx, hc, "heap?gc=1", "heap.pprof")
	})
}

// wait waits for the profiles and returns the first error.
func (p *profiler) wait() error {
	p.wg.Wait()
	return p.err
}

func (p *profiler) fetch(ctx context.Context, hc *http.Client, path, file string) error {
	req, err := http.NewRequestWithContext(ctx, "GET", p.base+path, nil)
	if err != nil {
		return err
	}
	resp, err := hc.Do(req)
	if err != nil {
		return fmt.Errorf("profile %s: %w", path, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("profile %s: %s", path, resp.Status)
	}
	f, err := os.Create(filepath.Join(p.dir, file))
	if err != nil {
		return err
	}
	if _, err := io.Copy(f, resp.Body); err != nil {
		f.Close()
		return fmt.Errorf("profile %s: %w", path, err)
	}
	return f.Close()
}
