package oauth

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/popgate/popgate/internal/testserver/idp"
	"github.com/popgate/popgate/internal/testutil"
)

func newKey(t *testing.T) (key []byte, text string) {
	t.Helper()
	key = make([]byte, KeySize)
	if _, err := rand.Read(key); err != nil {
		t.Fatal(err)
	}
	return key, base64.StdEncoding.EncodeToString(key)
}

// clock is a test clock that only moves when told.
type clock struct{ off atomic.Int64 }

func (c *clock) now() time.Time          { return time.Now().Add(time.Duration(c.off.Load())) }
func (c *clock) advance(d time.Duration) { c.off.Add(int64(d)) }

type fixture struct {
	idp   *idp.Server
	store *Store
	key   []byte
	path  string
	log   *testutil.SyncBuffer
	clock *clock
	cu    *Custodian
	creds map[string]CredentialConfig
}

func setup(t *testing.T, o idp.Options) *fixture {
	t.Helper()
	f := &fixture{idp: idp.Start(t, o), log: &testutil.SyncBuffer{}, clock: &clock{}}
	f.key, _ = newKey(t)
	f.path = filepath.Join(t.TempDir(), "state", "tokens")
	f.idp.AddClient("app", "app-secret-"+strings.Repeat("x", 8), "scans@corp.example")
	f.idp.AddClient("desktop", "", "")
	f.creds = map[string]CredentialConfig{
		"m365-app": {Type: TypeClientCredentials, TokenURL: f.idp.TokenURL, ClientID: "app",
			ClientSecret: "app-secret-" + strings.Repeat("x", 8), Scopes: []string{"https://outlook.office365.com/.default"}, CAFile: f.idp.CAFile()},
		"gmail-jane": {Type: TypeRefreshToken, TokenURL: f.idp.TokenURL, DeviceAuthURL: f.idp.DeviceAuthURL,
			ClientID: "desktop", Scopes: []string{"https://mail.google.com/"}, CAFile: f.idp.CAFile()},
	}
	f.restart(t)
	return f
}

// restart opens the store and a new custodian, as a process restart does.
func (f *fixture) restart(t *testing.T) {
	t.Helper()
	var err error
	if f.store, err = OpenStore(f.path, f.key); err != nil {
		t.Fatal(err)
	}
	f.cu, err = New(f.creds, f.store, Options{Log: zerolog.New(f.log), Now: f.clock.now})
	if err != nil {
		t.Fatal(err)
	}
}

// enroll runs the device flow for gmail-jane, approving as jane.
func (f *fixture) enroll(t *testing.T) {
	t.Helper()
	done := make(chan error, 1)
	var out testutil.SyncBuffer
	go func() { done <- f.cu.Enroll(context.Background(), "gmail-jane", &out) }()
	for {
		codes := f.idp.PendingUserCodes()
		if len(codes) == 1 {
			if !strings.Contains(out.String(), codes[0]) {
				continue // not printed yet
			}
			f.idp.Approve(codes[0], "jane@gmail.example")
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out.String(), f.idp.URL+"/activate") {
		t.Fatalf("enroll did not print the verification URL:\n%s", out.String())
	}
}

// assertNoSecrets fails when any secret appears in texts.
func assertNoSecrets(t *testing.T, secrets []string, texts ...string) {
	t.Helper()
	for _, s := range secrets {
		if len(s) < 6 {
			continue
		}
		for _, txt := range texts {
			if strings.Contains(txt, s) {
				t.Errorf("a secret (%.4s…) appears in output: %q", s, txt)
			}
		}
	}
}

// Fifty sessions asking at once for a token that is missing, and again
// when it is about to expire, cause one token request each time.
func TestSingleFlightUnderConcurrentLogins(t *testing.T) {
	f := setup(t, idp.Options{TLS: true})
	run := func() []string {
		release := f.idp.Hold()
		var wg sync.WaitGroup
		toks := make([]string, 50)
		errs := make([]error, 50)
		for i := range 50 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				tok, err := f.cu.Token(context.Background(), "m365-app")
				toks[i], errs[i] = tok.AccessToken, err
			}()
		}
		for f.idp.Waiting() == 0 {
			time.Sleep(5 * time.Millisecond)
		}
		time.Sleep(50 * time.Millisecond) // let the others pile up behind the first
		release()
		wg.Wait()
		for _, err := range errs {
			if err != nil {
				t.Fatal(err)
			}
		}
		return toks
	}
	toks := run()
	if n := f.idp.Requests(idp.GrantClientCredentials); n != 1 {
		t.Fatalf("50 concurrent logins caused %d token requests, want 1", n)
	}
	for _, tk := range toks {
		if tk != toks[0] || tk == "" {
			t.Fatal("sessions got different tokens")
		}
	}
	// Still fresh: no request.
	if _, err := f.cu.Token(context.Background(), "m365-app"); err != nil || f.idp.Requests(idp.GrantClientCredentials) != 1 {
		t.Fatalf("a fresh token was refreshed (err %v)", err)
	}
	// Within the refresh margin of its expiry (one hour): refreshed ahead,
	// once for all fifty.
	f.clock.advance(time.Hour - 2*time.Minute)
	toks2 := run()
	if n := f.idp.Requests(idp.GrantClientCredentials); n != 2 {
		t.Fatalf("refresh ahead of expiry under 50 logins: %d token requests in all, want 2", n)
	}
	if toks2[0] == toks[0] {
		t.Fatal("token not replaced ahead of expiry")
	}
	assertNoSecrets(t, append(f.idp.Secrets(), base64.StdEncoding.EncodeToString(f.key)), f.log.String())
}

// The store survives a restart (no new token request), holds no token in
// clear and cannot be opened with another key.
func TestStoreEncryptedAndSurvivesRestart(t *testing.T) {
	f := setup(t, idp.Options{})
	f.enroll(t)
	t1, err := f.cu.Token(context.Background(), "m365-app")
	if err != nil {
		t.Fatal(err)
	}
	f.restart(t)
	t2, err := f.cu.Token(context.Background(), "m365-app")
	if err != nil {
		t.Fatal(err)
	}
	if t2.AccessToken != t1.AccessToken || f.idp.Requests(idp.GrantClientCredentials) != 1 {
		t.Fatalf("after a restart the stored token was not used (%d requests)", f.idp.Requests(idp.GrantClientCredentials))
	}
	if _, err := f.cu.Token(context.Background(), "gmail-jane"); err != nil {
		t.Fatal(err)
	}
	if n := f.idp.Requests(idp.GrantRefreshToken); n != 0 {
		t.Fatalf("enrolled token refreshed after restart: %d", n)
	}
	raw, err := os.ReadFile(f.path)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range f.idp.Secrets() {
		if bytes.Contains(raw, []byte(s)) {
			t.Fatalf("store file holds a secret in clear")
		}
	}
	if bytes.Contains(raw, []byte("gmail-jane")) || bytes.Contains(raw, []byte("refresh")) {
		t.Fatal("store file reveals its structure in clear")
	}
	if fi, _ := os.Stat(f.path); fi.Mode().Perm() != 0o600 {
		t.Fatalf("store mode %v, want 0600", fi.Mode().Perm())
	}
	other, _ := newKey(t)
	_, err = OpenStore(f.path, other)
	if !errors.Is(err, ErrUndecryptable) {
		t.Fatalf("wrong key: %v, want ErrUndecryptable", err)
	}
	assertNoSecrets(t, append(f.idp.Secrets(), string(other), base64.StdEncoding.EncodeToString(f.key)), err.Error(), f.log.String())
}

// A revoked refresh token: the login gets an error that says why (and no
// secret), the log says why, and the stored token is not touched.
func TestRevokedRefreshTokenLeavesStoreUntouched(t *testing.T) {
	f := setup(t, idp.Options{})
	f.enroll(t)
	before, err := os.ReadFile(f.path)
	if err != nil {
		t.Fatal(err)
	}
	rec, _, _ := f.store.Get("gmail-jane")
	f.idp.RevokeAll()
	f.clock.advance(2 * time.Hour) // the access token has expired
	_, tokErr := f.cu.Token(context.Background(), "gmail-jane")
	if tokErr == nil {
		t.Fatal("token handed out with a revoked refresh token")
	}
	if !strings.Contains(tokErr.Error(), "invalid_grant") {
		t.Errorf("error does not say why: %v", tokErr)
	}
	if !strings.Contains(f.log.String(), "oauth token refresh failed") || !strings.Contains(f.log.String(), "invalid_grant") {
		t.Errorf("no clear log line:\n%s", f.log.String())
	}
	after, err := os.ReadFile(f.path)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(before, after) {
		t.Fatal("a failed refresh rewrote the store")
	}
	rec2, ok, err := f.store.Get("gmail-jane")
	if err != nil || !ok || rec2 != rec {
		t.Fatalf("stored record changed: %v %v", ok, err)
	}
	st, err := f.cu.Status()
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range st {
		if s.Name == "gmail-jane" && (s.State != StateExpired || !s.Refresh) {
			t.Errorf("status %+v", s)
		}
	}
	assertNoSecrets(t, f.idp.Secrets(), tokErr.Error(), f.log.String())
}

// A token the upstream rejected is replaced once, however many sessions
// report it.
func TestInvalidateRefreshesOnce(t *testing.T) {
	f := setup(t, idp.Options{RotateRefresh: true})
	f.enroll(t)
	f.clock.advance(2 * time.Hour)
	t1, err := f.cu.Token(context.Background(), "gmail-jane")
	if err != nil {
		t.Fatal(err)
	}
	if f.idp.Requests(idp.GrantRefreshToken) != 1 {
		t.Fatal("expired token not refreshed")
	}
	var wg sync.WaitGroup
	for range 50 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			f.cu.Invalidate("gmail-jane", t1.AccessToken)
			t2, err := f.cu.Token(context.Background(), "gmail-jane")
			if err != nil || t2.AccessToken == t1.AccessToken {
				t.Errorf("after rejection: %v (same token %t)", err, t2.AccessToken == t1.AccessToken)
			}
		}()
	}
	wg.Wait()
	if n := f.idp.Requests(idp.GrantRefreshToken); n != 2 {
		t.Fatalf("50 rejections caused %d refreshes in all, want 2", n)
	}
	// The rotated refresh token was stored: a restart can refresh again.
	f.restart(t)
	f.clock.advance(2 * time.Hour)
	if _, err := f.cu.Token(context.Background(), "gmail-jane"); err != nil {
		t.Fatalf("rotated refresh token not kept: %v", err)
	}
}

func TestRekey(t *testing.T) {
	f := setup(t, idp.Options{})
	t1, err := f.cu.Token(context.Background(), "m365-app")
	if err != nil {
		t.Fatal(err)
	}
	newK, _ := newKey(t)
	n, err := f.store.Rekey(newK)
	if err != nil || n != 1 {
		t.Fatalf("rekey: %d, %v", n, err)
	}
	if _, err := OpenStore(f.path, f.key); !errors.Is(err, ErrUndecryptable) {
		t.Fatalf("old key still opens the store: %v", err)
	}
	f.key = newK
	f.restart(t)
	t2, err := f.cu.Token(context.Background(), "m365-app")
	if err != nil || t2.AccessToken != t1.AccessToken {
		t.Fatalf("after rekey: %v", err)
	}
}

func TestEnrollDenied(t *testing.T) {
	f := setup(t, idp.Options{})
	done := make(chan error, 1)
	go func() { done <- f.cu.Enroll(context.Background(), "gmail-jane", &bytes.Buffer{}) }()
	for len(f.idp.PendingUserCodes()) == 0 {
		time.Sleep(10 * time.Millisecond)
	}
	f.idp.Deny(f.idp.PendingUserCodes()[0])
	err := <-done
	if err == nil || !strings.Contains(err.Error(), "access_denied") {
		t.Fatalf("denied enrolment: %v", err)
	}
	if _, err := f.cu.Token(context.Background(), "gmail-jane"); !errors.Is(err, ErrNotEnrolled) {
		t.Fatalf("not enrolled: %v", err)
	}
	if err := f.cu.Enroll(context.Background(), "m365-app", &bytes.Buffer{}); err == nil {
		t.Fatal("client credentials enrolled")
	}
}

// Without ca_file the provider's private certificate is refused, with a
// clean error.
func TestCAFile(t *testing.T) {
	f := setup(t, idp.Options{TLS: true})
	c := f.creds["m365-app"]
	c.CAFile = ""
	cu, err := New(map[string]CredentialConfig{"x": c}, f.store, Options{Log: zerolog.New(f.log)})
	if err != nil {
		t.Fatal(err)
	}
	_, err = cu.Token(context.Background(), "x")
	if err == nil || !strings.Contains(err.Error(), "certificate") {
		t.Fatalf("untrusted provider: %v", err)
	}
	assertNoSecrets(t, append(f.idp.Secrets(), c.ClientSecret), err.Error(), f.log.String())
}

func TestParseKeyAndChecks(t *testing.T) {
	_, text := newKey(t)
	if _, err := ParseKey(text + "\n"); err != nil {
		t.Fatal(err)
	}
	short := base64.StdEncoding.EncodeToString([]byte("0123456789"))
	if _, err := ParseKey(short); err == nil || strings.Contains(err.Error(), short) {
		t.Fatalf("short key: %v", err)
	}
	if _, err := ParseKey("not base64 !!"); err == nil || strings.Contains(err.Error(), "!!") {
		t.Fatalf("bad key: %v", err)
	}
	ps := CredentialConfig{Type: "password"}.Check()
	keys := map[string]bool{}
	for _, p := range ps {
		keys[p.Key] = true
	}
	for _, k := range []string{"type", "token_url", "client_id"} {
		if !keys[k] {
			t.Errorf("no problem for %s: %v", k, ps)
		}
	}
	if ps := (StoreConfig{Path: "/x", Key: text, KeyFile: "/k"}).Check(); len(ps) != 1 {
		t.Errorf("key and key_file: %v", ps)
	}
}

// Two gateways (two custodians) sharing one store, with a provider that
// rotates refresh tokens: an expired token is refreshed once, not once per
// gateway, and neither is left with a revoked refresh token.
func TestTwoProcessesOneRefresh(t *testing.T) {
	f := setup(t, idp.Options{RotateRefresh: true})
	f.enroll(t)
	other, err := OpenStore(f.path, f.key)
	if err != nil {
		t.Fatal(err)
	}
	cu2, err := New(f.creds, other, Options{Log: zerolog.New(f.log), Now: f.clock.now})
	if err != nil {
		t.Fatal(err)
	}
	f.clock.advance(2 * time.Hour)
	var wg sync.WaitGroup
	errs := make([]error, 20)
	for i := range 20 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			cu := f.cu
			if i%2 == 1 {
				cu = cu2
			}
			_, errs[i] = cu.Token(context.Background(), "gmail-jane")
		}()
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	if n := f.idp.Requests(idp.GrantRefreshToken); n != 1 {
		t.Fatalf("two gateways made %d refresh requests, want 1", n)
	}
}
