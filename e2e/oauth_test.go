package e2e

import (
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	goredis "github.com/redis/go-redis/v9"
	"golang.org/x/crypto/bcrypt"

	"github.com/popgate/popgate/internal/testserver/dovecot"
	"github.com/popgate/popgate/internal/testserver/idp"
	"github.com/popgate/popgate/internal/testserver/redis"
	"github.com/popgate/popgate/internal/testutil"
)

// oauthWorld is an in-test identity provider and two real Dovecots that
// check tokens at it (oauth2 passdb, introspection): dx offers only
// XOAUTH2, do only OAUTHBEARER, so popgate's IMAP backend logs in with
// each mechanism. Both hold one message for the app's mailbox and one for
// jane (whose tokens a client or a hook brings).
type oauthWorld struct {
	idp      *idp.Server
	dx, do   *dovecot.Server
	secrets  []string // never in any output
	outputs  []string // every output collected for the grep
	logFiles []string
}

const (
	appMailbox  = "scans@corp.example"
	janeMailbox = "jane@corp.example"
	appSecret   = "App-Client-Secret-8f3k2"
)

func newOAuthWorld(t *testing.T) *oauthWorld {
	t.Helper()
	if *reference {
		t.Skip("popgate only")
	}
	dovecot.Require(t)
	// Plain http: Dovecot's introspection client would not trust the
	// provider's self-signed certificate (ca_file is tested in
	// internal/oauth and cmd/popgate).
	w := &oauthWorld{idp: idp.Start(t, idp.Options{})}
	w.idp.AddClient("app-id", appSecret, appMailbox)
	users := map[string]string{appMailbox: "Mailbox-Pw-Scans-1", janeMailbox: "Mailbox-Pw-Jane-2"}
	for _, p := range users {
		w.secrets = append(w.secrets, p)
	}
	w.dx = dovecot.Start(t, dovecot.Options{OAuth2IntrospectionURL: w.idp.IntrospectURL, OAuth2Mechanisms: "xoauth2", Users: users})
	w.do = dovecot.Start(t, dovecot.Options{OAuth2IntrospectionURL: w.idp.IntrospectURL, OAuth2Mechanisms: "oauthbearer", Users: users})
	for _, dv := range []*dovecot.Server{w.dx, w.do} {
		for _, u := range []string{appMailbox, janeMailbox} {
			if _, err := dv.Append(u, "INBOX", []byte("Subject: for "+u+"\r\n\r\npage 1 of "+u+"\r\n")); err != nil {
				t.Fatal(err)
			}
		}
	}
	return w
}

// config is a gateway configuration with both Dovecots as backends dx and
// do (routes: everything to dx) and the extra sections.
func (w *oauthWorld) config(addr, extra string) string {
	return fmt.Sprintf(`listeners:
  - {address: "%s", tls: none}
backends:
  dx: {type: imap, address: "%s", tls: none}
  do: {type: imap, address: "%s", tls: none}
routes:
  - {match: "*", backend: dx}
auth: {allow_plaintext: true, failure_delay: 0s}
log: {level: debug, format: json}
`, addr, w.dx.Addr(), w.do.Addr()) + extra
}

// start runs popgate serve with conf until the end of t.
func (w *oauthWorld) start(t *testing.T, dir, addr, conf string) *testutil.Proc {
	t.Helper()
	path := filepath.Join(dir, "popgate.yaml")
	writeFile(t, path, conf, 0o600)
	logPath := filepath.Join(dir, "popgate.log")
	w.logFiles = append(w.logFiles, logPath)
	p := testutil.StartProc(t, testutil.ProcOptions{LogFile: logPath, Graceful: true}, popgateBin, "serve", "--config", path)
	p.WaitGreeting(t, addr)
	return p
}

// grep fails t when a secret appears in any output or log (DESIGN
// invariant 8): the provider's client secret and every token it issued,
// the store key, passwords, the hook's tokens.
func (w *oauthWorld) grep(t *testing.T) {
	t.Helper()
	texts := append([]string(nil), w.outputs...)
	for _, f := range w.logFiles {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		texts = append(texts, string(b))
	}
	secrets := append(append([]string(nil), w.secrets...), w.idp.Secrets()...)
	for _, s := range secrets {
		if len(s) < 6 {
			continue
		}
		for i, txt := range texts {
			if strings.Contains(txt, s) {
				t.Errorf("a secret (%.4s…) appears in output %d", s, i)
			}
		}
	}
}

// session logs in (login does it), lists one message and reads it.
func readOne(t *testing.T, p *testutil.POP3, mailbox string) {
	t.Helper()
	if st := p.OK("STAT"); !strings.HasPrefix(st, "+OK 1 ") {
		t.Fatalf("STAT %q, want one message", st)
	}
	if body := p.Fetch("RETR 1"); !strings.Contains(string(body), "page 1 of "+mailbox) {
		t.Fatalf("RETR 1: %q", body)
	}
	p.OK("QUIT")
}

// A device account naming a client-credentials credential logs in on a
// real Dovecot with the custodian's token: XOAUTH2 on one, OAUTHBEARER on
// the other; one token request for both; popgate_token_refreshes_total
// counts it; check-config and oauth status print no secret.
func TestOAuthDeviceAccount(t *testing.T) {
	w := newOAuthWorld(t)
	dir := t.TempDir()
	w.deviceGateway(t, dir, "")
}

// deviceGateway runs the device-account test against a gateway with
// extra configuration appended.
func (w *oauthWorld) deviceGateway(t *testing.T, dir, extra string) {
	t.Helper()
	key := make([]byte, 32)
	rand.Read(key)
	keyText := base64.StdEncoding.EncodeToString(key)
	w.secrets = append(w.secrets, keyText, appSecret)
	writeFile(t, filepath.Join(dir, "token.key"), keyText+"\n", 0o600)
	const devicePw = "Scanner-Device-Pw-41"
	w.secrets = append(w.secrets, devicePw)
	hash, err := bcrypt.GenerateFromPassword([]byte(devicePw), 4)
	if err != nil {
		t.Fatal(err)
	}
	writeFile(t, filepath.Join(dir, "accounts.yaml"), fmt.Sprintf(`scanner-x:
  password: '%[1]s'
  backend: dx
  upstream: {user: %[2]s, credential: m365-app}
scanner-o:
  password: '%[1]s'
  backend: do
  upstream: {user: %[2]s, credential: m365-app}
`, hash, appMailbox), 0o600)
	t.Setenv("E2E_M365_SECRET", appSecret)
	addr, admin := "127.0.0.1:"+freePort(t), "127.0.0.1:"+freePort(t)
	conf := w.config(addr, fmt.Sprintf(`credentials:
  m365-app:
    type: oauth2_client_credentials
    token_url: %s
    client_id: app-id
    client_secret: ${E2E_M365_SECRET}
    scopes: [https://outlook.office365.com/.default]
token_store:
  path: %s
  key_file: %s
accounts: {file: %s}
admin: {address: "%s"}
`, w.idp.TokenURL, filepath.Join(dir, "state", "tokens"), filepath.Join(dir, "token.key"), filepath.Join(dir, "accounts.yaml"), admin)+extra)

	// check-config first (the same file serve reads).
	writeFile(t, filepath.Join(dir, "popgate.yaml"), conf, 0o600)
	out, err := exec.Command(popgateBin, "check-config", "--config", filepath.Join(dir, "popgate.yaml")).CombinedOutput()
	w.outputs = append(w.outputs, string(out))
	if err != nil || !strings.Contains(string(out), "m365-app") {
		t.Fatalf("check-config: %v\n%s", err, out)
	}

	w.start(t, dir, addr, conf)
	for _, c := range []struct{ device, mech string }{{"scanner-x", "XOAUTH2"}, {"scanner-o", "OAUTHBEARER"}} {
		p := testutil.DialPOP3(t, addr)
		p.ExpectPrefix("+OK")
		p.Login(c.device, devicePw)
		readOne(t, p, appMailbox)
	}
	if !dovecotSaw(w.dx, "method=XOAUTH2") || strings.Contains(w.dx.Log(), "method=OAUTHBEARER") {
		t.Errorf("the XOAUTH2-only Dovecot did not see an XOAUTH2 login:\n%s", w.dx.Log())
	}
	if !dovecotSaw(w.do, "method=OAUTHBEARER") {
		t.Errorf("the OAUTHBEARER-only Dovecot did not see an OAUTHBEARER login:\n%s", w.do.Log())
	}
	if n := w.idp.Requests(idp.GrantClientCredentials); n != 1 {
		t.Errorf("%d token requests for two logins, want 1", n)
	}
	// A wrong device password never reaches the upstream.
	p := testutil.DialPOP3(t, addr)
	p.ExpectPrefix("+OK")
	p.OK("USER scanner-x")
	if l := p.Cmd("PASS Wrong-Device-Pw-9"); !strings.HasPrefix(l, "-ERR [AUTH]") {
		t.Errorf("wrong device password: %q", l)
	}
	w.outputs = append(w.outputs, "PASS answer")

	// The metric is fed.
	res, err := http.Get("http://" + admin + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(res.Body)
	res.Body.Close()
	if !strings.Contains(string(body), `popgate_token_refreshes_total{result="ok"} 1`) {
		t.Errorf("metrics: no popgate_token_refreshes_total{result=\"ok\"} 1:\n%s", grepLines(string(body), "token_refreshes"))
	}

	// oauth status reads the store the gateway wrote.
	out, err = exec.Command(popgateBin, "oauth", "status", "--config", filepath.Join(dir, "popgate.yaml")).CombinedOutput()
	w.outputs = append(w.outputs, string(out))
	if err != nil || !strings.Contains(string(out), "m365-app") || !strings.Contains(string(out), "valid") {
		t.Fatalf("oauth status: %v\n%s", err, out)
	}
	w.grep(t)
}

// dovecotSaw waits (up to 30 s: Dovecot's log process writes a moment
// after the login) for want in dv's log.
func dovecotSaw(dv *dovecot.Server, want string) bool {
	deadline := time.Now().Add(30 * time.Second)
	for {
		if strings.Contains(dv.Log(), want) {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func grepLines(s, word string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, word) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

// A client's own AUTH XOAUTH2 (and OAUTHBEARER) passes through to the
// upstream; a bad token is -ERR [AUTH]. An auth hook answering a token
// logs the device in with it. No token appears in any log.
func TestOAuthClientTokenAndHookToken(t *testing.T) {
	w := newOAuthWorld(t)

	// Pass-through: no accounts; CAPA names XOAUTH2 once popgate has seen
	// the upstream offer it.
	dir := t.TempDir()
	addr := "127.0.0.1:" + freePort(t)
	w.start(t, dir, addr, w.config(addr, ""))
	deadline := time.Now().Add(60 * time.Second)
	for {
		p := testutil.DialPOP3(t, addr)
		p.ExpectPrefix("+OK")
		p.OK("CAPA")
		capa := strings.Join(p.Multi(), "\n")
		p.OK("QUIT")
		if strings.Contains(capa, "XOAUTH2") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("CAPA never named XOAUTH2:\n%s", capa)
		}
		time.Sleep(200 * time.Millisecond)
	}
	tok := w.idp.IssueToken(janeMailbox)
	p := testutil.DialPOP3(t, addr)
	p.ExpectPrefix("+OK")
	p.OK("AUTH XOAUTH2 " + base64.StdEncoding.EncodeToString([]byte("user="+janeMailbox+"\x01auth=Bearer "+tok+"\x01\x01")))
	readOne(t, p, janeMailbox)
	if !dovecotSaw(w.dx, "method=XOAUTH2") {
		t.Errorf("Dovecot saw no XOAUTH2 login:\n%s", w.dx.Log())
	}
	bad := "Not-A-Valid-Token-77"
	w.secrets = append(w.secrets, bad)
	p = testutil.DialPOP3(t, addr)
	p.ExpectPrefix("+OK")
	if l := p.Cmd("AUTH XOAUTH2 " + base64.StdEncoding.EncodeToString([]byte("user="+janeMailbox+"\x01auth=Bearer "+bad+"\x01\x01"))); !strings.HasPrefix(l, "-ERR [AUTH]") {
		t.Errorf("bad client token: %q", l)
	}

	// The hook answers a token for the device; backend do (OAUTHBEARER).
	hookTok := w.idp.IssueToken(janeMailbox)
	const hookDevicePw = "Hook-Device-Pw-63"
	w.secrets = append(w.secrets, hookDevicePw)
	hook := httptest.NewServer(http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
		var req struct{ User, Password string }
		json.NewDecoder(r.Body).Decode(&req)
		if req.User != "hookdev" || req.Password != hookDevicePw {
			rw.WriteHeader(http.StatusUnauthorized)
			return
		}
		fmt.Fprintf(rw, `{"backend":"do","upstream":{"user":%q,"token":%q}}`, janeMailbox, hookTok)
	}))
	t.Cleanup(hook.Close)
	dir2 := t.TempDir()
	addr2 := "127.0.0.1:" + freePort(t)
	w.start(t, dir2, addr2, w.config(addr2, "accounts: {http: {url: \""+hook.URL+"/auth\"}}\n"))
	p = testutil.DialPOP3(t, addr2)
	p.ExpectPrefix("+OK")
	p.Login("hookdev", hookDevicePw)
	readOne(t, p, janeMailbox)
	if !dovecotSaw(w.do, "method=OAUTHBEARER") {
		t.Errorf("Dovecot saw no OAUTHBEARER login for the hook's token:\n%s", w.do.Log())
	}
	w.grep(t)
}

// With cluster, the binary takes the credential's refresh lock in Redis
// before it asks the token endpoint: while the key is held (as another
// node would hold it) a device login waits and no token request goes
// out; once it is free the login goes through with one request.
func TestOAuthClusterRefreshLock(t *testing.T) {
	w := newOAuthWorld(t)
	rs := redis.Start(t, redis.Options{})
	rc := goredis.NewClient(&goredis.Options{Addr: rs.Addr(), DisableIdentity: true})
	t.Cleanup(func() { rc.Close() })
	const key = "popgate-e2e:oauth:lock:m365-app"
	if err := rc.Set(t.Context(), key, "another-node", time.Minute).Err(); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	// deviceGateway logs in and expects +OK: run it while the key is
	// held, and free the key once popgate is seen waiting.
	done := make(chan struct{})
	go func() {
		defer close(done)
		deadline := time.Now().Add(60 * time.Second)
		for time.Now().Before(deadline) {
			// The gateway is up; the first login follows at once.
			if b, err := os.ReadFile(filepath.Join(dir, "popgate.log")); err == nil && strings.Contains(string(b), `"message":"listening"`) {
				break
			}
			time.Sleep(50 * time.Millisecond)
		}
		// Give the login time to reach the lock (the refresh waits up to
		// 45 s for it; the client's read timeout is longer).
		time.Sleep(3 * time.Second)
		if n := w.idp.Requests(idp.GrantClientCredentials); n != 0 {
			t.Errorf("%d token requests while another node held the refresh lock", n)
		}
		rc.Del(t.Context(), key)
	}()
	w.deviceGateway(t, dir, fmt.Sprintf("cluster: {redis: {address: %q, key_prefix: \"popgate-e2e:\"}}\n", rs.Addr()))
	<-done
}
