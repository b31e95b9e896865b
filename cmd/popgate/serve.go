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
	"github.com/popgate/popgate/internal/config"
	"github.com/popgate/popgate/internal/migration"
	"github.com/popgate/popgate/internal/throttle"
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
	return serve(*path, stderr, nil)
}

// serve runs the gateway with the configuration at path until SIGTERM or
// SIGINT, or until stop is closed (nil: signals only), and returns the exit
// status. Logs and errors go to stderr.
func serve(path string, stderr io.Writer, stop <-chan struct{}) int {
	cfg, err := config.Load(path, storeTypes)
	if err != nil {
		fmt.Fprintf(stderr, "popgate: %v\n", err)
		return exitUsage
	}
	logs, err := newLogSwitch(stderr, cfg.Log.Level, cfg.Log.Format)
	if err != nil {
		fmt.Fprintf(stderr, "popgate: %s: log: %v\n", path, err)
		return exitUsage
	}
	log := logs.logger()
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
		fmt.Fprintf(stderr, "popgate: %s: %v\n", path, err)
		return exitUsage
	}
	d := &daemon{path: path, logs: logs, log: log, scale: sc, state: loginState(sc)}
	rt, err := d.build(cfg, log, nil)
	if err != nil {
		closeAll()
		fmt.Fprintf(stderr, "popgate: %s: %v\n", path, err)
		return exitUsage
	}
	d.cur = rt
	d.srv = proxy.New(rt.options)
	log.Info().Str("version", versionString()).Str("config", path).Int("backends", len(cfg.Backends)).Int("routes", len(cfg.Routes)).Msg("popgate starting")
	sc.start(log)
	g := &gateway{
		log:        log,
		srv:        d.srv,
		specs:      specs,
		ls:         ls,
		drain:      d.drainTimeout,
		readyDelay: d.readyDelay,
		reload:     d.reload,
		stop:       stop,
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
	path string
	logs *logSwitch     // level and format of every logger
	log  zerolog.Logger // writes through logs
	srv  *proxy.Server
	// state holds failure counts and last logins across reloads: in
	// Redis with a cluster section (every node sees the same), else in
	// the process (loginState).
	state throttle.Store
	// scale (metrics, admin, cluster) is built once at start; nil in
	// tests that build a daemon directly.
	scale *scale

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
	// backends are the running backends by name; a reload hands the
	// unchanged ones to the next setup.
	backends map[string]*running
	mapper   *migration.Mapper // UIDL migration; kept across reloads while its settings stay
	ident    identityParts     // accounts file or auth hook
	oauth    *custody          // nil without credentials
}

// close releases everything of the setup (at shutdown).
func (r *setup) close() {
	if r.tls != nil {
		r.tls.Close()
	}
	for _, b := range r.backends {
		b.inst.Close()
	}
	r.ident.close(nil)
}

// retire closes what the setup next does not share: its TLS manager and
// its backends that next replaced. A retired backend is closed when the
// last session that started on it ends.
func (r *setup) retire(next *setup) {
	if r.tls != nil && r.tls != next.tls {
		r.tls.Close() // open sessions keep their TLS state; handshakes use the new manager
	}
	for name, b := range r.backends {
		if n := next.backends[name]; n == nil || n.inst != b.inst {
			b.inst.Close()
		}
	}
	r.ident.close(&next.ident)
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

// running is one built backend: its section and its instance.
type running struct {
	typ      string
	settings any
	inst     *backends.Instance
}

// build turns a valid configuration into the proxy options: certificates,
// backends and the router. prev is the running setup on reload (nil at
// start): an unchanged tls section keeps its Manager (reloaded from the
// files instead).
func (d *daemon) build(cfg *config.Config, log zerolog.Logger, prev *setup) (*setup, error) {
	if ps := checkAccounts(cfg); len(ps) > 0 {
		return nil, ps
	}
	rt := &setup{cfg: cfg, log: log}
	if cfg.TLS != nil {
		rt.tlsCfg = *cfg.TLS
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
	rt.backends = map[string]*running{}
	fail := func(err error) (*setup, error) {
		if rt.tls != nil && (prev == nil || rt.tls != prev.tls) {
			rt.tls.Close()
		}
		if prev != nil {
			rt.ident.close(&prev.ident)
		} else {
			rt.ident.close(nil)
		}
		for name, r := range rt.backends {
			if prev == nil || prev.backends[name] == nil || prev.backends[name].inst != r.inst {
				r.inst.Close()
			}
		}
		return nil, err
	}
	var prevOAuth *custody
	if prev != nil {
		prevOAuth = prev.oauth
	}
	cu, err := buildCustody(cfg, log, prevOAuth, d.scale)
	if err != nil {
		return fail(err)
	}
	rt.oauth = cu
	bs := map[string]backends.Backend{}
	for _, name := range cfg.BackendNames() {
		b := cfg.Backends[name]
		// DESIGN: an unchanged section keeps its running instance, so its
		// caches (the IMAP snapshot cache) survive a reload.
		if prev != nil {
			if old := prev.backends[name]; old != nil && old.typ == b.Type && reflect.DeepEqual(old.settings, b.Settings) && prev.oauth == cu {
				rt.backends[name] = old
				bs[name] = d.timed(name, old.inst)
				continue
			}
		}
		env := backends.Env{Name: name, Log: log}
		if d.scale != nil {
			env.OnSnapshotCache = d.scale.metrics.SnapshotCache
		}
		if cu != nil {
			env.Tokens = cu.cu
		}
		be, err := storeTypes.Build(b.Settings, env)
		if err != nil {
			return fail(fmt.Errorf("backends.%s: %w", name, err))
		}
		r := &running{typ: b.Type, settings: b.Settings, inst: backends.NewInstance(be)}
		go func(name string, in *backends.Instance) {
			<-in.Done()
			log.Info().Str("backend", name).Msg("backend closed")
		}(name, r.inst)
		rt.backends[name] = r
		bs[name] = d.timed(name, r.inst)
	}
	var router *backends.Router
	routes := make([]backends.Route, len(cfg.Routes))
	for i, r := range cfg.Routes {
		routes[i] = backends.Route{Match: r.Match, Backend: r.Backend, StripDomain: r.Rewrite.StripDomain, AddDomain: r.Rewrite.AddDomain}
	}
	router, err = backends.NewRouter(routes, bs, log)
	if err != nil {
		return fail(fmt.Errorf("routes: %w", err))
	}
	if rt.ident, err = buildIdentity(cfg, log, prev); err != nil {
		return fail(err)
	}
	// Every login passes the gate: failure delays, device accounts or the
	// hook, LOGIN-DELAY; only then the router and the upstream.
	gate := newGate(cfg, log, rt.ident, router, d.state, d.observer())
	a, s := cfg.Auth, cfg.Session
	rt.options = proxy.Options{
		Backend:          gate,
		LoginDelayVaries: gate.PerUserLoginDelay,
		AllowPlaintext:   a.AllowPlaintext,
		IdleTimeout:      s.IdleTimeout,
		LoginTimeout:     s.LoginTimeout,
		WriteTimeout:     s.WriteTimeout,
		CommandTimeout:   s.CommandTimeout,
		AuthFailureDelay: a.FailureDelay,
		MaxAuthFailures:  a.MaxFailures,
		MaxSASLBuffers:   a.MaxSASLBuffers,
		MaxErrors:        s.MaxErrors,
		MaxConns:         s.MaxConnections,
		MaxConnsPerIP:    s.MaxConnectionsPerIP,
		LoginDelay:       s.LoginDelay,
		Expire:           strings.ToUpper(s.Expire),
		Implementation:   "popgate",
		Logger:           log,
	}
	rt.options.AuthFailureDelay = -1 // the gate waits the growing failure delay
	if rt.tls != nil {
		rt.options.TLSConfig = rt.tls.ServerConfig()
	}
	rt.mapper = uidlMapper(cfg, log, prev)
	rt.options.UIDLMapper = rt.mapper
	if d.scale != nil {
		rt.options.Metrics = d.scale.metrics
		if d.scale.cluster != nil {
			rt.options.Locker = d.scale.cluster.Locker()
		}
	}
	return rt, nil
}

// timed wraps a backend with the upstream latency metrics (when serve
// built them).
func (d *daemon) timed(name string, b backends.Backend) backends.Backend {
	if d.scale == nil {
		return b
	}
	return d.scale.metrics.Backend(name, b)
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
	cfg, err := config.Load(d.path, storeTypes)
	if err != nil {
		var fe *config.FileError
		if errors.As(err, &fe) {
			err = fe.Err
		}
		old.log.Error().Str("config", d.path).Str("error", err.Error()).Msg("reload failed: the running configuration stays")
		return
	}
	logTarget, err := d.logs.target(cfg.Log.Level, cfg.Log.Format)
	if err != nil {
		old.log.Error().Err(err).Msg("reload failed: the running configuration stays")
		return
	}
	log := d.log
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
	if err := d.srv.Update(rt.options); err != nil {
		rt.retire(old) // close what was built for nothing
		old.log.Error().Str("config", d.path).Str("error", err.Error()).Msg("reload failed: the running configuration stays")
		return
	}
	d.logs.set(logTarget)
	old.retire(rt)
	d.cur = rt
	log.Info().Str("config", d.path).Int("backends", len(cfg.Backends)).Int("routes", len(cfg.Routes)).Msg("configuration reloaded")
}
