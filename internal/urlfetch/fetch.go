package urlfetch

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Defaults of Options.
const (
	DefaultConnectTimeout = 10 * time.Second
	DefaultReadTimeout    = 30 * time.Second
	DefaultMaxRedirects   = 5
	DefaultAttempts       = 5
	DefaultBackoff        = time.Second
	maxBackoff            = 30 * time.Second
)

// Errors a fetch ends with; none of them is retried.
var (
	ErrTooLarge    = errors.New("image larger than --max-firmware-size")
	ErrScheme      = errors.New("only http and https URLs are fetched")
	ErrRedirect    = errors.New("redirect refused")
	ErrHTTPStatus  = errors.New("the server answered an error")
	ErrReadTimeout = errors.New("no data from the server within the read timeout")
)

// Options configure a Fetcher. Zero values take the defaults.
type Options struct {
	Policy         Policy
	ConnectTimeout time.Duration // TCP and TLS handshake
	ReadTimeout    time.Duration // response headers, and idle time between reads
	MaxSize        int64         // bytes; required
	MaxRedirects   int
	Attempts       int           // tries per fetch, the first included
	Backoff        time.Duration // before the second try; doubles up to 30s
	Credentials    Credentials
	// Transport, for tests only, replaces the checked transport.
	Transport http.RoundTripper
}

// Fetcher downloads images. It is safe for concurrent use.
type Fetcher struct {
	opts   Options
	client *http.Client
}

// New returns a Fetcher whose every connection goes through the policy.
func New(o Options) *Fetcher {
	if o.ConnectTimeout <= 0 {
		o.ConnectTimeout = DefaultConnectTimeout
	}
	if o.ReadTimeout <= 0 {
		o.ReadTimeout = DefaultReadTimeout
	}
	if o.MaxRedirects <= 0 {
		o.MaxRedirects = DefaultMaxRedirects
	}
	if o.Attempts <= 0 {
		o.Attempts = DefaultAttempts
	}
	if o.Backoff <= 0 {
		o.Backoff = DefaultBackoff
	}
	policy, connect := o.Policy, o.ConnectTimeout
	dial := func(ctx context.Context, network, addr string) (net.Conn, error) {
		host, _, err := net.SplitHostPort(addr)
		if err != nil {
			return nil, err
		}
		d := net.Dialer{Timeout: connect, Control: func(_, address string, _ syscall.RawConn) error {
			ap, err := netip.ParseAddrPort(address)
			if err != nil {
				return fmt.Errorf("%w: %s", ErrForbiddenAddress, address)
			}
			return policy.Check(host, ap.Addr())
		}}
		return d.DialContext(ctx, network, addr)
	}
	tr := o.Transport
	if tr == nil {
		tr = &http.Transport{
			Proxy:                  nil, // a proxy would dial for us, past the address check
			DialContext:            dial,
			TLSHandshakeTimeout:    connect,
			ResponseHeaderTimeout:  o.ReadTimeout,
			MaxResponseHeaderBytes: 64 << 10,
			DisableKeepAlives:      true, // a Fetcher lives for one fetch: nothing idle is left behind
			ForceAttemptHTTP2:      true,
		}
	}
	max := o.MaxRedirects
	f := &Fetcher{opts: o}
	f.client = &http.Client{Transport: tr, CheckRedirect: func(req *http.Request, via []*http.Request) error {
		if len(via) > max {
			return fmt.Errorf("%w: more than %d redirects", ErrRedirect, max)
		}
		if req.URL.Scheme != "http" && req.URL.Scheme != "https" {
			return fmt.Errorf("%w: to a %s URL", ErrRedirect, req.URL.Scheme)
		}
		if via[len(via)-1].URL.Scheme == "https" && req.URL.Scheme == "http" {
			return fmt.Errorf("%w: from https to http", ErrRedirect)
		}
		f.authorize(req)
		return nil
	}}
	return f
}

// CheckURL refuses a URL a Fetcher would not fetch, before any connection.
func CheckURL(raw string) (*url.URL, error) {
	u, err := url.Parse(raw)
	if err != nil {
		return nil, fmt.Errorf("URL: %w", errors.New("not a URL")) // the URL may hold secrets: not repeated
	}
	if u.Scheme != "http" && u.Scheme != "https" {
		return nil, ErrScheme
	}
	if u.Host == "" {
		return nil, errors.New("URL has no host")
	}
	return u, nil
}

// Progress is called as bytes arrive: done so far, and the total announced
// by the server (-1 while unknown).
type Progress func(done, total int64)

// Result is a finished download.
type Result struct {
	Size     int64
	SHA256   string // hex
	Attempts int
}

// Fetch downloads raw into w, which must be empty, computing the SHA-256 on
// the way. A transient failure (a network error, a timeout, 408, 429 or a
// 5xx answer) is tried again after a growing pause, resuming with a Range
// request from the bytes already written when the server honours it, from
// zero when it does not.
func (f *Fetcher) Fetch(ctx context.Context, raw string, w *os.File, progress Progress) (Result, error) {
	u, err := CheckURL(raw)
	if err != nil {
		return Result{}, err
	}
	d := &download{f: f, url: u, w: w, h: sha256.New(), total: -1, progress: progress}
	var res Result
	backoff := f.opts.Backoff
	for res.Attempts = 1; ; res.Attempts++ {
		err = d.attempt(ctx)
		if err == nil {
			break
		}
		if ctx.Err() != nil {
			return res, context.Cause(ctx)
		}
		if !transient(err) || res.Attempts >= f.opts.Attempts {
			return res, err
		}
		select {
		case <-time.After(backoff):
		case <-ctx.Done():
			return res, context.Cause(ctx)
		}
		backoff = min(2*backoff, maxBackoff)
	}
	res.Size, res.SHA256 = d.done, hex.EncodeToString(d.h.Sum(nil))
	return res, nil
}

// download is the state of one Fetch across its attempts.
type download struct {
	f         *Fetcher
	url       *url.URL
	w         *os.File
	h         hash.Hash
	done      int64
	total     int64  // -1 while unknown
	validator string // ETag or Last-Modified of the first answer, for If-Range
	progress  Progress
}

// transientError marks an error worth another attempt.
type transientError struct{ err error }

func (e transientError) Error() string { return e.err.Error() }
func (e transientError) Unwrap() error { return e.err }

func transient(err error) bool {
	var t transientError
	if errors.As(err, &t) {
		return true
	}
	if errors.Is(err, ErrForbiddenAddress) || errors.Is(err, ErrRedirect) || errors.Is(err, ErrTooLarge) {
		return false
	}
	var ne net.Error
	return errors.As(err, &ne) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, syscall.ECONNRESET) ||
		errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, ErrReadTimeout)
}

func (d *download) restart() error {
	if _, err := d.w.Seek(0, io.SeekStart); err != nil {
		return err
	}
	if err := d.w.Truncate(0); err != nil {
		return err
	}
	d.h.Reset()
	d.done = 0
	return nil
}

func (d *download) attempt(parent context.Context) error {
	ctx, cancel := context.WithCancelCause(parent)
	defer cancel(nil)
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, d.url.String(), nil)
	if err != nil {
		return err
	}
	req.Header.Set("Accept-Encoding", "identity") // the bytes as stored, not re-encoded
	if d.done > 0 {
		req.Header.Set("Range", "bytes="+strconv.FormatInt(d.done, 10)+"-")
		if d.validator != "" {
			req.Header.Set("If-Range", d.validator)
		}
	}
	d.f.authorize(req)
	resp, err := d.f.client.Do(req)
	if err != nil {
		return redactErr(err)
	}
	defer resp.Body.Close()
	switch {
	case resp.StatusCode == http.StatusPartialContent && d.done > 0:
		start, total, ok := parseContentRange(resp.Header.Get("Content-Range"))
		if !ok || start != d.done {
			if err := d.restart(); err != nil {
				return err
			}
			return transientError{fmt.Errorf("the server answered the range request with Content-Range %q: starting again", resp.Header.Get("Content-Range"))}
		}
		if total >= 0 {
			d.total = total
		}
	case resp.StatusCode == http.StatusOK:
		if d.done > 0 { // Range ignored: from zero
			if err := d.restart(); err != nil {
				return err
			}
		}
		d.total = resp.ContentLength
		d.validator = resp.Header.Get("ETag")
		if d.validator == "" || strings.HasPrefix(d.validator, "W/") {
			d.validator = resp.Header.Get("Last-Modified")
		}
	case resp.StatusCode == http.StatusRequestTimeout || resp.StatusCode == http.StatusTooManyRequests || resp.StatusCode >= 500:
		return transientError{fmt.Errorf("%w: %s", ErrHTTPStatus, status(resp))}
	default:
		return fmt.Errorf("%w: %s", ErrHTTPStatus, status(resp))
	}
	if d.total > d.f.opts.MaxSize {
		return fmt.Errorf("%w: the server announces %d bytes, the limit is %d", ErrTooLarge, d.total, d.f.opts.MaxSize)
	}
	// The idle timer cancels the request when no byte arrives for
	// ReadTimeout; every read that brings bytes rearms it.
	idle := time.AfterFunc(d.f.opts.ReadTimeout, func() { cancel(ErrReadTimeout) })
	defer idle.Stop()
	buf := make([]byte, 32<<10)
	for {
		n, rerr := resp.Body.Read(buf)
		if n > 0 {
			idle.Reset(d.f.opts.ReadTimeout)
			if d.done+int64(n) > d.f.opts.MaxSize {
				return fmt.Errorf("%w: more than %d bytes", ErrTooLarge, d.f.opts.MaxSize)
			}
			if _, err := d.w.Write(buf[:n]); err != nil {
				return fmt.Errorf("write image: %w", err)
			}
			d.h.Write(buf[:n])
			d.done += int64(n)
			if d.progress != nil {
				d.progress(d.done, d.total)
			}
		}
		if rerr == io.EOF {
			break
		}
		if rerr != nil {
			if cause := context.Cause(ctx); errors.Is(cause, ErrReadTimeout) && parent.Err() == nil {
				return transientError{ErrReadTimeout}
			}
			return redactErr(rerr)
		}
	}
	if d.total >= 0 && d.done != d.total {
		return transientError{fmt.Errorf("connection ended after %d of %d bytes", d.done, d.total)}
	}
	return nil
}

// status names an answer's status by its code: the reason phrase is the
// server's own text.
func status(resp *http.Response) string {
	return fmt.Sprintf("%d %s", resp.StatusCode, http.StatusText(resp.StatusCode))
}

// redactErr removes the URL from a *url.Error: it may carry credentials.
func redactErr(err error) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		if errors.Is(ue.Err, ErrReadTimeout) {
			return transientError{ErrReadTimeout}
		}
		return ue.Err
	}
	return err
}

// parseContentRange parses "bytes START-END/TOTAL" (TOTAL may be "*").
func parseContentRange(v string) (start, total int64, ok bool) {
	rest, found := strings.CutPrefix(v, "bytes ")
	if !found {
		return 0, 0, false
	}
	span, size, found := strings.Cut(rest, "/")
	if !found {
		return 0, 0, false
	}
	first, _, found := strings.Cut(span, "-")
	if !found {
		return 0, 0, false
	}
	start, err := strconv.ParseInt(first, 10, 64)
	if err != nil || start < 0 {
		return 0, 0, false
	}
	total = -1
	if size != "*" {
		if total, err = strconv.ParseInt(size, 10, 64); err != nil || total < start {
			return 0, 0, false
		}
	}
	return start, total, true
}
