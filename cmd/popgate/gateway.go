package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"sync/atomic"
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

// logSwitch is the daemon's log output: a level and a format that a reload
// changes for every logger at once, including those of backends a reload
// kept (they hold their logger from the start).
type logSwitch struct {
	out io.Writer
	cur atomic.Pointer[logTarget]
}

type logTarget struct {
	level zerolog.Level
	w     io.Writer
}

// newLogSwitch returns the switch writing to out at level and format.
func newLogSwitch(out io.Writer, level, format string) (*logSwitch, error) {
	s := &logSwitch{out: out}
	t, err := s.target(level, format)
	if err != nil {
		return nil, err
	}
	s.cur.Store(t)
	return s, nil
}

// target checks level and format; set them with set.
func (s *logSwitch) target(level, format string) (*logTarget, error) {
	// newLogger checks level and format the same way for the demo.
	l, err := newLogger(s.out, level, format)
	if err != nil {
		return nil, err
	}
	var w io.Writer = s.out
	if format == "console" {
		w = zerolog.ConsoleWriter{Out: s.out, TimeFormat: time.RFC3339, NoColor: !isTerminal(s.out)}
	}
	return &logTarget{level: l.GetLevel(), w: w}, nil
}

func (s *logSwitch) set(t *logTarget) { s.cur.Store(t) }

// logger returns a logger writing through the switch.
func (s *logSwitch) logger() zerolog.Logger {
	return zerolog.New(s).With().Timestamp().Logger()
}

// Write implements io.Writer (events without a level).
func (s *logSwitch) Write(p []byte) (int, error) { return s.cur.Load().w.Write(p) }

// WriteLevel implements zerolog.LevelWriter: events below the level are
// dropped.
func (s *logSwitch) WriteLevel(l zerolog.Level, p []byte) (int, error) {
	t := s.cur.Load()
	if l < t.level {
		return len(p), nil
	}
	return t.w.Write(p)
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
	// stop, when closed, stops the gateway like SIGTERM (tests in the
	// process, which must not signal it).
	stop <-chan struct{}
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
		case <-g.stop:
			g.log.Info().Dur("drain_timeout", g.drain()).Msg("shutting down: no new connections, open sessions may finish")
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
