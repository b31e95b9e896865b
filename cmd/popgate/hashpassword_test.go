package main

import (
	"bytes"
	"context"
	"strings"
	"testing"

	"github.com/popgate/popgate/internal/passwd"
)

// withStdin runs f with stdin reading s from a pipe.
func withStdin(t *testing.T, s string, f func()) {
	t.Helper()
	old := stdin
	stdin = strings.NewReader(s)
	defer func() { stdin = old }()
	f()
}

func TestHashPassword(t *testing.T) {
	// One argon2id run is enough on a shared machine; TestReadPasswordLine
	// covers the line ends.
	{
		in := "sc@nner pass\r\n"
		var out, errb bytes.Buffer
		var code int
		withStdin(t, in, func() { code = run([]string{"hash-password"}, &out, &errb) })
		if code != 0 {
			t.Fatalf("%q: exit %d: %s", in, code, errb.String())
		}
		h := strings.TrimSpace(out.String())
		if !strings.HasPrefix(h, "$argon2id$v=19$m=65536,t=3,p=2$") || strings.Count(out.String(), "\n") != 1 {
			t.Fatalf("%q: output %q", in, out.String())
		}
		ok, err := passwd.NewVerifier(1).Verify(context.Background(), h, "sc@nner pass")
		if !ok || err != nil {
			t.Fatalf("%q: the hash does not verify the password: %v", in, err)
		}
		if strings.Contains(errb.String(), "sc@nner") {
			t.Errorf("stderr shows the password: %q", errb.String())
		}
	}
	for _, in := range []string{"", "\n", "\r\n", strings.Repeat("x", 5000) + "\n"} {
		var out, errb bytes.Buffer
		var code int
		withStdin(t, in, func() { code = run([]string{"hash-password"}, &out, &errb) })
		if code != exitUsage || out.Len() != 0 {
			t.Errorf("input of %d octets: exit %d, output %q", len(in), code, out.String())
		}
	}
	var out, errb bytes.Buffer
	if code := run([]string{"hash-password", "--help"}, &out, &errb); code != 0 || !strings.Contains(out.String(), "argon2id") {
		t.Errorf("--help: %d %q", code, out.String())
	}
}

func TestReadPasswordLine(t *testing.T) {
	for in, want := range map[string]string{
		"pw\n": "pw", "pw\r\n": "pw", "pw": "pw", "a b \n": "a b ", "pw\nnext\n": "pw",
	} {
		got, err := readPasswordLine(strings.NewReader(in))
		if err != nil || got != want {
			t.Errorf("%q: %q %v, want %q", in, got, err, want)
		}
	}
}
