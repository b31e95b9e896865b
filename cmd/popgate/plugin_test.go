package main

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/popgate/popgate/backends"
	"github.com/popgate/popgate/backends/memory"
	"github.com/popgate/popgate/internal/testutil"
)

// cannedConfig is a throw-away store type defined in this test file only:
// one user whose maildrop holds the given messages, in memory. It shows
// the whole contract of a type: its keys, the shared ones, its defaults,
// its checks, its summary and its constructor.
type cannedConfig struct {
	User           string   `yaml:"user"`
	Password       string   `yaml:"password"`
	Messages       []string `yaml:"messages"`
	backends.Store `yaml:",inline"`
}

var cannedType = backends.Type{Name: "canned", New: func() backends.Config {
	return &cannedConfig{User: "alice", Store: backends.DefaultStore()}
}}

func (c *cannedConfig) Check(k *backends.Checker) {
	if c.Password == "" {
		k.Add("password", "required")
	}
	c.Store.Check(k, nil)
	if c.Delete.Policy == backends.PolicyMove {
		k.Add("delete.policy", "move: a canned maildrop has no folders")
	}
}

func (c *cannedConfig) Summary() string {
	return fmt.Sprintf("%d messages for %s, %s", len(c.Messages), c.User, c.Store.Summary())
}

func (c *cannedConfig) Build(backends.Env) (backends.Backend, error) {
	b := memory.New()
	b.AddUser(c.User, c.Password)
	for _, m := range c.Messages {
		b.Append(c.User, []byte("Subject: "+m+"\r\n\r\n"+m+"\r\n"))
	}
	return b, nil
}

// TestThrowAwayStoreType registers a store type from this test file, in the
// process (not through the built binary), and shows that check-config
// accepts its keys, refuses an unknown one naming the type's keys, prints
// its summary, and that the gateway routes a POP3 session to it.
func TestThrowAwayStoreType(t *testing.T) {
	builtin := storeTypes
	storeTypes = backends.NewRegistry(append(builtin.Types(), cannedType)...)
	t.Cleanup(func() { storeTypes = builtin })

	dir := t.TempDir()
	addr := freeAddr(t)
	config := fmt.Sprintf(`listeners: [{address: %q, tls: none}]
backends:
  box:
    type: canned
    password: secret
    messages: [one, two]
    delete: {policy: flag}
routes: [{match: "*", backend: box}]
auth: {allow_plaintext: true, failure_delay: 0s}
`, addr)
	write := func(name, s string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(s), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	good := write("good.yaml", config)

	var out, errOut strings.Builder
	if code := runCheckConfig([]string{"-c", good}, &out, &errOut); code != exitOK {
		t.Fatalf("check-config: status %d, stderr %s", code, errOut.String())
	}
	if want := "  box          canned 2 messages for alice, delete: flag with $POP3Deleted\n"; !strings.Contains(out.String(), want) {
		t.Errorf("summary lacks %q:\n%s", want, out.String())
	}

	bad := write("bad.yaml", strings.Replace(config, "    password: secret\n", "    password: secret\n    mailbox: INBOX\n", 1))
	out.Reset()
	errOut.Reset()
	code := runCheckConfig([]string{"-c", bad}, &out, &errOut)
	want := "popgate: " + bad + `: line 6: backends.box: unknown key "mailbox" (known keys: type, user, password, messages, dial_timeout, command_timeout, mark_seen, snapshot_cache, delete, uidl_header)` + "\n"
	if code != exitUsage || errOut.String() != want {
		t.Errorf("unknown key: status %d\nstderr %q\n  want %q", code, errOut.String(), want)
	}
	move := write("move.yaml", strings.Replace(config, "{policy: flag}", "{policy: move, folder: Trash}", 1))
	errOut.Reset()
	code = runCheckConfig([]string{"-c", move}, &out, &errOut)
	want = "popgate: " + move + ": line 7: backends.box.delete.policy: move: a canned maildrop has no folders\n"
	if code != exitUsage || errOut.String() != want {
		t.Errorf("move: status %d\nstderr %q\n  want %q", code, errOut.String(), want)
	}

	// the running gateway routes a session to the canned store
	stop := make(chan struct{})
	done := make(chan int)
	var logs testutil.SyncBuffer // written by the gateway's goroutines
	go func() { done <- serve(good, &logs, stop) }()
	defer func() {
		close(stop)
		if code := <-done; code != exitOK {
			t.Errorf("serve: status %d\n%s", code, logs.String())
		}
	}()
	for deadline := time.Now().Add(30 * time.Second); ; {
		if c, err := net.Dial("tcp", addr); err == nil {
			c.Close()
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("gateway not listening on %s:\n%s", addr, logs.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	p := dialPOP3(t, addr, false)
	p.login("alice", "secret")
	if got := p.ok("STAT"); !strings.HasPrefix(got, "+OK 2 ") {
		t.Errorf("STAT = %q, want the two canned messages", got)
	}
	if got := string(p.multi("RETR 2")); got != "Subject: two\r\n\r\ntwo\r\n" {
		t.Errorf("RETR 2 = %q", got)
	}
	p.ok("QUIT")
}
