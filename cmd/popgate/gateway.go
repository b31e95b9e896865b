package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/rs/zerolog"

	"github.com/popgate/popgate/proxy"
)

// newLogger returns the process logger writing to w: JSON lines, or the
// human-readable console format.
func newLogger(w io.Writer, level, format string) (zerolog.Logger, error) {
	lvl, err := zerolog.ParseLevel(level)
	if err != nil || level == "" {
		return zerolog.Nop(), fmt.Errorf("unknown log level %q", level)
	}
	var out io.Writer = w
	switch format {
	case "json", "":
	case "console":
		out = zerolog.ConsoleWriter{Out: w, TimeFormat: time.RFC3339, NoColor: !isTerminal(w)}
	default:
		return zerolog.Nop(), fmt.Errorf("unknown log format %q", format)
	}
	return zerolog.New(out).Level(lvl).With().Timestamp().Logger(), nil
}

// listenSpec is one listener to open.
type listenSpec struct {
	Address string
	TLS     proxy.TLSMode
}

// listenerName is a listener's name in logs: "pop3" or "pop3s", and the
// address it is bound to.
func listenerName(mode proxy.TLSMode, addr net.Addr) string {
	if mode == proxy.TLSImplicit {
		return "pop3s " + addr.String()
	}
	return "pop3 " + addr.String()
}

// listenError is a listener that could not be opened (exit status 1).
type listenError struct {
	Address string
	Err     error
}

func (e *listenError) Error() string {
	msg := e.Err.Error()
	var oe *net.OpError
	if errors.As(e.Err, &oe) && oe.Err != nil {
		msg = oe.Err.Error()
		var se *os.SyscallError
		if errors.As(oe.Err, &se) {
			msg = se.Err.Error()
		}
	}
	return fmt.Sprintf("cannot listen on %s: %s", e.Address, msg)
}

func (e *listenError) Unwrap() error { return e.Err }

// listenAll opens every listener before anything is served; on a failure
// it closes the ones already open, so nothing is left half-started.
func listenAll(specs []listenSpec) ([]net.Listener, error) {
	var ls []net.Listener
	for _, s := range specs {
		l, err := net.Listen("tcp", s.Address)
		if err != nil {
			for _, o := range ls {
				o.Close()
			}
			return nil, &listenError{Address: s.Address, Err: err}
		}
		ls = append(ls, l)
	}
	return ls, nil
}

// gateway runs a proxy.Server on open listeners until a signal ends it.
type gateway struct {
	log   zerolog.Logger
	srv   *proxy.Server
	specs []listenSpec
	ls    []net.Listener
	// drain returns how long open sessions may finish at shutdown.
	drain func() time.Duration
	// readyDelay returns how long /readyz fails before the listeners
	// close (shutdown.ready_delay); nil: none.
	readyDelay func() time.Duration
	// scale feeds /readyz (nil: no admin server).
	scale *scale
	// reload is called on SIGHUP; nil ignores SIGHUP.
	reload func()
	// ready, when set, is called once every listener is being served.
	ready func()
}

// run serves every listener and blocks until SIGTERM/SIGINT (graceful stop:
// exit 0) or until a listener fails (exit 1). SIGHUP calls reload.
func (g *gateway) run() int {
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT, syscall.SIGHUP)
	defer signal.Stop(sigs)

	errs := make(chan error, len(g.ls))
	for i, l := range g.ls {
		lc := proxy.ListenerConfig{Name: listenerName(g.specs[i].TLS, l.Addr()), TLS: g.specs[i].TLS}
		go func() { errs <- g.srv.Serve(l, lc) }()
		g.log.Info().Str("address", l.Addr().String()).Str("tls", string(lc.TLS)).Msg("listening")
	}
	g.scale.setListening(true)
	if g.ready != nil {
		g.ready()
	}

	code := exitOK
loop:
	for {
		select {
		case sig := <-sigs:
			if sig == syscall.SIGHUP {
				if g.reload != nil {
					g.reload()
				}
				continue
			}
			g.log.Info().Str("signal", sig.String()).Dur("drain_timeout", g.drain()).Msg("shutting down: no new connections, open sessions may finish")
			break loop
		case err := <-errs:
			g.log.Error().Err(err).Msg("listener failed, shutting down")
			code = exitFailure
			break loop
		}
	}
	// /readyz fails at once; the listeners stay open for ready_delay so
	// that the balancer notices before connections are refused.
	g.scale.setDraining()
	second := make(chan struct{})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		// a second SIGTERM/SIGINT ends the ready delay and the drain at once
		for sig := range sigs {
			if sig != syscall.SIGHUP {
				g.log.Warn().Str("signal", sig.String()).Msg("second signal: closing open sessions now")
				close(second)
				cancel()
				return
			}
		}
	}()
	if code == exitOK && g.readyDelay != nil {
		if d := g.readyDelay(); d > 0 {
			g.log.Info().Dur("ready_delay", d).Msg("not ready: listeners stay open for the ready delay")
			t := time.NewTimer(d)
			select {
			case <-t.C:
			case <-second:
			}
			t.Stop()
		}
	}
	ctx, cancelDrain := context.WithTimeout(ctx, g.drain())
	defer cancelDrain()
	if err := g.srv.Shutdown(ctx); err != nil {
		g.log.Warn().Msg("drain timeout reached: remaining sessions closed without committing their deletions")
	}
	g.log.Info().Msg("stopped")
	return code
}

// isTerminal reports whether w is a terminal (console logs are colored then).
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	st, err := f.Stat()
	return err == nil && st.Mode()&os.ModeCharDevice != 0
}
