package e2e

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/crypto/bcrypt"
)

// The same clients through popgate's rest backend to the reference store
// (examples/maildir-store, built and run as its own process). The store's
// Maildir files have LF line endings, as Maildirs usually do: what the
// clients get must be the CRLF originals, with LIST sizes exact.

var (
	storeBinOnce sync.Once
	storeBin     string
	storeBinErr  error
)

// buildRestStore builds examples/maildir-store once, into storeBin.
func buildRestStore(t *testing.T) {
	t.Helper()
	storeBinOnce.Do(func() {
		storeBin = filepath.Join(filepath.Dir(popgateBin), "maildir-store")
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		defer cancel()
		out, err := exec.CommandContext(ctx, "go", "build", "-o", storeBin, "github.com/popgate/popgate/examples/maildir-store").CombinedOutput()
		if err != nil {
			storeBinErr = fmt.Errorf("go build ./examples/maildir-store: %v\n%s", err, out)
		}
	})
	if storeBinErr != nil {
		t.Fatal(storeBinErr)
	}
}

// restStore is a running maildir-store with one user.
type restStore struct {
	url, root, user string
	seq             atomic.Int64
}

func startRestStore(t *testing.T, user, pass string) *restStore {
	t.Helper()
	if *reference {
		t.Skip("no reference POP3 for the rest backend")
	}
	buildRestStore(t)
	dir := t.TempDir()
	s := &restStore{root: filepath.Join(dir, "mail"), user: user}
	for _, sub := range []string{"cur", "new", "tmp"} {
		if err := os.MkdirAll(filepath.Join(s.root, user, sub), 0o700); err != nil {
			t.Fatal(err)
		}
	}
	h, _ := bcrypt.GenerateFromPassword([]byte(pass), bcrypt.MinCost)
	users := filepath.Join(dir, "users")
	writeFile(t, users, user+":"+string(h)+"\n", 0o600)
	addr := "127.0.0.1:" + freePort(t)
	runRestStore(t, dir, addr, s.root, users)
	s.url = "http://" + addr + "/pop/v1"
	return s
}

// runRestStore runs maildir-store on addr (Maildirs under root, users file
// users, its log in dir) until the end of t.
func runRestStore(t *testing.T, dir, addr, root, users string) {
	t.Helper()
	logf, _ := os.Create(filepath.Join(dir, "store.log"))
	cmd := exec.Command(storeBin, "--listen", addr, "--maildirs", root, "--users", users)
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	logf.Close()
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	for deadline := time.Now().Add(30 * time.Second); ; {
		if c, err := net.Dial("tcp", addr); err == nil {
			c.Close()
			break
		}
		if time.Now().After(deadline) {
			out, _ := os.ReadFile(filepath.Join(dir, "store.log"))
			t.Fatalf("maildir-store did not listen on %s:\n%s", addr, out)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// deliver writes msgs (CRLF) as LF Maildir files and returns their ids.
func (s *restStore) deliver(t *testing.T, msgs ...[]byte) []string {
	t.Helper()
	var ids []string
	for _, m := range msgs {
		id := fmt.Sprintf("1700000000.M%06dP1.e2e", s.seq.Add(1))
		tmp := filepath.Join(s.root, s.user, "tmp", id)
		writeFile(t, tmp, string(lf(m)), 0o600)
		if err := os.Rename(tmp, filepath.Join(s.root, s.user, "new", id)); err != nil {
			t.Fatal(err)
		}
		ids = append(ids, id)
	}
	return ids
}

// files returns id → Maildir flags of every message file left.
func (s *restStore) files(t *testing.T) map[string]string {
	t.Helper()
	out := map[string]string{}
	for _, sub := range []string{"new", "cur"} {
		ents, err := os.ReadDir(filepath.Join(s.root, s.user, sub))
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range ents {
			id, flags, _ := strings.Cut(e.Name(), ":2,")
			out[id] = flags
		}
	}
	return out
}

// trash flags message id T (trashed) as another client would: hidden from
// POP3, never removed by popgate.
func (s *restStore) trash(t *testing.T, id string) {
	t.Helper()
	for _, sub := range []string{"new", "cur"} {
		ents, _ := os.ReadDir(filepath.Join(s.root, s.user, sub))
		for _, e := range ents {
			if n, flags, _ := strings.Cut(e.Name(), ":2,"); n == id {
				if err := os.Rename(filepath.Join(s.root, s.user, sub, e.Name()), filepath.Join(s.root, s.user, "cur", id+":2,"+flags+"T")); err != nil {
					t.Fatal(err)
				}
				return
			}
		}
	}
	t.Fatalf("no message %s", id)
}

func (s *restStore) gateway(t *testing.T, secrets ...string) *gateway {
	return startPopgate(t, fmt.Sprintf("    type: rest\n    url: %q\n", s.url), secrets...)
}

func keys(m map[string]string) []string {
	var k []string
	for id := range m {
		k = append(k, id)
	}
	sort.Strings(k)
	return k
}

// curl through the rest backend: LIST sizes are the CRLF sizes of LF
// files, RETR is byte for byte the original, UIDL is the store's id and
// stable, DELE removes exactly that message and RETR marks seen.
func TestRestCurl(t *testing.T) {
	requireBin(t, "curl")
	const user, pass = "rest-curl", "pw-rest-curl-Zq7x"
	s := startRestStore(t, user, pass)
	msgs := corpus()
	ids := s.deliver(t, msgs...)
	g := s.gateway(t, pass)

	var want strings.Builder
	for i, m := range msgs {
		fmt.Fprintf(&want, "%d %d\r\n", i+1, len(m))
	}
	if got := curl(t, g.addr, user, pass, ""); string(got) != want.String() {
		t.Errorf("LIST:\n got %q\nwant %q", got, want.String())
	}
	for i, m := range msgs {
		if got := curl(t, g.addr, user, pass, fmt.Sprint(i+1)); !bytes.Equal(got, m) {
			t.Errorf("RETR %d differs:\n got %q\nwant %q", i+1, clip(got), clip(m))
		}
	}
	u1 := uidlLines(t, curl(t, g.addr, user, pass, "", "-X", "UIDL"))
	if strings.Join(u1, " ") != strings.Join(ids, " ") {
		t.Errorf("UIDL %q, want the store's ids %q", u1, ids)
	}
	curl(t, g.addr, user, pass, "2", "-X", "DELE", "-I")
	left := s.files(t)
	if _, ok := left[ids[1]]; ok || len(left) != len(msgs)-1 {
		t.Errorf("after DELE 2: %v", keys(left))
	}
	if left[ids[0]] != "S" {
		t.Errorf("message 1 after RETR: flags %q, want S (mark_seen)", left[ids[0]])
	}
	if u2 := uidlLines(t, curl(t, g.addr, user, pass, "", "-X", "UIDL")); strings.Join(u2, " ") != strings.Join(append(ids[:1:1], ids[2:]...), " ") {
		t.Errorf("UIDL after DELE: %q", u2)
	}
}

// fetchmail with keep + UIDL, then without keep: everything delivered and
// deleted in the store except a message another client trashed.
func TestRestFetchmail(t *testing.T) {
	requireBin(t, "fetchmail")
	const user, pass = "rest-fetchmail", "pw-rest-fetchmail-Zq7x"
	s := startRestStore(t, user, pass)
	msgs := corpus()
	s.deliver(t, msgs[:4]...)
	trashed := s.deliver(t, []byte("Subject: trashed elsewhere\r\n\r\nkeep me\r\n"))[0]
	s.trash(t, trashed)
	g := s.gateway(t, pass)
	dir := t.TempDir()
	mda := deliverScript(t, dir)
	rc := func(keep string) string {
		return fmt.Sprintf(`set no bouncemail
poll %s service %s protocol POP3 uidl auth password timeout 60
  user "%s" there with password "%s" is "nobody" here
  sslproto ""
  mda "%s"
  %s
`, g.host(), g.port(), user, pass, mda, keep)
	}
	if code := fetchmail(t, dir, rc("keep")); code != 0 {
		t.Fatalf("first run: exit code %d", code)
	}
	got := delivered(t, dir)
	if len(got) != 4 {
		t.Fatalf("delivered %d messages, want 4", len(got))
	}
	for i := range got {
		checkDelivered(t, fmt.Sprintf("message %d", i+1), got[i], msgs[i])
	}
	if code := fetchmail(t, dir, rc("keep")); code != 1 {
		t.Errorf("second run: exit code %d, want 1 (no mail: UIDLs stable)", code)
	}
	delivered(t, dir)
	s.deliver(t, msgs[4])
	if code := fetchmail(t, dir, rc("no keep fetchall")); code != 0 {
		t.Errorf("non-keep run: exit code %d", code)
	}
	if got := delivered(t, dir); len(got) != 5 {
		t.Errorf("non-keep run delivered %d, want 5", len(got))
	}
	if left := s.files(t); len(left) != 1 || left[trashed] != "T" {
		t.Errorf("left in the store: %v, want only the trashed one", left)
	}
}

// mpop (pipelining) with its UIDL file, then keep off.
func TestRestMpop(t *testing.T) {
	requireBin(t, "mpop")
	const user, pass = "rest-mpop", "pw-rest-mpop-Zq7x"
	s := startRestStore(t, user, pass)
	msgs := corpus()
	s.deliver(t, msgs[:3]...)
	g := s.gateway(t, pass)
	dir := t.TempDir()
	mda := deliverScript(t, dir)
	conf := fmt.Sprintf(`defaults
timeout 60
account default
host %s
port %s
tls off
auth user
user %s
password %s
delivery mda %s
uidls_file %s
keep on
`, g.host(), g.port(), user, pass, mda, filepath.Join(dir, "uidls"))
	mpop(t, dir, conf)
	got := delivered(t, dir)
	if len(got) != 3 {
		t.Fatalf("delivered %d, want 3", len(got))
	}
	for i := range got {
		checkDelivered(t, fmt.Sprintf("message %d", i+1), got[i], msgs[i])
	}
	mpop(t, dir, conf)
	if got := delivered(t, dir); len(got) != 0 {
		t.Errorf("second run delivered %d, want 0", len(got))
	}
	s.deliver(t, msgs[3])
	mpop(t, dir, conf, "--keep=off")
	if got := delivered(t, dir); len(got) != 1 {
		t.Fatalf("keep off delivered %d, want 1", len(got))
	} else {
		checkDelivered(t, "new message", got[0], msgs[3])
	}
	if left := s.files(t); len(left) != 0 {
		t.Errorf("left in the store: %v", keys(left))
	}
}

// poplib: STAT/LIST/UIDL/RETR/TOP, DELE 1 and 2 and QUIT; a message
// another client trashes during the session survives.
func TestRestPoplib(t *testing.T) {
	requireBin(t, "python3")
	const user, pass = "rest-poplib", "pw-rest-poplib-Zq7x"
	s := startRestStore(t, user, pass)
	msgs := corpus()
	ids := s.deliver(t, msgs...)
	g := s.gateway(t, pass)
	res, quit := poplibSession(t, g, user, pass, []int{1, 2}, func() { s.trash(t, ids[2]) })
	if !strings.HasPrefix(quit, "+OK") {
		t.Errorf("QUIT: %q", quit)
	}
	var total int64
	for _, m := range msgs {
		total += int64(len(m))
	}
	if len(res.Stat) != 2 || res.Stat[0] != int64(len(msgs)) || res.Stat[1] != total {
		t.Errorf("STAT %v, want [%d %d]", res.Stat, len(msgs), total)
	}
	if len(res.Retr) != len(msgs) || len(res.UIDL) != len(msgs) {
		t.Fatalf("%d RETR, %d UIDL", len(res.Retr), len(res.UIDL))
	}
	for i, m := range msgs {
		if got := decode(t, res.Retr[i].Raw); !bytes.Equal(got, m) || res.Retr[i].Octets != int64(len(m)) {
			t.Errorf("RETR %d differs (%d octets, want %d)", i+1, res.Retr[i].Octets, len(m))
		}
		if want := fmt.Sprintf("%d %s", i+1, ids[i]); res.UIDL[i] != want {
			t.Errorf("UIDL %q, want %q", res.UIDL[i], want)
		}
	}
	if top := decode(t, res.Top); !bytes.HasPrefix(msgs[0], top) || !bytes.Contains(top, []byte("\r\n\r\n")) {
		t.Errorf("TOP 1 2: %q", clip(top))
	}
	left := s.files(t)
	if _, ok := left[ids[0]]; ok {
		t.Error("message 1 not deleted")
	}
	if _, ok := left[ids[1]]; ok {
		t.Error("message 2 not deleted")
	}
	if !strings.Contains(left[ids[2]], "T") || len(left) != len(msgs)-2 {
		t.Errorf("left: %v", left)
	}
}

// startPopgate runs popgate serve with one backend, "upstream", whose
// section (indented by four spaces) is backend, and every login routed to
// it.
func startPopgate(t *testing.T, backend string, secrets ...string) *gateway {
	t.Helper()
	dir := t.TempDir()
	g := &gateway{addr: "127.0.0.1:" + freePort(t), logPath: filepath.Join(dir, "popgate.log"), secrets: secrets}
	conf := fmt.Sprintf(`# popgate e2e configuration (rest)
listeners:
  - address: "%s"
    tls: none
backends:
  upstream:
%sroutes:
  - match: "*"
    backend: upstream
auth:
  allow_plaintext: true
  failure_delay: 0s
log:
  level: debug
  format: json
`, g.addr, backend)
	return runGateway(t, g, dir, conf)
}
