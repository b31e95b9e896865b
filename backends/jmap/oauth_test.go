package jmap

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/popgate/popgate/backends"
)

// fakeTokens is a custodian: token N until Invalidate(N), then N+1.
type fakeTokens struct {
	mu          sync.Mutex
	n           int
	invalidated atomic.Int32
}

func (f *fakeTokens) AccessToken(_ context.Context, name string) (string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if name != "m365-app" {
		return "", errors.New("unknown credential")
	}
	return fmt.Sprintf("tok-%d", f.n+1), nil
}

func (f *fakeTokens) Invalidate(_, token string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if token == fmt.Sprintf("tok-%d", f.n+1) {
		f.n++
		f.invalidated.Add(1)
	}
}

// A credential's token goes as Authorization: Bearer; a 401 refreshes it
// once and sends the request once more, at login and mid-session; a
// fixed token (a client's, a hook's) is not retried.
func TestFakeBearer(t *testing.T) {
	f := newFake(t, msgA)
	var mu sync.Mutex
	accepted := "tok-2"
	f.bearer = func(tok string) bool { mu.Lock(); defer mu.Unlock(); return tok == accepted }
	toks := &fakeTokens{}
	b := f.backend(t, nil)
	b.SetTokens(toks)
	cred := backends.Credentials{Username: "scans@corp.example", Mechanism: "USER", Credential: "m365-app"}

	// tok-1 is refused: refreshed once (tok-2), login goes on.
	mb, err := b.Login(context.Background(), cred)
	if err != nil {
		t.Fatal(err)
	}
	if toks.invalidated.Load() != 1 || f.count("session") != 2 {
		t.Fatalf("invalidated %d, session requests %d; want 1 and 2", toks.invalidated.Load(), f.count("session"))
	}
	msgs, err := mb.Snapshot(context.Background())
	if err != nil || len(msgs) != 1 {
		t.Fatalf("snapshot %v %v", msgs, err)
	}
	// Mid-session the server stops taking tok-2: the download refreshes
	// once (tok-3) and succeeds.
	mu.Lock()
	accepted = "tok-3"
	mu.Unlock()
	rc, err := mb.Open(context.Background(), msgs[0], -1)
	if err != nil {
		t.Fatalf("RETR after the token was revoked: %v", err)
	}
	io.Copy(io.Discard, rc)
	rc.Close()
	mb.Close()
	if toks.invalidated.Load() != 2 {
		t.Fatalf("invalidated %d, want 2", toks.invalidated.Load())
	}

	// Nothing accepted: one refresh, one retry, then [AUTH].
	mu.Lock()
	accepted = "none"
	mu.Unlock()
	before := f.count("session")
	_, err = b.Login(context.Background(), cred)
	if !errors.Is(err, backends.ErrAuthFailed) || f.count("session")-before != 2 {
		t.Fatalf("refused twice: %v after %d session requests, want [AUTH] after 2", err, f.count("session")-before)
	}
	if strings.Contains(err.Error(), "tok-") {
		t.Fatalf("error text holds a token: %v", err)
	}

	// A client's own token: sent once, not retried.
	before = f.count("session")
	_, err = b.Login(context.Background(), backends.Credentials{Username: "alice", Mechanism: "XOAUTH2", Token: "client-tok"})
	if !errors.Is(err, backends.ErrAuthFailed) || f.count("session")-before != 1 {
		t.Fatalf("client token: %v after %d requests", err, f.count("session")-before)
	}
	mu.Lock()
	accepted = "client-tok"
	mu.Unlock()
	if mb, err := b.Login(context.Background(), backends.Credentials{Username: "alice", Mechanism: "XOAUTH2", Token: "client-tok"}); err != nil {
		t.Fatal(err)
	} else {
		mb.Close()
	}

	// No tokens configured, or none obtainable: [SYS/TEMP].
	b2 := f.backend(t, nil)
	if _, err := b2.Login(context.Background(), cred); !errors.Is(err, backends.ErrUnavailable) {
		t.Fatalf("credential without tokens: %v", err)
	}
	b2.SetTokens(toks)
	other := cred
	other.Credential = "nosuch"
	if _, err := b2.Login(context.Background(), other); !errors.Is(err, backends.ErrUnavailable) {
		t.Fatalf("token not obtainable: %v", err)
	}
}
