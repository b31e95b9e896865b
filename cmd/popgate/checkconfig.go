package main

import (
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"

	"github.com/popgate/popgate/backends"
	"github.com/popgate/popgate/internal/config"
)

func runCheckConfig(args []string, stdout, stderr io.Writer) int {
	fs := newFlagSet("check-config", "[--config FILE]",
		"Validate a configuration file. Prints what it sets up (listeners, certificate,\n"+
			"backends, routes) and exits 0, or prints every problem found and exits 2.\n"+
			"It checks that the certificate and CA files exist but contacts no server.", stdout, stderr)
	path := configFlag(fs)
	if code, done := parseFlags(fs, args, stdout); done {
		return code
	}
	c, err := config.Load(*path, storeTypes)
	if err == nil {
		if ps := checkAccounts(c); len(ps) > 0 {
			err = &config.FileError{Path: *path, Err: ps}
		}
	}
	if err != nil {
		printConfigProblems(stderr, *path, err)
		return exitUsage
	}
	fmt.Fprintf(stdout, "%s: OK\n", *path)
	summarize(stdout, c)
	return exitOK
}

// printConfigProblems prints every problem of a file: one line when there
// is one, else a count and one indented line each.
func printConfigProblems(w io.Writer, path string, err error) {
	var fe *config.FileError
	if !errors.As(err, &fe) {
		fmt.Fprintf(w, "popgate: %s: %v\n", path, err)
		return
	}
	ps := fe.Problems()
	if len(ps) == 1 {
		fmt.Fprintf(w, "popgate: %s: %v\n", path, ps[0])
		return
	}
	fmt.Fprintf(w, "popgate: %s: %d problems:\n", path, len(ps))
	for _, p := range ps {
		fmt.Fprintf(w, "  %v\n", p)
	}
}

// summarize prints what a valid configuration sets up.
func summarize(w io.Writer, c *config.Config) {
	fmt.Fprintf(w, "listeners:\n")
	for _, l := range c.Listeners {
		pp := ""
		if l.ProxyProtocol != nil {
			pp = ", PROXY protocol required from " + strings.Join(l.ProxyProtocol.Trusted, ", ") + " (others refused)"
		}
		fmt.Fprintf(w, "  %-24s %s%s\n", l.Address, l.TLS, pp)
	}
	switch {
	case c.TLS == nil:
		fmt.Fprintf(w, "tls: none configured\n")
	case c.TLS.ACME != nil:
		a := c.TLS.ACME
		fmt.Fprintf(w, "tls: ACME certificate for %s from %s (challenge %s, storage %s)\n",
			strings.Join(a.Domains, ", "), a.Directory(), a.ChallengeType(), a.StorageDir())
	default:
		fmt.Fprintf(w, "tls: certificate %s, key %s\n", c.TLS.CertFile, c.TLS.KeyFile)
	}
	fmt.Fprintf(w, "backends:\n")
	for _, name := range c.BackendNames() {
		b := c.Backends[name]
		fmt.Fprintf(w, "  %-12s %s %s\n", name, b.Type, b.Settings.(backends.Config).Summary())
	}
	fmt.Fprintf(w, "routes (first match wins):\n")
	for i, r := range c.Routes {
		var rw []string
		if r.Rewrite.StripDomain {
			rw = append(rw, "strip domain")
		}
		if r.Rewrite.AddDomain != "" {
			rw = append(rw, "add @"+r.Rewrite.AddDomain)
		}
		s := ""
		if len(rw) > 0 {
			s = " (" + strings.Join(rw, ", ") + ")"
		}
		fmt.Fprintf(w, "  %d. %-20s -> %s%s\n", i+1, r.Match, r.Backend, s)
	}
	plain := "refused before TLS"
	if c.Auth.AllowPlaintext {
		plain = "ALLOWED before TLS"
	}
	fmt.Fprintf(w, "auth: plaintext logins %s; at most %d failed logins per connection\n", plain, c.Auth.MaxFailures)
	summarizeIdentity(w, c)
	s := c.Session
	fmt.Fprintf(w, "session: idle %s, login %s; connections: %s in all, %s per client address; close after %d protocol errors in a row\n",
		s.IdleTimeout, s.LoginTimeout, limitText(s.MaxConnections), limitText(s.MaxConnectionsPerIP), s.MaxErrors)
	fmt.Fprintf(w, "shutdown: ready delay %s, drain %s\n", c.Shutdown.ReadyDelay, c.Shutdown.DrainTimeout)
	if cl := c.Cluster; cl != nil {
		tls := ""
		if cl.Redis.TLS {
			tls = ", tls"
		}
		fmt.Fprintf(w, "cluster: Redis %s (db %d%s), lock lease %s: locks and login state shared\n", cl.Redis.Address, cl.Redis.DB, tls, cl.LockLease)
	} else {
		fmt.Fprintf(w, "cluster: none (locks and login state in this process)\n")
	}
	if a := c.Admin; a != nil {
		tok := "no token"
		if a.Token != "" {
			tok = "bearer token required"
		}
		fmt.Fprintf(w, "admin: http://%s (/metrics /healthz /readyz, %s)\n", a.Address, tok)
	}
	fmt.Fprintf(w, "log: level %s, format %s\n", c.Log.Level, c.Log.Format)
	summarizeOAuth(w, c)
}

// limitText shows a connection limit, 0 being none.
func limitText(n int) string {
	if n == 0 {
		return "no limit"
	}
	return "at most " + strconv.Itoa(n)
}
