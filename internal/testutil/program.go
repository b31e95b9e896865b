package testutil

import (
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// FindProgram returns the path of the program name: from PATH first, else
// from the first of dirs that holds it as an executable file. When none
// does, it returns notFound, which should name the Debian package to
// install.
func FindProgram(name string, notFound error, dirs ...string) (string, error) {
	if p, err := exec.LookPath(name); err == nil {
		return p, nil
	}
	for _, d := range dirs {
		p := filepath.Join(d, name)
		if st, err := os.Stat(p); err == nil && st.Mode().IsRegular() && st.Mode()&0o111 != 0 {
			return p, nil
		}
	}
	return "", notFound
}

// RequireProgram ends t when missing is not nil: it fails t when CI=true (a
// test that needs a real server must not pass without it in CI) and skips
// it otherwise.
func RequireProgram(t testing.TB, missing error) {
	t.Helper()
	if missing == nil {
		return
	}
	if os.Getenv("CI") == "true" {
		t.Fatal(missing)
	}
	t.Skip(missing)
}

// ReservePorts picks n free loopback ports and keeps them bound until
// release is called, so that two servers started at once in one process
// never get the same port; release just before the server binds them.
func ReservePorts(n int) (ports []int, release func(), err error) {
	var ls []net.Listener
	release = func() {
		for _, l := range ls {
			l.Close()
		}
		ls = nil
	}
	for i := 0; i < n; i++ {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			release()
			return nil, nil, err
		}
		ls = append(ls, l)
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, release, nil
}
