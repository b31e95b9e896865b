// Package cyrus starts a private Cyrus IMAP 3.6 server for tests and
// benchmarks: JMAP (RFC 8620/8621, Cyrus' httpd), IMAP (imapd, for seeding
// and inspecting the store) and optionally Cyrus' own POP3 (pop3d), all in
// a temporary folder, listening on 127.0.0.1 on ports chosen at run time.
// It never touches the system configuration.
//
// Tests call Start, which skips when a binary is missing, or fails when
// CI=true. TestMain or benchmarks that share one server call New and Close.
//
// Debian packages: cyrus-common (master, lmtpd, ctl_cyrusdb), cyrus-caldav
// (httpd: the only binary with JMAP) and sasl2-bin (saslpasswd2) installed;
// imapd and pop3d come from cyrus-imapd and cyrus-pop3d, which conflict with
// dovecot-imapd/dovecot-pop3d, so they are unpacked rather than installed:
//
//	apt-get download cyrus-imapd=VERSION cyrus-pop3d=VERSION
//	dpkg-deb -x cyrus-imapd_*.deb /tmp/cyrus-jmap-bin   (same for pop3d)
//
// where VERSION is the installed cyrus-common's (.ci/run does this). The
// binaries are looked up in /usr/lib/cyrus/bin, then under $CYRUS_BIN_DIR,
// then /tmp/cyrus-jmap-bin/usr/lib/cyrus/bin. See ../../../../shared notes
// (cyrus-jmap.md) for the configuration choices.
package cyrus

import (
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/http"
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

// ErrNotInstalled is returned by New when a Cyrus binary is missing.
var ErrNotInstalled = errors.New("cyrus: binaries not found (Debian: apt-get install cyrus-common cyrus-caldav sasl2-bin; imapd/pop3d unpacked from cyrus-imapd/cyrus-pop3d into /tmp/cyrus-jmap-bin, see .ci/run)")

// SystemDir holds Cyrus' installed binaries (Debian).
const SystemDir = "/usr/lib/cyrus/bin"

// UnpackedDir is where .ci/run unpacks cyrus-imapd and cyrus-pop3d.
const UnpackedDir = "/tmp/cyrus-jmap-bin/usr/lib/cyrus/bin"

// Realm is the servername and SASL realm of every private instance: users
// must be created in it (saslpasswd2 -u), and log in without a domain.
const Realm = "localhost"

// Options configure a private Cyrus.
type Options struct {
	// Users maps login names to passwords (sasldb). More can be added later
	// with AddUser.
	Users map[string]string
	// POP3 also starts Cyrus' own pop3d on its own port (POP3Addr).
	POP3 bool
}

// Server is a running private Cyrus.
type Server struct {
	Dir string // the instance folder: etc, conf, spool, sasldb2, run, log

	imapAddr, httpAddr, pop3Addr string

	mu       sync.Mutex
	users    map[string]string
	sasldbMu sync.Mutex // one sasldb writer at a time: see addUser
	closeMu  sync.Once
	pidFile  string
}

// Start starts a private Cyrus for t and stops it on t.Cleanup. When a
// binary is missing it calls t.Fatal if CI=true and t.Skip otherwise.
func Start(t testing.TB, opts Options) *Server {
	t.Helper()
	Require(t, opts.POP3)
	s, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// Require skips t (or fails it when CI=true) when Cyrus is not usable;
// pop3 also asks for pop3d.
func Require(t testing.TB, pop3 bool) {
	t.Helper()
	_, err := binaries(pop3)
	testutil.RequireProgram(t, err)
}

type bins struct{ master, ctl, httpd, imapd, pop3d, lmtpd, saslpasswd string }

// find returns the path of a Cyrus program.
func find(name string) (string, error) {
	dirs := []string{SystemDir}
	if d := os.Getenv("CYRUS_BIN_DIR"); d != "" {
		dirs = append(dirs, d)
	}
	dirs = append(dirs, UnpackedDir)
	for _, d := range dirs {
		p := filepath.Join(d, name)
		if st, err := os.Stat(p); err == nil && st.Mode().IsRegular() && st.Mode()&0o111 != 0 {
			return p, nil
		}
	}
	return "", fmt.Errorf("%w: %s", ErrNotInstalled, name)
}

func binaries(pop3 bool) (bins, error) {
	var b bins
	var errs []error
	get := func(dst *string, name string) {
		p, err := find(name)
		if err != nil {
			errs = append(errs, err)
		}
		*dst = p
	}
	get(&b.master, "master")
	get(&b.ctl, "ctl_cyrusdb")
	get(&b.httpd, "httpd")
	get(&b.imapd, "imapd")
	get(&b.lmtpd, "lmtpd")
	if pop3 {
		get(&b.pop3d, "pop3d")
	}
	if p, err := exec.LookPath("saslpasswd2"); err == nil {
		b.saslpasswd = p
	} else if _, err := os.Stat("/usr/sbin/saslpasswd2"); err == nil {
		b.saslpasswd = "/usr/sbin/saslpasswd2"
	} else {
		errs = append(errs, fmt.Errorf("%w: saslpasswd2", ErrNotInstalled))
	}
	if len(errs) > 0 {
		return b, errs[0]
	}
	return b, nil
}

// New starts a private Cyrus; the caller must Close it. It returns an
// error wrapping ErrNotInstalled when a binary is missing.
func New(opts Options) (*Server, error) {
	b, err := binaries(opts.POP3)
	if err != nil {
		return nil, err
	}
	for attempt := 0; attempt < 3; attempt++ {
		var s *Server
		if s, err = start(b, opts); err == nil {
			return s, nil
		}
		if !errors.Is(err, errPortTaken) { // only a port taken meanwhile is worth a retry
			break
		}
	}
	return nil, err
}

var errPortTaken = errors.New("cyrus: a port was taken meanwhile")

// runAs returns the uid/gid the daemons run as: user cyrus when the test
// runs as root (Cyrus refuses to run as root), else the current user.
func runAs() (uid, gid int, asCyrus bool, err error) {
	if os.Getuid() != 0 {
		return os.Getuid(), os.Getgid(), false, nil
	}
	u, err := user.Lookup("cyrus")
	if err != nil {
		return 0, 0, false, fmt.Errorf("cyrus: no user cyrus (installed with cyrus-common): %w", err)
	}
	uid, _ = strconv.Atoi(u.Uid)
	gid, _ = strconv.Atoi(u.Gid)
	return uid, gid, true, nil
}

func start(b bins, opts Options) (*Server, error) {
	uid, gid, asCyrus, err := runAs()
	if err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp("", "popgate-cyrus-")
	if err != nil {
		return nil, err
	}
	s := &Server{Dir: dir, users: map[string]string{}, pidFile: filepath.Join(dir, "run", "master.pid")}
	fail := func(err error) (*Server, error) {
		os.RemoveAll(dir)
		return nil, err
	}
	for _, d := range []string{"etc", "conf", "conf/db", "conf/socket", "conf/proc", "conf/lock", "conf/sieve", "spool", "run", "log", "tmp"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o750); err != nil {
			return fail(err)
		}
	}
	if err := filepath.Walk(dir, func(p string, _ os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		return os.Lchown(p, uid, gid)
	}); err != nil && asCyrus {
		return fail(err)
	}
	os.Chmod(dir, 0o755)

	ports, hold, err := testutil.ReservePorts(3)
	if err != nil {
		return fail(err)
	}
	s.imapAddr = fmt.Sprintf("127.0.0.1:%d", ports[0])
	s.httpAddr = fmt.Sprintf("127.0.0.1:%d", ports[1])
	if opts.POP3 {
		s.pop3Addr = fmt.Sprintf("127.0.0.1:%d", ports[2])
	}
	conf := filepath.Join(dir, "etc", "imapd.conf")
	if err := writeOwned(conf, s.imapdConf(), uid, gid); err != nil {
		hold()
		return fail(err)
	}
	if err := writeOwned(filepath.Join(dir, "etc", "cyrus.conf"), s.cyrusConf(b, conf), uid, gid); err != nil {
		hold()
		return fail(err)
	}
	for u, p := range opts.Users {
		if err := s.addUser(b.saslpasswd, u, p, asCyrus); err != nil {
			hold()
			return fail(err)
		}
	}
	hold() // release the ports just before master binds them

	args := []string{"-C", conf, "-M", filepath.Join(dir, "etc", "cyrus.conf"), "-p", s.pidFile, "-d", "-L", filepath.Join(dir, "log", "master.log")}
	cmd := s.command(asCyrus, b.master, args...)
	// The daemonized master keeps its stdout: a file, not a pipe that
	// Run would wait on.
	outf, err := os.Create(filepath.Join(dir, "log", "start.log"))
	if err != nil {
		return fail(err)
	}
	cmd.Stdout, cmd.Stderr = outf, outf
	err = cmd.Run()
	outf.Close()
	if err != nil {
		out, _ := os.ReadFile(outf.Name())
		return fail(fmt.Errorf("cyrus master: %v: %s", err, out))
	}

	addrs := []string{s.imapAddr, s.httpAddr}
	if s.pop3Addr != "" {
		addrs = append(addrs, s.pop3Addr)
	}
	deadline := time.Now().Add(30 * time.Second)
	for _, a := range addrs {
		for {
			c, err := net.DialTimeout("tcp", a, time.Second)
			if err == nil {
				c.Close()
				break
			}
			if time.Now().After(deadline) {
				log := s.Log()
				s.Close()
				if strings.Contains(log, "in use") {
					return nil, fmt.Errorf("%w: %s", errPortTaken, log)
				}
				return nil, fmt.Errorf("cyrus did not listen on %s within 30s: %s", a, log)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	for u := range opts.Users {
		if err := s.createMailboxes(u); err != nil {
			s.Close()
			return nil, err
		}
	}
	return s, nil
}

// command runs a Cyrus program as user cyrus (when root) with a clean
// environment.
func (s *Server) command(asCyrus bool, prog string, args ...string) *exec.Cmd {
	var cmd *exec.Cmd
	if asCyrus {
		cmd = exec.Command("runuser", append([]string{"-u", "cyrus", "--", prog}, args...)...)
	} else {
		cmd = exec.Command(prog, args...)
	}
	cmd.Dir = s.Dir
	cmd.Env = []string{"PATH=/usr/sbin:/usr/bin:/sbin:/bin", "HOME=" + s.Dir}
	return cmd
}

func writeOwned(path, text string, uid, gid int) error {
	if err := os.WriteFile(path, []byte(text), 0o640); err != nil {
		return err
	}
	if os.Getuid() == 0 {
		return os.Chown(path, uid, gid)
	}
	return nil
}

func (s *Server) imapdConf() string {
	d := s.Dir
	var b strings.Builder
	w := func(k, v string) { fmt.Fprintf(&b, "%s: %s\n", k, v) }
	w("configdirectory", d+"/conf")
	w("partition-default", d+"/spool")
	w("sievedir", d+"/conf/sieve")
	w("proc_path", d+"/conf/proc")
	w("mboxname_lockpath", d+"/conf/lock")
	w("lmtpsocket", d+"/conf/socket/lmtp")
	w("idlesocket", d+"/conf/socket/idle")
	w("notifysocket", d+"/conf/socket/notify")
	w("temp_path", d+"/tmp")
	w("servername", Realm)
	w("admins", "cyrusadmin")
	w("allowplaintext", "yes") // Basic auth over http (loopback tests)
	w("sasl_pwcheck_method", "auxprop")
	w("sasl_auxprop_plugin", "sasldb")
	w("sasl_sasldb_path", d+"/sasldb2")
	w("sasl_mech_list", "PLAIN LOGIN")
	w("autocreate_quota", "0")
	w("autocreate_inbox_folders", "Drafts | Sent | Trash | Junk")
	w("xlist-drafts", "Drafts")
	w("xlist-sent", "Sent")
	w("xlist-trash", "Trash")
	w("xlist-junk", "Junk")
	w("httpmodules", "jmap")
	w("conversations", "yes") // without it JMAP is silently off
	w("conversations_db", "twoskip")
	w("httpallowcompress", "no")
	w("expunge_mode", "delayed") // immediate loses Email/changes destroyed ids
	w("munge8bit", "no")
	w("failedloginpause", "0")
	w("popminpoll", "0")
	w("poptimeout", "10")
	w("jmap_max_size_request", "10485760")
	return b.String()
}

func (s *Server) cyrusConf(b bins, conf string) string {
	d := s.Dir
	var sb strings.Builder
	fmt.Fprintf(&sb, "START {\n  recover cmd=\"%s -C %s -r\"\n}\n", b.ctl, conf)
	sb.WriteString("SERVICES {\n")
	fmt.Fprintf(&sb, "  imap cmd=\"%s -C %s -U 30\" listen=\"%s\" prefork=0 maxchild=100\n", b.imapd, conf, s.imapAddr)
	fmt.Fprintf(&sb, "  http cmd=\"%s -C %s -U 30\" listen=\"%s\" prefork=1 maxchild=100\n", b.httpd, conf, s.httpAddr)
	if s.pop3Addr != "" {
		fmt.Fprintf(&sb, "  pop3 cmd=\"%s -C %s -U 30\" listen=\"%s\" prefork=1 maxchild=100\n", b.pop3d, conf, s.pop3Addr)
	}
	fmt.Fprintf(&sb, "  lmtpunix cmd=\"%s -C %s\" listen=\"%s/conf/socket/lmtp\" prefork=0 maxchild=5\n", b.lmtpd, conf, d)
	sb.WriteString("}\n")
	fmt.Fprintf(&sb, "EVENTS {\n  checkpoint cmd=\"%s -C %s -c\" period=30\n}\n", b.ctl, conf)
	return sb.String()
}

// addUser writes name's password into the instance's sasldb.
func (s *Server) addUser(saslpasswd, name, password string, asCyrus bool) error {
	if name == "" || strings.Trim(name, "abcdefghijklmnopqrstuvwxyz0123456789._-") != "" {
		return fmt.Errorf("cyrus: user name %q: use lowercase letters, digits and ._-", name)
	}
	if strings.ContainsAny(password, "\r\n") || password == "" {
		return fmt.Errorf("cyrus: password of %s is empty or holds a newline", name)
	}
	// The sasldb is a Berkeley DB file without an environment, so nothing
	// locks it: two saslpasswd2 at once lost one user's entry (CI saw
	// "authentication failure" for one of four users added together), and
	// an imapd reading while saslpasswd2 writes could see a page half
	// written. So writers take turns, each edits a copy, and the copy
	// replaces the file by rename: a reader opens either the old or the
	// new file, both whole.
	s.sasldbMu.Lock()
	defer s.sasldbMu.Unlock()
	db := filepath.Join(s.Dir, "sasldb2")
	next := db + ".next"
	if err := copyOwned(db, next); err != nil {
		return fmt.Errorf("cyrus: sasldb copy: %w", err)
	}
	cmd := s.command(asCyrus, saslpasswd, "-f", next, "-u", Realm, "-p", "-c", name)
	cmd.Stdin = strings.NewReader(password)
	if out, err := cmd.CombinedOutput(); err != nil {
		os.Remove(next)
		return fmt.Errorf("cyrus: saslpasswd2 %s: %v: %s", name, err, out)
	}
	if err := os.Rename(next, db); err != nil {
		return fmt.Errorf("cyrus: sasldb: %w", err)
	}
	s.mu.Lock()
	s.users[name] = password
	s.mu.Unlock()
	return nil
}

// copyOwned copies src (when it exists) to dst with src's owner (see
// writeOwned); a missing src leaves dst absent, for saslpasswd2 to create.
func copyOwned(src, dst string) error {
	os.Remove(dst)
	fi, err := os.Stat(src)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	} else if err != nil {
		return err
	}
	b, err := os.ReadFile(src)
	if err != nil {
		return err
	}
	st := fi.Sys().(*syscall.Stat_t)
	return writeOwned(dst, string(b), int(st.Uid), int(st.Gid))
}

// createMu serializes the users' first logins, which create their
// mailboxes (autocreate_quota): Cyrus 3.6 as packaged by Debian gave
// mailboxes created at the same moment by separate imapd processes the
// same unique id (JMAP Mailbox id), and then rejects the id as another
// account's (Email/query: invalidArguments filter/inMailbox).
// Serializing is not enough: on an idle machine two users created within
// the same second still got one id, so creations are also spaced by more
// than a second (lastCreate).
var (
	createMu   sync.Mutex
	lastCreate time.Time
)

// createMailboxes logs name in once over IMAP, which creates INBOX, Drafts,
// Sent, Trash and Junk.
func (s *Server) createMailboxes(name string) error {
	createMu.Lock()
	defer createMu.Unlock()
	if wait := 1100*time.Millisecond - time.Since(lastCreate); wait > 0 {
		time.Sleep(wait)
	}
	defer func() { lastCreate = time.Now() }()
	c, err := s.Dial(name)
	if err != nil {
		return err
	}
	defer c.Close()
	if _, err := c.Select("INBOX", &imap.SelectOptions{ReadOnly: true}).Wait(); err != nil {
		return fmt.Errorf("cyrus: %s: INBOX not created: %w", name, err)
	}
	return c.Logout().Wait()
}

// AddUser adds (or changes) a user, usable at once, with INBOX, Drafts,
// Sent, Trash and Junk created.
func (s *Server) AddUser(name, password string) error {
	b, err := binaries(false)
	if err != nil {
		return err
	}
	_, _, asCyrus, err := runAs()
	if err != nil {
		return err
	}
	if err := s.addUser(b.saslpasswd, name, password, asCyrus); err != nil {
		return err
	}
	return s.createMailboxes(name)
}

// Password returns the password of a known user.
func (s *Server) Password(name string) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.users[name]
}

// Addr is the IMAP address (plaintext).
func (s *Server) Addr() string { return s.imapAddr }

// HTTPAddr is the JMAP (httpd) address.
func (s *Server) HTTPAddr() string { return s.httpAddr }

// SessionURL is the JMAP session resource (RFC 8620 §2.2): the well-known
// URL, which Cyrus redirects to /jmap.
func (s *Server) SessionURL() string { return "http://" + s.httpAddr + "/.well-known/jmap" }

// POP3Addr is Cyrus' own POP3 address ("" unless Options.POP3).
func (s *Server) POP3Addr() string { return s.pop3Addr }

// Log returns the master log (Cyrus logs to syslog, absent in containers:
// this holds the master's own start-up errors).
func (s *Server) Log() string {
	b, _ := os.ReadFile(filepath.Join(s.Dir, "log", "master.log"))
	return string(b)
}

// Close stops Cyrus (SIGTERM to master stops every child) and removes its
// folder.
func (s *Server) Close() error {
	s.closeMu.Do(func() {
		pid := 0
		for i := 0; i < 100 && pid == 0; i++ { // master writes its pid file once started
			if b, err := os.ReadFile(s.pidFile); err == nil {
				pid, _ = strconv.Atoi(strings.TrimSpace(string(b)))
			} else {
				time.Sleep(10 * time.Millisecond)
			}
		}
		if pid > 0 {
			syscall.Kill(pid, syscall.SIGTERM)
			for i := 0; i < 500; i++ {
				if syscall.Kill(pid, 0) != nil {
					break
				}
				time.Sleep(10 * time.Millisecond)
			}
			if syscall.Kill(pid, 0) == nil {
				syscall.Kill(pid, syscall.SIGKILL)
			}
		}
		os.RemoveAll(s.Dir)
	})
	return nil
}

// Dial logs user in over plaintext IMAP; the caller must Logout/Close.
func (s *Server) Dial(user string) (*imapclient.Client, error) {
	return testutil.IMAPLogin("cyrus", s.imapAddr, user, s.Password(user))
}

// Append stores raw (CRLF line endings: Cyrus turns bare LF into CRLF) in
// user's mailbox (created if missing) with flags, and returns its UID.
func (s *Server) Append(user, mailbox string, raw []byte, flags ...imap.Flag) (imap.UID, error) {
	return testutil.IMAPAppendAs("cyrus", s.imapAddr, user, s.Password(user), mailbox, raw, flags...)
}

// AppendWith APPENDs raw to mailbox over c, creating the mailbox when the
// server says it does not exist ([TRYCREATE], RFC 3501 §6.3.11), and
// returns the new UID (UIDPLUS APPENDUID, RFC 4315 §3).
func AppendWith(c *imapclient.Client, mailbox string, raw []byte, flags ...imap.Flag) (imap.UID, error) {
	return testutil.IMAPAppend(c, mailbox, raw, flags...)
}

// JMAPReady reports whether the JMAP session resource answers for user
// (an authenticated 200).
func (s *Server) JMAPReady(user string) error {
	req, _ := http.NewRequest("GET", s.SessionURL(), nil)
	req.SetBasicAuth(user, s.Password(user))
	resp, err := (&http.Client{Timeout: 10 * time.Second}).Do(req)
	if err != nil {
		return err
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		return fmt.Errorf("cyrus: JMAP session for %s: %s", user, resp.Status)
	}
	return nil
}
