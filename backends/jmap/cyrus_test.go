package jmap

import (
	"fmt"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapclient"
	"github.com/rs/zerolog"

	"github.com/popgate/popgate/backends"
	"github.com/popgate/popgate/backends/backendtest"
	"github.com/popgate/popgate/internal/testserver/cyrus"
	"github.com/popgate/popgate/internal/testutil"
)

var (
	cyrusOnce sync.Once
	cyrusSrv  *cyrus.Server
	cyrusErr  error
	userSeq   atomic.Int64
)

func TestMain(m *testing.M) {
	code := m.Run()
	if cyrusSrv != nil {
		cyrusSrv.Close()
	}
	os.Exit(code)
}

// sharedCyrus is one private Cyrus for the package's tests (each test
// uses its own users).
func sharedCyrus(t testing.TB) *cyrus.Server {
	t.Helper()
	cyrus.Require(t, false)
	cyrusOnce.Do(func() { cyrusSrv, cyrusErr = cyrus.New(cyrus.Options{}) })
	if cyrusErr != nil {
		t.Fatal(cyrusErr)
	}
	return cyrusSrv
}

func testLogger(t testing.TB) zerolog.Logger {
	if testing.Verbose() {
		return zerolog.New(zerolog.NewTestWriter(t)).Level(zerolog.DebugLevel)
	}
	return zerolog.Nop()
}

// cyrusDrop is one Cyrus user seeded over IMAP.
type cyrusDrop struct {
	s          *cyrus.Server
	user, pass string
	backends   map[backendtest.Policy]*Backend
}

// newCyrusUser creates a user whose INBOX exists (first IMAP login).
func newCyrusUser(t testing.TB, s *cyrus.Server) (string, string) {
	t.Helper()
	u := fmt.Sprintf("u%d-%d", time.Now().UnixNano()%1e9, userSeq.Add(1))
	if err := s.AddUser(u, "pw-"+u); err != nil {
		t.Fatal(err)
	}
	return u, "pw-" + u
}

// seedCyrus creates a user holding msgs in INBOX, in this order (internal
// dates a minute apart, so the JMAP receivedAt order is the seeding order).
func seedCyrus(t testing.TB, s *cyrus.Server, msgs [][]byte) *cyrusDrop {
	t.Helper()
	u, p := newCyrusUser(t, s)
	c, err := s.Dial(u)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	base := time.Date(2024, 1, 1, 10, 0, 0, 0, time.UTC)
	for i, raw := range msgs {
		if err := appendAt(c, "INBOX", raw, base.Add(time.Duration(i)*time.Minute)); err != nil {
			t.Fatal(err)
		}
	}
	c.Logout().Wait()
	return &cyrusDrop{s: s, user: u, pass: p, backends: map[backendtest.Policy]*Backend{}}
}

func appendAt(c *imapclient.Client, mailbox string, raw []byte, at time.Time, flags ...imap.Flag) error {
	cmd := c.Append(mailbox, int64(len(raw)), &imap.AppendOptions{Time: at, Flags: flags})
	if _, err := cmd.Write(raw); err != nil {
		cmd.Close()
		cmd.Wait()
		return err
	}
	if err := cmd.Close(); err != nil {
		cmd.Wait()
		return err
	}
	_, err := cmd.Wait()
	return err
}

func (d *cyrusDrop) config(p backendtest.Policy) Config {
	c := DefaultConfig()
	c.Name, c.URL, c.CommandTimeout = "cyrus", d.s.SessionURL(), 20*time.Second
	c.Delete.Policy, c.Delete.Folder = p.Name, p.Folder
	if p.Keyword != "" {
		c.Delete.Keyword = p.Keyword
	}
	return c
}

// Backend reuses one backend per policy, so that later logins meet the
// snapshot cache earlier ones filled.
func (d *cyrusDrop) Backend(t *testing.T, p backendtest.Policy) backends.Backend {
	if b, ok := d.backends[p]; ok {
		return b
	}
	b, err := New(d.config(p), testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	d.backends[p] = b
	return b
}

func (d *cyrusDrop) Credentials() backends.Credentials {
	return backends.Credentials{Username: d.user, Password: d.pass, Mechanism: "USER"}
}

// State lists every mailbox of the user over IMAP.
func (d *cyrusDrop) State(t *testing.T) []backendtest.Stored {
	t.Helper()
	return cyrusState(t, d.s, d.user)
}

func cyrusState(t testing.TB, s *cyrus.Server, user string) []backendtest.Stored {
	t.Helper()
	c, err := s.Dial(user)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	mboxes, err := c.List("", "*", nil).Collect()
	if err != nil {
		t.Fatal(err)
	}
	var out []backendtest.Stored
	for _, mb := range mboxes {
		sel, err := c.Select(mb.Mailbox, &imap.SelectOptions{ReadOnly: true}).Wait()
		if err != nil {
			t.Fatal(err)
		}
		if sel.NumMessages == 0 {
			continue
		}
		folder := mb.Mailbox
		if strings.EqualFold(folder, "INBOX") {
			folder = ""
		}
		fetched, err := c.Fetch(imap.SeqSet{imap.SeqRange{Start: 1, Stop: 0}}, &imap.FetchOptions{
			Flags: true, BodySection: []*imap.FetchItemBodySection{{Peek: true}},
		}).Collect()
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range fetched {
			var flags []string
			for _, f := range m.Flags {
				flags = append(flags, string(f))
			}
			out = append(out, backendtest.Stored{Folder: folder, Raw: m.BodySection[0].Bytes, Flags: flags})
		}
	}
	c.Logout().Wait()
	return out
}

func (d *cyrusDrop) FlagDeleted(t *testing.T, i int) {
	t.Fatal("FlagDeleted: JMAP has no \\Deleted flag (Harness.NoDeletedFlag)")
}

// Expunge makes another IMAP client remove the seeded message i.
func (d *cyrusDrop) Expunge(t *testing.T, i int) {
	t.Helper()
	c, err := d.s.Dial(d.user)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Select("INBOX", nil).Wait(); err != nil {
		t.Fatal(err)
	}
	data, err := c.UIDSearch(&imap.SearchCriteria{Header: []imap.SearchCriteriaHeaderField{{Key: "X-Backendtest-Seq", Value: fmt.Sprint(i)}}}, nil).Wait()
	if err != nil {
		t.Fatal(err)
	}
	uids := data.AllUIDs()
	if len(uids) == 0 {
		t.Fatalf("Expunge: seq %d not found", i)
	}
	set := imap.UIDSetNum(uids...)
	if err := c.Store(set, &imap.StoreFlags{Op: imap.StoreFlagsAdd, Silent: true, Flags: []imap.Flag{imap.FlagDeleted}}, nil).Close(); err != nil {
		t.Fatal(err)
	}
	if err := c.UIDExpunge(set).Close(); err != nil {
		t.Fatal(err)
	}
	c.Logout().Wait()
}

func (d *cyrusDrop) Unreachable(t *testing.T) backends.Backend {
	c := DefaultConfig()
	c.URL, c.CommandTimeout = fmt.Sprintf("http://127.0.0.1:%d/.well-known/jmap", testutil.FreePort(t)), 5*time.Second
	b, err := New(c, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// The conformance suite on a real Cyrus JMAP server.
func TestCyrusConformance(t *testing.T) {
	s := sharedCyrus(t)
	backendtest.Run(t, backendtest.Harness{
		Policies:      []string{"move", "flag", "keep"},
		MarksSeen:     true,
		NoDeletedFlag: true, // JMAP has no \Deleted flag another client could set
		NewMaildrop: func(t *testing.T, msgs [][]byte) backendtest.Maildrop {
			return seedCyrus(t, s, msgs)
		},
	})
}
