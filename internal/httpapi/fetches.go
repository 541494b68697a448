package httpapi

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"regexp"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/flotaio/flota/internal/fleet"
	"github.com/flotaio/flota/internal/protocol"
	"github.com/flotaio/flota/internal/urlfetch"
)

// Defaults of the firmware fetches (POST /api/v1/firmware/fetches).
const (
	// DefaultMaxFetches bounds the fetches running at once; more are
	// refused with 503 too_many_fetches.
	DefaultMaxFetches = 2
	// DefaultMaxFetchJobs bounds the fetch jobs kept for GET; the oldest
	// finished one is forgotten to make room.
	DefaultMaxFetchJobs = 100
)

// Fetch job states.
const (
	FetchRunning   = "running"
	FetchDone      = "done"
	FetchFailed    = "failed"
	FetchCancelled = "cancelled"
)

// FetchRequest is the body of POST /api/v1/firmware/fetches.
type FetchRequest struct {
	URL            string `json:"url"`
	Version        string `json:"version"`
	Name           string `json:"name,omitempty"`
	Model          string `json:"model,omitempty"`
	SHA256         string `json:"sha256,omitempty"`    // hex digest the image must have
	Signature      string `json:"signature,omitempty"` // as ?signature= of an upload
	AllowDowngrade bool   `json:"allow_downgrade,omitempty"`
}

// FetchJob is a firmware fetch as the API shows it. URL is shown without
// its user information or query, which may hold credentials.
type FetchJob struct {
	ID         string          `json:"id"`
	URL        string          `json:"url"`
	State      string          `json:"state"`
	Bytes      int64           `json:"bytes"`
	Total      int64           `json:"total"`      // -1 while unknown
	Rate       float64         `json:"rate"`       // bytes per second since the start
	Attempts   int             `json:"attempts"`   // requests made, resumptions included
	Unverified bool            `json:"unverified"` // neither sha256 nor signature vouches for the bytes
	Error      string          `json:"error,omitempty"`
	Firmware   *fleet.Firmware `json:"firmware,omitempty"` // when done
	CreatedAt  time.Time       `json:"created_at"`
	EndedAt    *time.Time      `json:"ended_at,omitempty"`
}

// fetchJob is a FetchJob and its cancellation.
type fetchJob struct {
	cancel context.CancelCauseFunc
	meta   fleet.Firmware // what the image is stored as
	// Guarded by fetches.mu: the job as shown; the pending firmware an
	// update was created on (fetchwait.go); sealed once the download
	// ended, when no pending firmware is added any more.
	job     FetchJob
	pending string
	sealed  bool
}

// errCancelled is the cause of a fetch cancelled by an operator.
var errCancelled = errors.New("cancelled by an operator")

// fetches holds the fetch jobs of a Server.
type fetches struct {
	refused *prometheus.CounterVec // flota_firmware_fetch_refused_total
	ctx     context.Context        // ends at Close
	stop    context.CancelFunc
	wg      sync.WaitGroup // the fetch goroutines

	// mu guards jobs, order, running and closed, and orders wg.Go before
	// the Wait of close.
	mu      sync.Mutex
	closed  bool
	jobs    map[string]*fetchJob
	order   []string // job IDs, oldest first
	running int
}

func newFetches() *fetches {
	ctx, stop := context.WithCancel(context.Background())
	return &fetches{ctx: ctx, stop: stop, jobs: map[string]*fetchJob{},
		refused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "flota_firmware_fetch_refused_total",
			Help: "Firmware fetches refused or failed by reason: busy (too many running), forbidden_address, too_large, redirect, timeout, digest_mismatch, bad_signature, http_status, other.",
		}, []string{"reason"})}
}

// close cancels the running fetches and waits for them.
func (f *fetches) close() {
	f.mu.Lock()
	f.closed = true // no fetch starts after: wg.Wait below sees them all
	f.mu.Unlock()
	f.stop()
	f.wg.Wait()
}

var sha256Hex = regexp.MustCompile(`^[0-9a-f]{64}$`)

func (s *Server) fetchRoutes() []route {
	return []route{
		{"POST", "/api/v1/firmware/fetches", s.startFetch},
		{"GET", "/api/v1/firmware/fetches", s.listFetches},
		{"GET", "/api/v1/firmware/fetches/{id}", s.getFetch},
		{"POST", "/api/v1/firmware/fetches/{id}/cancel", s.cancelFetch},
	}
}

func (s *Server) startFetch(w http.ResponseWriter, r *http.Request) {
	var req FetchRequest
	if err := s.decodeStrict(w, r, &req); err != nil {
		s.writeError(w, r, err)
		return
	}
	meta := fleet.Firmware{Name: req.Name, Version: req.Version, Model: req.Model,
		Signature: req.Signature, AllowDowngrade: req.AllowDowngrade}
	if err := checkFirmwareMeta(meta); err != nil {
		s.writeError(w, r, err)
		return
	}
	if meta.Signature != "" {
		if _, err := protocol.DecodeSignature(meta.Signature); err != nil {
			s.writeError(w, r, fmt.Errorf("signature: %w", err))
			return
		}
	} else if s.FirmwarePublicKey != nil {
		s.writeError(w, r, fmt.Errorf("%w: the server's --firmware-public-key wants a signature", protocol.ErrNoSignature))
		return
	}
	if req.SHA256 != "" && !sha256Hex.MatchString(req.SHA256) {
		s.writeError(w, r, fleet.Errorf(fleet.ErrInvalidInput, "sha256: want 64 lower-case hex digits"))
		return
	}
	if _, err := urlfetch.CheckURL(req.URL); err != nil {
		s.writeError(w, r, fleet.Errorf(fleet.ErrInvalidInput, "url: %v", err))
		return
	}
	if meta.Name == "" {
		meta.Name = "firmware"
	}
	tmp, err := s.Store.CreateTempImage()
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	ctx, cancel := context.WithCancelCause(s.fetches.ctx)
	fj, err := s.addFetchJob(req, meta, cancel, func(fj *fetchJob) { s.runFetch(ctx, fj, req, meta, tmp) })
	if err != nil {
		cancel(nil)
		tmp.Close()
		removeFile(tmp.Name())
		s.fetches.refused.WithLabelValues("busy").Inc()
		writeJSON(w, http.StatusServiceUnavailable, Error{Code: "too_many_fetches", Message: err.Error()})
		return
	}
	log := s.logger().With("fetch", fj.job.ID, "url", fj.job.URL)
	if fj.job.Unverified {
		log.Warn("firmware fetch without sha256 or signature: nothing vouches for the bytes it brings")
	} else {
		log.Info("firmware fetch started")
	}
	writeJSON(w, http.StatusAccepted, s.fetchSnapshot(fj))
}

// addFetchJob records a new running job and starts run on it, or refuses
// when MaxFetches run or the server closes.
func (s *Server) addFetchJob(req FetchRequest, meta fleet.Firmware, cancel context.CancelCauseFunc, run func(*fetchJob)) (*fetchJob, error) {
	f := s.fetches
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed {
		return nil, errors.New("the server is shutting down")
	}
	if max := orDefault(s.MaxFetches, DefaultMaxFetches); f.running >= max {
		return nil, fmt.Errorf("%d firmware fetches are running, the most allowed (serve --max-fetches): try again when one ends", max)
	}
	maxJobs := max(orDefault(s.MaxFetchJobs, DefaultMaxFetchJobs), orDefault(s.MaxFetches, DefaultMaxFetches))
	for i := 0; len(f.order) >= maxJobs && i < len(f.order); {
		if id := f.order[i]; f.jobs[id].job.State != FetchRunning {
			delete(f.jobs, id)
			f.order = append(f.order[:i], f.order[i+1:]...)
			continue
		}
		i++
	}
	fj := &fetchJob{cancel: cancel, meta: meta, job: FetchJob{ID: fleet.NewID("fetch"), URL: urlfetch.Redact(req.URL), State: FetchRunning,
		Total: -1, Unverified: req.SHA256 == "" && req.Signature == "", CreatedAt: time.Now().UTC()}}
	f.jobs[fj.job.ID] = fj
	f.order = append(f.order, fj.job.ID)
	f.running++
	f.wg.Go(func() { run(fj) })
	return fj, nil
}

// removeFile removes a temporary file; one left behind is removed at the
// next start with the other partial uploads.
func removeFile(name string) { _ = os.Remove(name) }

func orDefault(v, def int) int {
	if v <= 0 {
		return def
	}
	return v
}

// runFetch downloads into tmp, then stores the image as an upload is
// stored (AddFirmwareOnce with the server's signature check).
func (s *Server) runFetch(ctx context.Context, fj *fetchJob, req FetchRequest, meta fleet.Firmware, tmp *os.File) {
	defer removeFile(tmp.Name())
	defer tmp.Close()
	start := time.Now()
	o := s.Fetch
	o.MaxSize = s.maxFirmwareSize()
	res, err := urlfetch.New(o).Fetch(ctx, req.URL, tmp, func(done, total int64) {
		s.fetches.mu.Lock()
		fj.job.Bytes, fj.job.Total = done, total
		if secs := time.Since(start).Seconds(); secs > 0 {
			fj.job.Rate = float64(done) / secs
		}
		s.fetches.mu.Unlock()
	})
	var fw fleet.Firmware
	if err == nil && req.SHA256 != "" && res.SHA256 != req.SHA256 {
		err = fmt.Errorf("%w: the image's SHA-256 is %s, not the %s asked for: discarded", errDigestMismatch, res.SHA256, req.SHA256)
	}
	s.fetches.mu.Lock()
	fj.sealed = true
	pending := fj.pending
	s.fetches.mu.Unlock()
	if err == nil {
		if _, err = tmp.Seek(0, io.SeekStart); err == nil {
			verify := func(fw fleet.Firmware) error {
				if req.SHA256 != "" && fw.SHA256 != req.SHA256 {
					return fmt.Errorf("%w: stored %s, asked for %s", errDigestMismatch, fw.SHA256, req.SHA256)
				}
				return s.verifyFirmware(fw)
			}
			if pending != "" {
				fw, err = s.Store.FillPendingFirmware(ctx, pending, tmp, verify)
				if errors.Is(err, fleet.ErrFirmwareNotFound) {
					// An operator deleted the pending firmware of an
					// update that could not be created: stored anew.
					pending = ""
					_, err = tmp.Seek(0, io.SeekStart)
				}
			}
			if pending == "" && err == nil {
				fw, _, err = s.Store.AddFirmwareOnce(ctx, meta, tmp, verify)
			}
		}
	}
	s.endFetch(ctx, fj, res, fw, err)
	if pending != "" {
		s.fetchEnded(fj, pending, err)
	}
}

// endFetch records the end of a fetch in its job.
func (s *Server) endFetch(ctx context.Context, fj *fetchJob, res urlfetch.Result, fw fleet.Firmware, err error) {
	now := time.Now().UTC()
	log := s.logger().With("fetch", fj.job.ID, "url", fj.job.URL)
	s.fetches.mu.Lock()
	defer s.fetches.mu.Unlock()
	s.fetches.running--
	fj.job.Attempts, fj.job.EndedAt = res.Attempts, &now
	switch {
	case err == nil:
		fj.job.State, fj.job.Firmware = FetchDone, &fw
		fj.job.Bytes, fj.job.Total = res.Size, res.Size
		log.Info("firmware fetched", "firmware", fw.ID, "bytes", res.Size, "sha256", res.SHA256, "attempts", res.Attempts, "unverified", fj.job.Unverified)
	case errors.Is(context.Cause(ctx), errCancelled):
		fj.job.State, fj.job.Error = FetchCancelled, errCancelled.Error()
		log.Info("firmware fetch cancelled", "bytes", fj.job.Bytes)
	default:
		fj.job.State, fj.job.Error = FetchFailed, err.Error()
		s.fetches.refused.WithLabelValues(fetchReason(err)).Inc()
		log.Warn("firmware fetch failed", "err", err, "bytes", fj.job.Bytes, "attempts", res.Attempts)
	}
}

var errDigestMismatch = errors.New("SHA-256 mismatch")

// fetchReason is the metric label of a failed fetch.
func fetchReason(err error) string {
	switch {
	case errors.Is(err, urlfetch.ErrForbiddenAddress):
		return "forbidden_address"
	case errors.Is(err, urlfetch.ErrTooLarge):
		return "too_large"
	case errors.Is(err, urlfetch.ErrRedirect):
		return "redirect"
	case errors.Is(err, urlfetch.ErrReadTimeout), errors.Is(err, context.DeadlineExceeded):
		return "timeout"
	case errors.Is(err, errDigestMismatch):
		return "digest_mismatch"
	case errors.Is(err, protocol.ErrBadSignature), errors.Is(err, protocol.ErrNoSignature):
		return "bad_signature"
	case errors.Is(err, urlfetch.ErrHTTPStatus):
		return "http_status"
	}
	var ne interface{ Timeout() bool }
	if errors.As(err, &ne) && ne.Timeout() {
		return "timeout"
	}
	return "other"
}

func (s *Server) fetchSnapshot(fj *fetchJob) FetchJob {
	s.fetches.mu.Lock()
	defer s.fetches.mu.Unlock()
	return fj.job
}

func (s *Server) fetchJob(w http.ResponseWriter, r *http.Request) *fetchJob {
	s.fetches.mu.Lock()
	fj := s.fetches.jobs[r.PathValue("id")]
	s.fetches.mu.Unlock()
	if fj == nil {
		writeJSON(w, http.StatusNotFound, Error{Code: "fetch_not_found", Message: "no fetch job " + r.PathValue("id")})
	}
	return fj
}

func (s *Server) getFetch(w http.ResponseWriter, r *http.Request) {
	if fj := s.fetchJob(w, r); fj != nil {
		writeJSON(w, http.StatusOK, s.fetchSnapshot(fj))
	}
}

// FetchList is the body of GET /api/v1/firmware/fetches.
type FetchList struct {
	Fetches []FetchJob `json:"fetches"`
}

func (s *Server) listFetches(w http.ResponseWriter, r *http.Request) {
	s.fetches.mu.Lock()
	out := FetchList{Fetches: make([]FetchJob, 0, len(s.fetches.order))}
	for _, id := range s.fetches.order {
		out.Fetches = append(out.Fetches, s.fetches.jobs[id].job)
	}
	s.fetches.mu.Unlock()
	writeJSON(w, http.StatusOK, out)
}

// cancelFetch cancels a running fetch and answers the job once it has
// ended; a job that has ended is answered as it is.
func (s *Server) cancelFetch(w http.ResponseWriter, r *http.Request) {
	fj := s.fetchJob(w, r)
	if fj == nil {
		return
	}
	fj.cancel(errCancelled)
	for {
		snap := s.fetchSnapshot(fj)
		if snap.State != FetchRunning {
			writeJSON(w, http.StatusOK, snap)
			return
		}
		select {
		case <-r.Context().Done():
			return
		case <-time.After(20 * time.Millisecond):
		}
	}
}
