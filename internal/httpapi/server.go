// Package httpapi is flota's HTTP face: the REST API for operators and
// dashboards (JSON under /api/v1 over the store and the engine, described by
// an OpenAPI document), a Server-Sent Events stream of the same events and
// status summaries that go out on MQTT, Prometheus metrics at /metrics, and
// the embedded dashboard at /. The orchestrator CLI is a thin client of it.
package httpapi

import (
	"context"
	"crypto/ed25519"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/flotaio/flota/internal/auth"
	"github.com/flotaio/flota/internal/protocol"
	"github.com/flotaio/flota/internal/rollout"
	"github.com/flotaio/flota/internal/sqlite"
	"github.com/flotaio/flota/internal/urlfetch"
)

// Defaults of a Server.
const (
	// DefaultMaxFirmwareSize bounds an uploaded firmware image.
	DefaultMaxFirmwareSize = 512 << 20
	// MaxRequestBody bounds every JSON request body.
	MaxRequestBody = 1 << 20
	// MaxFirmwareName bounds a firmware's name; its version and model are
	// bounded like a device's (protocol.MaxIdentLen), which must match them.
	MaxFirmwareName = 128
	// DefaultPageSize is the number of rows a list returns without ?limit=.
	DefaultPageSize = 100
	// MaxPageSize is the largest ?limit= honoured; larger values are clamped.
	MaxPageSize = 1000
	// DefaultShutdownTimeout bounds how long Close waits for requests in flight.
	DefaultShutdownTimeout = 5 * time.Second
	// DefaultStreamBuffer is the number of messages an event stream client
	// may fall behind before messages are dropped for it (it then catches
	// up from the store).
	DefaultStreamBuffer = 1024
	// DefaultStreamHeartbeat is the interval of keep-alive comments on an
	// idle event stream.
	DefaultStreamHeartbeat = 15 * time.Second
)

// Server serves the API. Fill the exported fields, then call Open; or mount
// Handler in a server of your own.
type Server struct {
	// Addr is the TCP address to listen on; "127.0.0.1:0" picks a free port.
	Addr   string
	Store  *sqlite.Store
	Engine *rollout.Engine
	// BrokerStats, if set, returns the broker's counters for GET /api/v1/stats
	// and /metrics (by their JSON names: clients, messages_dropped,
	// auth_refused, acl_denied).
	BrokerStats func() any
	// Subscribe, if set, subscribes to MQTT topics of the broker the engine
	// publishes to; the event stream and the dashboard are fed from
	// flota/events/# and flota/status/updates/#. The handler does not block.
	Subscribe func(filter string, handler func(topic string, payload []byte)) error
	Logger    *slog.Logger
	// Tokens are the API tokens that requests authenticate with (auth.go).
	// Without them only the public paths answer: health, the OpenAPI
	// document and the dashboard's files.
	Tokens *Tokens
	// Accounts manages the embedded broker's MQTT accounts (accounts.go);
	// nil answers 503 on those routes.
	Accounts *auth.Accounts
	// Version is reported by GET /api/v1/health.
	Version string
	// FirmwarePublicKey, when set, makes uploads whose signature does not
	// verify with it (or that are unsigned) fail with bad_signature or
	// unsigned_firmware. Devices verify in any case.
	FirmwarePublicKey ed25519.PublicKey
	// MaxFirmwareSize bounds an uploaded image; 0 means DefaultMaxFirmwareSize.
	MaxFirmwareSize int64
	// Fetch configures the firmware fetches (fetches.go): allowed
	// addresses, timeouts, retries and the artifact stores' credentials.
	// MaxSize is MaxFirmwareSize.
	Fetch urlfetch.Options
	// MaxFetches bounds the fetches running at once; 0 means
	// DefaultMaxFetches.
	MaxFetches int
	// MaxFetchJobs bounds the fetch jobs kept; 0 means DefaultMaxFetchJobs.
	MaxFetchJobs int
	// ShutdownTimeout bounds Close; 0 means DefaultShutdownTimeout.
	ShutdownTimeout time.Duration
	// StreamBuffer is DefaultStreamBuffer when 0.
	StreamBuffer int
	// StreamHeartbeat is DefaultStreamHeartbeat when 0.
	StreamHeartbeat time.Duration
	// MaxTimelineReplays bounds the event log replays of GET
	// /api/v1/updates/{id}/timeline running at once; more are refused with
	// 503. 0 means DefaultTimelineReplays.
	MaxTimelineReplays int
	// HealthChecks are asked at every GET /api/v1/health; each returns the
	// reason its part is degraded, or "" when it is well. Any reason makes
	// the status "degraded" (HTTP 503) and is listed in the answer.
	HealthChecks []func() string

	initOnce sync.Once
	initErr  error // the subscription's error, returned by Open
	hub      *hub
	metrics  http.Handler
	// apiTokens are the database's API tokens (apitokens.go).
	apiTokens *dbTokens
	// requests is flota_http_requests_total (httpmetrics.go).
	requests *prometheus.CounterVec
	// tokenUses ends the goroutine that records their last uses.
	tokenUses chan struct{}
	replays   *replayLimit
	fetches   *fetches
	// selectorRefused counts updates refused for a selector over the
	// store's limits (flota_http_selector_refused_total).
	selectorRefused atomic.Int64

	// mu guards ln, srv and closed.
	mu     sync.Mutex
	ln     net.Listener
	srv    *http.Server
	closed bool
	wg     sync.WaitGroup // the Serve goroutine and recordTokenUses
}

// Open listens on Addr and serves in a tracked goroutine until Close.
func (s *Server) Open() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.srv != nil || s.closed {
		return errors.New("httpapi: already opened")
	}
	if s.Store == nil {
		return errors.New("httpapi: no store")
	}
	if err := s.init(); err != nil {
		return err
	}
	// The database's tokens are read now, so that a start fails on a
	// database that cannot give them rather than refusing their holders.
	if err := s.loadAPITokens(context.Background(), false); err != nil {
		return fmt.Errorf("httpapi: api tokens: %w", err)
	}
	if s.Tokens.Len() == 0 && s.apiTokens.count() == 0 {
		s.logger().Warn("no API tokens: only health, the OpenAPI document and the dashboard's files answer")
	}
	ln, err := net.Listen("tcp", s.Addr)
	if err != nil {
		return fmt.Errorf("httpapi: listen %s: %w", s.Addr, err)
	}
	s.ln = ln
	s.srv = &http.Server{
		Handler:           s.Handler(),
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       2 * time.Minute, // idle keep-alive connections
		ErrorLog:          slog.NewLogLogger(s.logger().Handler(), slog.LevelWarn),
	}
	srv := s.srv
	s.tokenUses = make(chan struct{})
	done := s.tokenUses
	s.wg.Go(func() { s.recordTokenUses(done) })
	s.wg.Go(func() {
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			s.logger().Error("http serve", "err", err)
		}
	})
	return nil
}

// URL returns the base URL the server listens on, such as
// http://127.0.0.1:8080, or "" before Open.
func (s *Server) URL() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ln == nil {
		return ""
	}
	return "http://" + s.ln.Addr().String()
}

// Close stops accepting connections and waits, up to ShutdownTimeout, for
// requests in flight; then it closes whatever is left. It is idempotent.
func (s *Server) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	srv := s.srv
	s.mu.Unlock()
	_ = s.init()  // a subscription error was reported by Open
	s.hub.close() // ends the event streams, which Shutdown would wait for
	s.fetches.close()
	if srv == nil {
		return nil
	}
	timeout := s.ShutdownTimeout
	if timeout <= 0 {
		timeout = DefaultShutdownTimeout
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	err := srv.Shutdown(ctx)
	if err != nil {
		err = errors.Join(fmt.Errorf("httpapi: shutdown: %w", err), srv.Close())
	}
	close(s.tokenUses)
	s.wg.Wait()
	return err
}

// init builds what the handlers share, once: the event hub, subscribed to
// the broker when Subscribe is set, and the metrics registry.
func (s *Server) init() error {
	s.initOnce.Do(func() {
		s.hub = newHub(s.logger())
		s.apiTokens = newDBTokens()
		s.requests = newRequestCounter()
		s.replays = newReplayLimit(s.MaxTimelineReplays)
		s.fetches = newFetches()
		s.metrics = s.newMetrics()
		if s.Subscribe == nil {
			return
		}
		for _, filter := range []string{protocol.EventsFilter, protocol.StatusRoot + "updates/#"} {
			if err := s.Subscribe(filter, s.hub.publish); err != nil {
				s.initErr = fmt.Errorf("httpapi: subscribe %s: %w", filter, err)
				s.logger().Error("event stream unavailable", "err", s.initErr)
				return
			}
		}
	})
	return s.initErr
}

func (s *Server) logger() *slog.Logger {
	if s.Logger == nil {
		return slog.New(slog.DiscardHandler)
	}
	return s.Logger
}

func (s *Server) maxFirmwareSize() int64 {
	if s.MaxFirmwareSize <= 0 {
		return DefaultMaxFirmwareSize
	}
	return s.MaxFirmwareSize
}

func (s *Server) version() string {
	if s.Version == "" {
		return "dev"
	}
	return s.Version
}
