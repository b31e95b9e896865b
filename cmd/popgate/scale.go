package main

import (
	"context"
	"fmt"
	"net"
	"runtime"
	"runtime/debug"
	"time"

	"github.com/rs/zerolog"

	"github.com/popgate/popgate/internal/admin"
	"github.com/popgate/popgate/internal/cluster"
	"github.com/popgate/popgate/internal/config"
	"github.com/popgate/popgate/internal/identity"
	"github.com/popgate/popgate/internal/metrics"
	"github.com/popgate/popgate/internal/proxyproto"
	"github.com/popgate/popgate/internal/throttle"
)

// scale is what serve builds once at start for running several nodes
// (issue 12): metrics, the admin server, the shared Redis. Changing the
// cluster or admin sections needs a restart, like the listeners.
type scale struct {
	metrics *metrics.Metrics
	cluster *cluster.Cluster // nil without a cluster section
	admin   *admin.Server    // nil without an admin section
	adminL  net.Listener
	done    chan struct{}
}

// buildInfo names the running binary for popgate_build_info.
func buildInfo() metrics.Build {
	b := metrics.Build{Version: version, GoVersion: runtime.Version()}
	if bi, ok := debug.ReadBuildInfo(); ok {
		if b.Version == "" && bi.Main.Version != "" {
			b.Version = bi.Main.Version
		}
		for _, s := range bi.Settings {
			if s.Key == "vcs.revision" {
				b.Commit = s.Value
			}
		}
	}
	if b.Version == "" {
		b.Version = "devel"
	}
	return b
}

// clusterOptions converts the cluster section.
func clusterOptions(c *config.Cluster) cluster.Options {
	prefix := config.DefaultKeyPrefix
	if c.Redis.KeyPrefix != nil {
		prefix = *c.Redis.KeyPrefix
	}
	return cluster.Options{
		Address: c.Redis.Address, Password: c.Redis.Password, DB: c.Redis.DB,
		TLS: c.Redis.TLS, CAFile: c.Redis.CAFile, ServerName: c.Redis.ServerName,
		KeyPrefix: prefix, LockLease: c.LockLease,
	}
}

// newScale builds the metrics, connects the cluster (lazily: Redis may be
// away at start) and opens the admin listener (an address in use is a
// listenError, exit status 1).
func newScale(cfg *config.Config, log zerolog.Logger) (*scale, error) {
	s := &scale{metrics: metrics.New(buildInfo()), done: make(chan struct{})}
	if cfg.Cluster != nil {
		c, err := cluster.New(clusterOptions(cfg.Cluster), log)
		if err != nil {
			return nil, err
		}
		s.cluster = c
		s.metrics.EnableRedis()
	}
	if a := cfg.Admin; a != nil {
		l, err := net.Listen("tcp", a.Address)
		if err != nil {
			s.close()
			return nil, &listenError{Address: a.Address, Err: err}
		}
		s.adminL = l
		s.admin = admin.New(admin.Options{Token: a.Token, Metrics: s.metrics.Handler(), OnReady: s.metrics.SetReady})
		if s.cluster != nil {
			s.admin.AddCheck("redis", func(ctx context.Context) error {
				err := s.cluster.Check(ctx)
				s.metrics.SetRedisUp(err == nil)
				return err
			})
		}
	}
	return s, nil
}

// loginState is the store of the failure penalty and LOGIN-DELAY: the
// cluster's Redis when configured (shared by every node, each entry with
// its expiry; Redis unreachable refuses logins with [SYS/TEMP]), else an
// in-process one.
func loginState(s *scale) throttle.Store {
	if s != nil && s.cluster != nil {
		return s.cluster.Store()
	}
	return throttle.NewMemory(0)
}

// observer is what the identity gate reports throttled logins to (nil
// without metrics).
func (d *daemon) observer() identity.Observer {
	if d.scale == nil || d.scale.metrics == nil {
		return nil
	}
	return d.scale.metrics
}

// start serves the admin endpoints in the background.
func (s *scale) start(log zerolog.Logger) {
	if s.admin == nil {
		close(s.done)
		return
	}
	log.Info().Str("address", s.adminL.Addr().String()).Msg("admin listening")
	go func() {
		defer close(s.done)
		if err := s.admin.Serve(s.adminL); err != nil {
			log.Error().Err(err).Msg("admin server failed")
		}
	}()
}

// setListening and setDraining feed /readyz.
func (s *scale) setListening(v bool) {
	if s != nil && s.admin != nil {
		s.admin.SetListening(v)
	}
}

func (s *scale) setDraining() {
	if s != nil && s.admin != nil {
		s.admin.SetDraining()
	}
}

// close stops the admin server and the Redis connections.
func (s *scale) close() {
	if s == nil {
		return
	}
	if s.admin != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		s.admin.Shutdown(ctx)
		cancel()
		<-s.done
	} else if s.adminL != nil {
		s.adminL.Close()
	}
	if s.cluster != nil {
		s.cluster.Close()
	}
}

// wrapProxyProtocol puts the PROXY protocol in front of the listeners whose
// section enables it (listeners[i].proxy_protocol).
func wrapProxyProtocol(ls []net.Listener, cfg *config.Config, log zerolog.Logger, m *metrics.Metrics) ([]net.Listener, error) {
	out := make([]net.Listener, len(ls))
	for i, l := range ls {
		out[i] = l
		pp := cfg.Listeners[i].ProxyProtocol
		if pp == nil {
			continue
		}
		trusted, err := proxyproto.ParseTrusted(pp.Trusted)
		if err != nil {
			return nil, fmt.Errorf("listeners[%d].proxy_protocol.trusted: %v", i, err)
		}
		out[i] = proxyproto.Listen(l, proxyproto.Options{
			Trusted:       trusted,
			HeaderTimeout: min(cfg.Session.LoginTimeout, proxyproto.DefaultHeaderTimeout),
			Logger:        log.With().Str("listener", l.Addr().String()).Logger(),
			OnRefused:     m.ProxyRefused,
		})
	}
	return out, nil
}
