package rest_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"

	"github.com/popgate/popgate/backends"
)

// tokens is a custodian: token N until Invalidate(N), then N+1.
type tokens struct {
	mu sync.Mutex
	n  int
}

func (f *tokens) AccessToken(_ context.Context, name string) (string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if name != "m365-app" {
		return "", errors.New("unknown credential")
	}
	return fmt.Sprintf("tok-%d", f.n+1), nil
}

func (f *tokens) Invalidate(_, token string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if token == fmt.Sprintf("tok-%d", f.n+1) {
		f.n++
	}
}

// A login naming a credential sends its token as Authorization: Bearer on
// POST /sessions with an empty password; a 401 refreshes it once and
// retries once; a 403 is not retried; a client's own token is sent as is.
func TestBearerLogin(t *testing.T) {
	f := &fake{}
	var mu sync.Mutex
	accepted := "tok-2"
	f.on("POST /sessions", func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		ok := r.Header.Get("Authorization") == "Bearer "+accepted
		mu.Unlock()
		if !ok {
			w.WriteHeader(401)
			return
		}
		w.WriteHeader(201)
		io.WriteString(w, `{"session":"sess","maildrop":"md1"}`)
	})
	b := newBackend(t, cfg(serveFake(t, f)))
	toks := &tokens{}
	b.SetTokens(toks)
	cred := backends.Credentials{Username: "scans@corp.example", Mechanism: "USER", Credential: "m365-app"}
	mb, err := b.Login(context.Background(), cred)
	if err != nil {
		t.Fatal(err)
	}
	mb.Close()
	if h := f.header("POST", "/sessions", "Authorization"); len(h) != 2 || h[0] != "Bearer tok-1" || h[1] != "Bearer tok-2" {
		t.Fatalf("Authorization headers %q, want tok-1 then tok-2", h)
	}
	var body map[string]any
	json.Unmarshal([]byte(f.requests("POST", "/sessions")[1]), &body)
	if body["password"] != "" || body["mechanism"] != "OAUTHBEARER" || body["user"] != "scans@corp.example" {
		t.Errorf("session body %v", body)
	}

	// Refused again after the refresh: [AUTH], two calls, no third.
	mu.Lock()
	accepted = "none"
	mu.Unlock()
	n := len(f.requests("POST", "/sessions"))
	_, err = b.Login(context.Background(), cred)
	if !errors.Is(err, backends.ErrAuthFailed) || len(f.requests("POST", "/sessions"))-n != 2 || strings.Contains(err.Error(), "tok-") {
		t.Fatalf("refused twice: %v after %d calls", err, len(f.requests("POST", "/sessions"))-n)
	}

	// A client's own token: sent once, with its mechanism.
	mu.Lock()
	accepted = "client-tok"
	mu.Unlock()
	mb, err = b.Login(context.Background(), backends.Credentials{Username: "alice", Mechanism: "XOAUTH2", Token: "client-tok"})
	if err != nil {
		t.Fatal(err)
	}
	mb.Close()
	reqs := f.requests("POST", "/sessions")
	json.Unmarshal([]byte(reqs[len(reqs)-1]), &body)
	if body["mechanism"] != "XOAUTH2" || body["password"] != "" {
		t.Errorf("client token body %v", body)
	}

	// 403: not a token problem, no retry.
	f2 := &fake{}
	f2.on("POST /sessions", func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(403) })
	b2 := newBackend(t, cfg(serveFake(t, f2)))
	b2.SetTokens(toks)
	if _, err := b2.Login(context.Background(), cred); !errors.Is(err, backends.ErrAuthFailed) || len(f2.requests("POST", "/sessions")) != 1 {
		t.Fatalf("403: %v after %d calls", err, len(f2.requests("POST", "/sessions")))
	}
	// No tokens configured: [SYS/TEMP] without a call.
	b3 := newBackend(t, cfg(serveFake(t, f2)))
	if _, err := b3.Login(context.Background(), cred); !errors.Is(err, backends.ErrUnavailable) {
		t.Fatalf("no tokens: %v", err)
	}
}
