package imap

import (
	"github.com/popgate/popgate/tlsconf"
	"strings"
	"testing"
)

func TestValidateNamesEveryKey(t *testing.T) {
	ok := Config{Address: "imap.example.org:993", TLS: "implicit"}
	if err := ok.Validate(); err != nil {
		t.Fatalf("minimal config: %v", err)
	}
	for _, tc := range []struct {
		cfg  Config
		want []string
	}{
		{Config{}, []string{"address is required", "tls is required"}},
		{Config{Address: "nohostport", TLS: "ssl"}, []string{`address "nohostport"`, `tls "ssl"`}},
		{Config{Address: "h:1", TLS: "none", Delete: DeleteConfig{Policy: "move"}}, []string{"delete.folder is required for policy move"}},
		{Config{Address: "h:1", TLS: "none", Delete: DeleteConfig{Policy: "purge"}}, []string{`delete.policy "purge"`}},
		{Config{Address: "h:1", TLS: "none", Delete: DeleteConfig{Policy: "flag", Keyword: `\Deleted`}}, []string{"delete.keyword"}},
		{Config{Address: "h:1", TLS: "none", Delete: DeleteConfig{Folder: "Trash"}}, []string{"delete.folder is only used by policy move"}},
		{Config{Address: "h:1", TLS: "none", Delete: DeleteConfig{Policy: "move", Folder: "INBOX"}}, []string{"is the mailbox itself"}},
		{Config{Address: "h:1", TLS: "none", UIDLTemplate: "%v"}, []string{"uidl_template", "%u"}},
		{Config{Address: "h:1", TLS: "none", UIDLTemplate: "%u %v"}, []string{"uidl_template", "not allowed"}},
		{Config{Address: "h:1", TLS: "none", UIDLTemplate: "%8Xu"}, []string{"uidl_template", "leading 0"}},
		{Config{Address: "h:1", TLS: "none", UIDLTemplate: "%u%q"}, []string{"uidl_template", "unknown variable %q"}},
		{Config{Address: "h:1", TLS: "none", UIDLTemplate: strings.Repeat("x", 70) + "%u"}, []string{"more than 70"}},
		{Config{Address: "h:1", TLS: "none", ChunkSize: 100}, []string{"chunk_size"}},
		{Config{Address: "h:1", TLS: "none", Upstream: upstream("1.4")}, []string{"min_version"}},
	} {
		err := tc.cfg.Validate()
		if err == nil {
			t.Errorf("%+v: no error, want %q", tc.cfg, tc.want)
			continue
		}
		for _, w := range tc.want {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("%+v: error %q does not mention %q", tc.cfg, err, w)
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

func TestNewAppliesDefaults(t *testing.T) {
	b, err := New(Config{Address: "127.0.0.1:1", TLS: "none", Delete: DeleteConfig{Policy: "flag"}}, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	c := b.Config()
	if c.Mailbox != "INBOX" || c.DialTimeout != DefaultDialTimeout || c.CommandTimeout != DefaultCommandTimeout ||
		c.UIDLTemplate != DefaultUIDLTemplate || c.Delete.Keyword != "$POP3Deleted" || c.ChunkSize != DefaultChunkSize || !b.markSeen {
		t.Fatalf("defaults not applied: %+v", c)
	}
	off := false
	b, _ = New(Config{Address: "127.0.0.1:1", TLS: "none", MarkSeen: &off}, testLogger(t))
	if b.markSeen || b.Config().Delete.Policy != PolicyExpunge {
		t.Fatal("mark_seen false or default policy not applied")
	}
	if _, err := New(Config{Address: "127.0.0.1:1"}, testLogger(t)); err == nil {
		t.Fatal("New accepted an invalid config")
	}
}

func upstream(minVersion string) (u tlsconf.Upstream) {
	u.MinVersion = minVersion
	return u
}
