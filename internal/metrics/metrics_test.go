package metrics_test

import (
	"context"
	"io"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/popgate/popgate/backends"
	"github.com/popgate/popgate/internal/metrics"
)

type fakeBackend struct{}

func (fakeBackend) Close() error { return nil }

func (fakeBackend) Login(context.Context, backends.Credentials) (backends.Mailbox, error) {
	return fakeMailbox{}, nil
}

type fakeMailbox struct{}

func (fakeMailbox) Snapshot(context.Context) ([]backends.Message, error) { return nil, nil }
func (fakeMailbox) Open(context.Context, backends.Message, int) (io.ReadCloser, error) {
	return io.NopCloser(strings.NewReader("")), nil
}
func (fakeMailbox) Commit(context.Context, []backends.Message) error { return nil }
func (fakeMailbox) Close() error                                     { return nil }
func (fakeMailbox) MaildropID() string                               { return "drop-7" }

func scrape(t *testing.T, m *metrics.Metrics) string {
	t.Helper()
	rec := httptest.NewRecorder()
	m.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	return rec.Body.String()
}

func TestCounters(t *testing.T) {
	m := metrics.New(metrics.Build{Version: "1", Commit: "c", GoVersion: "g"})
	m.SessionStarted()
	m.SessionStarted()
	m.SessionEnded("quit", 1234)
	m.Login(metrics.LoginOK)
	m.Login(metrics.LoginInUse)
	m.LockTaken(time.Millisecond, true)
	m.Commit("ok", 3)
	m.Commit("not_confirmed", 2)
	m.Throttled("auth_failures")
	m.TokenRefresh(true)
	m.ProxyRefused("untrusted")
	m.SnapshotCache(true)
	b := m.Backend("corp", fakeBackend{})
	mb, err := b.Login(context.Background(), backends.Credentials{Username: "alice"})
	if err != nil {
		t.Fatal(err)
	}
	if id := backends.MaildropID(mb, backends.Credentials{Username: "alice"}); id != "drop-7" {
		t.Fatalf("the wrapped mailbox lost MaildropID: %q", id)
	}
	if _, ok := backends.Find[backends.MaildropIdentifier](mb); !ok {
		t.Fatal("the wrapped mailbox cannot be unwrapped")
	}
	mb.Snapshot(context.Background())
	mb.Commit(context.Background(), nil)
	mb.Close()
	out := scrape(t, m)
	for _, want := range []string{
		"popgate_sessions_open 1",
		`popgate_sessions_ended_total{end="quit"} 1`,
		"popgate_sent_octets_total 1234",
		`popgate_logins_total{result="ok"} 1`,
		`popgate_logins_total{result="in_use"} 1`,
		`popgate_logins_total{result="auth"} 0`,
		"popgate_lock_conflicts_total 1",
		"popgate_lock_wait_seconds_count 1",
		`popgate_commits_total{result="ok"} 1`,
		`popgate_commits_total{result="not_confirmed"} 1`,
		"popgate_deleted_messages_total 3",
		"popgate_lock_confirm_failures_total 1",
		`popgate_throttled_logins_total{reason="auth_failures"} 1`,
		`popgate_token_refreshes_total{result="ok"} 1`,
		`popgate_proxy_protocol_refused_total{reason="untrusted"} 1`,
		`popgate_snapshot_cache_total{result="hit"} 1`,
		`popgate_upstream_call_duration_seconds_count{backend="corp",operation="login"} 1`,
		`popgate_upstream_call_duration_seconds_count{backend="corp",operation="snapshot"} 1`,
		`popgate_upstream_call_duration_seconds_count{backend="corp",operation="commit"} 1`,
		`popgate_upstream_call_duration_seconds_count{backend="corp",operation="close"} 1`,
	} {
		if !strings.Contains(out, want+"\n") {
			t.Errorf("scrape lacks %q", want)
		}
	}
	if strings.Contains(out, "alice") {
		t.Error("a user name reached a label")
	}
}

// TestNil: every method is a no-op on a nil *Metrics.
func TestNil(t *testing.T) {
	var m *metrics.Metrics
	m.SessionStarted()
	m.SessionEnded("quit", 1)
	m.Login("ok")
	m.LockTaken(0, true)
	m.Commit("ok", 1)
	m.Throttled("x")
	m.TokenRefresh(false)
	m.ProxyRefused("x")
	m.SnapshotCache(false)
	m.SetReady(true)
	m.SetRedisUp(true)
	m.EnableRedis()
	m.Time("b", "op")()
	if b := m.Backend("x", fakeBackend{}); b != (fakeBackend{}) {
		t.Fatal("nil metrics wrapped the backend")
	}
}
