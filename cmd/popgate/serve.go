package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"reflect"
	"strings"
	"sync"
	"time"

	"github.com/rs/zerolog"

	"github.com/popgate/popgate/backends"
	"github.com/popgate/popgate/backends/imap"
	"github.com/popgate/popgate/internal/config"
	"github.com/popgate/popgate/proxy"
	"github.com/popgate/popgate/tlsconf"
)

func runServe(args []string, stdout, stderr io.Writer) int {
	fs := newFlagSet("serve", "[--config FILE]",
		"Run the gateway. Opens every listener of the configuration (or none, if one\n"+
			"fails), then serves until SIGTERM or SIGINT: those stop accepting, let open\n"+
			"sessions finish until shutdown.drain_timeout, then close the rest without\n"+
			"committing. SIGHUP reloads the file for new sessions (backends, routes,\n"+
			"certificates, log level); a bad file is logged and the running setup stays.\n"+
			"Logs go to standard error.", stdout, stderr)
	path := configFlag(fs)
	if code, done := parseFlags(fs, args, stdout); done {
		return code
	}

	cfg, err := config.Load(*path)
	if err != nil {
		fmt.Fprintf(stderr, "popgate: %v\n", err)
		return exitUsage
	}
	log, err := newLogger(stderr, cfg.Log.Level, cfg.Log.Format)
	if err != nil {
		fmt.Fprintf(stderr, "popgate: %s: log: %v\n", *path, err)
		return exitUsage
	}
	// Open every listener first: an address in use stops popgate before
	// anything else starts.
	specs := make([]listenSpec, len(cfg.Listeners))
	for i, l := range cfg.Listeners {
		specs[i] = listenSpec{Address: l.Address, TLS: proxy.TLSMode(l.TLS)}
	}
	ls, err := listenAll(specs)
	if err != nil {
		fmt.Fprintf(stderr, "popgate: %v\n", err)
		return exitFailure
	}
	closeAll := func() {
		for _, l := range ls {
			l.Close()
		}
	}
	sc, err := newScale(cfg, log)
	if err != nil {
		closeAll()
		fmt.Fprintf(stderr, "popgate: %v\n", err)
		var le *listenError
		if errors.As(err, &le) {
			return exitFailure
		}
		return exitUsage
	}
	defer sc.close()
	if ls, err = wrapProxyProtocol(ls, cfg, log, sc.metrics); err != nil {
		closeAll()
		fmt.Fprintf(stderr, "popgate: %s: %v\n", *path, err)
		return exitUsage
	}
	d := &daemon{path: *path, stderr: stderr, scale: sc}
	rt, err := d.build(cfg, log, nil)
	if err != nil {
		closeAll()
		fmt.Fprintf(stderr, "popgate: %s: %v\n", *path, err)
		return exitUsage
	}
	d.cur = rt
	d.srv = proxy.New(rt.options)
	log.Info().Str("version", versionString()).Str("config", *path).Int("backends", len(cfg.Backends)).Int("routes", len(cfg.Routes)).Msg("popgate starting")
	sc.start(log)
	g := &gateway{
		log:        log,
		srv:        d.srv,
		specs:      specs,
		ls:         ls,
		drain:      d.drainTimeout,
		readyDelay: d.readyDelay,
		reload:     d.reload,
		scale:      sc,
	}
	code := g.run()
	d.mu.Lock()
	d.cur.close()
	d.mu.Unlock()
	return code
}

// daemon holds what serve built from the configuration, replaced as a whole
// on SIGHUP.
type daemon struct {
	path   string
	stderr io.Writer
	srv    *proxy.Server
	scale  *scale // built once at start

	mu  sync.Mutex
	cur *setup
}

// setup is everything built from one configuration.
type setup struct {
	cfg     *config.Config
	log     zerolog.Logger
	tls     *tlsconf.Manager // nil without a tls section
	tlsCfg  tlsconf.Config
	options proxy.Options
}

func (r *setup) close() {
	if r.tls != nil {
		r.tls.Close()
	}
}

func (d *daemon) drainTimeout() time.Duration {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.cur.cfg.Shutdown.DrainTimeout
}

func (d *daemon) readyDelay() time.Duration {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.cur.cfg.Shutdown.ReadyDelay
}

// tlsConfig converts the tls section.
func tlsConfig(t *config.TLS) tlsconf.Config {
	c := tlsconf.Config{CertFile: t.CertFile, KeyFile: t.KeyFile, MinVersion: t.MinVersion}
	if a := t.ACME; a != nil {
		c.ACME = &tlsconf.ACMEConfig{
			Domains: a.Domains, Email: a.Email, CA: a.CA, CARoot: a.CARoot, Storage: a.Storage,
			Challenge: a.Challenge, HTTPAddress: a.HTTPAddress, TLSALPNAddress: a.TLSALPNAddress,
		}
	}
	return c
}

// imapConfig converts one backend section.
func imapConfig(name string, b *config.Backend) imap.Config {
	cache := 0 // imap's default
	if b.SnapshotCache != nil {
		cache = *b.SnapshotCache
		if cache == 0 {
			cache = -1 // snapshot_cache: 0 disables it
		}
	}
	return imap.Config{
		Name:    name,
		Address: b.Address,
		TLS:     b.TLS,
		Upstream: tlsconf.Upstream{
			ServerName: b.ServerName, CAFile: b.CAFile, MinVersion: b.MinVersion, InsecureSkipVerify: b.InsecureSkipVerify,
		},
		DialTimeout:    b.DialTimeout,
		CommandTimeout: b.CommandTimeout,
		Mailbox:        b.Mailbox,
		UIDLTemplate:   b.UIDLTemplate,
		MarkSeen:       b.MarkSeen,
		SnapshotCache:  cache,
		Delete: imap.DeleteConfig{
			Policy: b.Delete.Policy, Folder: b.Delete.Folder, Keyword: b.Delete.Keyword, AllowPlainExpunge: b.Delete.AllowPlainExpunge,
		},
	}
}

// checkBackends returns the problems the backend packages find beyond the
// configuration's own checks (check-config reports them too).
func checkBackends(cfg *config.Config) config.Problems {
	var ps config.Problems
	for _, name := range cfg.BackendNames() {
		if err := imapConfig(name, cfg.Backends[name]).Validate(); err != nil {
			p := "backends." + name
			ps = append(ps, config.Problem{Path: p, Line: cfg.Line(p), Msg: err.Error()})
		}
	}
	if cfg.TLS != nil {
		for _, err := range tlsConfig(cfg.TLS).Validate() {
			ps = append(ps, config.Problem{Path: "tls", Line: cfg.Line("tls"), Msg: err.Error()})
		}
	}
	return ps
}

// build turns a valid configuration into the proxy options: certificates,
// backends and the router. prev is the running setup on reload (nil at
// start): an unchanged tls section keeps its Manager (reloaded from the
// files instead).
func (d *daemon) build(cfg *config.Config, log zerolog.Logger, prev *setup) (*setup, error) {
	if ps := checkBackends(cfg); len(ps) > 0 {
		return nil, ps
	}
	rt := &setup{cfg: cfg, log: log}
	if cfg.TLS != nil {
		rt.tlsCfg = tlsConfig(cfg.TLS)
		if prev != nil && prev.tls != nil && reflect.DeepEqual(prev.tlsCfg, rt.tlsCfg) {
			if err := prev.tls.Reload(); err != nil {
				return nil, err // tlsconf names the key and file
			}
			rt.tls = prev.tls
		} else {
			m, err := tlsconf.New(context.Background(), rt.tlsCfg, log)
			if err != nil {
				return nil, err // tlsconf names the key and file
			}
			rt.tls = m
		}
	}
	fail := func(err error) (*setup, error) {
		if rt.tls != nil && (prev == nil || rt.tls != prev.tls) {
			rt.tls.Close()
		}
		return nil, err
	}
	bs := map[string]backends.Backend{}
	for _, name := range cfg.BackendNames() {
		ic := imapConfig(name, cfg.Backends[name])
		if d.scale != nil {
			ic.OnSnapshotCache = d.scale.metrics.SnapshotCache
		}
		b, err := imap.New(ic, log)
		if err != nil {
			return fail(fmt.Errorf("backends.%s: %w", name, err))
		}
		bs[name] = b
		if d.scale != nil {
			bs[name] = d.scale.metrics.Backend(name, b)
		}
	}
	routes := make([]backends.Route, len(cfg.Routes))
	for i, r := range cfg.Routes {
		routes[i] = backends.Route{Match: r.Match, Backend: r.Backend, StripDomain: r.Rewrite.StripDomain, AddDomain: r.Rewrite.AddDomain}
	}
	router, err := backends.NewRouter(routes, bs, log)
	if err != nil {
		return fail(fmt.Errorf("routes: %w", err))
	}
	a, s := cfg.Auth, cfg.Session
	rt.options = proxy.Options{
		Backend:          router,
		AllowPlaintext:   a.AllowPlaintext,
		IdleTimeout:      s.IdleTimeout,
		LoginTimeout:     s.LoginTimeout,
		WriteTimeout:     s.WriteTimeout,
		CommandTimeout:   s.CommandTimeout,
		AuthFailureDelay: a.FailureDelay,
		MaxAuthFailures:  a.MaxFailures,
		MaxErrors:        s.MaxErrors,
		MaxConns:         s.MaxConnections,
		MaxConnsPerIP:    s.MaxConnectionsPerIP,
		LoginDelay:       s.LoginDelay,
		Expire:           strings.ToUpper(s.Expire),
		Implementation:   "popgate",
		Logger:           log,
	}
	if a.FailureDelay == 0 {
		rt.options.AuthFailureDelay = -1 // 0s in the file means no delay; proxy's zero is its default
	}
	if rt.tls != nil {
		rt.options.TLSConfig = rt.tls.ServerConfig()
	}
	if d.scale != nil {
		rt.options.Metrics = d.scale.metrics
		if d.scale.cluster != nil {
			rt.options.Locker = d.scale.cluster.Locker()
		}
	}
	return rt, nil
}

// reload re-reads the configuration file (SIGHUP). New sessions get the new
// backends, routes, certificates, limits and log level; open sessions keep
// theirs. A bad file is logged and the running configuration stays.
// Listeners cannot change without a restart.
func (d *daemon) reload() {
	d.mu.Lock()
	defer d.mu.Unlock()
	old := d.cur
	old.log.Info().Str("config", d.path).Msg("SIGHUP: reloading configuration")
	cfg, err := config.Load(d.path)
	if err != nil {
		var fe *config.FileError
		if errors.As(err, &fe) {
			err = fe.Err
		}
		old.log.Error().Str("config", d.path).Str("error", err.Error()).Msg("reload failed: the running configuration stays")
		return
	}
	log, err := newLogger(d.stderr, cfg.Log.Level, cfg.Log.Format)
	if err != nil {
		old.log.Error().Err(err).Msg("reload failed: the running configuration stays")
		return
	}
	if !reflect.DeepEqual(cfg.Listeners, old.cfg.Listeners) {
		log.Warn().Msg("listeners changed in the file: they need a restart; the running listeners stay")
		cfg.Listeners = old.cfg.Listeners
	}
	if !reflect.DeepEqual(cfg.Cluster, old.cfg.Cluster) || !reflect.DeepEqual(cfg.Admin, old.cfg.Admin) {
		log.Warn().Msg("cluster or admin changed in the file: they need a restart; the running ones stay")
		cfg.Cluster, cfg.Admin = old.cfg.Cluster, old.cfg.Admin
	}
	if cfg.TLS == nil && old.cfg.TLS != nil {
		for _, l := range cfg.Listeners {
			if l.TLS != config.TLSNone {
				old.log.Error().Msg("reload failed: the tls section is gone but TLS listeners run: the running configuration stays")
				return
			}
		}
	}
	rt, err := d.build(cfg, log, old)
	if err != nil {
		old.log.Error().Str("config", d.path).Str("error", err.Error()).Msg("reload failed: the running configuration stays")
		return
	}
	d.srv.Update(rt.options)
	if old.tls != nil && old.tls != rt.tls {
		old.tls.Close() // open sessions keep their TLS state; handshakes use the new manager
	}
	d.cur = rt
	log.Info().Str("config", d.path).Int("backends", len(cfg.Backends)).Int("routes", len(cfg.Routes)).Msg("configuration reloaded")
}
