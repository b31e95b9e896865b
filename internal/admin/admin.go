// Package admin is popgate's admin HTTP server (the admin section of the
// configuration): GET /metrics (Prometheus text format), GET /healthz (the
// process answers) and GET /readyz (this node should get new connections:
// listeners open, not draining, every readiness check passing, e.g. Redis
// reachable). With a token every request must carry
// "Authorization: Bearer TOKEN" (RFC 6750 §2.1), else 401.
package admin

import (
	"context"
	"crypto/subtle"
	"errors"
	"net"
	"net/http"
	"sort"
	"strings"
	"sync"
	"time"
)

// Check is one readiness condition; a non-nil error makes /readyz fail.
// It is called with a context bounded by CheckTimeout.
type Check func(ctx context.Context) error

// CheckTimeout bounds each readiness check.
const CheckTimeout = 2 * time.Second

// Options configure a Server.
type Options struct {
	// Token, when set, is required as a bearer token on every request.
	Token string
	// Metrics serves /metrics; nil: 404.
	Metrics http.Handler
	// OnReady is called with the answer of every /readyz (for a gauge).
	OnReady func(ok bool)
}

// Server answers the admin endpoints. Its methods are safe for concurrent
// use. It starts not ready: SetListening(true) once the POP3 listeners are
// open.
type Server struct {
	opts Options

	mu        sync.Mutex
	listening bool
	draining  bool
	checks    map[string]Check

	hs *http.Server
}

// New returns a Server.
func New(opts Options) *Server {
	s := &Server{opts: opts, checks: map[string]Check{}}
	s.hs = &http.Server{Handler: s.Handler(), ReadHeaderTimeout: 10 * time.Second, IdleTimeout: time.Minute}
	return s
}

// AddCheck adds (or replaces) a named readiness check.
func (s *Server) AddCheck(name string, c Check) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.checks[name] = c
}

// SetListening records whether the POP3 listeners are open.
func (s *Server) SetListening(v bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.listening = v
}

// SetDraining makes /readyz fail from now on (SIGTERM): the balancer stops
// sending new connections while the listeners are still open.
func (s *Server) SetDraining() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.draining = true
}

// Ready evaluates readiness: nil, or the reasons it is not ready.
func (s *Server) Ready(ctx context.Context) []string {
	s.mu.Lock()
	listening, draining := s.listening, s.draining
	names := make([]string, 0, len(s.checks))
	for n := range s.checks {
		names = append(names, n)
	}
	checks := make([]Check, len(names))
	sort.Strings(names)
	for i, n := range names {
		checks[i] = s.checks[n]
	}
	s.mu.Unlock()
	var why []string
	if draining {
		why = append(why, "draining")
	}
	if !listening {
		why = append(why, "listeners not open")
	}
	for i, c := range checks {
		cctx, cancel := context.WithTimeout(ctx, CheckTimeout)
		err := c(cctx)
		cancel()
		if err != nil {
			why = append(why, names[i]+": "+err.Error())
		}
	}
	return why
}

// Handler returns the admin HTTP handler (for tests or another server).
func (s *Server) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, r *http.Request) {
		text(w, http.StatusOK, "ok\n")
	})
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, r *http.Request) {
		why := s.Ready(r.Context())
		if s.opts.OnReady != nil {
			s.opts.OnReady(len(why) == 0)
		}
		if len(why) > 0 {
			text(w, http.StatusServiceUnavailable, "not ready: "+strings.Join(why, "; ")+"\n")
			return
		}
		text(w, http.StatusOK, "ready\n")
	})
	if s.opts.Metrics != nil {
		mux.Handle("/metrics", s.opts.Metrics)
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if s.opts.Token != "" && !s.authorized(r) {
			w.Header().Set("WWW-Authenticate", `Bearer realm="popgate admin"`) // RFC 6750 §3
			text(w, http.StatusUnauthorized, "unauthorized\n")
			return
		}
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			w.Header().Set("Allow", "GET, HEAD")
			text(w, http.StatusMethodNotAllowed, "method not allowed\n")
			return
		}
		mux.ServeHTTP(w, r)
	})
}

// authorized compares the bearer token in constant time (RFC 6750 §2.1).
func (s *Server) authorized(r *http.Request) bool {
	h := r.Header.Get("Authorization")
	const scheme = "bearer "
	if len(h) < len(scheme) || !strings.EqualFold(h[:len(scheme)], scheme) {
		return false
	}
	got := strings.TrimSpace(h[len(scheme):])
	return subtle.ConstantTimeCompare([]byte(got), []byte(s.opts.Token)) == 1
}

func text(w http.ResponseWriter, code int, body string) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(code)
	_, _ = w.Write([]byte(body))
}

// Serve answers on l until Shutdown; it returns nil after Shutdown.
func (s *Server) Serve(l net.Listener) error {
	err := s.hs.Serve(l)
	if errors.Is(err, http.ErrServerClosed) {
		return nil
	}
	return err
}

// Shutdown stops the admin server, waiting for requests in flight until
// ctx is done.
func (s *Server) Shutdown(ctx context.Context) error {
	return s.hs.Shutdown(ctx)
}
