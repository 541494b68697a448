package main

// A minimal W3C WebDriver client for chromedriver over plain net/http: just
// what the dashboard test needs.

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strconv"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// webElementKey is the W3C key of an element reference.
const webElementKey = "element-6066-11e4-a52e-4f735466cecf"

// browserPaths returns the chromium and chromedriver binaries, or fails
// the test with the command that installs them (make test installs them
// first, through scripts/deps.sh).
func browserPaths(t *testing.T) (chromium, driver string) {
	t.Helper()
	if testing.Short() {
		t.Skip("browser test")
	}
	return requireTool(t, "chromium"), requireTool(t, "chromedriver")
}

// webDriver is one chromedriver process with one browser session.
type webDriver struct {
	t       *testing.T
	base    string // http://127.0.0.1:PORT/session/ID
	http    *http.Client
	cmd     *exec.Cmd
	session string
}

func freePort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	port := ln.Addr().(*net.TCPAddr).Port
	require.NoError(t, ln.Close())
	return port
}

// startBrowser starts chromedriver and a headless Chromium session.
func startBrowser(t *testing.T) *webDriver {
	t.Helper()
	chromium, driver := browserPaths(t)
	port := freePort(t)
	cmd := exec.Command(driver, "--port="+strconv.Itoa(port))
	var log bytes.Buffer
	cmd.Stdout, cmd.Stderr = &log, &log
	require.NoError(t, cmd.Start())
	wd := &webDriver{t: t, cmd: cmd, http: &http.Client{Timeout: 60 * time.Second}}
	root := fmt.Sprintf("http://127.0.0.1:%d", port)
	// The profile is removed by hand once the browser is gone: Chromium's
	// helper processes may still write to it for a moment after it quits.
	profile, err := os.MkdirTemp("", "flota-chromium")
	require.NoError(t, err)
	t.Cleanup(func() {
		if wd.session != "" {
			req, _ := http.NewRequest(http.MethodDelete, wd.base, nil)
			if resp, err := wd.http.Do(req); err == nil {
				resp.Body.Close()
			}
		}
		if resp, err := wd.http.Get(root + "/shutdown"); err == nil {
			resp.Body.Close()
		}
		exited := make(chan struct{})
		go func() { _ = cmd.Wait(); close(exited) }()
		select {
		case <-exited:
		case <-time.After(10 * time.Second):
			_ = cmd.Process.Kill()
			<-exited
		}
		poll(t, 10*time.Second, func() bool { return os.RemoveAll(profile) == nil }, "remove the browser profile")
		if t.Failed() {
			t.Logf("chromedriver log:\n%s", log.String())
		}
	})
	poll(t, 20*time.Second, func() bool {
		resp, err := wd.http.Get(root + "/status")
		if err != nil {
			return false
		}
		defer resp.Body.Close()
		var st struct {
			Value struct {
				Ready bool `json:"ready"`
			} `json:"value"`
		}
		return json.NewDecoder(resp.Body).Decode(&st) == nil && st.Value.Ready
	}, "chromedriver ready")

	caps := map[string]any{"capabilities": map[string]any{"alwaysMatch": map[string]any{
		"browserName":             "chrome",
		"unhandledPromptBehavior": "ignore",
		"goog:chromeOptions": map[string]any{
			"binary": chromium,
			"args": []string{"--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
				"--disable-background-networking", "--disable-component-update", "--disable-sync",
				"--disable-dev-shm-usage", "--window-size=1280,1500", "--user-data-dir=" + profile},
		},
	}}}
	var created struct {
		SessionID string `json:"sessionId"`
	}
	wd.call(http.MethodPost, root+"/session", caps, &created)
	require.NotEmpty(t, created.SessionID)
	wd.session = created.SessionID
	wd.base = root + "/session/" + created.SessionID
	return wd
}

// call sends a WebDriver command and decodes its "value" into out.
func (wd *webDriver) call(method, url string, in, out any) {
	wd.t.Helper()
	require.NoError(wd.t, wd.try(method, url, in, out))
}

// try is call that returns the WebDriver error instead of failing.
func (wd *webDriver) try(method, url string, in, out any) error {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return err
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(context.Background(), method, url, body)
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := wd.http.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		return err
	}
	var env struct {
		Value json.RawMessage `json:"value"`
	}
	if err := json.Unmarshal(data, &env); err != nil {
		return fmt.Errorf("%s %s: %s: %w", method, url, data, err)
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s %s: %d %s", method, url, resp.StatusCode, env.Value)
	}
	if out != nil {
		return json.Unmarshal(env.Value, out)
	}
	return nil
}

// open navigates to url.
func (wd *webDriver) open(url string) {
	wd.t.Helper()
	wd.call(http.MethodPost, wd.base+"/url", map[string]string{"url": url}, nil)
}

// find returns the element matching a CSS selector, or "" if none does.
func (wd *webDriver) find(css string) string {
	var out map[string]string
	if err := wd.try(http.MethodPost, wd.base+"/element", map[string]string{"using": "css selector", "value": css}, &out); err != nil {
		return ""
	}
	return out[webElementKey]
}

// text returns the text of the element matching css, or "" if none does.
// It reads in one script so that a re-render between finding the element and
// reading it does not matter.
func (wd *webDriver) text(css string) string {
	var s string
	js := map[string]any{"script": `const e = document.querySelector(arguments[0]); return e ? e.textContent.trim() : "";`,
		"args": []any{css}}
	if err := wd.try(http.MethodPost, wd.base+"/execute/sync", js, &s); err != nil {
		return ""
	}
	return s
}

// script runs JavaScript in the page and decodes its result into out.
func (wd *webDriver) script(js string, out any) {
	wd.t.Helper()
	wd.call(http.MethodPost, wd.base+"/execute/sync", map[string]any{"script": js, "args": []any{}}, out)
}

// click clicks the element matching css.
func (wd *webDriver) click(css string) {
	wd.t.Helper()
	id := wd.find(css)
	require.NotEmpty(wd.t, id, "no element %s", css)
	wd.call(http.MethodPost, wd.base+"/element/"+id+"/click", map[string]any{}, nil)
}

// typeText types text into the element matching css, after clearing it.
func (wd *webDriver) typeText(css, text string) {
	wd.t.Helper()
	id := wd.find(css)
	require.NotEmpty(wd.t, id, "no element %s", css)
	wd.call(http.MethodPost, wd.base+"/element/"+id+"/clear", map[string]any{}, nil)
	wd.call(http.MethodPost, wd.base+"/element/"+id+"/value", map[string]any{"text": text}, nil)
}

// signIn submits token in the dashboard's sign-in form.
func (wd *webDriver) signIn(token string) {
	wd.t.Helper()
	poll(wd.t, 10*time.Second, func() bool { return wd.find("#login-token") != "" }, "the sign-in form")
	wd.typeText("#login-token", token)
	wd.click("#login-submit")
}

// acceptConfirm waits for a confirm() dialog, accepts it and returns its
// text.
func (wd *webDriver) acceptConfirm() string {
	wd.t.Helper()
	var text string
	poll(wd.t, 10*time.Second, func() bool {
		return wd.try(http.MethodGet, wd.base+"/alert/text", nil, &text) == nil
	}, "a confirmation dialog")
	wd.call(http.MethodPost, wd.base+"/alert/accept", map[string]any{}, nil)
	return text
}

// screenshot returns a PNG of the viewport.
func (wd *webDriver) screenshot() []byte {
	wd.t.Helper()
	var b64 string
	wd.call(http.MethodGet, wd.base+"/screenshot", nil, &b64)
	png, err := base64.StdEncoding.DecodeString(b64)
	require.NoError(wd.t, err)
	return png
}
