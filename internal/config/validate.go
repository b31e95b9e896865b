package config

import (
	"fmt"
	"net/url"
	"os"
	"strconv"
	"strings"

	"github.com/popgate/popgate/backends"
	"github.com/popgate/popgate/internal/netconf"
	"github.com/popgate/popgate/internal/strictyaml"
)

// Validate checks the values of a parsed configuration and returns every
// problem found (a Problems), or nil. Parse and Load call it.
func (c *Config) Validate() error {
	if ps := c.validate(); len(ps) > 0 {
		return ps
	}
	return nil
}

type checker struct {
	c  *Config
	ps Problems
}

func (k *checker) add(path, format string, args ...any) {
	k.ps = append(k.ps, Problem{Path: path, Line: k.c.lineOf(path), Msg: fmt.Sprintf(format, args...)})
}

func (c *Config) validate() Problems {
	k := &checker{c: c}
	k.listeners()
	k.tls()
	k.backends()
	k.routes()
	k.auth()
	k.session()
	k.oauth()
	k.cluster()
	if c.Shutdown.DrainTimeout < 0 {
		k.add("shutdown.drain_timeout", "must not be negative")
	}
	if c.Migration.UIDLDir == "" {
		k.add("migration.uidl_dir", "must not be empty (default /var/lib/popgate/uidl)")
	}
	switch c.Log.Level {
	case "debug", "info", "warn", "error":
	default:
		k.add("log.level", "unknown level %q (want debug, info, warn or error)", c.Log.Level)
	}
	switch c.Log.Format {
	case "json", "console":
	default:
		k.add("log.format", "unknown format %q (want json or console)", c.Log.Format)
	}
	return k.ps
}

func (k *checker) listeners() {
	c := k.c
	if len(c.Listeners) == 0 {
		k.add("listeners", "at least one listener is required")
	}
	seen := map[string]int{}
	for i, l := range c.Listeners {
		p := fmt.Sprintf("listeners[%d]", i)
		if err := netconf.CheckAddress(l.Address); err != nil {
			k.add(p+".address", "%v", err)
		} else if j, dup := seen[l.Address]; dup {
			k.add(p+".address", "%q is already used by listeners[%d]", l.Address, j)
		} else {
			seen[l.Address] = i
		}
		switch l.TLS {
		case TLSNone:
			if !c.Auth.AllowPlaintext {
				k.add(p+".tls", "none without auth.allow_plaintext: true lets no client log in (use starttls or implicit, or allow plaintext logins)")
			}
		case TLSStartTLS, TLSImplicit:
			if c.TLS == nil {
				k.add(p+".tls", "%s needs a certificate: add a tls section (cert_file and key_file, or acme)", l.TLS)
			}
		case "":
			k.add(p+".tls", "required (none, starttls or implicit)")
		default:
			k.add(p+".tls", "unknown mode %q (want none, starttls or implicit)", l.TLS)
		}
	}
}

func (k *checker) tls() {
	if t := k.c.TLS; t != nil {
		t.Check(func(key, format string, args ...any) { k.add(strictyaml.Join("tls", key), format, args...) })
	}
}

func (k *checker) backends() {
	c := k.c
	if len(c.Backends) == 0 {
		k.add("backends", "at least one backend is required")
	}
	for _, name := range c.BackendNames() {
		b := c.Backends[name]
		p := "backends." + name
		if b == nil {
			k.add(p, "empty backend (set at least its type)")
			continue
		}
		if strings.ContainsAny(name, "/ \t") || name == "" {
			k.add(p, "a backend name must not be empty or hold '/' or spaces")
		}
	}
}

func (k *checker) routes() {
	c := k.c
	if len(c.Routes) == 0 {
		k.add("routes", "at least one route is required (for example match: \"*\")")
	}
	for i, r := range c.Routes {
		p := fmt.Sprintf("routes[%d]", i)
		if err := backends.CheckMatch(r.Match); err != nil {
			k.add(p+".match", "%v", err)
		}
		if r.Backend == "" {
			k.add(p+".backend", "required")
		} else if _, ok := c.Backends[r.Backend]; !ok {
			k.add(p+".backend", "unknown backend %q", r.Backend)
		}
		if a := r.Rewrite.AddDomain; a != "" && strings.ContainsAny(a, "@ *") {
			k.add(p+".rewrite.add_domain", "%q: want a bare domain such as example.com", a)
		}
	}
}

func (k *checker) auth() {
	a := k.c.Auth
	if a.MaxFailures < 1 {
		k.add("auth.max_failures", "must be at least 1")
	}
	if a.MaxSASLBuffers < 1 {
		k.add("auth.max_sasl_buffers", "must be at least 1")
	}
	if a.FailureDelay < 0 {
		k.add("auth.failure_delay", "must not be negative")
	}
	if a.FailureMaxDelay < 0 {
		k.add("auth.failure_max_delay", "must not be negative")
	} else if a.FailureMaxDelay < a.FailureDelay {
		k.add("auth.failure_max_delay", "must not be below auth.failure_delay (%s)", a.FailureDelay)
	}
	k.accounts()
}

func (k *checker) accounts() {
	a := k.c.Accounts
	if a == nil {
		return
	}
	switch {
	case a.File == "" && a.HTTP == nil:
		k.add("accounts", "set file (an accounts file) or http (the auth hook)")
	case a.File != "" && a.HTTP != nil:
		k.add("accounts", "use either file or http, not both")
	case a.File != "":
		if err := fileReadable(a.File); err != nil {
			k.add("accounts.file", "%v", err)
		}
	default:
		h := a.HTTP
		if u, err := url.Parse(h.URL); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			k.add("accounts.http.url", "required: an http:// or https:// URL")
		} else if u.User != nil {
			k.add("accounts.http.url", "must not hold credentials: put them in headers")
		}
		if h.Timeout < 0 {
			k.add("accounts.http.timeout", "must not be negative")
		}
		if h.CAFile != "" {
			if err := fileReadable(h.CAFile); err != nil {
				k.add("accounts.http.ca_file", "%v", err)
			}
		}
	}
}

func (k *checker) session() {
	s := k.c.Session
	if s.MaxErrors < 1 {
		k.add("session.max_errors", "must be at least 1")
	}
	for _, d := range []struct {
		key string
		v   int
	}{{"max_connections", s.MaxConnections}, {"max_connections_per_ip", s.MaxConnectionsPerIP}} {
		if d.v < 0 {
			k.add("session."+d.key, "must not be negative (0: no limit)")
		}
	}
	for _, d := range []struct {
		key string
		v   int64
	}{{"idle_timeout", int64(s.IdleTimeout)}, {"login_timeout", int64(s.LoginTimeout)}, {"write_timeout", int64(s.WriteTimeout)}, {"command_timeout", int64(s.CommandTimeout)}} {
		if d.v <= 0 {
			k.add("session."+d.key, "must be more than 0")
		}
	}
	if s.MaxConnectionsPerIP > s.MaxConnections && s.MaxConnections > 0 {
		k.add("session.max_connections_per_ip", "is more than session.max_connections (%d)", s.MaxConnections)
	}
	if e := s.Expire; e != "" && !strings.EqualFold(e, "NEVER") {
		if n, err := strconv.Atoi(e); err != nil || n < 0 {
			k.add("session.expire", "%q: want NEVER or a number of days", e)
		}
	}
}

// fileReadable reports whether path can be opened, naming the file.
func fileReadable(path string) error {
	f, err := os.Open(path)
	if err != nil {
		if pe, ok := err.(*os.PathError); ok {
			return fmt.Errorf("%s: %v", path, pe.Err)
		}
		return err
	}
	return f.Close()
}
