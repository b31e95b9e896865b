// Package haproxy starts a private HAProxy for tests: a TCP frontend on
// 127.0.0.1 on a port chosen at run time, balancing over the given servers
// (optionally with the PROXY protocol and HTTP health checks), and an admin
// socket to read the servers' states. Its configuration, socket and log live
// in a temporary folder; the system's HAProxy is never touched.
//
// Tests call Start, which skips when haproxy is missing, or fails when
// CI=true.
//
// Debian package: haproxy.
package haproxy

import (
	"bufio"
	"encoding/csv"
	"errors"
	"fmt"
	"io"
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

// ErrNotInstalled is returned by New when haproxy is not found.
var ErrNotInstalled = errors.New("haproxy: binary not found (Debian: apt-get install haproxy)")

// Backend is one server behind the frontend.
type Backend struct {
	Name string // server name in HAProxy (letters, digits, -_); default "nN"
	Addr string // host:port connections go to
	// CheckAddr (host:port) is where the HTTP health check goes (a popgate
	// admin listener); "" disables checks for this server.
	CheckAddr string
}

// Options configure a private HAProxy.
type Options struct {
	Backends []Backend
	// SendProxy is "v1" (send-proxy), "v2" (send-proxy-v2) or "" (none).
	SendProxy string
	// CheckPath is the HTTP health check path (default "/readyz"); a server
	// is up while it answers 200.
	CheckPath string
	// CheckToken, when set, is sent as "Authorization: Bearer TOKEN".
	CheckToken string
	// CheckInterval between health checks (default 200ms); one failed
	// check marks a server down, one success marks it up.
	CheckInterval time.Duration
	// Balance is the HAProxy algorithm (default "roundrobin").
	Balance string
}

// Server is a running private HAProxy.
type Server struct {
	Dir  string
	addr string

	mu     sync.Mutex
	cmd    *exec.Cmd
	exited chan struct{}
	once   sync.Once
}

// Require skips t (or fails it when CI=true) when haproxy is missing.
func Require(t testing.TB) {
	t.Helper()
	_, err := binary()
	testutil.RequireProgram(t, err)
}

// Start starts a private HAProxy for t and stops it on t.Cleanup.
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
	return testutil.FindProgram("haproxy", ErrNotInstalled, "/usr/sbin", "/usr/local/sbin")
}

// New starts a private HAProxy; the caller must Close it.
func New(opts Options) (*Server, error) {
	bin, err := binary()
	if err != nil {
		return nil, err
	}
	if len(opts.Backends) == 0 {
		return nil, errors.New("haproxy: no backends")
	}
	var lastErr error
	for attempt := 0; attempt < 3; attempt++ {
		var s *Server
		if s, lastErr = start(bin, opts); lastErr == nil {
			return s, nil
		}
		if !strings.Contains(lastErr.Error(), "in use") && !strings.Contains(lastErr.Error(), "cannot bind") {
			break
		}
	}
	return nil, lastErr
}

// Config returns the HAProxy configuration for opts with the frontend on
// addr and the admin socket at sock.
func Config(opts Options, addr, sock string) (string, error) {
	var b strings.Builder
	w := func(format string, a ...any) { fmt.Fprintf(&b, format+"\n", a...) }
	interval := opts.CheckInterval
	if interval <= 0 {
		interval = 200 * time.Millisecond
	}
	path := opts.CheckPath
	if path == "" {
		path = "/readyz"
	}
	balance := opts.Balance
	if balance == "" {
		balance = "roundrobin"
	}
	var proxyArg string
	switch opts.SendProxy {
	case "":
	case "v1":
		proxyArg = " send-proxy"
	case "v2":
		proxyArg = " send-proxy-v2"
	default:
		return "", fmt.Errorf("haproxy: SendProxy %q is not v1, v2 or empty", opts.SendProxy)
	}
	w("# private HAProxy for popgate tests")
	w("global")
	w("  maxconn 4000")
	w("  stats socket %s mode 600 level admin", sock)
	w("defaults")
	w("  mode tcp")
	w("  timeout connect 5s")
	w("  timeout client 10m")
	w("  timeout server 10m")
	w("  timeout check 2s")
	// A connection that reaches a node whose listener just closed (a
	// rolling restart) is tried again on another one.
	w("  retries 3")
	w("  option redispatch")
	w("frontend pop3")
	w("  bind %s", addr)
	w("  default_backend nodes")
	w("backend nodes")
	w("  balance %s", balance)
	checks := false
	for _, be := range opts.Backends {
		checks = checks || be.CheckAddr != ""
	}
	if checks {
		w("  option httpchk")
		if opts.CheckToken != "" {
			w("  http-check send meth GET uri %s hdr Authorization \"Bearer %s\"", path, opts.CheckToken)
		} else {
			w("  http-check send meth GET uri %s", path)
		}
		w("  http-check expect status 200")
	}
	w("  default-server inter %dms fastinter %dms downinter %dms fall 1 rise 1", interval.Milliseconds(), interval.Milliseconds(), interval.Milliseconds())
	for i, be := range opts.Backends {
		name := be.Name
		if name == "" {
			name = fmt.Sprintf("n%d", i)
		}
		line := fmt.Sprintf("  server %s %s%s", name, be.Addr, proxyArg)
		if be.CheckAddr != "" {
			host, port, err := net.SplitHostPort(be.CheckAddr)
			if err != nil {
				return "", fmt.Errorf("haproxy: CheckAddr %q: %v", be.CheckAddr, err)
			}
			line += fmt.Sprintf(" check addr %s port %s", host, port)
		}
		w("%s", line)
	}
	return b.String(), nil
}

func start(bin string, opts Options) (*Server, error) {
	dir, err := os.MkdirTemp("", "popgate-haproxy-")
	if err != nil {
		return nil, err
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	addr := l.Addr().String()
	l.Close()
	s := &Server{Dir: dir, addr: addr, exited: make(chan struct{})}
	conf, err := Config(opts, addr, s.socket())
	if err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	cfgFile := filepath.Join(dir, "haproxy.cfg")
	if err := os.WriteFile(cfgFile, []byte(conf), 0o600); err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	logf, err := os.Create(filepath.Join(dir, "haproxy.log"))
	if err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	cmd := exec.Command(bin, "-db", "-f", cfgFile)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		logf.Close()
		os.RemoveAll(dir)
		return nil, err
	}
	logf.Close()
	s.cmd = cmd
	go func() { cmd.Wait(); close(s.exited) }()
	deadline := time.Now().Add(20 * time.Second)
	for {
		// The admin socket answers once the configuration is loaded and
		// the frontend bound (a probe connection to the frontend would
		// reach a backend).
		if out, err := s.Command("show info"); err == nil && strings.Contains(out, "Pid:") {
			return s, nil
		}
		select {
		case <-s.exited:
			log := s.Log()
			os.RemoveAll(dir)
			return nil, fmt.Errorf("haproxy exited at start: %s", log)
		default:
		}
		if time.Now().After(deadline) {
			log := s.Log()
			s.Close()
			return nil, fmt.Errorf("haproxy did not listen on %s within 20s: %s", addr, log)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func (s *Server) socket() string { return filepath.Join(s.Dir, "admin.sock") }

// Addr is the frontend's host:port.
func (s *Server) Addr() string { return s.addr }

// Log returns what HAProxy wrote (alerts and warnings).
func (s *Server) Log() string {
	b, _ := os.ReadFile(filepath.Join(s.Dir, "haproxy.log"))
	return string(b)
}

// Command sends one command on the admin socket and returns the answer.
func (s *Server) Command(cmd string) (string, error) {
	c, err := net.DialTimeout("unix", s.socket(), 2*time.Second)
	if err != nil {
		return "", err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.WriteString(c, cmd+"\n"); err != nil {
		return "", err
	}
	b, err := io.ReadAll(bufio.NewReader(c))
	return string(b), err
}

// States returns each server's status as HAProxy's "show stat" reports it
// ("UP", "DOWN", "MAINT", "UP 1/2", …), by server name.
func (s *Server) States() (map[string]string, error) {
	out, err := s.Command("show stat")
	if err != nil {
		return nil, err
	}
	out = strings.TrimPrefix(out, "# ")
	r := csv.NewReader(strings.NewReader(out))
	r.FieldsPerRecord = -1
	recs, err := r.ReadAll()
	if err != nil {
		return nil, fmt.Errorf("haproxy: show stat: %v", err)
	}
	if len(recs) == 0 {
		return nil, errors.New("haproxy: show stat: empty answer")
	}
	col := map[string]int{}
	for i, h := range recs[0] {
		col[h] = i
	}
	px, sv, st := col["pxname"], col["svname"], col["status"]
	states := map[string]string{}
	for _, rec := range recs[1:] {
		if len(rec) <= st || rec[px] != "nodes" || rec[sv] == "BACKEND" {
			continue
		}
		states[rec[sv]] = rec[st]
	}
	return states, nil
}

// Close stops HAProxy and removes its folder.
func (s *Server) Close() error {
	s.once.Do(func() {
		s.mu.Lock()
		defer s.mu.Unlock()
		if s.cmd != nil {
			_ = syscall.Kill(-s.cmd.Process.Pid, syscall.SIGKILL)
			<-s.exited
		}
		os.RemoveAll(s.Dir)
	})
	return nil
}
