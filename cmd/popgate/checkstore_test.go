package main

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/popgate/popgate/backends/backendtest"
	"github.com/popgate/popgate/examples/maildir-store/store"
	"github.com/popgate/popgate/examples/maildir-store/store/storetest"
)

// TestCheckStoreCommand runs the built binary's check-store against the
// reference store: exit 0 with the password on standard input, 1 with a
// wrong one (the session check fails), 2 without the required flags.
func TestCheckStoreCommand(t *testing.T) {
	root := storetest.NewRoot(t)
	root.AddUser(t, "tester", "pw for the check")
	for _, m := range backendtest.Messages() {
		root.Deliver(t, "tester", m)
	}
	url := root.Serve(t, store.Options{PageSize: 4}, nil)

	run := func(stdin string, args ...string) (string, int) {
		cmd := exec.Command(binary, append([]string{"check-store"}, args...)...)
		cmd.Stdin = strings.NewReader(stdin)
		out, err := cmd.CombinedOutput()
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			return string(out), ee.ExitCode()
		}
		if err != nil {
			t.Fatal(err)
		}
		return string(out), 0
	}
	out, code := run("pw for the check\n", "--url", url, "--user", "tester", "--password-file", "-", "--destructive")
	if code != 0 || strings.Contains(out, "FAIL") || !strings.Contains(out, "PASS  commit-retry") {
		t.Fatalf("check-store on the reference store: exit %d\n%s", code, out)
	}
	if strings.Contains(out, "pw for the check") {
		t.Fatalf("the password is in the output:\n%s", out)
	}
	pw := filepath.Join(t.TempDir(), "pw")
	os.WriteFile(pw, []byte("not the password\n"), 0o600)
	out, code = run("", "--url", url, "--user", "tester", "--password-file", pw)
	if code != 1 || !strings.Contains(out, "FAIL  session") {
		t.Fatalf("wrong password: exit %d\n%s", code, out)
	}
	if _, code = run("", "--url", url); code != 2 {
		t.Fatalf("missing flags: exit %d, want 2", code)
	}
}
