package imap

import (
	"context"
	"crypto/rand"
	"errors"
	"path/filepath"
	"strings"
	"testing"

	"github.com/rs/zerolog"

	"github.com/popgate/popgate/backends"
	"github.com/popgate/popgate/internal/oauth"
	"github.com/popgate/popgate/internal/testserver/dovecot"
	"github.com/popgate/popgate/internal/testserver/idp"
)

const tokenUser = "scans@corp.example"

type oauthFixture struct {
	idp  *idp.Server
	cu   *oauth.Custodian
	st   *oauth.Store
	logs *syncBuffer
}

func newOAuthFixture(t *testing.T) *oauthFixture {
	t.Helper()
	f := &oauthFixture{idp: idp.Start(t, idp.Options{}), logs: &syncBuffer{}}
	f.idp.AddClient("app", "app-secret-0123456789", tokenUser)
	key := make([]byte, oauth.KeySize)
	rand.Read(key)
	var err error
	if f.st, err = oauth.OpenStore(filepath.Join(t.TempDir(), "tokens"), key); err != nil {
		t.Fatal(err)
	}
	f.cu, err = oauth.New(map[string]oauth.CredentialConfig{"m365-app": {
		Type: oauth.TypeClientCredentials, TokenURL: f.idp.TokenURL, ClientID: "app", ClientSecret: "app-secret-0123456789",
	}}, f.st, oauth.Options{Log: zerolog.New(f.logs)})
	if err != nil {
		t.Fatal(err)
	}
	return f
}

// startTokenDovecot runs a Dovecot that checks tokens at f's provider and
// holds one message for tokenUser.
func (f *oauthFixture) dovecot(t *testing.T, mechs string) *dovecot.Server {
	t.Helper()
	dv := dovecot.Start(t, dovecot.Options{OAuth2IntrospectionURL: f.idp.IntrospectURL, OAuth2Mechanisms: mechs,
		Users: map[string]string{tokenUser: "mailbox-password-0123"}})
	if _, err := dv.Append(tokenUser, "INBOX", []byte("Subject: scan\r\n\r\npage 1\r\n")); err != nil {
		t.Fatal(err)
	}
	return dv
}

func (f *oauthFixture) backend(t *testing.T, addr string) *Backend {
	t.Helper()
	cfg := DefaultConfig()
	cfg.Name, cfg.Address, cfg.TLS = "m365", addr, "none"
	b, err := New(cfg, zerolog.New(f.logs))
	if err != nil {
		t.Fatal(err)
	}
	b.SetTokens(f.cu)
	return b
}

func loginList(t *testing.T, b *Backend, c backends.Credentials) (int, error) {
	t.Helper()
	mb, err := b.Login(context.Background(), c)
	if err != nil {
		return 0, err
	}
	defer mb.Close()
	msgs, err := mb.Snapshot(context.Background())
	return len(msgs), err
}

// Device account → client-credentials token → token login on a real
// Dovecot, with whichever of OAUTHBEARER and XOAUTH2 it advertises.
func TestCredentialTokenLoginOnDovecot(t *testing.T) {
	f := newOAuthFixture(t)
	for _, mechs := range []string{"xoauth2", "oauthbearer", "xoauth2 oauthbearer"} {
		t.Run(strings.ReplaceAll(mechs, " ", "+"), func(t *testing.T) {
			dv := f.dovecot(t, mechs)
			b := f.backend(t, dv.Addr())
			n, err := loginList(t, b, backends.Credentials{Username: tokenUser, Credential: "m365-app", Mechanism: "USER"})
			if err != nil || n != 1 {
				t.Fatalf("token login: %d messages, %v\n%s", n, err, dv.Log())
			}
			if !b.AcceptsBearer() {
				t.Error("AcceptsBearer false after a login to a server offering tokens")
			}
		})
	}
	if n := f.idp.Requests(idp.GrantClientCredentials); n != 1 {
		t.Errorf("%d token requests for three logins, want 1", n)
	}
	f.noSecrets(t)
}

// A token the upstream rejects is refreshed once and the login retried
// once; a token that cannot be had answers [SYS/TEMP] and says why in the
// log.
func TestRejectedTokenRefreshedOnceThenSysTemp(t *testing.T) {
	f := newOAuthFixture(t)
	dv := f.dovecot(t, "")
	b := f.backend(t, dv.Addr())
	c := backends.Credentials{Username: tokenUser, Credential: "m365-app"}
	if _, err := loginList(t, b, c); err != nil {
		t.Fatal(err)
	}
	f.idp.RevokeAccess() // the upstream stops accepting the token before its expiry
	if n, err := loginList(t, b, c); err != nil || n != 1 {
		t.Fatalf("after revocation: %v", err)
	}
	if n := f.idp.Requests(idp.GrantClientCredentials); n != 2 {
		t.Fatalf("%d token requests, want 2 (one refresh after the rejection)", n)
	}
	if !strings.Contains(f.logs.String(), "retrying once with a new one") {
		t.Errorf("no log line about the retry:\n%s", f.logs.String())
	}
	// The provider now refuses the client: the login fails with [SYS/TEMP].
	f.idp.AddClient("app", "another-secret-0123456789", tokenUser)
	f.idp.RevokeAccess()
	_, err := loginList(t, b, c)
	if code(err) != backends.CodeSysTemp {
		t.Fatalf("token unavailable: %v, want [SYS/TEMP]", err)
	}
	if !strings.Contains(f.logs.String(), "oauth token refresh failed") || !strings.Contains(f.logs.String(), "invalid_client") {
		t.Errorf("no clear log line:\n%s", f.logs.String())
	}
	if rec, ok, err := f.st.Get("m365-app"); err != nil || !ok || rec.AccessToken == "" {
		t.Fatalf("store lost its token: %v %v", ok, err)
	}
	f.noSecrets(t, err.Error())
}

// A client's own token (AUTH XOAUTH2 / OAUTHBEARER at the POP3 side)
// passes through; a bad one is [AUTH].
func TestClientTokenPassThrough(t *testing.T) {
	f := newOAuthFixture(t)
	dv := f.dovecot(t, "xoauth2")
	b := f.backend(t, dv.Addr())
	tok := f.idp.IssueToken(tokenUser)
	if n, err := loginList(t, b, backends.Credentials{Username: tokenUser, Token: tok, Mechanism: "XOAUTH2"}); err != nil || n != 1 {
		t.Fatalf("client token: %v", err)
	}
	_, err := loginList(t, b, backends.Credentials{Username: tokenUser, Token: "at-not-issued", Mechanism: "XOAUTH2"})
	if !errors.Is(err, backends.ErrAuthFailed) {
		t.Fatalf("bad client token: %v, want [AUTH]", err)
	}
	if f.idp.Requests(idp.GrantClientCredentials) != 0 {
		t.Fatal("a client's token caused a token request")
	}
	f.noSecrets(t, err.Error())
	if strings.Contains(f.logs.String(), tok) || strings.Contains(err.Error(), "at-not-issued") {
		t.Fatal("client token in a log line or error")
	}
	// A server without token mechanisms: [SYS/TEMP], and AcceptsBearer false.
	plain := dovecot.Start(t, dovecot.Options{Users: map[string]string{tokenUser: "pw"}})
	b2 := f.backend(t, plain.Addr())
	if _, err := loginList(t, b2, backends.Credentials{Username: tokenUser, Token: tok}); code(err) != backends.CodeSysTemp {
		t.Fatalf("token to a server without XOAUTH2: %v", err)
	}
	if b2.AcceptsBearer() {
		t.Fatal("AcceptsBearer true for a server without token mechanisms")
	}
}

func (f *oauthFixture) noSecrets(t *testing.T, texts ...string) {
	t.Helper()
	all := append(texts, f.logs.String())
	for _, s := range f.idp.Secrets() {
		for _, txt := range all {
			if len(s) >= 6 && strings.Contains(txt, s) {
				t.Errorf("a secret (%.4s…) appears in a log line or error", s)
			}
		}
	}
}
