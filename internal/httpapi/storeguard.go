package httpapi

import (
	"net/http"
	"strconv"
	"time"
)

// backupPath changes nothing: a backup is taken while the store cannot
// write too.
const backupPath = APIPrefix + "/backup"

// storeRetryAfter is the Retry-After of a change refused while the store
// cannot write: the store retries its writes at least this often.
const storeRetryAfter = 2 * time.Second

// storeGuard refuses every change to the API (any method but GET and HEAD)
// with 503 store_unavailable while the store cannot write (a full disk, a
// read-only file system): the change could not be recorded, and would only
// queue behind the writes the store holds. Reads are served.
func (s *Server) storeGuard(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet && r.Method != http.MethodHead && apiPath(r.URL.Path) && r.URL.Path != backupPath && s.Store != nil {
			if err := s.Store.Unavailable(); err != nil {
				w.Header().Set("Retry-After", strconv.Itoa(int(storeRetryAfter.Seconds())))
				s.writeError(w, r, err)
				return
			}
		}
		next.ServeHTTP(w, r)
	})
}
