package imap

import (
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapclient"
	"github.com/emersion/go-imap/v2/imapserver"
	"github.com/emersion/go-imap/v2/imapserver/imapmemserver"
	"github.com/rs/zerolog"

	"github.com/popgate/popgate/backends"
	"github.com/popgate/popgate/backends/backendtest"
	"github.com/popgate/popgate/internal/testserver/dovecot"
)

// store is an IMAP server the tests run against.
type store interface {
	addr() string
	newUser(t testing.TB) (user, pass string)
	dial(t testing.TB, user, pass string) *imapclient.Client
}

// ---- Dovecot: one per test binary, a fresh user per case ----

var (
	dovecotOnce sync.Once
	dovecotSrv  *dovecot.Server
	dovecotErr  error
	userSeq     atomic.Int64
)

func TestMain(m *testing.M) {
	code := m.Run()
	if dovecotSrv != nil {
		dovecotSrv.Close()
	}
	os.Exit(code)
}

// sharedDovecot returns the test binary's Dovecot, started on first use.
func sharedDovecot(t testing.TB) *dovecotStore {
	t.Helper()
	dovecot.Require(t)
	dovecotOnce.Do(func() { dovecotSrv, dovecotErr = dovecot.New(dovecot.Options{POP3: true}) })
	if dovecotErr != nil {
		t.Fatal(dovecotErr)
	}
	return &dovecotStore{dovecotSrv}
}

type dovecotStore struct{ s *dovecot.Server }

func (d *dovecotStore) addr() string { return d.s.Addr() }
func (d *dovecotStore) newUser(t testing.TB) (string, string) {
	u := fmt.Sprintf("u%d-%d", time.Now().UnixNano()%1e9, userSeq.Add(1))
	if err := d.s.AddUser(u, "pw-"+u); err != nil {
		t.Fatal(err)
	}
	return u, "pw-" + u
}
func (d *dovecotStore) dial(t testing.TB, user, pass string) *imapclient.Client {
	return dialStore(t, d.s.Addr(), user, pass)
}

// ---- go-imap's imapmemserver, in process ----

type memStore struct {
	srv *imapmemserver.Server
	ln  net.Listener
}

func newMemStore(t testing.TB, caps imap.CapSet) *memStore {
	return newMemStoreOpts(t, &imapserver.Options{Caps: caps, InsecureAuth: true})
}

func newMemStoreOpts(t testing.TB, opts *imapserver.Options) *memStore {
	ms := &memStore{srv: imapmemserver.New()}
	caps := opts.Caps
	if caps == nil {
		caps = imap.CapSet{imap.CapIMAP4rev1: {}, imap.CapUIDPlus: {}, imap.CapMove: {}, imap.CapNamespace: {}}
	}
	o := *opts
	o.NewSession = func(*imapserver.Conn) (imapserver.Session, *imapserver.GreetingData, error) {
		return ms.srv.NewSession(), nil, nil
	}
	o.Caps = caps
	o.Logger = quietLogger{}
	s := imapserver.New(&o)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ms.ln = ln
	go s.Serve(ln)
	t.Cleanup(func() { s.Close() })
	return ms
}

type quietLogger struct{}

func (quietLogger) Printf(string, ...any) {}

func (m *memStore) addr() string { return m.ln.Addr().String() }
func (m *memStore) newUser(t testing.TB) (string, string) {
	u := fmt.Sprintf("m%d", userSeq.Add(1))
	usr := imapmemserver.NewUser(u, "pw-"+u)
	if err := usr.Create("INBOX", nil); err != nil {
		t.Fatal(err)
	}
	m.srv.AddUser(usr)
	return u, "pw-" + u
}
func (m *memStore) dial(t testing.TB, user, pass string) *imapclient.Client {
	return dialStore(t, m.addr(), user, pass)
}

func dialStore(t testing.TB, addr, user, pass string) *imapclient.Client {
	t.Helper()
	c, err := imapclient.DialInsecure(addr, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Login(user, pass).Wait(); err != nil {
		c.Close()
		t.Fatal(err)
	}
	return c
}

// ---- the harness over any store ----

func testLogger(t testing.TB) zerolog.Logger {
	if testing.Verbose() {
		return zerolog.New(zerolog.NewTestWriter(t)).Level(zerolog.DebugLevel)
	}
	return zerolog.Nop()
}

func harness(st store, policies ...string) backendtest.Harness {
	return harnessWith(st, nil, policies...)
}

// harnessWith lets tweak adjust every backend's configuration.
func harnessWith(st store, tweak func(*Config), policies ...string) backendtest.Harness {
	return backendtest.Harness{
		Policies:  policies,
		MarksSeen: true,
		NewMaildrop: func(t *testing.T, msgs [][]byte) backendtest.Maildrop {
			md := seedMaildrop(t, st, msgs)
			md.tweak = tweak
			return md
		},
	}
}

// seedMaildrop creates a fresh user on st holding msgs in INBOX.
func seedMaildrop(t testing.TB, st store, msgs [][]byte) *maildrop {
	user, pass := st.newUser(t)
	c := st.dial(t, user, pass)
	defer c.Close()
	md := &maildrop{st: st, user: user, pass: pass}
	for _, raw := range msgs {
		uid, err := dovecot.AppendWith(c, "INBOX", raw)
		if err != nil {
			t.Fatal(err)
		}
		md.uids = append(md.uids, uid)
	}
	c.Logout().Wait()
	return md
}

type maildrop struct {
	st         store
	user, pass string
	uids       []imap.UID
	tweak      func(*Config)
	// backends are reused per policy, so that later logins of a case meet
	// the snapshot cache the earlier ones filled.
	backends map[backendtest.Policy]*Backend
}

func (md *maildrop) Credentials() backends.Credentials {
	return backends.Credentials{Username: md.user, Password: md.pass, Mechanism: "USER"}
}

func (md *maildrop) config(p backendtest.Policy) Config {
	c := testConfig(md.st.addr(), "none")
	c.Name = "test"
	if p.Name != "" {
		c.Delete.Policy = p.Name
	}
	c.Delete.Folder = p.Folder
	if p.Keyword != "" {
		c.Delete.Keyword = p.Keyword
	}
	if md.tweak != nil {
		md.tweak(&c)
	}
	return c
}

func (md *maildrop) Backend(t *testing.T, p backendtest.Policy) backends.Backend {
	if b := md.backends[p]; b != nil {
		return b
	}
	b, err := New(md.config(p), testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	if md.backends == nil {
		md.backends = map[backendtest.Policy]*Backend{}
	}
	md.backends[p] = b
	return b
}

func (md *maildrop) Unreachable(t *testing.T) backends.Backend {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	cfg := md.config(backendtest.Policy{})
	cfg.Address = addr
	cfg.DialTimeout = 5 * time.Second
	b, err := New(cfg, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func (md *maildrop) client(t testing.TB) *imapclient.Client {
	c := md.st.dial(t, md.user, md.pass)
	if _, err := c.Select("INBOX", nil).Wait(); err != nil {
		t.Fatal(err)
	}
	return c
}

func (md *maildrop) FlagDeleted(t *testing.T, i int) {
	c := md.client(t)
	defer c.Close()
	if err := c.Store(imap.UIDSetNum(md.uids[i]), &imap.StoreFlags{Op: imap.StoreFlagsAdd, Silent: true, Flags: []imap.Flag{imap.FlagDeleted}}, nil).Close(); err != nil {
		t.Fatal(err)
	}
	c.Logout().Wait()
}

func (md *maildrop) Expunge(t *testing.T, i int) {
	c := md.client(t)
	defer c.Close()
	set := imap.UIDSetNum(md.uids[i])
	if err := c.Store(set, &imap.StoreFlags{Op: imap.StoreFlagsAdd, Silent: true, Flags: []imap.Flag{imap.FlagDeleted}}, nil).Close(); err != nil {
		t.Fatal(err)
	}
	if err := c.UIDExpunge(set).Close(); err != nil {
		t.Fatal(err)
	}
	c.Logout().Wait()
}

func (md *maildrop) State(t *testing.T) []backendtest.Stored {
	c := md.st.dial(t, md.user, md.pass)
	defer c.Close()
	boxes, err := c.List("", "*", nil).Collect()
	if err != nil {
		t.Fatal(err)
	}
	var out []backendtest.Stored
	for _, mbox := range boxes {
		sel, err := c.Select(mbox.Mailbox, &imap.SelectOptions{ReadOnly: true}).Wait()
		if err != nil {
			var ie *imap.Error
			if errors.As(err, &ie) { // \Noselect and the like
				continue
			}
			t.Fatal(err)
		}
		if sel.NumMessages == 0 {
			continue
		}
		msgs, err := c.Fetch(imap.SeqSet{imap.SeqRange{Start: 1, Stop: 0}}, &imap.FetchOptions{
			Flags: true, BodySection: []*imap.FetchItemBodySection{{Peek: true}},
		}).Collect()
		if err != nil {
			t.Fatal(err)
		}
		folder := mbox.Mailbox
		if strings.EqualFold(folder, "INBOX") {
			folder = ""
		}
		for _, m := range msgs {
			var flags []string
			for _, f := range m.Flags {
				if f == "\\Recent" { // a per-session flag
					continue
				}
				flags = append(flags, string(f))
			}
			var raw []byte
			if len(m.BodySection) > 0 {
				raw = m.BodySection[0].Bytes
			}
			out = append(out, backendtest.Stored{Folder: folder, Raw: raw, Flags: flags})
		}
	}
	c.Logout().Wait()
	return out
}

// ---- the suite ----

func TestConformanceMemServer(t *testing.T) {
	backendtest.Run(t, harness(newMemStore(t, nil), "move", "flag", "keep"))
}

func TestConformanceDovecot(t *testing.T) {
	backendtest.Run(t, harness(sharedDovecot(t), "move", "flag", "keep"))
}

// Small chunks: every message of some size is fetched in many partial
// FETCHes, and TOP crosses chunk boundaries.
func TestConformanceSmallChunks(t *testing.T) {
	small := func(c *Config) { c.ChunkSize = 4096 }
	t.Run("MemServer", func(t *testing.T) { backendtest.Run(t, harnessWith(newMemStore(t, nil), small)) })
	t.Run("Dovecot", func(t *testing.T) { backendtest.Run(t, harnessWith(sharedDovecot(t), small)) })
}

// testConfig is the default configuration toward addr.
func testConfig(addr, tls string) Config {
	c := DefaultConfig()
	c.Address, c.TLS = addr, tls
	return c
}
