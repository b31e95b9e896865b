package rest_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/popgate/popgate/backends"
	"github.com/popgate/popgate/backends/rest"
)

// fake is a deliberately scriptable store: handlers per "METHOD /path"
// (path after the url prefix), a default session answer, and a record of
// the requests.
type fake struct {
	mu       sync.Mutex
	handlers map[string]http.HandlerFunc
	reqs     []*http.Request
	bodies   []string
}

func serveFake(t testing.TB, f *fake) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.StripPrefix("/v1", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		f.mu.Lock()
		f.reqs = append(f.reqs, r)
		f.bodies = append(f.bodies, string(body))
		h := f.handlers[r.Method+" "+r.URL.Path]
		f.mu.Unlock()
		if h == nil && r.Method == "POST" && r.URL.Path == "/sessions" {
			h = func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set("Content-Type", "application/json")
				w.WriteHeader(201)
				io.WriteString(w, `{"session":"tok","maildrop":"md1"}`)
			}
		}
		if h == nil && r.Method == "DELETE" {
			h = func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(204) }
		}
		if h == nil {
			w.WriteHeader(404)
			return
		}
		h(w, r)
	}))}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return "http://" + ln.Addr().String() + "/v1"
}

func (f *fake) on(key string, h http.HandlerFunc) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.handlers == nil {
		f.handlers = map[string]http.HandlerFunc{}
	}
	f.handlers[key] = h
}

func (f *fake) requests(method, path string) (out []string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for i, r := range f.reqs {
		if r.Method == method && r.URL.Path == path {
			out = append(out, f.bodies[i])
		}
	}
	return out
}

func (f *fake) header(method, path, name string) (out []string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, r := range f.reqs {
		if r.Method == method && r.URL.Path == path {
			out = append(out, r.Header.Get(name))
		}
	}
	return out
}

func list(entries string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("ETag", `"s1"`)
		if r.Header.Get("If-None-Match") == `"s1"` {
			w.WriteHeader(304)
			return
		}
		fmt.Fprintf(w, `{"messages":[%s],"next":null,"state":"s1"}`, entries)
	}
}

func raw(body string, contentLength bool) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "message/rfc822")
		if contentLength {
			w.Header().Set("Content-Length", fmt.Sprint(len(body)))
		}
		io.WriteString(w, body)
	}
}

var creds = backends.Credentials{Username: "u", Password: "pw", Mechanism: "USER"}

func login(t *testing.T, b *rest.Backend) (backends.Mailbox, []backends.Message, error) {
	t.Helper()
	mb, err := b.Login(context.Background(), creds)
	if err != nil {
		t.Fatalf("Login: %v", err)
	}
	t.Cleanup(func() { mb.Close() })
	msgs, err := mb.Snapshot(context.Background())
	return mb, msgs, err
}

func readAll(mb backends.Mailbox, m backends.Message, lines int) (string, error) {
	r, err := mb.Open(context.Background(), m, lines)
	if err != nil {
		return "", err
	}
	defer r.Close()
	b, err := io.ReadAll(r)
	return string(b), err
}

// TestBareLF: a store sending LF line endings with the CRLF size listed
// delivers exactly the listed octets with CRLF.
func TestBareLF(t *testing.T) {
	f := &fake{}
	f.on("GET /messages", list(`{"id":"m1","size":23}`))
	f.on("GET /messages/m1", raw("Subject: x\n\nbody\nend", true))
	b := newBackend(t, cfg(serveFake(t, f)))
	mb, msgs, err := login(t, b)
	if err != nil {
		t.Fatal(err)
	}
	got, err := readAll(mb, msgs[0], -1)
	if err != nil || got != "Subject: x\r\n\r\nbody\r\nend" || int64(len(got)) != msgs[0].Size {
		t.Fatalf("got %q, %v; listed %d", got, err, msgs[0].Size)
	}
}

// TestWrongSize: a message longer or shorter than listed is never
// delivered as complete; the next listing shows the octets delivered, and
// the message can then be retrieved.
func TestWrongSize(t *testing.T) {
	for _, c := range []struct {
		name          string
		listed        int
		body          string
		contentLength bool
	}{
		{"longer, Content-Length", 5, "Subject: longer\r\n\r\nbody\r\n", true},
		{"longer, chunked", 5, "Subject: longer\r\n\r\nbody\r\n", false},
		{"longer by bare LF", 22, "Subject: lf\n\nbody\nmore\n", false},
		{"shorter", 500, "Subject: shorter\r\n\r\nbody\r\n", true},
	} {
		t.Run(c.name, func(t *testing.T) {
			f := &fake{}
			f.on("GET /messages", list(fmt.Sprintf(`{"id":"m1","size":%d}`, c.listed)))
			f.on("GET /messages/m1", raw(c.body, c.contentLength))
			b := newBackend(t, cfg(serveFake(t, f)))
			mb, msgs, err := login(t, b)
			if err != nil {
				t.Fatal(err)
			}
			got, err := readAll(mb, msgs[0], -1)
			if err == nil {
				t.Fatalf("RETR of a wrongly listed message succeeded: %q", got)
			}
			if int64(len(got)) > msgs[0].Size {
				t.Fatalf("delivered %d octets, listed %d", len(got), msgs[0].Size)
			}
			mb.Close()
			want := strings.ReplaceAll(strings.ReplaceAll(c.body, "\r\n", "\n"), "\n", "\r\n")
			mb2, msgs2, err := login(t, b)
			if err != nil {
				t.Fatal(err)
			}
			if msgs2[0].Size != int64(len(want)) {
				t.Fatalf("next listing: size %d, want the delivered %d", msgs2[0].Size, len(want))
			}
			if got, err := readAll(mb2, msgs2[0], -1); err != nil || got != want {
				t.Fatalf("next RETR: %q, %v", got, err)
			}
		})
	}
}

// TestTopWithoutLinesSupport: TOP stops after the header and N lines even
// when the store sends the whole message.
func TestTopWithoutLinesSupport(t *testing.T) {
	body := "Subject: big\r\n\r\n" + strings.Repeat("a line of the body\r\n", 200000)
	f := &fake{}
	f.on("GET /messages", list(fmt.Sprintf(`{"id":"m1","size":%d}`, len(body))))
	f.on("GET /messages/m1", raw(body, true))
	b := newBackend(t, cfg(serveFake(t, f)))
	mb, msgs, err := login(t, b)
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range []int{0, 2} {
		got, err := readAll(mb, msgs[0], n)
		want := "Subject: big\r\n\r\n" + strings.Repeat("a line of the body\r\n", n)
		if err != nil || got != want {
			t.Fatalf("TOP %d: %q, %v", n, got, err)
		}
	}
	if q := f.header("GET", "/messages/m1", "Authorization"); len(q) != 2 || q[0] != "Bearer tok" {
		t.Fatalf("authorization headers %q", q)
	}
}

// TestRetryAfter: a 503 with Retry-After on GET /messages is retried a
// bounded number of times.
func TestRetryAfter(t *testing.T) {
	for _, fails := range []int{2, 3} {
		t.Run(fmt.Sprint(fails), func(t *testing.T) {
			f := &fake{}
			n := 0
			ok := list(`{"id":"m1","size":1}`)
			f.on("GET /messages", func(w http.ResponseWriter, r *http.Request) {
				if n++; n <= fails {
					w.Header().Set("Retry-After", "0")
					w.Header().Set("Content-Type", "application/problem+json")
					w.WriteHeader(503)
					io.WriteString(w, `{"title":"busy"}`)
					return
				}
				ok(w, r)
			})
			b := newBackend(t, cfg(serveFake(t, f)))
			_, msgs, err := login(t, b)
			if fails <= 2 && (err != nil || len(msgs) != 1) {
				t.Fatalf("after %d busy answers: %v", fails, err)
			}
			if fails > 2 && !errors.Is(err, backends.ErrUnavailable) {
				t.Fatalf("after %d busy answers: %v, want ErrUnavailable", fails, err)
			}
			if got := len(f.requests("GET", "/messages")); got != min(fails, 2)+1 {
				t.Fatalf("%d requests, want %d", got, min(fails, 2)+1)
			}
		})
	}
}

// TestCommitRetriedOnce: a commit whose connection breaks is sent once
// more with the same Idempotency-Key and body.
func TestCommitRetriedOnce(t *testing.T) {
	f := &fake{}
	f.on("GET /messages", list(`{"id":"m1","size":1},{"id":"m 2","size":1}`))
	calls := 0
	f.on("POST /commit", func(w http.ResponseWriter, r *http.Request) {
		if calls++; calls == 1 {
			c, _, _ := w.(http.Hijacker).Hijack()
			c.Close()
			return
		}
		w.Header().Set("Content-Type", "application/json")
		io.WriteString(w, `{"deleted":["m1"],"not_found":["m 2"]}`)
	})
	b := newBackend(t, cfg(serveFake(t, f)))
	mb, msgs, err := login(t, b)
	if err != nil {
		t.Fatal(err)
	}
	if msgs[1].UIDL != rest.DerivedUIDL("m 2") || !strings.HasPrefix(msgs[1].UIDL, "sha256-") || len(msgs[1].UIDL) != 63 {
		t.Fatalf("UIDL of an id with a space: %q", msgs[1].UIDL)
	}
	if err := mb.Commit(context.Background(), msgs); err != nil {
		t.Fatalf("Commit: %v", err)
	}
	keys := f.header("POST", "/commit", "Idempotency-Key")
	bodies := f.requests("POST", "/commit")
	if len(keys) != 2 || keys[0] != keys[1] || keys[0] == "" || bodies[0] != bodies[1] {
		t.Fatalf("commit requests: keys %q bodies %q", keys, bodies)
	}
	var req struct{ Delete, Seen []string }
	json.Unmarshal([]byte(bodies[0]), &req)
	if strings.Join(req.Delete, ",") != "m1,m 2" || req.Seen == nil {
		t.Fatalf("commit body %s", bodies[0])
	}
}

// TestCommitIncomplete: an id in neither deleted nor not_found, and a 500,
// fail the commit.
func TestCommitIncomplete(t *testing.T) {
	for _, h := range []http.HandlerFunc{
		func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, `{"deleted":["m1"],"not_found":[]}`) },
		func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(500) },
		func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, `{"deleted":["m1","m2"]}`) },
	} {
		f := &fake{}
		f.on("GET /messages", list(`{"id":"m1","size":1},{"id":"m2","size":1}`))
		f.on("POST /commit", h)
		b := newBackend(t, cfg(serveFake(t, f)))
		mb, msgs, err := login(t, b)
		if err != nil {
			t.Fatal(err)
		}
		if err := mb.Commit(context.Background(), msgs); !errors.Is(err, backends.ErrUnavailable) {
			t.Fatalf("Commit: %v, want ErrUnavailable", err)
		}
		mb.Close()
		if n := len(f.requests("POST", "/commit")); n != 1 {
			t.Fatalf("%d commits, want 1 (at most once per session)", n)
		}
	}
}

// TestSnapshotCache: the second login sends If-None-Match and a 304
// reuses the listing.
func TestSnapshotCache(t *testing.T) {
	f := &fake{}
	f.on("GET /messages", list(`{"id":"m1","size":7,"uidl":"u1"}`))
	b := newBackend(t, cfg(serveFake(t, f)))
	mb, first, err := login(t, b)
	if err != nil {
		t.Fatal(err)
	}
	mb.Close()
	_, second, err := login(t, b)
	if err != nil {
		t.Fatal(err)
	}
	inm := f.header("GET", "/messages", "If-None-Match")
	if b.CacheHits() != 1 || len(inm) != 2 || inm[0] != "" || inm[1] != `"s1"` {
		t.Fatalf("cache hits %d, If-None-Match %q", b.CacheHits(), inm)
	}
	if len(second) != 1 || second[0] != first[0] || second[0].UIDL != "u1" {
		t.Fatalf("cached snapshot %+v, first %+v", second, first)
	}
}

// TestBrokenLists: a looping cursor, a state that changes between pages,
// a missing field, an invalid uidl and an endless page are refused.
func TestBrokenLists(t *testing.T) {
	endless := func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, `{"messages":[`)
		chunk := strings.Repeat(`{"id":"x","size":1},`, 1000)
		for i := 0; i < 3000; i++ {
			if _, err := io.WriteString(w, chunk); err != nil {
				return
			}
		}
	}
	for name, h := range map[string]http.HandlerFunc{
		"looping cursor": func(w http.ResponseWriter, r *http.Request) {
			io.WriteString(w, `{"messages":[{"id":"a","size":1}],"next":"c1","state":"s"}`)
		},
		"state changes": func(w http.ResponseWriter, r *http.Request) {
			fmt.Fprintf(w, `{"messages":[],"next":%q,"state":"s%s"}`, "c"+r.URL.Query().Get("cursor"), r.URL.Query().Get("cursor"))
		},
		"no next": func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, `{"messages":[],"state":"s"}`) },
		"bad uidl": func(w http.ResponseWriter, r *http.Request) {
			io.WriteString(w, `{"messages":[{"id":"a","size":1,"uidl":"a b"}],"next":null,"state":"s"}`)
		},
		"no size": func(w http.ResponseWriter, r *http.Request) {
			io.WriteString(w, `{"messages":[{"id":"a"}],"next":null,"state":"s"}`)
		},
		"endless":  endless,
		"not json": func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, `<html>`) },
		"401":      func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(401) },
		"bad state": func(w http.ResponseWriter, r *http.Request) {
			io.WriteString(w, `{"messages":[],"next":null,"state":"a\"b"}`)
		},
	} {
		t.Run(name, func(t *testing.T) {
			f := &fake{}
			f.on("GET /messages", h)
			b := newBackend(t, cfg(serveFake(t, f)))
			_, _, err := login(t, b)
			if !errors.Is(err, backends.ErrUnavailable) {
				t.Fatalf("Snapshot: %v, want ErrUnavailable", err)
			}
		})
	}
}

// TestLoginStatuses maps the answers to POST /sessions to POP3 codes, and
// checks what popgate sends.
func TestLoginStatuses(t *testing.T) {
	for status, want := range map[int]*backends.Error{
		401: backends.ErrAuthFailed, 403: backends.ErrAuthFailed, 423: backends.ErrInUse,
		429: backends.ErrUnavailable, 503: backends.ErrUnavailable, 500: backends.ErrUnavailable, 400: backends.ErrUnavailable,
	} {
		f := &fake{}
		f.on("POST /sessions", func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Retry-After", "1")
			w.WriteHeader(status)
		})
		b := newBackend(t, cfg(serveFake(t, f), func(c *rest.Config) { c.Headers = map[string]string{"X-Api-Key": "k"} }))
		_, err := b.Login(context.Background(), creds)
		if !errors.Is(err, want) {
			t.Errorf("HTTP %d: %v, want %v", status, err, want)
		}
		if err != nil && strings.Contains(err.Error(), creds.Password) {
			t.Errorf("error holds the password: %v", err)
		}
		if h := f.header("POST", "/sessions", "X-Api-Key"); len(h) != 1 || h[0] != "k" {
			t.Errorf("configured header: %q (one request, no retry of a login)", h)
		}
	}
}

// TestStalledBody: a store that stops sending mid-message fails the read
// (command_timeout is a deadline on every read), it does not hang.
func TestStalledBody(t *testing.T) {
	f := &fake{}
	release := make(chan struct{})
	t.Cleanup(func() { close(release) })
	f.on("GET /messages", list(`{"id":"m1","size":100}`))
	f.on("GET /messages/m1", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", "100")
		io.WriteString(w, "Subject: stall\r\n")
		w.(http.Flusher).Flush()
		select {
		case <-release:
		case <-r.Context().Done():
		}
	})
	b := newBackend(t, cfg(serveFake(t, f), func(c *rest.Config) { c.CommandTimeout = 300 * time.Millisecond }))
	mb, msgs, err := login(t, b)
	if err != nil {
		t.Fatal(err)
	}
	got, err := readAll(mb, msgs[0], -1)
	if err == nil || got != "Subject: stall\r\n" {
		t.Fatalf("stalled body: %q, %v", got, err)
	}
}

// TestSeenAtClose: without a commit, Close sends the seen marks of the
// complete RETRs (not TOP) in a commit with nothing to delete, then ends
// the session.
func TestSeenAtClose(t *testing.T) {
	f := &fake{}
	f.on("GET /messages", list(`{"id":"m1","size":3},{"id":"m2","size":3}`))
	f.on("GET /messages/m1", raw("a\r\n", true))
	f.on("GET /messages/m2", raw("b\r\n", true))
	f.on("POST /commit", func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, `{"deleted":[],"not_found":[]}`)
	})
	b := newBackend(t, cfg(serveFake(t, f)))
	mb, msgs, err := login(t, b)
	if err != nil {
		t.Fatal(err)
	}
	readAll(mb, msgs[0], -1)
	readAll(mb, msgs[1], 0)
	mb.Close()
	bodies := f.requests("POST", "/commit")
	if len(bodies) != 1 || bodies[0] != `{"delete":[],"seen":["m1"]}` {
		t.Fatalf("commits at close: %q", bodies)
	}
	if len(f.requests("DELETE", "/sessions/current")) != 1 {
		t.Fatal("session not ended")
	}
}

// TestConfigChecks: the configuration rules of the rest type.
func TestConfigChecks(t *testing.T) {
	for _, c := range []struct {
		cfg  rest.Config
		want string
	}{
		{cfg(""), "url: required"},
		{cfg("ftp://x/y"), "want http(s)"},
		{cfg("https://x/y", func(c *rest.Config) { c.Delete.Policy = "move"; c.Delete.Folder = "Trash" }), "no folders"},
		{cfg("https://x/y", func(c *rest.Config) { c.Headers = map[string]string{"authorization": "x"} }), "set by popgate"},
		{cfg("https://x/y", func(c *rest.Config) { c.CommandTimeout = -1 }), "command_timeout"},
		{cfg("http://x/y", func(c *rest.Config) { c.InsecureSkipVerify = true }), "url: http://, but"},
	} {
		err := backends.CheckConfig(&c.cfg)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%+v: %v, want %q", c.cfg, err, c.want)
		}
	}
}
