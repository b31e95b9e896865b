package jmap

import (
	"bufio"
	"context"
	"crypto/sha1"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/popgate/popgate/backends"
	"github.com/popgate/popgate/proxy"
)

// fakeJMAP is a minimal in-process JMAP server for the faults Cyrus cannot
// produce on demand: one account "alice", one inbox, the calls popgate
// makes, and hooks that answer instead of it.
type fakeJMAP struct {
	t   *testing.T
	srv *httptest.Server

	mu     sync.Mutex
	state  int
	emails []*fakeEmail

	// hook, when set, may answer a request itself (return true).
	hook func(w http.ResponseWriter, r *http.Request, kind string) bool
	// bearer, when set, decides requests with a bearer token instead of
	// alice's password.
	bearer   func(token string) bool
	requests map[string]*atomic.Int64 // by kind: session, api, download, and each method name
}

type fakeEmail struct {
	id, blob string
	raw      []byte
	gone     bool
}

const fakeInbox = "inbox1"

func newFake(t *testing.T, msgs ...string) *fakeJMAP {
	f := &fakeJMAP{t: t, state: 1, requests: map[string]*atomic.Int64{}}
	for _, k := range []string{"session", "api", "download", "Mailbox/get", "Email/query", "Email/get", "Email/changes", "Email/set"} {
		f.requests[k] = new(atomic.Int64)
	}
	for i, m := range msgs {
		sum := sha1.Sum([]byte(m))
		f.emails = append(f.emails, &fakeEmail{id: fmt.Sprintf("e%d", i), blob: "B" + hex.EncodeToString(sum[:]), raw: []byte(m)})
	}
	f.srv = httptest.NewServer(f)
	t.Cleanup(f.srv.Close)
	return f
}

func (f *fakeJMAP) count(kind string) int64 { return f.requests[kind].Load() }

func (f *fakeJMAP) backend(t *testing.T, tweak func(*Config)) *Backend {
	cfg := DefaultConfig()
	cfg.Name, cfg.URL, cfg.CommandTimeout = "fake", f.srv.URL+"/.well-known/jmap", 5*time.Second
	if tweak != nil {
		tweak(&cfg)
	}
	b, err := New(cfg, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	return b
}

var alice = backends.Credentials{Username: "alice", Password: "alice-pw", Mechanism: "USER"}

func (f *fakeJMAP) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	kind := "api"
	switch {
	case r.URL.Path == "/.well-known/jmap":
		kind = "session"
	case strings.HasPrefix(r.URL.Path, "/download/"):
		kind = "download"
	}
	f.requests[kind].Add(1)
	if tok, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer "); ok && f.bearer != nil {
		if !f.bearer(tok) {
			w.Header().Set("WWW-Authenticate", `Bearer error="invalid_token"`)
			http.Error(w, "no", http.StatusUnauthorized)
			return
		}
	} else if u, p, ok := r.BasicAuth(); !ok || u != "alice" || p != "alice-pw" {
		w.Header().Set("WWW-Authenticate", `Basic realm="fake"`)
		http.Error(w, "no", http.StatusUnauthorized)
		return
	}
	if f.hook != nil && f.hook(w, r, kind) {
		return
	}
	switch kind {
	case "session":
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprintf(w, `{"username":"alice","apiUrl":"/api/","downloadUrl":"/download/{accountId}/{blobId}/{name}?accept={type}",`+
			`"uploadUrl":"/upload/","eventSourceUrl":"/es/","state":"0",`+
			`"capabilities":{"%s":{"maxObjectsInGet":100,"maxObjectsInSet":100,"maxCallsInRequest":16,"maxSizeRequest":1000000},"%s":{}},`+
			`"accounts":{"A1":{"name":"alice","isPersonal":true,"isReadOnly":false,"accountCapabilities":{"%s":{}}}},`+
			`"primaryAccounts":{"%s":"A1"}}`, capCore, capMail, capMail, capMail)
	case "download":
		parts := strings.Split(r.URL.Path, "/")
		if len(parts) < 4 || parts[2] != "A1" {
			http.NotFound(w, r)
			return
		}
		f.mu.Lock()
		var raw []byte
		for _, e := range f.emails {
			if e.blob == parts[3] {
				raw = e.raw
			}
		}
		f.mu.Unlock()
		if raw == nil {
			http.NotFound(w, r)
			return
		}
		w.Header().Set("Content-Type", "message/rfc822")
		w.Write(raw)
	default:
		f.api(w, r)
	}
}

func (f *fakeJMAP) api(w http.ResponseWriter, r *http.Request) {
	var req struct {
		MethodCalls [][3]json.RawMessage `json:"methodCalls"`
	}
	if err := json.NewDecoder(r.Body).Decode(&req); err != nil {
		http.Error(w, err.Error(), 400)
		return
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []any
	results := map[string]map[string]any{}
	for _, c := range req.MethodCalls {
		var name, id string
		json.Unmarshal(c[0], &name)
		json.Unmarshal(c[2], &id)
		if k, ok := f.requests[name]; ok {
			k.Add(1)
		}
		var args map[string]json.RawMessage
		json.Unmarshal(c[1], &args)
		res := f.method(name, args, results)
		results[id] = res
		out = append(out, []any{name, res, id})
	}
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(map[string]any{"methodResponses": out, "sessionState": "0"})
}

func (f *fakeJMAP) live() []*fakeEmail {
	var out []*fakeEmail
	for _, e := range f.emails {
		if !e.gone {
			out = append(out, e)
		}
	}
	return out
}

func (f *fakeJMAP) method(name string, args map[string]json.RawMessage, results map[string]map[string]any) map[string]any {
	st := strconv.Itoa(f.state)
	switch name {
	case "Mailbox/get":
		return map[string]any{"accountId": "A1", "state": st, "list": []any{map[string]any{"id": fakeInbox, "name": "Inbox", "role": "inbox", "parentId": nil}}, "notFound": []string{}}
	case "Email/query":
		var pos, limit int
		json.Unmarshal(args["position"], &pos)
		json.Unmarshal(args["limit"], &limit)
		live := f.live()
		ids := []string{}
		for i := pos; i < len(live) && i < pos+limit; i++ {
			ids = append(ids, live[i].id)
		}
		return map[string]any{"accountId": "A1", "queryState": st, "canCalculateChanges": false, "position": pos, "total": len(live), "ids": ids}
	case "Email/get":
		var ids []string
		if ref, ok := args["#ids"]; ok {
			var rr struct{ ResultOf string }
			json.Unmarshal(ref, &rr)
			ids = results[rr.ResultOf]["ids"].([]string)
		} else {
			json.Unmarshal(args["ids"], &ids)
		}
		list := []any{}
		notFound := []string{}
		for _, id := range ids {
			found := false
			for _, e := range f.live() {
				if e.id == id {
					list = append(list, map[string]any{"id": e.id, "blobId": e.blob, "size": len(e.raw), "mailboxIds": map[string]bool{fakeInbox: true}})
					found = true
				}
			}
			if !found {
				notFound = append(notFound, id)
			}
		}
		return map[string]any{"accountId": "A1", "state": st, "list": list, "notFound": notFound}
	case "Email/changes":
		var since string
		json.Unmarshal(args["sinceState"], &since)
		upd := []string{}
		if since != st {
			upd = append(upd, "x")
		}
		return map[string]any{"accountId": "A1", "oldState": since, "newState": st, "hasMoreChanges": false, "created": []string{}, "updated": upd, "destroyed": []string{}}
	case "Email/set":
		var destroy []string
		json.Unmarshal(args["destroy"], &destroy)
		var update map[string]any
		json.Unmarshal(args["update"], &update)
		old := st
		for _, id := range destroy {
			for _, e := range f.emails {
				if e.id == id {
					e.gone = true
				}
			}
		}
		if len(destroy)+len(update) > 0 {
			f.state++
		}
		return map[string]any{"accountId": "A1", "oldState": old, "newState": strconv.Itoa(f.state), "destroyed": destroy}
	}
	return map[string]any{}
}

func fakeSession(t *testing.T, b *Backend) (backends.Mailbox, []backends.Message) {
	t.Helper()
	mb, err := b.Login(context.Background(), alice)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { mb.Close() })
	snap, err := mb.Snapshot(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return mb, snap
}

func clientCode(err error) backends.Code {
	c, _ := backends.ClientError(err)
	return c
}

const msgA = "Subject: a\r\n\r\nline 1\r\nline 2\r\n"
const msgB = "Subject: b\r\n\r\n" + "0123456789012345678901234567890123456789012345678901234567890123456789\r\n"

// 429 with Retry-After is waited out for the idempotent calls (session,
// queries, download); Email/set is never repeated.
func TestFakeRetryAfter(t *testing.T) {
	f := newFake(t, msgA, msgB)
	var left atomic.Int64
	f.hook = func(w http.ResponseWriter, r *http.Request, kind string) bool {
		if left.Add(-1) >= 0 {
			w.Header().Set("Retry-After", "0")
			http.Error(w, "slow down", http.StatusTooManyRequests)
			return true
		}
		return false
	}
	b := f.backend(t, nil)
	left.Store(2) // the session GET answered 429 twice
	mb, snap := fakeSession(t, b)
	if f.count("session") != 3 || len(snap) != 2 {
		t.Fatalf("session requests %d (want 3), %d messages", f.count("session"), len(snap))
	}
	left.Store(1)
	r, err := mb.Open(context.Background(), snap[0], -1)
	if err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(r)
	r.Close()
	if err != nil || string(got) != msgA {
		t.Fatalf("RETR after a 429: %q, %v", got, err)
	}
	left.Store(1)
	// The 429 hits Commit's first call, the Email/get of policy expunge:
	// retried; the Email/set then goes out once.
	if err := mb.Commit(context.Background(), snap[:1]); err != nil {
		t.Fatalf("Commit after a 429 on its Email/get: %v", err)
	}
	if f.count("Email/set") != 1 || len(f.live()) != 1 {
		t.Fatalf("Email/set requests %d, %d messages left", f.count("Email/set"), len(f.live()))
	}

	// A 429 on the Email/set itself: not retried.
	f2 := newFake(t, msgA)
	b2 := f2.backend(t, nil)
	mb2, snap2 := fakeSession(t, b2)
	f2.hook = func(w http.ResponseWriter, r *http.Request, kind string) bool {
		if kind != "api" {
			return false
		}
		body, _ := io.ReadAll(r.Body)
		r.Body = io.NopCloser(strings.NewReader(string(body)))
		if strings.Contains(string(body), `"Email/set"`) {
			f2.requests["Email/set"].Add(1)
			w.Header().Set("Retry-After", "0")
			http.Error(w, "slow down", http.StatusTooManyRequests)
			return true
		}
		return false
	}
	err = mb2.Commit(context.Background(), snap2)
	if err == nil || clientCode(err) != backends.CodeSysTemp || f2.count("Email/set") != 1 {
		t.Fatalf("Email/set 429: %v after %d requests; want [SYS/TEMP] after 1", err, f2.count("Email/set"))
	}
	if len(f2.live()) != 1 {
		t.Fatal("message removed although the commit failed")
	}

	// A Retry-After beyond what popgate waits: no retry, [SYS/TEMP].
	f3 := newFake(t, msgA)
	f3.hook = func(w http.ResponseWriter, r *http.Request, kind string) bool {
		w.Header().Set("Retry-After", "3600")
		http.Error(w, "later", http.StatusServiceUnavailable)
		return true
	}
	_, err = f3.backend(t, nil).Login(context.Background(), alice)
	if err == nil || clientCode(err) != backends.CodeSysTemp || f3.count("session") != 1 {
		t.Fatalf("503 Retry-After 3600: %v after %d requests", err, f3.count("session"))
	}
}

// Malformed JSON in the session resource or an API answer: [SYS/TEMP].
func TestFakeMalformedJSON(t *testing.T) {
	for _, tc := range []struct {
		kind, body string
	}{
		{"session", `{"apiUrl": "/api/", "capabilities": {`},
		{"session", `<html>oops</html>`},
		{"api", `{"methodResponses":[["Mailbox/get",{"list":[{"id":"inbox1","role":"inbox"`},
		{"api", `{"methodResponses":[["Email/query",{"ids":"nope"},"q0"]]}`},
		{"api", `[]`},
	} {
		f := newFake(t, msgA)
		f.hook = func(w http.ResponseWriter, r *http.Request, kind string) bool {
			if kind != tc.kind {
				return false
			}
			w.Header().Set("Content-Type", "application/json")
			io.WriteString(w, tc.body)
			return true
		}
		b := f.backend(t, nil)
		mb, err := b.Login(context.Background(), alice)
		if err == nil {
			_, err = mb.Snapshot(context.Background())
			mb.Close()
		}
		if err == nil || clientCode(err) != backends.CodeSysTemp {
			t.Errorf("%s %q: %v, want [SYS/TEMP]", tc.kind, tc.body, err)
		}
	}
}

// cutAfter answers a download with a Content-Length of the whole message
// but only n octets of it, then drops the connection.
func cutAfter(n int) func(w http.ResponseWriter, r *http.Request, kind string) bool {
	return func(w http.ResponseWriter, r *http.Request, kind string) bool {
		if kind != "download" {
			return false
		}
		conn, buf, err := w.(http.Hijacker).Hijack()
		if err != nil {
			return true
		}
		defer conn.Close()
		fmt.Fprintf(buf, "HTTP/1.1 200 OK\r\nContent-Type: message/rfc822\r\nContent-Length: %d\r\n\r\n", len(msgB))
		buf.WriteString(msgB[:n])
		buf.Flush()
		return true
	}
}

// A body cut mid-RETR is an error, never a short message ending cleanly;
// through the proxy the client is disconnected without the terminating
// dot.
func TestFakeBodyCut(t *testing.T) {
	f := newFake(t, msgA, msgB)
	b := f.backend(t, nil)
	mb, snap := fakeSession(t, b)
	f.hook = cutAfter(30)
	r, err := mb.Open(context.Background(), snap[1], -1)
	if err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(r)
	r.Close()
	if err == nil || !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Fatalf("cut body: read %d octets, err %v; want an unexpected EOF", len(got), err)
	}

	// Through the POP3 engine.
	lines := pop3(t, b, "RETR 2")
	last := lines[len(lines)-1]
	if !strings.HasPrefix(lines[0], "+OK") || last == "." || strings.Contains(strings.Join(lines, "\n"), "\n.\n") {
		t.Fatalf("client saw %q: want +OK then a dropped connection without the final dot", lines)
	}
	if len(f.live()) != 2 {
		t.Fatal("messages deleted")
	}
}

// pop3 runs a POP3 session against a proxy in front of b: USER, PASS,
// cmd, then reads until the server closes (or QUIT's answer).
func pop3(t *testing.T, b backends.Backend, cmd string) []string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := proxy.New(proxy.Options{Backend: b, AllowPlaintext: true, AuthFailureDelay: -1, Logger: testLogger(t)})
	go srv.Serve(l, proxy.ListenerConfig{Name: "test", TLS: proxy.TLSNone})
	t.Cleanup(func() { l.Close() })
	c, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(30 * time.Second))
	br := bufio.NewReader(c)
	br.ReadString('\n')
	fmt.Fprintf(c, "USER alice\r\nPASS alice-pw\r\n")
	for i := 0; i < 2; i++ {
		if l, _ := br.ReadString('\n'); !strings.HasPrefix(l, "+OK") {
			t.Fatalf("login: %q", l)
		}
	}
	fmt.Fprintf(c, "%s\r\nQUIT\r\n", cmd)
	var out []string
	for {
		l, err := br.ReadString('\n')
		if l != "" {
			out = append(out, strings.TrimRight(l, "\r\n"))
		}
		if err != nil {
			return out
		}
	}
}

// A body that stalls: the read deadline ends it with an error.
func TestFakeStalledBody(t *testing.T) {
	f := newFake(t, msgA, msgB)
	release := make(chan struct{})
	t.Cleanup(func() { close(release) })
	f.hook = func(w http.ResponseWriter, r *http.Request, kind string) bool {
		if kind != "download" {
			return false
		}
		w.Header().Set("Content-Length", strconv.Itoa(len(msgB)))
		io.WriteString(w, msgB[:20])
		w.(http.Flusher).Flush()
		select {
		case <-release:
		case <-r.Context().Done():
		}
		return true
	}
	b := f.backend(t, func(c *Config) { c.CommandTimeout = 300 * time.Millisecond })
	mb, snap := fakeSession(t, b)
	r, err := mb.Open(context.Background(), snap[1], -1)
	if err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(r)
	r.Close()
	if err == nil || !strings.Contains(err.Error(), "no data for") {
		t.Fatalf("stalled body: %d octets, err %v; want the read deadline's error", len(got), err)
	}
}

// A message another client destroyed: ErrMessageGone even though the
// download still works (Cyrus' delayed expunge), and the session goes on.
func TestFakeDestroyedMeanwhile(t *testing.T) {
	f := newFake(t, msgA, msgB)
	b := f.backend(t, nil)
	mb, snap := fakeSession(t, b)
	f.mu.Lock()
	f.emails[0].gone = true // the blob stays downloadable
	f.mu.Unlock()
	f.hook = func(w http.ResponseWriter, r *http.Request, kind string) bool {
		if kind == "download" {
			io.WriteString(w, msgA)
			return true
		}
		return false
	}
	if _, err := mb.Open(context.Background(), snap[0], -1); !errors.Is(err, backends.ErrMessageGone) {
		t.Fatalf("destroyed message: %v, want ErrMessageGone", err)
	}
	f.hook = nil
	r, err := mb.Open(context.Background(), snap[1], 0)
	if err != nil {
		t.Fatal(err)
	}
	got, _ := io.ReadAll(r)
	r.Close()
	if string(got) != "Subject: b\r\n\r\n" {
		t.Fatalf("TOP 2 0 = %q", got)
	}
}

// A store that keeps bare LF line endings: the first RETR measures the
// blob and answers [SYS/TEMP]; the next session lists the CRLF size and
// delivers exactly that. TOP delivers CRLF at once.
func TestFakeBareLF(t *testing.T) {
	lf := "Subject: lf\n\nline 1\nline 2\n"
	crlf := strings.ReplaceAll(lf, "\n", "\r\n")
	f := newFake(t, lf)
	b := f.backend(t, nil)
	mb, snap := fakeSession(t, b)
	if snap[0].Size != int64(len(lf)) {
		t.Fatalf("size %d", snap[0].Size)
	}
	r, err := mb.Open(context.Background(), snap[0], 1)
	if err != nil {
		t.Fatal(err)
	}
	got, _ := io.ReadAll(r)
	r.Close()
	if string(got) != "Subject: lf\r\n\r\nline 1\r\n" {
		t.Fatalf("TOP 1 = %q", got)
	}
	r, err = mb.Open(context.Background(), snap[0], -1)
	if err == nil {
		_, err = io.ReadAll(r)
		r.Close()
	}
	if err == nil || clientCode(err) != backends.CodeSysTemp {
		t.Fatalf("first RETR of a bare-LF blob: %v, want [SYS/TEMP]", err)
	}
	mb.Close()
	mb2, snap2 := fakeSession(t, b)
	if snap2[0].Size != int64(len(crlf)) {
		t.Fatalf("next session lists %d, want the CRLF size %d", snap2[0].Size, len(crlf))
	}
	r, err = mb2.Open(context.Background(), snap2[0], -1)
	if err != nil {
		t.Fatal(err)
	}
	got, err = io.ReadAll(r)
	r.Close()
	if err != nil || string(got) != crlf {
		t.Fatalf("RETR = %q, %v; want %q", got, err, crlf)
	}
}

// Wrong password: [AUTH] without the password in the error.
func TestFakeAuth(t *testing.T) {
	f := newFake(t, msgA)
	bad := alice
	bad.Password = "s3cret-wrong"
	_, err := f.backend(t, nil).Login(context.Background(), bad)
	if !errors.Is(err, backends.ErrAuthFailed) || strings.Contains(err.Error(), bad.Password) {
		t.Fatalf("wrong password: %v", err)
	}
}

// UIDLs: a valid id is the UIDL; a long one becomes a stable digest.
func TestUIDL(t *testing.T) {
	if UIDL("Mdd74feb74dddd6596a100883") != "Mdd74feb74dddd6596a100883" {
		t.Fatal("valid id changed")
	}
	long := strings.Repeat("x", 100)
	u := UIDL(long)
	if !validUIDL(u) || u != UIDL(long) || u == UIDL(long+"y") {
		t.Fatalf("digest UIDL %q", u)
	}
}

func TestConfigValidate(t *testing.T) {
	ok := DefaultConfig()
	ok.URL = "https://jmap.example.com/.well-known/jmap"
	if err := ok.Validate(); err != nil {
		t.Fatal(err)
	}
	for _, tweak := range []func(*Config){
		func(c *Config) { c.URL = "" },
		func(c *Config) { c.URL = "ftp://x/" },
		func(c *Config) { c.Mailbox, c.MailboxRole = "A", "inbox" },
		func(c *Config) { c.Delete.Policy, c.Delete.Keyword = "flag", "bad word" },
		func(c *Config) { c.Delete.Policy, c.Delete.Folder = "move", "role:inbox" },
		func(c *Config) { c.Delete.Folder = "Trash" },
		func(c *Config) { c.Delete.Policy = "nuke" },
	} {
		c := ok
		tweak(&c)
		if c.Validate() == nil {
			t.Errorf("%+v: accepted", c)
		}
	}
	// policy move without a folder moves to the trash role.
	mv := ok
	mv.Delete.Policy = "move"
	if err := mv.Validate(); err != nil || !strings.Contains(mv.Summary(), "move to role:trash") {
		t.Fatalf("policy move without folder: %v, summary %q", err, mv.Summary())
	}
}
