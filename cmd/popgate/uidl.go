package main

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"flag"
	"fmt"
	"io"
	"maps"
	"net"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/rs/zerolog"

	"github.com/popgate/popgate/backends"
	"github.com/popgate/popgate/internal/config"
	"github.com/popgate/popgate/internal/migration"
	"github.com/popgate/popgate/internal/pop3client"
)

// runUIDL is `popgate uidl capture|status|forget`: UIDL migration from a
// retired POP3 server (see internal/migration).
func runUIDL(args []string, stdout, stderr io.Writer) int {
	const help = `Usage:
  popgate uidl capture -c FILE --old pop3://HOST[:110] --user USER --password-file F   (F "-": stdin)
  popgate uidl capture -c FILE --old pop3s://HOST[:995] --users users.csv              (user,password lines)
  popgate uidl status  -c FILE USER [--password-file F]
  popgate uidl forget  -c FILE USER

Keeps the "leave mail on the server" state of POP3 clients when an old POP3
server is retired. capture logs in to the old server with the old password,
reads each message's UIDL and header (TOP n 0; RETR on a server without TOP)
and stores, per maildrop, the old UIDLs with a key made of Message-ID, Date,
From and Subject in migration.uidl_dir. It deletes nothing and needs no
credential of the new store. At the client's first login through popgate,
each message whose key matches presents its old UIDL. status shows a map
(with a password: logs in through popgate's backends and counts matches);
forget removes it.
`
	if len(args) == 0 {
		fmt.Fprint(stderr, help)
		return exitUsage
	}
	switch args[0] {
	case "-h", "-help", "--help", "help":
		fmt.Fprint(stdout, help)
		return exitOK
	case "capture":
		return runUIDLCapture(args[1:], stdout, stderr)
	case "status":
		return runUIDLStatus(args[1:], stdout, stderr)
	case "forget":
		return runUIDLForget(args[1:], stdout, stderr)
	}
	fmt.Fprintf(stderr, "popgate uidl: unknown command %q\n\n%s", args[0], help)
	return exitUsage
}

// parseInterleaved parses flags that may come before and after one
// positional argument (popgate uidl status -c FILE alice --password-file F),
// and returns the positional arguments.
func parseInterleaved(fs *flag.FlagSet, args []string, stdout io.Writer) (pos []string, code int, done bool) {
	for _, a := range args {
		if a == "-h" || a == "-help" || a == "--help" {
			fs.SetOutput(stdout)
			fs.Usage()
			return nil, exitOK, true
		}
	}
	for {
		if err := fs.Parse(args); err != nil {
			return nil, exitUsage, true
		}
		if fs.NArg() == 0 {
			return pos, 0, false
		}
		pos = append(pos, fs.Arg(0))
		args = fs.Args()[1:]
	}
}

// loadForUIDL loads the configuration file for a uidl command.
func loadForUIDL(path string, stderr io.Writer) (*config.Config, bool) {
	cfg, err := config.Load(path, storeTypes)
	if err != nil {
		printConfigProblems(stderr, path, err)
		return nil, false
	}
	return cfg, true
}

// maildropFor is the maildrop popgate opens for login: the backend its
// routes choose and the upstream name after their rewrites
// ("backend/upstream"), which is the router's maildrop key.
func maildropFor(cfg *config.Config, login string) (string, error) {
	bs := map[string]backends.Backend{}
	for _, name := range cfg.BackendNames() {
		bs[name] = nil // only the routes are used
	}
	routes := make([]backends.Route, len(cfg.Routes))
	for i, r := range cfg.Routes {
		routes[i] = backends.Route{Match: r.Match, Backend: r.Backend, StripDomain: r.Rewrite.StripDomain, AddDomain: r.Rewrite.AddDomain}
	}
	rt, err := backends.NewRouter(routes, bs, zerolog.Nop())
	if err != nil {
		return "", err
	}
	name, upstream, ok := rt.Resolve(login)
	if !ok {
		return "", fmt.Errorf("no route matches the login name %q", login)
	}
	return name + "/" + upstream, nil
}

// readSecret reads a password: the first line of file, or of standard
// input for "-".
func readSecret(file string, stdin io.Reader) (string, error) {
	var r io.Reader = stdin
	if file != "-" {
		f, err := os.Open(file)
		if err != nil {
			return "", err
		}
		defer f.Close()
		r = f
	}
	line, err := bufio.NewReader(io.LimitReader(r, 64<<10)).ReadString('\n')
	if err != nil && !errors.Is(err, io.EOF) {
		return "", err
	}
	line = strings.TrimRight(line, "\r\n")
	if line == "" {
		return "", errors.New("empty password")
	}
	return line, nil
}

// stdinReader is standard input; tests replace it.
var stdinReader io.Reader = os.Stdin

type oldServer struct {
	raw      string // as given, for the map and messages
	addr     string
	mode     pop3client.TLSMode
	insecure bool
}

func parseOldServer(s string, insecure bool) (*oldServer, error) {
	u, err := url.Parse(s)
	if err != nil || u.Host == "" || (u.Path != "" && u.Path != "/") || u.User != nil {
		return nil, fmt.Errorf("--old %q: want pop3://host[:port] or pop3s://host[:port] (no user, password or path)", s)
	}
	o := &oldServer{raw: u.Scheme + "://" + u.Host, insecure: insecure}
	port := u.Port()
	switch u.Scheme {
	case "pop3":
		o.mode = pop3client.STLSIfOffered
		if port == "" {
			port = "110"
		}
	case "pop3s":
		o.mode = pop3client.Implicit
		if port == "" {
			port = "995"
		}
	default:
		return nil, fmt.Errorf("--old %q: scheme must be pop3 or pop3s", s)
	}
	o.addr = net.JoinHostPort(u.Hostname(), port)
	return o, nil
}

func (o *oldServer) dial() (*pop3client.Client, error) {
	conf := &tls.Config{ServerName: strings.Split(o.addr, ":")[0], InsecureSkipVerify: o.insecure}
	if h, _, err := net.SplitHostPort(o.addr); err == nil {
		conf.ServerName = h
	}
	return pop3client.Dial(o.addr, pop3client.Options{TLS: o.mode, TLSConfig: conf, Timeout: 60 * time.Second})
}

func runUIDLCapture(args []string, stdout, stderr io.Writer) int {
	fs := newFlagSet("uidl capture", "-c FILE --old URL (--user USER --password-file F | --users FILE) [--insecure]",
		"Capture the old POP3 server's UIDLs and header keys for one user or a list\n"+
			"(a file of user,password lines; # starts a comment). pop3:// uses STLS when\n"+
			"the server offers it; pop3s:// is implicit TLS. Nothing is deleted.", stdout, stderr)
	path := configFlag(fs)
	old := fs.String("old", "", "the old server: pop3://host[:port] or pop3s://host[:port]")
	user := fs.String("user", "", "one login name on the old server")
	pwFile := fs.String("password-file", "", "file holding that user's old password (\"-\": standard input)")
	users := fs.String("users", "", "file of user,password lines")
	insecure := fs.Bool("insecure", false, "do not verify the old server's certificate (old self-signed servers)")
	if code, done := parseFlags(fs, args, stdout); done {
		return code
	}
	srv, err := parseOldServer(*old, *insecure)
	if err != nil {
		fmt.Fprintf(stderr, "popgate uidl capture: %v\n", err)
		return exitUsage
	}
	type login struct{ user, pass string }
	var logins []login
	switch {
	case *users != "" && (*user != "" || *pwFile != ""):
		fmt.Fprintln(stderr, "popgate uidl capture: give --users, or --user with --password-file, not both")
		return exitUsage
	case *users != "":
		b, err := os.ReadFile(*users)
		if err != nil {
			fmt.Fprintf(stderr, "popgate uidl capture: --users: %v\n", err)
			return exitUsage
		}
		for i, line := range strings.Split(string(b), "\n") {
			line = strings.TrimRight(line, "\r")
			if strings.TrimSpace(line) == "" || strings.HasPrefix(strings.TrimSpace(line), "#") {
				continue
			}
			u, p, ok := strings.Cut(line, ",")
			if !ok || strings.TrimSpace(u) == "" || p == "" {
				fmt.Fprintf(stderr, "popgate uidl capture: %s: line %d: want user,password\n", *users, i+1)
				return exitUsage
			}
			logins = append(logins, login{strings.TrimSpace(u), p})
		}
	case *user != "" && *pwFile != "":
		p, err := readSecret(*pwFile, stdinReader)
		if err != nil {
			fmt.Fprintf(stderr, "popgate uidl capture: --password-file: %v\n", err)
			return exitUsage
		}
		logins = append(logins, login{*user, p})
	default:
		fmt.Fprintln(stderr, "popgate uidl capture: give --user with --password-file, or --users")
		return exitUsage
	}
	cfg, ok := loadForUIDL(*path, stderr)
	if !ok {
		return exitUsage
	}
	if *insecure {
		fmt.Fprintf(stderr, "popgate uidl capture: warning: --insecure: the certificate of %s is not verified\n", srv.raw)
	}
	store := migration.Store{Dir: cfg.Migration.UIDLDir}
	failed := 0
	for _, l := range logins {
		if err := captureOne(cfg, store, srv, l.user, l.pass, stdout, stderr); err != nil {
			fmt.Fprintf(stderr, "popgate uidl capture: %s: %v\n", l.user, err)
			failed++
		}
	}
	if failed > 0 {
		fmt.Fprintf(stderr, "popgate uidl capture: %d of %d users failed\n", failed, len(logins))
		return exitFailure
	}
	return exitOK
}

func captureOne(cfg *config.Config, store migration.Store, srv *oldServer, user, pass string, stdout, stderr io.Writer) error {
	maildrop, err := maildropFor(cfg, user)
	if err != nil {
		return err
	}
	start := time.Now()
	c, err := srv.dial()
	if err != nil {
		return fmt.Errorf("connecting to %s: %w", srv.raw, err)
	}
	defer c.Close()
	if !c.TLS() {
		fmt.Fprintf(stderr, "popgate uidl capture: warning: %s offers no STLS: the old password of %s crosses the network in clear\n", srv.raw, user)
	}
	res, err := migration.Capture(c, user, pass)
	if err != nil {
		return err
	}
	m := migration.NewMap(maildrop, user, srv.raw, res)
	if err := store.Save(m); err != nil {
		return fmt.Errorf("saving the map: %w", err)
	}
	how := "TOP"
	if !res.UsedTOP {
		how = "RETR (the server has no TOP)"
	}
	fmt.Fprintf(stdout, "%s: captured %d messages from %s with %s in %s; maildrop %s\n",
		user, len(res.Entries), srv.raw, how, time.Since(start).Round(time.Millisecond), maildrop)
	if res.Skipped > 0 {
		fmt.Fprintf(stdout, "%s: %d messages listed by UIDL could not be read (gone meanwhile) and are not in the map\n", user, res.Skipped)
	}
	return nil
}

// uidlMaildrop parses the arguments of `uidl NAME` (one user name),
// loads the file and finds the user's maildrop. When ok is false it has
// printed why (or the help) and code is the exit status.
func uidlMaildrop(name string, fs *flag.FlagSet, path *string, args []string, stdout, stderr io.Writer) (cfg *config.Config, user, maildrop string, code int, ok bool) {
	pos, code, done := parseInterleaved(fs, args, stdout)
	if done {
		return nil, "", "", code, false
	}
	if len(pos) != 1 {
		fmt.Fprintf(stderr, "popgate uidl %s: give one user name\n", name)
		return nil, "", "", exitUsage, false
	}
	if cfg, ok = loadForUIDL(*path, stderr); !ok {
		return nil, "", "", exitUsage, false
	}
	maildrop, err := maildropFor(cfg, pos[0])
	if err != nil {
		fmt.Fprintf(stderr, "popgate uidl %s: %v\n", name, err)
		return nil, "", "", exitUsage, false
	}
	return cfg, pos[0], maildrop, exitOK, true
}

func runUIDLStatus(args []string, stdout, stderr io.Writer) int {
	fs := newFlagSet("uidl status", "-c FILE USER [--password-file F]",
		"Show the captured map of USER's maildrop: its size, the old server and when it\n"+
			"was captured. With --password-file, also log in through popgate's backend\n"+
			"with that password (the new store's) and count how many messages of the\n"+
			"current mailbox match an old UIDL.", stdout, stderr)
	path := configFlag(fs)
	pwFile := fs.String("password-file", "", "file holding USER's password for popgate (\"-\": standard input)")
	cfg, user, maildrop, code, ok := uidlMaildrop("status", fs, path, args, stdout, stderr)
	if !ok {
		return code
	}
	store := migration.Store{Dir: cfg.Migration.UIDLDir}
	m, err := store.Load(maildrop)
	if errors.Is(err, migration.ErrNoMap) {
		fmt.Fprintf(stdout, "%s: no map for maildrop %s in %s\n", user, maildrop, store.Dir)
		return exitFailure
	}
	if err != nil {
		fmt.Fprintf(stderr, "popgate uidl status: %v\n", err)
		return exitFailure
	}
	fmt.Fprintf(stdout, "%s: maildrop %s: %d old UIDLs captured from %s (user %s) at %s\n",
		user, maildrop, len(m.Entries), m.Server, m.User, m.CapturedAt.Format(time.RFC3339))
	if *pwFile == "" {
		return exitOK
	}
	pass, err := readSecret(*pwFile, stdinReader)
	if err != nil {
		fmt.Fprintf(stderr, "popgate uidl status: --password-file: %v\n", err)
		return exitUsage
	}
	st, err := matchStatus(cfg, m, user, pass)
	if err != nil {
		fmt.Fprintf(stderr, "popgate uidl status: %v\n", err)
		return exitFailure
	}
	fmt.Fprintf(stdout, "%s: current mailbox: %d messages, %d presented under their old UIDL, %d new, %d ambiguous; %d old UIDLs match no message\n",
		user, st.Messages, st.Matched, st.Messages-st.Matched-st.Ambiguous-st.XUIDL, st.Ambiguous, st.OldLeft)
	return exitOK
}

func runUIDLForget(args []string, stdout, stderr io.Writer) int {
	fs := newFlagSet("uidl forget", "-c FILE USER",
		"Remove the captured map of USER's maildrop: popgate presents the store's own\n"+
			"UIDLs again from the next login.", stdout, stderr)
	path := configFlag(fs)
	cfg, user, maildrop, code, ok := uidlMaildrop("forget", fs, path, args, stdout, stderr)
	if !ok {
		return code
	}
	store := migration.Store{Dir: cfg.Migration.UIDLDir}
	switch err := store.Forget(maildrop); {
	case errors.Is(err, migration.ErrNoMap):
		fmt.Fprintf(stdout, "%s: no map for maildrop %s\n", user, maildrop)
		return exitFailure
	case err != nil:
		fmt.Fprintf(stderr, "popgate uidl forget: %v\n", err)
		return exitFailure
	}
	fmt.Fprintf(stdout, "%s: map of maildrop %s removed\n", user, maildrop)
	return exitOK
}

// matchStatus logs in as login with pass through the configuration's
// backends (the new store), takes a snapshot and matches it against m,
// as the first login through popgate will. Nothing is changed upstream.
func matchStatus(cfg *config.Config, m *migration.Map, login, pass string) (migration.Stats, error) {
	d := &daemon{log: zerolog.Nop()}
	rt, err := d.build(cfg, zerolog.Nop(), nil)
	if err != nil {
		return migration.Stats{}, err
	}
	defer rt.close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cred := backends.Credentials{Username: login, Password: pass, Mechanism: "USER"}
	mb, err := rt.options.Backend.Login(ctx, cred)
	if err != nil {
		_, text := backends.ClientError(err)
		return migration.Stats{}, fmt.Errorf("login through popgate: %s", text)
	}
	defer mb.Close()
	msgs, err := mb.Snapshot(ctx)
	if err != nil {
		return migration.Stats{}, fmt.Errorf("snapshot: %w", err)
	}
	mp := migration.NewMapper(migration.Store{Dir: cfg.Migration.UIDLDir}, uidlHeaders(cfg), 1, zerolog.Nop())
	_, st, err := mp.MapWithStats(ctx, backends.MaildropID(mb, cred), mb, msgs)
	return st, err
}

// uidlMapper returns the UIDL migration mapper for cfg: prev's when the
// settings it was made with are unchanged (its header cache survives a
// reload), else a new one.
func uidlMapper(cfg *config.Config, log zerolog.Logger, prev *setup) *migration.Mapper {
	headers := uidlHeaders(cfg)
	if prev != nil && prev.mapper != nil && prev.cfg.Migration == cfg.Migration && maps.Equal(uidlHeaders(prev.cfg), headers) {
		return prev.mapper
	}
	return migration.NewMapper(migration.Store{Dir: cfg.Migration.UIDLDir}, headers, 0, log)
}

// uidlHeaders maps each backend name to its uidl_header setting.
func uidlHeaders(cfg *config.Config) map[string]string {
	h := map[string]string{}
	for name, b := range cfg.Backends {
		if s := backends.SharedStoreOf(b.Settings); s != nil && s.UIDLHeader != "" {
			h[name] = s.UIDLHeader
		}
	}
	return h
}
