package backends_test

import (
	"context"
	"strings"
	"testing"

	"gopkg.in/yaml.v3"

	"github.com/popgate/popgate/backends"
	"github.com/popgate/popgate/backends/memory"
	"github.com/popgate/popgate/internal/strictyaml"
)

type tinyConfig struct {
	Greeting       string `yaml:"greeting"`
	backends.Store `yaml:",inline"`
}

func (c *tinyConfig) Check(k *backends.Checker) {
	c.Store.Check(k, nil)
	if c.Greeting == "" {
		k.Add("greeting", "required")
	}
}
func (c *tinyConfig) Summary() string { return c.Greeting + ", " + c.Store.Summary() }
func (c *tinyConfig) Build(backends.Env) (backends.Backend, error) {
	return memory.New(), nil
}

var tiny = backends.Type{Name: "tiny", New: func() backends.Config {
	return &tinyConfig{Greeting: "hello", Store: backends.DefaultStore()}
}}

func decode(t *testing.T, section string) (any, []string) {
	t.Helper()
	var doc yaml.Node
	if err := yaml.Unmarshal([]byte(section), &doc); err != nil {
		t.Fatal(err)
	}
	n := doc.Content[0]
	typ := ""
	for i := 0; i+1 < len(n.Content); i += 2 {
		if n.Content[i].Value == "type" {
			typ = n.Content[i+1].Value
		}
	}
	d := strictyaml.NewDecoder()
	got := backends.NewRegistry(tiny).DecodeBackend(d, "backends.b", typ, n)
	var ps []string
	for _, p := range d.Problems() {
		ps = append(ps, p.Error())
	}
	return got, ps
}

func TestRegistryDecodesByType(t *testing.T) {
	got, ps := decode(t, "type: tiny\nmark_seen: false\ndelete: {policy: move, folder: Old}\n")
	if len(ps) > 0 {
		t.Fatal(ps)
	}
	c := got.(*tinyConfig)
	if c.Greeting != "hello" || c.MarkSeen || c.SnapshotCache != backends.DefaultSnapshotCache || c.Delete.Folder != "Old" {
		t.Errorf("decoded over the defaults: %+v", c)
	}
	if s := c.Summary(); s != "hello, delete: move to Old" {
		t.Errorf("summary %q", s)
	}
	for _, tc := range []struct{ section, want string }{
		{"type: tiny\nmailbox: x\n", `line 2: backends.b: unknown key "mailbox" (known keys: type, greeting, dial_timeout, command_timeout, mark_seen, snapshot_cache, delete, uidl_header)`},
		{"type: tiny\ndelete: {policy: flag, keyword: \"a b\"}\n", `line 2: backends.b.delete.keyword: "a b": want printable characters without spaces`},
		{"type: tiny\ndelete: {folder: x}\n", `line 2: backends.b.delete.folder: only used with policy move`},
		{"type: tiny\nsnapshot_cache: -1\n", `line 2: backends.b.snapshot_cache: must not be negative (0 disables the cache)`},
		{"type: tiny\ngreeting: \"\"\n", `line 2: backends.b.greeting: required`},
		{"type: huge\n", `backends.b.type: unknown type "huge" (registered types: tiny)`},
		{"greeting: x\n", `backends.b.type: required (tiny)`},
	} {
		got, ps := decode(t, tc.section)
		if got != nil || strings.Join(ps, "\n") != tc.want {
			t.Errorf("%q: %v %q, want %q", tc.section, got, ps, tc.want)
		}
	}
}

// closeCounter counts Close calls.
type closeCounter struct {
	*memory.Backend
	closed int
}

func (c *closeCounter) Close() error { c.closed++; return nil }

func TestInstanceClosesAfterLastSession(t *testing.T) {
	be := &closeCounter{Backend: memory.New()}
	be.AddUser("u", "p")
	in := backends.NewInstance(be)
	ctx := context.Background()
	mb, err := in.Login(ctx, backends.Credentials{Username: "u", Password: "p"})
	if err != nil {
		t.Fatal(err)
	}
	if got := backends.MaildropID(mb, backends.Credentials{Username: "u"}); got != "memory:u" {
		t.Errorf("maildrop id %q: the backend's own id is lost", got)
	}
	in.Close() // retired while a session is open
	if be.closed != 0 {
		t.Fatal("closed under an open session")
	}
	if _, err := in.Login(ctx, backends.Credentials{Username: "u", Password: "p"}); err == nil {
		t.Fatal("login after Close")
	}
	mb.Close()
	mb.Close()
	if be.closed != 1 {
		t.Fatalf("closed %d times after the last session, want 1", be.closed)
	}
	<-in.Done()
}
