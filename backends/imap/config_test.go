package imap

import (
	"strings"
	"testing"

	"github.com/popgate/popgate/backends"
)

func TestCheckNamesEveryKey(t *testing.T) {
	ok := testConfig("imap.example.org:993", "implicit")
	if err := backends.CheckConfig(&ok); err != nil {
		t.Fatalf("minimal config: %v", err)
	}
	for _, tc := range []struct {
		name string
		set  func(c *Config)
		want []string
	}{
		{"empty", func(c *Config) { c.Address, c.TLS = "", "" }, []string{"address: required", "tls: required"}},
		{"bad", func(c *Config) { c.Address, c.TLS = "nohostport", "ssl" }, []string{`address: "nohostport"`, `tls: unknown mode "ssl"`}},
		{"move", func(c *Config) { c.Delete.Policy = "move" }, []string{"delete.folder: required with policy move"}},
		{"purge", func(c *Config) { c.Delete.Policy = "purge" }, []string{`delete.policy: unknown policy "purge"`}},
		{"keyword", func(c *Config) { c.Delete.Policy, c.Delete.Keyword = "flag", `\Deleted` }, []string{"delete.keyword", "not an IMAP keyword"}},
		{"folder", func(c *Config) { c.Delete.Folder = "Trash" }, []string{"delete.folder: only used with policy move"}},
		{"self", func(c *Config) { c.Delete.Policy, c.Delete.Folder = "move", "INBOX" }, []string{"is the mailbox itself"}},
		{"no uid", func(c *Config) { c.UIDLTemplate = "%v" }, []string{"uidl_template", "%u"}},
		{"space", func(c *Config) { c.UIDLTemplate = "%u %v" }, []string{"uidl_template", "not allowed"}},
		{"width", func(c *Config) { c.UIDLTemplate = "%8Xu" }, []string{"uidl_template", "leading 0"}},
		{"variable", func(c *Config) { c.UIDLTemplate = "%u%q" }, []string{"uidl_template", "unknown variable %q"}},
		{"long", func(c *Config) { c.UIDLTemplate = strings.Repeat("x", 70) + "%u" }, []string{"more than 70"}},
		{"chunk", func(c *Config) { c.ChunkSize = 100 }, []string{"chunk size"}},
		{"version", func(c *Config) { c.MinVersion = "1.4" }, []string{"min_version"}},
		{"timeout", func(c *Config) { c.CommandTimeout = 0 }, []string{"command_timeout: must be more than 0"}},
	} {
		c := testConfig("h:1", "implicit")
		tc.set(&c)
		err := backends.CheckConfig(&c)
		if err == nil {
			t.Errorf("%s: no error, want %q", tc.name, tc.want)
			continue
		}
		for _, w := range tc.want {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("%s: error %q does not mention %q", tc.name, err, w)
			}
		}
	}
}

func TestUIDLTemplate(t *testing.T) {
	for _, tc := range []struct {
		tmpl     string
		uid, val uint32
		want     string
	}{
		// Dovecot's default pop3_uidl_format, as Dovecot writes it.
		{DefaultUIDLTemplate, 1, 0x6b02081c, "000000016b02081c"},
		{DefaultUIDLTemplate, 0xABCDEF12, 7, "abcdef1200000007"},
		{"%08XUu%08XUv", 0xab, 0xcd, "000000AB000000CD"},
		{"%v-%u", 42, 1700000000, "1700000000-42"},
		{"%u", 7, 9, "7"},
		{"uid%%%06u", 12, 0, "uid%000012"},
	} {
		p, err := parseUIDLTemplate(tc.tmpl)
		if err != nil {
			t.Fatalf("%q: %v", tc.tmpl, err)
		}
		if got := p.format(tc.uid, tc.val); got != tc.want {
			t.Errorf("%q(%d, %d) = %q, want %q", tc.tmpl, tc.uid, tc.val, got, tc.want)
		}
	}
}

func TestDefaultConfig(t *testing.T) {
	c := DefaultConfig()
	if c.Mailbox != "INBOX" || c.DialTimeout != backends.DefaultDialTimeout || c.CommandTimeout != backends.DefaultCommandTimeout ||
		c.UIDLTemplate != DefaultUIDLTemplate || c.Delete.Keyword != "$POP3Deleted" || c.Delete.Policy != backends.PolicyExpunge ||
		c.ChunkSize != DefaultChunkSize || !c.MarkSeen || c.SnapshotCache != backends.DefaultSnapshotCache {
		t.Fatalf("defaults: %+v", c)
	}
	c.Address, c.TLS, c.MarkSeen = "127.0.0.1:1", "none", false
	b, err := New(c, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	if b.markSeen {
		t.Fatal("mark_seen false not applied")
	}
	if _, err := New(Config{Address: "127.0.0.1:1"}, testLogger(t)); err == nil {
		t.Fatal("New accepted an invalid config")
	}
}
