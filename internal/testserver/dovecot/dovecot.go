// Package dovecot starts a private Dovecot IMAP (and optionally POP3) server
// for tests and benchmarks: its own configuration, base_dir, state, log and
// Maildir store in a temporary folder, listening on 127.0.0.1 on ports chosen
// at runtime. It never touches the system configuration or /run/dovecot.
//
// Tests call Start, which skips when the dovecot binary is missing, or fails
// when CI=true. TestMain or benchmarks that share one server across tests
// call New and Close.
//
// Debian packages: dovecot-imapd (IMAP), dovecot-pop3d (for Options.POP3).
package dovecot

import (
	"bufio"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/popgate/popgate/internal/testutil"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapclient"
)

// ErrNotInstalled is returned by New when the dovecot binary is not found.
var ErrNotInstalled = errors.New("dovecot: binary not found (Debian: apt-get install dovecot-imapd dovecot-pop3d)")

// DefaultCaps is the capability list Dovecot 2.3 announces after login. It
// is used to build an imap_capability override when Options.DropCaps is set.
var DefaultCaps = []string{
	"IMAP4rev1", "SASL-IR", "LOGIN-REFERRALS", "ID", "ENABLE", "IDLE", "SORT",
	"SORT=DISPLAY", "THREAD=REFERENCES", "THREAD=REFS", "THREAD=ORDEREDSUBJECT",
	"MULTIAPPEND", "URL-PARTIAL", "CATENATE", "UNSELECT", "CHILDREN", "NAMESPACE",
	"UIDPLUS", "LIST-EXTENDED", "I18NLEVEL=1", "CONDSTORE", "QRESYNC", "ESEARCH",
	"ESORT", "SEARCHRES", "WITHIN", "CONTEXT=SEARCH", "LIST-STATUS", "BINARY",
	"MOVE", "SNIPPET=FUZZY", "PREVIEW=FUZZY", "PREVIEW", "STATUS=SIZE", "SAVEDATE",
	"LITERAL+", "NOTIFY", "SPECIAL-USE",
}

// Options configure a private Dovecot.
type Options struct {
	// Users maps login names to passwords (stored as {PLAIN} in a
	// passwd-file). More can be added later with AddUser.
	Users map[string]string
	// POP3 also starts Dovecot's POP3 server on its own port (POP3Addr).
	POP3 bool
	// NoIMAP leaves IMAP out (with POP3: a POP3-only server, e.g. an imapc
	// gateway). Addr is then "" and Append/Dial cannot be used.
	NoIMAP bool
	// CertFile and KeyFile (PEM) turn TLS on: STARTTLS on the IMAP (and
	// POP3) port and an implicit-TLS IMAP port (IMAPSAddr).
	CertFile, KeyFile string
	// DropCaps removes capabilities (e.g. "UIDPLUS", "MOVE") from what
	// Dovecot announces after login, through an imap_capability override.
	// Dovecot still accepts the commands; a client that checks
	// capabilities will not use them.
	DropCaps []string
	// Extra is appended verbatim to dovecot.conf (e.g. an imapc setup);
	// a setting given again there overrides the one above (Dovecot keeps
	// the last). The text may use {{DIR}} for the server's folder.
	Extra string
	// PassdbExtra is added inside the passdb block, e.g.
	// "override_fields = userdb_imapc_user=%u userdb_imapc_password=%w"
	// for Dovecot's imapc POP3 gateway with the client's own password.
	PassdbExtra string
	// OAuth2IntrospectionURL turns on XOAUTH2 and OAUTHBEARER through
	// Dovecot's oauth2 passdb: every token is checked by POSTing it to this
	// RFC 7662 introspection endpoint, which must answer {"active": true,
	// "username": USER} (the user named in the SASL message). Passwords
	// keep working through the passwd-file passdb.
	OAuth2IntrospectionURL string
	// OAuth2Mechanisms are the token mechanisms offered with
	// OAuth2IntrospectionURL (default "xoauth2 oauthbearer").
	OAuth2Mechanisms string
	// AuthFailureDelay is Dovecot's delay after a failed login. Zero: 0 s
	// (Dovecot's own default is 2 s, too slow for tests).
	AuthFailureDelay time.Duration
}

// Server is a running private Dovecot.
type Server struct {
	Dir        string // the server's folder: config, base_dir, logs, mail
	ConfigFile string

	imapAddr, imapsAddr, pop3Addr string

	cmd     *exec.Cmd
	exited  chan struct{}
	mu      sync.Mutex
	users   map[string]string
	closeMu sync.Once
}

// Start starts a private Dovecot for t and stops it on t.Cleanup. When the
// dovecot binary is missing it calls t.Fatal if CI=true and t.Skip otherwise.
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

// Require skips t (or fails it when CI=true) when dovecot is not installed.
func Require(t testing.TB) {
	t.Helper()
	_, err := binary()
	testutil.RequireProgram(t, err)
}

func binary() (string, error) {
	return testutil.FindProgram("dovecot", ErrNotInstalled, "/usr/sbin", "/usr/local/sbin")
}

// New starts a private Dovecot; the caller must Close it. It returns
// ErrNotInstalled when dovecot is not found.
func New(opts Options) (*Server, error) {
	bin, err := binary()
	if err != nil {
		return nil, err
	}
	if opts.NoIMAP && !opts.POP3 {
		return nil, errors.New("dovecot: NoIMAP without POP3 leaves nothing to serve")
	}
	for attempt := 0; attempt < 3; attempt++ {
		var s *Server
		if s, err = start(bin, opts); err == nil {
			return s, nil
		}
		if !strings.Contains(err.Error(), "in use") { // only a port taken meanwhile is worth a retry
			break
		}
	}
	return nil, err
}

func start(bin string, opts Options) (*Server, error) {
	dir, err := os.MkdirTemp("", "popgate-dovecot-")
	if err != nil {
		return nil, err
	}
	// Mail processes run as an unprivileged uid: the folder must be
	// traversable.
	if err := os.Chmod(dir, 0o755); err != nil {
		return nil, err
	}
	s := &Server{Dir: dir, ConfigFile: filepath.Join(dir, "dovecot.conf"), users: map[string]string{}, exited: make(chan struct{})}
	fail := func(err error) (*Server, error) {
		os.RemoveAll(dir)
		return nil, err
	}
	if err := os.Mkdir(s.usersDir(), 0o755); err != nil {
		return fail(err)
	}
	for u, p := range opts.Users {
		if err := s.AddUser(u, p); err != nil {
			return fail(err)
		}
	}
	uid, gid, extraGlobal, err := mailIDs()
	if err != nil {
		return fail(err)
	}
	home := filepath.Join(dir, "home")
	if err := os.Mkdir(home, 0o755); err != nil {
		return fail(err)
	}
	if os.Getuid() == 0 {
		if err := os.Chown(home, uid, gid); err != nil {
			return fail(err)
		}
	}
	ports, release, err := testutil.ReservePorts(3)
	if err != nil {
		return fail(err)
	}
	defer release()
	if !opts.NoIMAP {
		s.imapAddr = fmt.Sprintf("127.0.0.1:%d", ports[0])
	}
	if opts.CertFile != "" && !opts.NoIMAP {
		s.imapsAddr = fmt.Sprintf("127.0.0.1:%d", ports[1])
	}
	if opts.POP3 {
		s.pop3Addr = fmt.Sprintf("127.0.0.1:%d", ports[2])
	}
	if opts.OAuth2IntrospectionURL != "" {
		ext := "introspection_mode = post\nintrospection_url = " + opts.OAuth2IntrospectionURL +
			"\ntokeninfo_url =\nusername_attribute = username\nactive_attribute = active\nactive_value = true\n"
		if err := os.WriteFile(s.oauth2ConfigFile(), []byte(ext), 0o644); err != nil {
			return fail(err)
		}
	}
	conf := s.config(opts, uid, gid, extraGlobal, ports)
	if err := os.WriteFile(s.ConfigFile, []byte(conf), 0o644); err != nil {
		return fail(err)
	}

	logf, err := os.Create(filepath.Join(dir, "stderr.log"))
	if err != nil {
		return fail(err)
	}
	cmd := exec.Command(bin, "-F", "-c", s.ConfigFile)
	cmd.Stdout = logf
	cmd.Stderr = logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	release()
	if err := cmd.Start(); err != nil {
		logf.Close()
		return fail(err)
	}
	logf.Close()
	s.cmd = cmd
	go func() { cmd.Wait(); close(s.exited) }()

	var addrs []string
	if s.imapAddr != "" {
		addrs = append(addrs, s.imapAddr)
	}
	if s.pop3Addr != "" {
		addrs = append(addrs, s.pop3Addr)
	}
	if s.imapsAddr != "" {
		addrs = append(addrs, s.imapsAddr)
	}
	deadline := time.Now().Add(30 * time.Second)
	for _, a := range addrs {
		for {
			c, err := net.DialTimeout("tcp", a, time.Second)
			if err == nil {
				c.Close()
				break
			}
			select {
			case <-s.exited:
				log := s.Log()
				os.RemoveAll(dir)
				return nil, fmt.Errorf("dovecot exited at start: %s", log)
			default:
			}
			if time.Now().After(deadline) {
				log := s.Log()
				s.Close()
				return nil, fmt.Errorf("dovecot did not listen on %s within 30s: %s", a, log)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	return s, nil
}

// mailIDs returns the uid/gid mail processes run as, and global settings
// needed to run without root.
func mailIDs() (uid, gid int, extra string, err error) {
	if os.Getuid() == 0 {
		// Dovecot refuses uid 0 for mail; any unprivileged numeric id works.
		return 65534, 65534, "", nil
	}
	u, err := user.Current()
	if err != nil {
		return 0, 0, "", err
	}
	g, err := user.LookupGroupId(strconv.Itoa(os.Getgid()))
	if err != nil {
		return 0, 0, "", err
	}
	extra = fmt.Sprintf("default_internal_user = %s\ndefault_internal_group = %s\ndefault_login_user = %s\n", u.Username, g.Name, u.Username)
	return os.Getuid(), os.Getgid(), extra, nil
}

func (s *Server) config(opts Options, uid, gid int, extraGlobal string, ports []int) string {
	var protos []string
	if !opts.NoIMAP {
		protos = append(protos, "imap")
	}
	if opts.POP3 {
		protos = append(protos, "pop3")
	}
	protocols := strings.Join(protos, " ")
	var b strings.Builder
	w := func(format string, a ...any) { fmt.Fprintf(&b, format+"\n", a...) }
	chroot := "" // without root, no service can chroot
	if os.Getuid() != 0 {
		chroot = "  chroot = \n"
	}
	w("# private Dovecot for popgate tests")
	w("instance_name = popgate-test-%d", ports[0])
	w("base_dir = %s/run", s.Dir)
	w("state_dir = %s/state", s.Dir)
	w("log_path = %s/dovecot.log", s.Dir)
	w("info_log_path = %s/dovecot.log", s.Dir)
	w("protocols = %s", protocols)
	w("listen = 127.0.0.1")
	w("ssl_client_ca_dir = ")
	b.WriteString(extraGlobal)
	if opts.CertFile != "" {
		w("ssl = yes")
		w("ssl_cert = <%s", opts.CertFile)
		w("ssl_key = <%s", opts.KeyFile)
	} else {
		w("ssl = no")
	}
	w("disable_plaintext_auth = no")
	if opts.OAuth2IntrospectionURL != "" {
		mechs := opts.OAuth2Mechanisms
		if mechs == "" {
			mechs = "xoauth2 oauthbearer"
		}
		w("auth_mechanisms = plain login %s", mechs)
		w("passdb {\n  driver = oauth2\n  mechanisms = %s\n  args = %s\n}", mechs, s.oauth2ConfigFile())
	} else {
		w("auth_mechanisms = plain login")
	}
	w("auth_failure_delay = %ds", int(opts.AuthFailureDelay/time.Second))
	w("passdb {\n  driver = passwd-file\n  args = scheme=PLAIN username_format=%%u %s/%%u\n  %s\n}", s.usersDir(), opts.PassdbExtra)
	w("userdb {\n  driver = static\n  args = uid=%d gid=%d home=%s/home/%%u\n}", uid, gid, s.Dir)
	w("mail_location = maildir:~/Maildir")
	w("mail_uid = %d", uid)
	w("mail_gid = %d", gid)
	w("first_valid_uid = 1")
	w("first_valid_gid = 1")
	w("mail_max_userip_connections = 100000")
	w("default_process_limit = 2500")
	w("default_client_limit = 10000")
	w("default_vsz_limit = 0")
	w("pop3_uidl_format = %%08Xu%%08Xv")
	// Auth penalty (anvil delays logins after failures from one IP, and
	// every test connects from 127.0.0.1): off, as Dovecot documents.
	w("service anvil {\n%s  client_limit = 10000\n  unix_listener anvil-auth-penalty {\n    mode = 0\n  }\n}", chroot)
	w("service auth {\n  client_limit = 10000\n}")
	imapsPort := 0
	if opts.CertFile != "" {
		imapsPort = ports[1]
	}
	w("service imap-login {\n%s  inet_listener imap {\n    address = 127.0.0.1\n    port = %d\n  }\n  inet_listener imaps {\n    address = 127.0.0.1\n    port = %d\n    ssl = yes\n  }\n  service_count = 0\n  process_min_avail = 1\n  client_limit = 5000\n}", chroot, ports[0], imapsPort)
	w("service imap {\n  process_limit = 2500\n}")
	if opts.POP3 {
		w("service pop3-login {\n%s  inet_listener pop3 {\n    address = 127.0.0.1\n    port = %d\n  }\n  inet_listener pop3s {\n    port = 0\n  }\n  service_count = 0\n  process_min_avail = 1\n  client_limit = 5000\n}", chroot, ports[2])
		w("service pop3 {\n  process_limit = 2500\n}")
	}
	if len(opts.DropCaps) > 0 {
		drop := map[string]bool{}
		for _, c := range opts.DropCaps {
			drop[strings.ToUpper(c)] = true
		}
		var caps []string
		for _, c := range DefaultCaps {
			if !drop[c] {
				caps = append(caps, c)
			}
		}
		w("protocol imap {\n  imap_capability = %s\n}", strings.Join(caps, " "))
	}
	if opts.Extra != "" {
		b.WriteString(strings.ReplaceAll(opts.Extra, "{{DIR}}", s.Dir))
		b.WriteString("\n")
	}
	return b.String()
}

func (s *Server) oauth2ConfigFile() string { return filepath.Join(s.Dir, "oauth2.conf.ext") }

func (s *Server) usersDir() string { return filepath.Join(s.Dir, "users") }

// writeUser writes the user's own passwd-file. One file per user (the
// passdb path holds %u): Dovecot rereads a changed passwd-file at most once
// a second, a new file is read at once.
func (s *Server) writeUser(name, password string) error {
	if name == "" || strings.Trim(name, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._@+-") != "" || strings.HasPrefix(name, ".") {
		return fmt.Errorf("dovecot: user name %q: use letters, digits and ._@+-", name)
	}
	if strings.ContainsAny(password, ":\n\r") {
		return fmt.Errorf("dovecot: password of %s holds ':' or a newline", name)
	}
	tmp := filepath.Join(s.usersDir(), "."+name+".tmp")
	if err := os.WriteFile(tmp, []byte(name+":{PLAIN}"+password+"::::::\n"), 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, filepath.Join(s.usersDir(), name))
}

// AddUser adds (or changes) a user; usable at once.
func (s *Server) AddUser(name, password string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.writeUser(name, password); err != nil {
		return err
	}
	s.users[name] = password
	return nil
}

// Password returns the password of a known user.
func (s *Server) Password(name string) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.users[name]
}

// Addr is the IMAP address (plaintext, STARTTLS when TLS is configured).
func (s *Server) Addr() string { return s.imapAddr }

// IMAPSAddr is the implicit-TLS IMAP address ("" without TLS).
func (s *Server) IMAPSAddr() string { return s.imapsAddr }

// POP3Addr is Dovecot's own POP3 address ("" unless Options.POP3).
func (s *Server) POP3Addr() string { return s.pop3Addr }

// Log returns Dovecot's log so far (for failure messages).
func (s *Server) Log() string {
	var out []byte
	for _, f := range []string{"stderr.log", "dovecot.log"} {
		b, _ := os.ReadFile(filepath.Join(s.Dir, f))
		out = append(out, b...)
	}
	return string(out)
}

// Close stops Dovecot and removes its folder.
func (s *Server) Close() error {
	s.closeMu.Do(func() {
		if s.cmd != nil && s.cmd.Process != nil {
			s.cmd.Process.Signal(syscall.SIGTERM)
			select {
			case <-s.exited:
			case <-time.After(10 * time.Second):
				syscall.Kill(-s.cmd.Process.Pid, syscall.SIGKILL)
				<-s.exited
			}
		}
		os.RemoveAll(s.Dir)
	})
	return nil
}

// Dial logs user in over plaintext IMAP; the caller must Logout/Close.
func (s *Server) Dial(user string) (*imapclient.Client, error) {
	return testutil.IMAPLogin("dovecot", s.imapAddr, user, s.Password(user))
}

// Append stores raw in user's mailbox (created if missing) with flags and
// returns its UID.
func (s *Server) Append(user, mailbox string, raw []byte, flags ...imap.Flag) (imap.UID, error) {
	return testutil.IMAPAppendAs("dovecot", s.imapAddr, user, s.Password(user), mailbox, raw, flags...)
}

// AppendWith APPENDs raw to mailbox over c, creating the mailbox when the
// server says it does not exist, and returns the new UID (UIDPLUS
// APPENDUID, RFC 4315 §3).
func AppendWith(c *imapclient.Client, mailbox string, raw []byte, flags ...imap.Flag) (imap.UID, error) {
	return testutil.IMAPAppend(c, mailbox, raw, flags...)
}

// Lines returns raw with every bare LF turned into CRLF: how Dovecot serves
// a message it stored from raw (Maildir keeps LF, IMAP sends CRLF).
func Lines(raw []byte) []byte {
	var out []byte
	r := bufio.NewReader(strings.NewReader(string(raw)))
	for {
		line, err := r.ReadBytes('\n')
		if len(line) > 0 {
			if line[len(line)-1] == '\n' && (len(line) < 2 || line[len(line)-2] != '\r') {
				line = append(line[:len(line)-1], '\r', '\n')
			}
			out = append(out, line...)
		}
		if err != nil {
			return out
		}
	}
}
