package rest_test

import (
	"fmt"
	"net"
	"os"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/popgate/popgate/backends"
	"github.com/popgate/popgate/backends/backendtest"
	"github.com/popgate/popgate/backends/rest"
	"github.com/popgate/popgate/examples/maildir-store/store"
	"github.com/popgate/popgate/examples/maildir-store/store/storetest"
	"github.com/popgate/popgate/internal/openapitest"
	"github.com/popgate/popgate/internal/testutil"
)

const (
	user     = "alice@example.org"
	password = "correct horse"
)

type drop struct {
	root *storetest.Root
	url  string
	ids  []string
}

// newDrop seeds a reference store with msgs and serves it on loopback,
// every request and answer validated against the OpenAPI document.
func newDrop(t *testing.T, msgs [][]byte, pageSize int) *drop {
	root := storetest.NewRoot(t)
	root.AddUser(t, user, password)
	d := &drop{root: root}
	for _, m := range msgs {
		d.ids = append(d.ids, root.Deliver(t, user, m))
	}
	d.url = root.Serve(t, store.Options{PageSize: pageSize}, openapitest.New(t).Wrap)
	return d
}

// cfg is the default configuration for url, changed by each of set.
func cfg(url string, set ...func(*rest.Config)) rest.Config {
	c := rest.DefaultConfig()
	c.URL = url
	c.CommandTimeout = 20 * time.Second
	for _, f := range set {
		f(&c)
	}
	return c
}

func newBackend(t *testing.T, c rest.Config) *rest.Backend {
	t.Helper()
	c.Name = "store"
	b, err := rest.New(c, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	return b
}

func (d *drop) Backend(t *testing.T, p backendtest.Policy) backends.Backend {
	return newBackend(t, cfg(d.url, func(c *rest.Config) { c.Delete.Policy = p.Name }))
}

func (d *drop) Credentials() backends.Credentials {
	return backends.Credentials{Username: user, Password: password, Mechanism: "USER",
		RemoteAddr: &net.TCPAddr{IP: net.IPv4(192, 0, 2, 7), Port: 51234}, TLS: true}
}

func (d *drop) State(t *testing.T) []backendtest.Stored {
	var out []backendtest.Stored
	for _, f := range d.root.Files(t, user) {
		raw, err := os.ReadFile(f.Path)
		if err != nil {
			t.Fatal(err)
		}
		s := backendtest.Stored{Raw: raw}
		for _, fl := range f.Flags {
			switch fl {
			case 'S':
				s.Flags = append(s.Flags, `\Seen`)
			case 'T':
				s.Flags = append(s.Flags, `\Deleted`)
			default:
				s.Flags = append(s.Flags, fmt.Sprintf("maildir-%c", fl))
			}
		}
		out = append(out, s)
	}
	return out
}

func (d *drop) FlagDeleted(t *testing.T, i int) { d.root.AddFlag(t, user, d.ids[i], 'T') }
func (d *drop) Expunge(t *testing.T, i int)     { d.root.Remove(t, user, d.ids[i]) }

func (d *drop) Unreachable(t *testing.T) backends.Backend {
	return newBackend(t, cfg(fmt.Sprintf("http://127.0.0.1:%d/pop/v1", testutil.FreePort(t)), func(c *rest.Config) { c.CommandTimeout = 5 * time.Second }))
}

// TestConformance runs the backend conformance suite against the
// reference maildir store served on loopback (pages of 2 messages, so
// that cursors are exercised).
func TestConformance(t *testing.T) {
	backendtest.Run(t, backendtest.Harness{
		NewMaildrop: func(t *testing.T, msgs [][]byte) backendtest.Maildrop { return newDrop(t, msgs, 2) },
		Policies:    []string{"keep"},
		MarksSeen:   true,
	})
}
