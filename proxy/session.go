package proxy

// The session: one client connection's life, from greeting to the logout
// line, and the state machine that dispatches each command through the
// table in commands.go.

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"runtime/debug"
	"strings"
	"sync"
	"time"

	"github.com/rs/zerolog"

	"github.com/popgate/popgate/backends"
	"github.com/popgate/popgate/internal/lock"
)

// state is a POP3 session state; a command lists the states it is valid
// in as a set of them.
type state uint8

const (
	stateAuthorization state = 1 << iota // RFC 1939 §4
	stateTransaction                     // RFC 1939 §5
	// The UPDATE state (RFC 1939 §6) lasts only as long as QUIT's commit.
)

// How a session ended, in the "end" field of its last log line.
const (
	endQuit         = "quit"
	endDrop         = "drop"
	endTimeout      = "timeout"
	endShutdown     = "shutdown"
	endError        = "error"
	endCommitFailed = "commit_failed"
)

// act tells the command loop whether to go on.
type act bool

const (
	actContinue act = false
	actClose    act = true
)

// session is one client connection, served by one goroutine.
type session struct {
	srv  *Server
	o    Options
	lc   ListenerConfig
	id   uint64
	conn clientConn

	log    zerolog.Logger
	ctx    context.Context
	cancel context.CancelFunc

	killMu   sync.Mutex
	killedBy string // set by kill (Shutdown)

	state        state
	pendingUser  string // USER given, waiting for PASS (RFC 1939 §7)
	authFailures int
	errs         int // consecutive protocol faults (see cmdError.fault)

	// TRANSACTION state
	user   string
	mb     backends.Mailbox
	unlock func()
	held   lock.Held // the maildrop lock, confirmed before a commit
	snap   *snapshot // nil before login

	// counters for the logout line
	start     time.Time
	retrieved int
	// lastRetr is the message of the last RETR, if retrSeen (hintNext).
	lastRetr int
	retrSeen bool
	topped   int
	deleted  int
	end      string
}

func newSession(s *Server, nc net.Conn, lc ListenerConfig, o Options, id uint64) *session {
	ctx, cancel := context.WithCancel(s.baseCtx)
	ss := &session{
		srv: s, o: o, lc: lc, id: id,
		ctx: ctx, cancel: cancel,
		state: stateAuthorization,
		start: time.Now(),
	}
	ss.log = o.Logger.With().Uint64("conn", id).Str("remote", nc.RemoteAddr().String()).Str("listener", lc.Name).Logger()
	ss.conn.init(nc, o.WriteTimeout)
	ss.conn.lr.budget = &s.saslBufs
	ss.conn.lr.onBusy = ss.logSASLBusy
	return ss
}

// kill closes the connection from another goroutine (Shutdown).
func (ss *session) kill(reason string) {
	ss.killMu.Lock()
	if ss.killedBy == "" {
		ss.killedBy = reason
	}
	ss.killMu.Unlock()
	ss.conn.raw.Close()
}

func (ss *session) killedReason() string {
	ss.killMu.Lock()
	defer ss.killMu.Unlock()
	return ss.killedBy
}

// endFor classifies a read or write error into an end reason.
func (ss *session) endFor(err error) string {
	if k := ss.killedReason(); k != "" {
		return k
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return endTimeout
	}
	return endDrop
}

// gone ends the session after a failed read or write on the connection.
func (ss *session) gone(err error) error { return &sessionEnd{end: ss.endFor(err)} }

func (ss *session) serve() {
	defer ss.finish()
	if ss.lc.TLS == TLSImplicit {
		// RFC 8314 §3.3: TLS starts with the connection.
		if !ss.handshake() {
			return
		}
	}
	// RFC 1939 §4: greeting. No APOP timestamp: APOP is not offered.
	ss.conn.w.WriteString("+OK POP3 server ready\r\n")
	if err := ss.conn.flushIdle(); err != nil {
		ss.end = ss.endFor(err)
		return
	}
	for {
		timeout := ss.o.LoginTimeout
		if ss.state == stateTransaction {
			timeout = ss.o.IdleTimeout // RFC 1939 §3: autologout timer
		}
		line, err := ss.conn.readCommand(timeout, isAuthLine)
		var a act
		switch {
		case errors.Is(err, errLineTooLong):
			// RFC 2449 §4: commands are at most 255 octets.
			a = ss.respond(reply{}, fault("command line too long (at most 255 octets)"))
		case errors.Is(err, errLongLineBusy):
			a = ss.respond(reply{}, ss.saslBusy())
		case err != nil:
			// RFC 1939 §3: on timeout, close without response or update.
			ss.end = ss.endFor(err)
			return
		default:
			a = ss.dispatch(line)
		}
		if werr := ss.conn.writeFailed(); werr != nil {
			ss.end = ss.endFor(werr)
			return
		}
		if a == actClose {
			if ss.end == "" {
				ss.end = endError
			}
			return
		}
		if err := ss.conn.flushUnlessPipelined(); err != nil {
			ss.end = ss.endFor(err)
			return
		}
	}
}

// dispatch runs one command line: the table says whether the command
// exists, whether it is valid in this state and what arguments it takes;
// respond turns the handler's outcome into the answer.
func (ss *session) dispatch(line []byte) act {
	cmd, kw, rest := lookup(line)
	if cmd == nil || cmd.name != "PASS" {
		ss.pendingUser = "" // RFC 1939 §7: PASS only right after USER
	}
	if ev := ss.log.Trace(); ev.Enabled() {
		ev.Str("cmd", kw).Msg("command") // the keyword only, never arguments
	}
	var r reply
	var err error
	switch {
	case cmd == nil:
		err = fault("unknown command")
	case cmd.states&ss.state == 0:
		err = ss.notValidNow()
	default:
		var a args
		if a, err = ss.parseArgs(cmd, rest); err == nil {
			r, err = cmd.run(ss, a)
		}
	}
	if cmd != nil && cmd.secret {
		ss.conn.lr.wipe()
	}
	return ss.respond(r, err)
}

// notValidNow answers a known command sent in a state it is not valid in.
func (ss *session) notValidNow() error {
	if ss.state == stateAuthorization {
		return fault("command not valid before login")
	}
	return fault("already logged in")
}

// isAuthLine reports whether a command line starts with "AUTH ": such a
// line may carry a long initial response (RFC 5034 §4).
func isAuthLine(head []byte) bool {
	return len(head) >= 5 && strings.EqualFold(string(head[:5]), "AUTH ")
}

// finish runs last in the session goroutine: it recovers a panic, releases
// the maildrop without committing (unless QUIT already did), and writes the
// logout line.
func (ss *session) finish() {
	if r := recover(); r != nil {
		ss.log.Error().Str("panic", fmt.Sprint(r)).Bytes("stack", debug.Stack()).Msg("session panicked")
		ss.end = endError
	}
	ss.conn.close(ss.end != endShutdown && ss.killedReason() == "")
	ss.closeMailbox()
	ss.cancel()
	if k := ss.killedReason(); k != "" && ss.end != endQuit && ss.end != endCommitFailed {
		ss.end = k
	}
	if ss.end == "" {
		ss.end = endDrop
	}
	ss.log.Info().
		Str("end", ss.end).
		Int("listed", ss.listed()).
		Int("retrieved", ss.retrieved).
		Int("top", ss.topped).
		Int("deleted", ss.deleted).
		Int64("octets", ss.conn.sent()).
		Dur("duration", time.Since(ss.start)).
		Msg("session end")
	ss.o.Metrics.SessionEnded(ss.end, ss.conn.sent())
}

// closeMailbox closes the upstream session, then frees the maildrop lock.
// A panic in Close is logged; the lock is freed anyway.
func (ss *session) closeMailbox() {
	if ss.mb == nil {
		return
	}
	mb, unlock := ss.mb, ss.unlock
	ss.mb, ss.unlock, ss.held = nil, nil, nil
	defer func() {
		if unlock != nil {
			unlock()
		}
		if r := recover(); r != nil {
			ss.log.Error().Str("panic", fmt.Sprint(r)).Msg("upstream mailbox Close panicked")
		}
	}()
	if err := mb.Close(); err != nil {
		ss.log.Warn().Err(err).Msg("closing upstream mailbox")
	}
}

// handshake upgrades the connection to TLS, bounded by LoginTimeout. A
// failure costs only this connection (it sets the end reason) and is
// logged at debug level with what the client offered.
func (ss *session) handshake() bool {
	hello, err := ss.conn.startTLS(ss.ctx, ss.o.TLSConfig, ss.o.LoginTimeout)
	if err != nil {
		ev := ss.log.Debug().Err(err)
		if hello != nil {
			ev = ev.Str("sni", hello.ServerName).Strs("versions", versionNames(hello.SupportedVersions)).Int("ciphers", len(hello.CipherSuites))
		} else {
			ev = ev.Bool("client_hello", false)
		}
		ev.Msg("TLS handshake failed")
		ss.end = endError
		if k := ss.killedReason(); k != "" {
			ss.end = k
		}
		return false
	}
	st := ss.conn.nc.(*tls.Conn).ConnectionState()
	ss.log = ss.log.With().Bool("tls", true).Logger()
	ss.log.Debug().Str("version", tls.VersionName(st.Version)).Str("cipher", tls.CipherSuiteName(st.CipherSuite)).Str("sni", st.ServerName).Msg("TLS established")
	return true
}

func versionNames(vs []uint16) []string {
	out := make([]string, len(vs))
	for i, v := range vs {
		out[i] = tls.VersionName(v)
	}
	return out
}

// listed is the number of messages in the snapshot, 0 before login.
func (ss *session) listed() int {
	if ss.snap == nil {
		return 0
	}
	return ss.snap.len()
}
