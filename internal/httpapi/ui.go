package httpapi

import (
	"embed"
	"io/fs"
	"net/http"
	"path"
	"strings"
)

// uiFiles is the dashboard: plain HTML, CSS and JavaScript, no build step.
//
//go:embed ui
var uiFiles embed.FS

// openAPIDoc is the OpenAPI 3 description of /api/v1.
//
//go:embed openapi.json
var openAPIDoc []byte

func (s *Server) openAPI(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "application/json")
	_, _ = w.Write(openAPIDoc) // the client went away; nothing to do
}

// dashboard serves the embedded dashboard; unknown API paths get a JSON
// error instead.
func (s *Server) dashboard() http.Handler {
	sub, err := fs.Sub(uiFiles, "ui")
	if err != nil {
		panic(err) // the directory is embedded above
	}
	files := http.FileServerFS(sub)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if apiPath(r.URL.Path) {
			writeJSON(w, http.StatusNotFound, Error{Code: CodeNotFound, Message: "no route " + r.Method + " " + r.URL.Path})
			return
		}
		// The file server answers 500 for a name fs.FS refuses (invalid
		// UTF-8, such as GET /%DD): no such file is a 404.
		if name := strings.TrimPrefix(path.Clean(r.URL.Path), "/"); name != "" && !fs.ValidPath(name) {
			http.NotFound(w, r)
			return
		}
		h := w.Header()
		h.Set("Cache-Control", "no-cache")
		// The dashboard holds an API token: no foreign script, no framing
		// (its buttons pause fleets), no Referer carrying its URLs.
		h.Set("Content-Security-Policy", "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'; form-action 'none'")
		h.Set("X-Frame-Options", "DENY")
		h.Set("X-Content-Type-Options", "nosniff")
		h.Set("Referrer-Policy", "no-referrer")
		files.ServeHTTP(w, r)
	})
}
