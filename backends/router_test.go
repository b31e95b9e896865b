package backends

import (
	"bytes"
	"context"
	"errors"
	"io"
	"strings"
	"testing"

	"github.com/rs/zerolog"
)

// recorder is a Backend that remembers the credentials it was given.
type recorder struct {
	name  string
	got   []Credentials
	fail  error
	idFor func(user string) string
}

type recMailbox struct {
	user string
	id   string
}

func (m *recMailbox) Snapshot(context.Context) ([]Message, error) { return nil, nil }
func (m *recMailbox) Open(context.Context, Message, int) (io.ReadCloser, error) {
	return nil, ErrMessageGone
}
func (m *recMailbox) Commit(context.Context, []Message) error { return nil }
func (m *recMailbox) Close() error                            { return nil }
func (m *recMailbox) MaildropID() string                      { return m.id }

func (r *recorder) Close() error { return nil }

func (r *recorder) Login(_ context.Context, c Credentials) (Mailbox, error) {
	r.got = append(r.got, c)
	if r.fail != nil {
		return nil, r.fail
	}
	mb := &recMailbox{user: c.Username}
	if r.idFor != nil {
		mb.id = r.idFor(c.Username)
	}
	return mb, nil
}

func newTestRouter(t *testing.T, log zerolog.Logger, routes ...Route) (*Router, map[string]*recorder) {
	t.Helper()
	recs := map[string]*recorder{"corp": {name: "corp"}, "legacy": {name: "legacy"}, "all": {name: "all"}}
	bs := map[string]Backend{}
	for n, r := range recs {
		bs[n] = r
	}
	rt, err := NewRouter(routes, bs, log)
	if err != nil {
		t.Fatal(err)
	}
	return rt, recs
}

func TestRouterFirstMatchWins(t *testing.T) {
	rt, _ := newTestRouter(t, zerolog.Nop(),
		Route{Match: "boss@Corp.example", Backend: "legacy"},
		Route{Match: "*@corp.example", Backend: "corp", StripDomain: true},
		Route{Match: "printer", Backend: "legacy", AddDomain: "corp.example"},
		Route{Match: "*@old.example", Backend: "legacy", StripDomain: true, AddDomain: "corp.example"},
		Route{Match: "*", Backend: "all"},
	)
	for _, tc := range []struct{ login, backend, upstream string }{
		{"boss@corp.example", "legacy", "boss@corp.example"}, // exact, domain case-insensitive
		{"boss@CORP.EXAMPLE", "legacy", "boss@CORP.EXAMPLE"},
		{"Boss@corp.example", "corp", "Boss"}, // local part is exact: falls to the domain route
		{"alice@corp.example", "corp", "alice"},
		{"alice@Corp.Example", "corp", "alice"},
		{"printer", "legacy", "printer@corp.example"},
		{"printer@x.example", "all", "printer@x.example"}, // exact name without domain does not match with one
		{"bob@old.example", "legacy", "bob@corp.example"}, // strip then add = replace the domain
		{"a@b@old.example", "legacy", "a@b@corp.example"}, // the domain is after the last '@'
		{"carol", "all", "carol"},
		{"carol@corp.example.org", "all", "carol@corp.example.org"},
	} {
		b, u, ok := rt.Resolve(tc.login)
		if !ok || b != tc.backend || u != tc.upstream {
			t.Errorf("Resolve(%q) = %q, %q, %v; want %q, %q", tc.login, b, u, ok, tc.backend, tc.upstream)
		}
	}
}

func TestRouterLoginPassesRewrittenCredentials(t *testing.T) {
	rt, recs := newTestRouter(t, zerolog.Nop(), Route{Match: "*@corp.example", Backend: "corp", StripDomain: true})
	mb, err := rt.Login(context.Background(), Credentials{Username: "alice@corp.example", Password: "s3cret", Mechanism: "PLAIN", TLS: true})
	if err != nil {
		t.Fatal(err)
	}
	got := recs["corp"].got
	if len(got) != 1 || got[0].Username != "alice" || got[0].Password != "s3cret" || got[0].Mechanism != "PLAIN" || !got[0].TLS {
		t.Fatalf("backend got %v", got)
	}
	// the maildrop lock key holds the backend name and the upstream user
	if id := MaildropID(mb, Credentials{Username: "alice@corp.example"}); id != "corp/alice" {
		t.Errorf("MaildropID = %q, want corp/alice", id)
	}
	if u, ok := mb.(interface{ Unwrap() Mailbox }); !ok || u.Unwrap().(*recMailbox).user != "alice" {
		t.Errorf("routed mailbox does not unwrap to the backend's")
	}
}

func TestRouterMaildropIDUsesBackendID(t *testing.T) {
	rt, recs := newTestRouter(t, zerolog.Nop(), Route{Match: "*", Backend: "corp"})
	recs["corp"].idFor = func(u string) string { return strings.ToLower(u) }
	mb, err := rt.Login(context.Background(), Credentials{Username: "Alice"})
	if err != nil {
		t.Fatal(err)
	}
	if id := MaildropID(mb, Credentials{Username: "Alice"}); id != "corp/alice" {
		t.Errorf("MaildropID = %q, want corp/alice", id)
	}
	// a backend whose id already names it is not prefixed twice
	recs["corp"].idFor = func(u string) string { return "corp/" + u }
	mb, err = rt.Login(context.Background(), Credentials{Username: "bob"})
	if err != nil {
		t.Fatal(err)
	}
	if id := MaildropID(mb, Credentials{Username: "bob"}); id != "corp/bob" {
		t.Errorf("MaildropID = %q, want corp/bob", id)
	}
}

func TestRouterNoMatchIsAuthFailureLoggedNotTold(t *testing.T) {
	var logs bytes.Buffer
	rt, recs := newTestRouter(t, zerolog.New(&logs), Route{Match: "*@corp.example", Backend: "corp"})
	_, err := rt.Login(context.Background(), Credentials{Username: "mallory@evil.example", Password: "hunter2"})
	if !errors.Is(err, ErrAuthFailed) {
		t.Fatalf("err = %v, want ErrAuthFailed", err)
	}
	code, text := ClientError(err)
	if code != CodeAuth || text != ErrAuthFailed.Text {
		t.Errorf("client sees [%s] %s, want the generic auth failure", code, text)
	}
	if len(recs["corp"].got) != 0 {
		t.Errorf("a backend was asked")
	}
	if !strings.Contains(logs.String(), "no route matches") || !strings.Contains(logs.String(), "mallory@evil.example") {
		t.Errorf("log lacks the reason: %s", logs.String())
	}
	if strings.Contains(logs.String(), "hunter2") || strings.Contains(err.Error(), "hunter2") {
		t.Errorf("password leaked")
	}
}

func TestRouterPassesBackendErrors(t *testing.T) {
	rt, recs := newTestRouter(t, zerolog.Nop(), Route{Match: "*", Backend: "corp"})
	recs["corp"].fail = ErrUnavailable.Wrap(errors.New("dial tcp: refused"))
	if _, err := rt.Login(context.Background(), Credentials{Username: "a"}); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("err = %v", err)
	}
}

func TestNewRouterRejectsBadRoutes(t *testing.T) {
	bs := map[string]Backend{"a": &recorder{}}
	for _, r := range []Route{{Match: "*", Backend: "nope"}, {Match: "a*", Backend: "a"}, {Match: "", Backend: "a"}, {Match: "*@x*", Backend: "a"}} {
		if _, err := NewRouter([]Route{r}, bs, zerolog.Nop()); err == nil {
			t.Errorf("NewRouter(%+v) accepted", r)
		}
	}
}
