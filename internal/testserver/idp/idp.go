// Package idp is an OAuth2 identity provider for tests, written from the
// RFCs: the token endpoint (RFC 6749 §3.2) with the client credentials
// (§4.4), refresh token (§6) and device code (RFC 8628 §3.4) grants, the
// device authorization endpoint (RFC 8628 §3.1) and token introspection
// (RFC 7662 §2), which Dovecot's oauth2 passdb asks for every login. No
// real provider is reachable from the tests; this stands in for Microsoft
// Entra ID and Google.
//
// Tokens are random; the server remembers which user each one belongs to,
// and tests approve device codes, revoke tokens and count requests.
package idp

import (
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// Grant types of RFC 6749 §4.4, §6 and RFC 8628 §3.4.
const (
	GrantClientCredentials = "client_credentials"
	GrantRefreshToken      = "refresh_token"
	GrantDeviceCode        = "urn:ietf:params:oauth:grant-type:device_code"
)

// Options configure the provider.
type Options struct {
	// TLS serves https with a self-signed certificate (CAFile trusts it).
	TLS bool
	// Lifetime of access tokens (expires_in); default one hour.
	Lifetime time.Duration
	// RotateRefresh issues a new refresh token on every refresh and
	// revokes the old one (as Microsoft Entra ID does; Google does not).
	RotateRefresh bool
}

// Server is a running identity provider.
type Server struct {
	URL                                    string
	TokenURL, DeviceAuthURL, IntrospectURL string
	srv                                    *httptest.Server
	opts                                   Options
	caFile                                 string

	mu       sync.Mutex
	clients  map[string]client
	access   map[string]accessInfo
	refresh  map[string]string // refresh token -> user
	devices  map[string]*device
	users    map[string]string // user code -> device code
	counts   map[string]int
	issued   []string
	gate     chan struct{}
	inflight int
}

type client struct{ secret, user string }

type accessInfo struct {
	user, client string
	exp          time.Time
}

type device struct {
	client, user string
	approved     bool
	denied       bool
	exp          time.Time
}

// Start runs a provider on 127.0.0.1 until t ends.
func Start(t testing.TB, o Options) *Server {
	t.Helper()
	if o.Lifetime == 0 {
		o.Lifetime = time.Hour
	}
	s := &Server{opts: o, clients: map[string]client{}, access: map[string]accessInfo{}, refresh: map[string]string{},
		devices: map[string]*device{}, users: map[string]string{}, counts: map[string]int{}}
	mux := http.NewServeMux()
	mux.HandleFunc("POST /token", s.token)
	mux.HandleFunc("POST /device", s.deviceAuth)
	mux.HandleFunc("POST /introspect", s.introspect)
	srv := httptest.NewUnstartedServer(mux)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv.Listener.Close()
	srv.Listener = l
	if o.TLS {
		srv.StartTLS()
		s.caFile = filepath.Join(t.TempDir(), "idp-ca.pem")
		pemBytes := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw})
		if err := os.WriteFile(s.caFile, pemBytes, 0o644); err != nil {
			t.Fatal(err)
		}
	} else {
		srv.Start()
	}
	t.Cleanup(srv.Close)
	s.srv = srv
	s.URL = srv.URL
	s.TokenURL, s.DeviceAuthURL, s.IntrospectURL = s.URL+"/token", s.URL+"/device", s.URL+"/introspect"
	return s
}

// CAFile is a PEM file trusting the provider's certificate (TLS only).
func (s *Server) CAFile() string { return s.caFile }

// AddClient registers a client. Tokens it gets through the client
// credentials grant belong to user (the mailbox an app registration was
// granted; introspection answers this username). An empty secret is a
// public client (device flow).
func (s *Server) AddClient(id, secret, user string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.clients[id] = client{secret, user}
	s.issued = append(s.issued, secret)
}

// Requests returns how many token requests of grant type grant arrived.
func (s *Server) Requests(grant string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.counts[grant]
}

// Introspections returns how many introspection requests arrived.
func (s *Server) Introspections() int { return s.Requests("introspect") }

// Hold makes token requests wait until the returned function is called.
func (s *Server) Hold() (release func()) {
	s.mu.Lock()
	defer s.mu.Unlock()
	g := make(chan struct{})
	s.gate = g
	var once sync.Once
	return func() {
		once.Do(func() {
			s.mu.Lock()
			if s.gate == g {
				s.gate = nil
			}
			s.mu.Unlock()
			close(g)
		})
	}
}

// Waiting returns how many token requests are held by Hold.
func (s *Server) Waiting() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.inflight
}

// IssueToken returns a fresh access token of user, as if the client had
// got it from the provider itself (a POP3 client's own token).
func (s *Server) IssueToken(user string) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.newAccess(user, "external")
}

// IssueRefreshToken returns a fresh refresh token of user, as if obtained
// through another flow (e.g. an authorization code in a browser).
func (s *Server) IssueRefreshToken(user string) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.newRefresh(user)
}

// Revoke makes a token (access or refresh) unknown to the provider.
func (s *Server) Revoke(token string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.access, token)
	delete(s.refresh, token)
}

// RevokeAll revokes every access and refresh token issued so far.
func (s *Server) RevokeAll() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.access = map[string]accessInfo{}
	s.refresh = map[string]string{}
}

// RevokeAccess revokes every access token issued so far, keeping refresh
// tokens (an upstream that stops accepting a token before its expiry).
func (s *Server) RevokeAccess() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.access = map[string]accessInfo{}
}

// Approve lets the person behind userCode grant the device request as user
// (RFC 8628 §3.3).
func (s *Server) Approve(userCode, user string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	d := s.devices[s.users[userCode]]
	if d == nil {
		return false
	}
	d.approved, d.user = true, user
	return true
}

// Deny refuses the device request of userCode.
func (s *Server) Deny(userCode string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	d := s.devices[s.users[userCode]]
	if d == nil {
		return false
	}
	d.denied = true
	return true
}

// PendingUserCodes returns the user codes of device requests not yet
// approved or denied.
func (s *Server) PendingUserCodes() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []string
	for uc, dc := range s.users {
		if d := s.devices[dc]; d != nil && !d.approved && !d.denied {
			out = append(out, uc)
		}
	}
	return out
}

// Secrets returns every secret the provider handed out or was given
// (client secrets, access and refresh tokens, device codes), for tests that
// check none of them leaks.
func (s *Server) Secrets() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []string
	for _, v := range s.issued {
		if v != "" {
			out = append(out, v)
		}
	}
	return out
}

func random(n int) string {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		panic(err)
	}
	return base64.RawURLEncoding.EncodeToString(b)
}

func (s *Server) newAccess(user, clientID string) string {
	t := "at-" + random(24)
	s.access[t] = accessInfo{user: user, client: clientID, exp: time.Now().Add(s.opts.Lifetime)}
	s.issued = append(s.issued, t)
	return t
}

func (s *Server) newRefresh(user string) string {
	t := "rt-" + random(24)
	s.refresh[t] = user
	s.issued = append(s.issued, t)
	return t
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store") // RFC 6749 §5.1
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(v)
}

// oauthError answers an RFC 6749 §5.2 error.
func oauthError(w http.ResponseWriter, status int, code string) {
	writeJSON(w, status, map[string]string{"error": code})
}

// clientAuth returns the client of the request: HTTP Basic with
// form-urlencoded id and secret (RFC 6749 §2.3.1), or client_id and
// client_secret in the body.
func (s *Server) clientAuth(r *http.Request) (string, bool) {
	id, secret, basic := r.BasicAuth()
	if basic {
		var err1, err2 error
		id, err1 = url.QueryUnescape(id)
		secret, err2 = url.QueryUnescape(secret)
		if err1 != nil || err2 != nil {
			return "", false
		}
	} else {
		id, secret = r.PostForm.Get("client_id"), r.PostForm.Get("client_secret")
	}
	c, ok := s.clients[id]
	if !ok || c.secret != secret {
		return id, false
	}
	return id, true
}

func (s *Server) tokenAnswer(w http.ResponseWriter, access, refresh string) {
	v := map[string]any{"access_token": access, "token_type": "Bearer", "expires_in": int(s.opts.Lifetime / time.Second)}
	if refresh != "" {
		v["refresh_token"] = refresh
	}
	writeJSON(w, http.StatusOK, v) // RFC 6749 §5.1
}

// token is the token endpoint (RFC 6749 §3.2).
func (s *Server) token(w http.ResponseWriter, r *http.Request) {
	if err := r.ParseForm(); err != nil {
		oauthError(w, http.StatusBadRequest, "invalid_request")
		return
	}
	grant := r.PostForm.Get("grant_type")
	s.mu.Lock()
	s.counts[grant]++
	g := s.gate
	s.inflight++
	s.mu.Unlock()
	if g != nil {
		<-g
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.inflight--
	id, ok := s.clientAuth(r)
	if !ok {
		oauthError(w, http.StatusUnauthorized, "invalid_client") // RFC 6749 §5.2
		return
	}
	switch grant {
	case GrantClientCredentials: // RFC 6749 §4.4.2; no refresh token (§4.4.3)
		s.tokenAnswer(w, s.newAccess(s.clients[id].user, id), "")
	case GrantRefreshToken: // RFC 6749 §6
		rt := r.PostForm.Get("refresh_token")
		user, ok := s.refresh[rt]
		if !ok {
			oauthError(w, http.StatusBadRequest, "invalid_grant")
			return
		}
		newRT := ""
		if s.opts.RotateRefresh {
			delete(s.refresh, rt)
			newRT = s.newRefresh(user)
		}
		s.tokenAnswer(w, s.newAccess(user, id), newRT)
	case GrantDeviceCode: // RFC 8628 §3.4, §3.5
		dc := r.PostForm.Get("device_code")
		d := s.devices[dc]
		switch {
		case d == nil || d.client != id:
			oauthError(w, http.StatusBadRequest, "invalid_grant")
		case time.Now().After(d.exp):
			oauthError(w, http.StatusBadRequest, "expired_token")
		case d.denied:
			oauthError(w, http.StatusBadRequest, "access_denied")
		case !d.approved:
			oauthError(w, http.StatusBadRequest, "authorization_pending")
		default:
			delete(s.devices, dc)
			s.tokenAnswer(w, s.newAccess(d.user, id), s.newRefresh(d.user))
		}
	default:
		oauthError(w, http.StatusBadRequest, "unsupported_grant_type")
	}
}

// deviceAuth is the device authorization endpoint (RFC 8628 §3.1, §3.2).
func (s *Server) deviceAuth(w http.ResponseWriter, r *http.Request) {
	if err := r.ParseForm(); err != nil {
		oauthError(w, http.StatusBadRequest, "invalid_request")
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	id := r.PostForm.Get("client_id")
	if _, ok := s.clients[id]; !ok {
		oauthError(w, http.StatusUnauthorized, "invalid_client")
		return
	}
	dc := "dc-" + random(24)
	uc := strings.ToUpper(random(6))[:8]
	s.devices[dc] = &device{client: id, exp: time.Now().Add(10 * time.Minute)}
	s.users[uc] = dc
	s.issued = append(s.issued, dc)
	writeJSON(w, http.StatusOK, map[string]any{
		"device_code":               dc,
		"user_code":                 uc,
		"verification_uri":          s.URL + "/activate",
		"verification_uri_complete": s.URL + "/activate?user_code=" + uc,
		"expires_in":                600,
		"interval":                  1,
	})
}

// introspect is token introspection (RFC 7662 §2.1, §2.2): active with the
// username for a known unexpired access token, else {"active": false}.
func (s *Server) introspect(w http.ResponseWriter, r *http.Request) {
	if err := r.ParseForm(); err != nil {
		oauthError(w, http.StatusBadRequest, "invalid_request")
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.counts["introspect"]++
	a, ok := s.access[r.PostForm.Get("token")]
	if !ok || time.Now().After(a.exp) {
		writeJSON(w, http.StatusOK, map[string]any{"active": false})
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{
		"active": true, "username": a.user, "client_id": a.client,
		"token_type": "Bearer", "exp": a.exp.Unix(),
	})
}
