package urlfetch

import (
	"bufio"
	"encoding/base64"
	"fmt"
	"net/http"
	"os"
	"strings"
)

// Credentials are the artifact stores' credentials by host name: each is
// sent to its own host only, never to another (not after a redirect
// either), and never shown.
type Credentials map[string]string // lower-case host → Authorization header value

// ParseCredentials parses lines of "HOST bearer TOKEN" or "HOST basic
// USER:PASSWORD"; blank lines and lines starting with # are skipped. Errors
// name the line, never its secret.
func ParseCredentials(text string) (Credentials, error) {
	c := Credentials{}
	sc := bufio.NewScanner(strings.NewReader(text))
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		f := strings.Fields(line)
		if len(f) != 3 {
			return nil, fmt.Errorf("fetch credentials line %d: want HOST bearer TOKEN or HOST basic USER:PASSWORD", n)
		}
		host := strings.ToLower(f[0])
		switch strings.ToLower(f[1]) {
		case "bearer":
			c[host] = "Bearer " + f[2]
		case "basic":
			if !strings.Contains(f[2], ":") {
				return nil, fmt.Errorf("fetch credentials line %d: basic wants USER:PASSWORD", n)
			}
			c[host] = "Basic " + base64.StdEncoding.EncodeToString([]byte(f[2]))
		default:
			return nil, fmt.Errorf("fetch credentials line %d: scheme must be bearer or basic", n)
		}
	}
	return c, sc.Err()
}

// ReadCredentials reads ParseCredentials' format from a file.
func ReadCredentials(path string) (Credentials, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	return ParseCredentials(string(b))
}

// authorize sets the request's Authorization from the credentials of its
// host, and removes any other: a redirect to another host gets none.
func (f *Fetcher) authorize(req *http.Request) {
	req.Header.Del("Authorization")
	if v, ok := f.opts.Credentials[strings.ToLower(req.URL.Hostname())]; ok {
		req.Header.Set("Authorization", v)
		return
	}
	if u := req.URL.User; u != nil { // user information of the URL itself
		pw, _ := u.Password()
		req.SetBasicAuth(u.Username(), pw)
	}
}
