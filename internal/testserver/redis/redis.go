// Package redis starts a private Redis server for tests: its own
// configuration and working folder in a temporary directory, listening on
// 127.0.0.1 on a port chosen at run time, no persistence. It never touches
// the system's Redis.
//
// Tests call Start, which skips when redis-server is missing, or fails when
// CI=true. Stop and Resume (same port) let a test take Redis away in the
// middle of a session and bring it back.
//
// Debian package: redis-server.
package redis

import (
	"bufio"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/popgate/popgate/internal/testutil"
)

// ErrNotInstalled is returned by New when redis-server is not found.
var ErrNotInstalled = errors.New("redis: redis-server not found (Debian: apt-get install redis-server)")

// Options configure a private Redis.
type Options struct {
	// Password, when set, is required from clients (requirepass).
	Password string
	// CertFile and KeyFile (PEM), when set, make the port a TLS port
	// (tls-port; no plaintext port). Clients are not asked for a
	// certificate.
	CertFile, KeyFile string
}

// Server is a private Redis.
type Server struct {
	Dir  string // working folder: config, log
	addr string
	bin  string
	opts Options

	mu     sync.Mutex
	cmd    *exec.Cmd
	exited chan struct{}
}

// Require skips t (or fails it when CI=true) when redis-server is missing.
func Require(t testing.TB) {
	t.Helper()
	_, err := binary()
	testutil.RequireProgram(t, err)
}

// Start starts a private Redis for t and stops it on t.Cleanup.
func Start(t testing.TB, opts Options) *Server {
	t.Helper()
	Require(t)
	s, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func binary() (string, error) {
	return testutil.FindProgram("redis-server", ErrNotInstalled, "/usr/bin", "/usr/local/bin")
}

// New starts a private Redis; the caller must Close it.
func New(opts Options) (*Server, error) {
	bin, err := binary()
	if err != nil {
		return nil, err
	}
	var lastErr error
	for attempt := 0; attempt < 3; attempt++ {
		dir, err := os.MkdirTemp("", "popgate-redis-")
		if err != nil {
			return nil, err
		}
		port, err := freePort()
		if err != nil {
			os.RemoveAll(dir)
			return nil, err
		}
		s := &Server{Dir: dir, addr: fmt.Sprintf("127.0.0.1:%d", port), bin: bin, opts: opts}
		if err := s.writeConfig(port); err != nil {
			os.RemoveAll(dir)
			return nil, err
		}
		if lastErr = s.Resume(); lastErr == nil {
			return s, nil
		}
		os.RemoveAll(dir)
		if !strings.Contains(lastErr.Error(), "in use") {
			break
		}
	}
	return nil, lastErr
}

func (s *Server) writeConfig(port int) error {
	var b strings.Builder
	w := func(format string, a ...any) { fmt.Fprintf(&b, format+"\n", a...) }
	w("# private Redis for popgate tests")
	w("bind 127.0.0.1")
	if s.opts.CertFile != "" {
		w("port 0")
		w("tls-port %d", port)
		w("tls-cert-file %s", s.opts.CertFile)
		w("tls-key-file %s", s.opts.KeyFile)
		w("tls-auth-clients no")
	} else {
		w("port %d", port)
	}
	w("protected-mode yes")
	w("daemonize no")
	w("dir %s", s.Dir)
	w("logfile %s", filepath.Join(s.Dir, "redis.log"))
	w("save \"\"")
	w("appendonly no")
	w("databases 16")
	if s.opts.Password != "" {
		w("requirepass %s", s.opts.Password)
	}
	return os.WriteFile(s.configFile(), []byte(b.String()), 0o600)
}

func (s *Server) configFile() string { return filepath.Join(s.Dir, "redis.conf") }

// Addr is the server's host:port.
func (s *Server) Addr() string { return s.addr }

// Running reports whether the process is up.
func (s *Server) Running() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.cmd != nil
}

// Resume starts the server again on the same port after Stop (the data is
// gone: no persistence). It is a no-op when the server runs.
func (s *Server) Resume() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd != nil {
		return nil
	}
	cmd := exec.Command(s.bin, s.configFile())
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		return err
	}
	exited := make(chan struct{})
	go func() { cmd.Wait(); close(exited) }()
	deadline := time.Now().Add(20 * time.Second)
	for {
		if err := s.ping(); err == nil {
			break
		}
		select {
		case <-exited:
			return fmt.Errorf("redis-server exited at start: %s", s.logTail())
		default:
		}
		if time.Now().After(deadline) {
			cmd.Process.Kill()
			<-exited
			return fmt.Errorf("redis-server did not answer on %s within 20s: %s", s.addr, s.logTail())
		}
		time.Sleep(20 * time.Millisecond)
	}
	s.cmd, s.exited = cmd, exited
	return nil
}

// ping sends PING (after AUTH when a password is set) and expects +PONG.
func (s *Server) ping() error {
	var c net.Conn
	var err error
	if s.opts.CertFile != "" {
		d := &net.Dialer{Timeout: time.Second}
		c, err = tls.DialWithDialer(d, "tcp", s.addr, &tls.Config{InsecureSkipVerify: true}) // the harness only checks that it answers
	} else {
		c, err = net.DialTimeout("tcp", s.addr, time.Second)
	}
	if err != nil {
		return err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(2 * time.Second))
	r := bufio.NewReader(c)
	if s.opts.Password != "" {
		fmt.Fprintf(c, "AUTH %s\r\n", s.opts.Password)
		if line, err := r.ReadString('\n'); err != nil || !strings.HasPrefix(line, "+OK") {
			return fmt.Errorf("redis AUTH: %q %v", line, err)
		}
	}
	if _, err := c.Write([]byte("PING\r\n")); err != nil {
		return err
	}
	line, err := r.ReadString('\n')
	if err != nil {
		return err
	}
	if !strings.HasPrefix(line, "+PONG") {
		return fmt.Errorf("redis PING: %q", strings.TrimSpace(line))
	}
	return nil
}

// Stop kills the server (SIGKILL: no goodbye to clients) and waits for it;
// its port stays reserved for Resume. Stopping a stopped server is a no-op.
func (s *Server) Stop() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd == nil {
		return
	}
	_ = syscall.Kill(-s.cmd.Process.Pid, syscall.SIGKILL)
	<-s.exited
	s.cmd, s.exited = nil, nil
}

// Close stops the server and removes its folder.
func (s *Server) Close() error {
	s.Stop()
	return os.RemoveAll(s.Dir)
}

// Log returns the server's log (for failure messages).
func (s *Server) Log() string {
	b, _ := os.ReadFile(filepath.Join(s.Dir, "redis.log"))
	return string(b)
}

func (s *Server) logTail() string {
	l := s.Log()
	if len(l) > 2000 {
		l = l[len(l)-2000:]
	}
	return l
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}
