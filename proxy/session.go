package proxy

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"runtime/debug"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/rs/zerolog"

	"github.com/popgate/popgate/backends"
	"github.com/popgate/popgate/internal/lock"
)

type state int

const (
	stateAuthorization state = iota // RFC 1939 §4
	stateTransaction                // RFC 1939 §5
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
	srv *Server
	o   Options
	lc  ListenerConfig
	id  uint64

	raw net.Conn // the accepted connection
	nc  net.Conn // raw, or the *tls.Conn over it
	lr  lineReader
	dw  *deadlineWriter
	w   *bufio.Writer
	tls bool

	log    zerolog.Logger
	ctx    context.Context
	cancel context.CancelFunc

	killMu   sync.Mutex
	killedBy string // set by kill (Shutdown)

	state        state
	pendingUser  string // USER given, waiting for PASS (RFC 1939 §7)
	authFailures int
	errs         int // consecutive -ERR answers

	// TRANSACTION state
	user   string
	mb     backends.Mailbox
	unlock func()
	snap   *snapshot // nil before login

	// counters for the logout line
	start     time.Time
	retrieved int
	topped    int
	deleted   int
	end       string
}

func newSession(s *Server, nc net.Conn, lc ListenerConfig, o Options, id uint64) *session {
	ctx, cancel := context.WithCancel(s.baseCtx)
	ss := &session{
		srv: s, o: o, lc: lc, id: id,
		raw: nc, nc: nc,
		ctx: ctx, cancel: cancel,
		start: time.Now(),
	}
	ss.log = o.Logger.With().Uint64("conn", id).Str("remote", nc.RemoteAddr().String()).Str("listener", lc.Name).Logger()
	ss.dw = &deadlineWriter{c: nc, timeout: o.WriteTimeout}
	ss.lr.r = readerPool.Get().(*bufio.Reader)
	ss.lr.r.Reset(nc)
	ss.acquireWriter()
	return ss
}

// acquireWriter takes a write buffer from the pool for the next answers.
func (ss *session) acquireWriter() {
	if ss.w == nil {
		ss.w = writerPool.Get().(*bufio.Writer)
		ss.w.Reset(ss.dw)
	}
}

// waitIdle waits for the next command without holding a read buffer when
// none is pending in it (plaintext connections on Linux).
func (ss *session) waitIdle() error {
	if ss.tls || ss.lr.r.Buffered() > 0 {
		return nil
	}
	ss.lr.r.Reset(nil)
	readerPool.Put(ss.lr.r)
	_, err := waitReadable(ss.nc)
	ss.lr.r = readerPool.Get().(*bufio.Reader)
	ss.lr.r.Reset(ss.nc)
	return err
}

// releaseWriter gives the (flushed) write buffer back to the pool while the
// session waits for the client, so that an idle session does not hold one.
func (ss *session) releaseWriter() {
	if ss.w != nil && ss.w.Buffered() == 0 {
		ss.w.Reset(nil)
		writerPool.Put(ss.w)
		ss.w = nil
	}
}

// Connection buffers are recycled: a session's goroutine is their only user.
var (
	readerPool = sync.Pool{New: func() any { return bufio.NewReaderSize(nil, readBufSize) }}
	writerPool = sync.Pool{New: func() any { return bufio.NewWriterSize(nil, writeBufSize) }}
)

// kill closes the connection from another goroutine (Shutdown).
func (ss *session) kill(reason string) {
	ss.killMu.Lock()
	if ss.killedBy == "" {
		ss.killedBy = reason
	}
	ss.killMu.Unlock()
	ss.raw.Close()
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

func (ss *session) serve() {
	defer ss.finish()
	if ss.lc.TLS == TLSImplicit {
		// RFC 8314 §3.3: TLS starts with the connection.
		if !ss.handshake() {
			return
		}
	}
	// RFC 1939 §4: greeting. No APOP timestamp: APOP is not offered.
	ss.w.WriteString("+OK POP3 server ready\r\n")
	if err := ss.w.Flush(); err != nil {
		ss.end = ss.endFor(err)
		return
	}
	ss.releaseWriter()
	for {
		timeout := ss.o.LoginTimeout
		if ss.state == stateTransaction {
			timeout = ss.o.IdleTimeout // RFC 1939 §3: autologout timer
		}
		if err := ss.nc.SetReadDeadline(time.Now().Add(timeout)); err != nil {
			ss.end = ss.endFor(err)
			return
		}
		if err := ss.waitIdle(); err != nil {
			ss.end = ss.endFor(err)
			return
		}
		line, err := ss.lr.readLine(maxCommandLine, isAuthLine)
		ss.acquireWriter()
		var a act
		switch {
		case errors.Is(err, errLineTooLong):
			// RFC 2449 §4: commands are at most 255 octets.
			a = ss.fail(backends.CodeNone, "command line too long (at most 255 octets)")
		case err != nil:
			// RFC 1939 §3: on timeout, close without response or update.
			ss.end = ss.endFor(err)
			return
		default:
			a = ss.dispatch(line)
		}
		if ss.dw.err != nil {
			ss.end = ss.endFor(ss.dw.err)
			return
		}
		if a == actClose {
			if ss.end == "" {
				ss.end = endError
			}
			return
		}
		// RFC 2449 §6.6: flush only when no further command waits in the buffer.
		if !completeLineBuffered(ss.lr.r) {
			if err := ss.w.Flush(); err != nil {
				ss.end = ss.endFor(err)
				return
			}
			ss.releaseWriter()
		}
	}
}

// finish runs last in the session goroutine: it recovers a panic, releases
// the maildrop without committing (unless QUIT already did), and writes the
// logout line.
func (ss *session) finish() {
	if r := recover(); r != nil {
		ss.log.Error().Str("panic", fmt.Sprint(r)).Bytes("stack", debug.Stack()).Msg("session panicked")
		ss.end = endError
	}
	if ss.w != nil && ss.end != endShutdown && ss.killedReason() == "" && ss.dw.err == nil {
		_ = ss.w.Flush()
	}
	ss.nc.Close()
	ss.raw.Close()
	ss.closeMailbox()
	ss.cancel()
	ss.lr.r.Reset(nil)
	readerPool.Put(ss.lr.r)
	if ss.w != nil {
		ss.w.Reset(nil)
		writerPool.Put(ss.w)
	}
	ss.lr.r, ss.w = nil, nil
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
		Int64("octets", ss.dw.n).
		Dur("duration", time.Since(ss.start)).
		Msg("session end")
}

// closeMailbox closes the upstream session, then frees the maildrop lock.
// A panic in Close is logged; the lock is freed anyway.
func (ss *session) closeMailbox() {
	if ss.mb == nil {
		return
	}
	mb, unlock := ss.mb, ss.unlock
	ss.mb, ss.unlock = nil, nil
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

// handshake runs the server side of TLS on the raw connection, bounded by
// LoginTimeout. A failure costs only this connection and is logged at debug
// level with what the client offered.
func (ss *session) handshake() bool {
	var hello *tls.ClientHelloInfo
	cfg := ss.o.TLSConfig.Clone()
	base := ss.o.TLSConfig.GetConfigForClient
	cfg.GetConfigForClient = func(h *tls.ClientHelloInfo) (*tls.Config, error) {
		hello = h
		if base != nil {
			return base(h)
		}
		return nil, nil
	}
	tc := tls.Server(ss.raw, cfg)
	_ = ss.raw.SetDeadline(time.Now().Add(ss.o.LoginTimeout))
	ctx, cancel := context.WithTimeout(ss.ctx, ss.o.LoginTimeout)
	err := tc.HandshakeContext(ctx)
	cancel()
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
	_ = ss.raw.SetDeadline(time.Time{})
	ss.nc = tc
	ss.tls = true
	ss.lr.r.Reset(tc) // RFC 2595 §4: nothing read before TLS is used after it
	ss.dw.c = tc
	st := tc.ConnectionState()
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

// ok writes a positive single-line answer.
func (ss *session) ok(text string) {
	ss.errs = 0
	if text == "" {
		ss.w.WriteString("+OK\r\n")
		return
	}
	ss.w.WriteString("+OK ")
	ss.w.WriteString(text)
	ss.w.WriteString("\r\n")
}

// fail answers a protocol fault: an unknown command, a command not valid in
// the current state, missing, extra or malformed arguments, an overlong
// line. Consecutive faults are counted, and the connection is closed at
// MaxErrors (a success resets the count, see ok).
func (ss *session) fail(code backends.Code, text string) act {
	ss.writeErr(code, text)
	ss.errs++
	if ss.errs >= ss.o.MaxErrors {
		ss.log.Info().Int("errors", ss.errs).Msg("too many consecutive errors, closing")
		ss.end = endError
		return actClose
	}
	return actContinue
}

// refuse answers a well-formed command that cannot be served: a message
// number that is deleted or out of range, an upstream failure, a failed
// login (counted by authFailed instead). It does not count toward MaxErrors:
// such answers are normal in a correct client's session.
func (ss *session) refuse(code backends.Code, text string) act {
	ss.writeErr(code, text)
	return actContinue
}

// writeErr writes a negative answer with an optional response code (RFC
// 2449 §8).
func (ss *session) writeErr(code backends.Code, text string) {
	ss.w.WriteString("-ERR ")
	if code != backends.CodeNone {
		ss.w.WriteString("[" + string(code) + "] ")
	}
	ss.w.WriteString(text)
	ss.w.WriteString("\r\n")
}

// backendFail answers a backend error: code and text from ClientError, the
// detail to the log only. Not a protocol fault.
func (ss *session) backendFail(op string, err error) act {
	code, text := backends.ClientError(err)
	if !errors.Is(err, backends.ErrMessageGone) {
		ss.log.Warn().Err(err).Str("op", op).Msg("backend call failed")
	}
	return ss.refuse(code, text)
}

// isAuthLine reports whether a command line starts with "AUTH ": such a
// line may carry a long initial response (RFC 5034 §4).
func isAuthLine(head []byte) bool {
	return len(head) >= 5 && strings.EqualFold(string(head[:5]), "AUTH ")
}

// keyword returns the upper-cased command keyword and the rest of the line
// after the first space. Keywords are case-insensitive (RFC 1939 §3).
func keyword(line []byte) (string, []byte) {
	i := 0
	for i < len(line) && line[i] != ' ' {
		i++
	}
	kw, rest := line[:i], line[i:]
	if len(rest) > 0 {
		rest = rest[1:]
	}
	if len(kw) > 4 || len(kw) == 0 {
		return "", rest
	}
	var b [4]byte
	for j, c := range kw {
		if 'a' <= c && c <= 'z' {
			c -= 'a' - 'A'
		}
		b[j] = c
	}
	return string(b[:len(kw)]), rest
}

func (ss *session) dispatch(line []byte) act {
	kw, rest := keyword(line)
	if kw != "PASS" {
		ss.pendingUser = "" // RFC 1939 §7: PASS only right after USER
	}
	ss.log.Trace().Str("cmd", kw).Msg("command")
	switch kw {
	case "CAPA":
		return ss.cmdCAPA(rest)
	case "QUIT":
		return ss.cmdQUIT(rest)
	}
	if ss.state == stateAuthorization {
		switch kw {
		case "USER":
			return ss.cmdUSER(rest)
		case "PASS":
			return ss.cmdPASS(rest)
		case "AUTH":
			return ss.cmdAUTH(rest)
		case "STLS":
			return ss.cmdSTLS(rest)
		case "STAT", "LIST", "UIDL", "RETR", "TOP", "DELE", "RSET", "NOOP":
			return ss.fail(backends.CodeNone, "command not valid before login")
		case "APOP":
			return ss.fail(backends.CodeNone, "APOP not supported")
		}
		return ss.fail(backends.CodeNone, "unknown command")
	}
	switch kw {
	case "STAT":
		return ss.cmdSTAT(rest)
	case "LIST":
		return ss.cmdLIST(rest, false)
	case "UIDL":
		return ss.cmdLIST(rest, true)
	case "RETR":
		return ss.cmdRETR(rest, false)
	case "TOP":
		return ss.cmdRETR(rest, true)
	case "DELE":
		return ss.cmdDELE(rest)
	case "RSET":
		return ss.cmdRSET(rest)
	case "NOOP":
		return ss.cmdNOOP(rest)
	case "USER", "PASS", "AUTH", "STLS", "APOP":
		return ss.fail(backends.CodeNone, "already logged in")
	}
	return ss.fail(backends.CodeNone, "unknown command")
}

// fields splits command arguments on spaces.
func fields(rest []byte) []string { return strings.Fields(string(rest)) }

// plaintextOK reports whether USER/PASS and PLAIN/LOGIN may be used now.
func (ss *session) plaintextOK() bool { return ss.tls || ss.o.AllowPlaintext }

// plaintextRefusal is the answer to a login attempt that plaintextOK forbids.
func (ss *session) plaintextRefusal() act {
	if ss.lc.TLS == TLSStartTLS && ss.o.TLSConfig != nil {
		return ss.fail(backends.CodeNone, "plaintext login disabled: use STLS first, or POP3S on port 995")
	}
	return ss.fail(backends.CodeNone, "plaintext login disabled and this port has no TLS: login is impossible here, use POP3S on port 995")
}

// cmdCAPA lists the capabilities for the current state and TLS (RFC 2449 §5).
func (ss *session) cmdCAPA(rest []byte) act {
	if len(fields(rest)) != 0 {
		return ss.fail(backends.CodeNone, "CAPA takes no argument")
	}
	ss.ok("capability list follows")
	w := ss.w
	w.WriteString("TOP\r\nUIDL\r\nRESP-CODES\r\nAUTH-RESP-CODE\r\nPIPELINING\r\n")
	if ss.state == stateAuthorization {
		if ss.plaintextOK() {
			w.WriteString("USER\r\n")             // RFC 2449 §6.8
			w.WriteString("SASL PLAIN LOGIN\r\n") // RFC 5034 §6
		}
		if ss.lc.TLS == TLSStartTLS && !ss.tls && ss.o.TLSConfig != nil {
			w.WriteString("STLS\r\n") // RFC 2595 §4
		}
	}
	if ss.o.LoginDelay > 0 { // RFC 2449 §6.5
		w.WriteString("LOGIN-DELAY " + strconv.Itoa(int(ss.o.LoginDelay/time.Second)) + "\r\n")
	}
	if ss.o.Expire != "" { // RFC 2449 §6.7
		w.WriteString("EXPIRE " + ss.o.Expire + "\r\n")
	}
	w.WriteString("IMPLEMENTATION " + ss.o.Implementation + "\r\n") // RFC 2449 §6.9
	w.WriteString(".\r\n")
	return actContinue
}

// cmdSTLS starts TLS (RFC 2595 §4).
func (ss *session) cmdSTLS(rest []byte) act {
	switch {
	case len(fields(rest)) != 0:
		return ss.fail(backends.CodeNone, "STLS takes no argument")
	case ss.tls:
		return ss.fail(backends.CodeNone, "TLS already active")
	case ss.lc.TLS != TLSStartTLS || ss.o.TLSConfig == nil:
		return ss.fail(backends.CodeNone, "STLS not available on this port")
	case ss.lr.r.Buffered() > 0:
		// Data after STLS before the handshake would be read as if it came
		// through TLS (command injection, CVE-2011-0411): refuse.
		ss.log.Info().Msg("STLS refused: data pipelined after STLS")
		return ss.fail(backends.CodeNone, "STLS refused: commands sent after STLS before TLS negotiation")
	}
	ss.ok("begin TLS negotiation")
	if err := ss.w.Flush(); err != nil {
		ss.end = ss.endFor(err)
		return actClose
	}
	if !ss.handshake() {
		return actClose
	}
	ss.pendingUser = ""
	return actContinue
}

// cmdUSER takes the login name (RFC 1939 §7).
func (ss *session) cmdUSER(rest []byte) act {
	if !ss.plaintextOK() {
		return ss.plaintextRefusal()
	}
	name := string(rest)
	if name == "" || strings.ContainsAny(name, " \x00") {
		return ss.fail(backends.CodeNone, "USER needs one argument: the login name")
	}
	ss.pendingUser = name
	ss.ok("send PASS")
	return actContinue
}

// cmdPASS logs in with the name of the previous USER (RFC 1939 §7). The
// argument is the rest of the line: a password may contain spaces.
func (ss *session) cmdPASS(rest []byte) act {
	if !ss.plaintextOK() {
		return ss.plaintextRefusal()
	}
	user := ss.pendingUser
	ss.pendingUser = ""
	if user == "" {
		return ss.fail(backends.CodeNone, "PASS must follow USER")
	}
	return ss.login(backends.Credentials{Username: user, Password: string(rest), Mechanism: "USER"})
}

// login authenticates against the backend, locks the maildrop and takes
// the snapshot; on success the session enters TRANSACTION (RFC 1939 §5).
func (ss *session) login(c backends.Credentials) act {
	ss.lr.wipe() // the line held the password or the SASL response
	c.RemoteAddr = ss.raw.RemoteAddr()
	c.TLS = ss.tls
	ctx, cancel := context.WithTimeout(ss.ctx, ss.o.CommandTimeout)
	defer cancel()
	mb, err := ss.o.Backend.Login(ctx, c)
	if err != nil {
		code, text := backends.ClientError(err)
		if code == backends.CodeAuth {
			return ss.authFailed(c.Username, c.Mechanism, err, text)
		}
		ss.log.Warn().Err(err).Str("user", c.Username).Msg("backend login failed")
		return ss.refuse(code, text)
	}
	if mb == nil {
		ss.log.Error().Str("user", c.Username).Msg("backend returned no mailbox and no error")
		return ss.refuse(backends.CodeSysTemp, "internal error, try again later")
	}
	key := backends.MaildropID(mb, c)
	unlock, err := ss.o.Locker.TryLock(ctx, key)
	if err != nil {
		mb.Close()
		if errors.Is(err, lock.ErrHeld) {
			ss.log.Info().Str("user", c.Username).Msg("maildrop in use")
			return ss.refuse(backends.CodeInUse, backends.ErrInUse.Text) // RFC 2449 §8.1.1
		}
		ss.log.Warn().Err(err).Str("user", c.Username).Msg("maildrop lock failed")
		return ss.refuse(backends.CodeSysTemp, "cannot lock maildrop, try again later")
	}
	// From here on finish() releases both, even after a panic.
	ss.mb, ss.unlock = mb, unlock
	msgs, err := mb.Snapshot(ctx)
	if err == nil && ss.o.UIDLMapper != nil {
		msgs, err = ss.o.UIDLMapper.MapUIDLs(ctx, key, mb, msgs)
	}
	var snap *snapshot
	if err == nil {
		snap, err = newSnapshot(msgs) // the backend's slice is garbage from here on
	}
	if err != nil {
		ss.closeMailbox()
		return ss.backendFail("snapshot", err)
	}
	ss.snap = snap
	ss.user = c.Username
	ss.state = stateTransaction
	ss.log = ss.log.With().Str("user", c.Username).Logger()
	ss.log.Debug().Str("mechanism", c.Mechanism).Int("messages", len(msgs)).Msg("logged in")
	n, size := ss.stat()
	ss.ok("maildrop has " + strconv.Itoa(n) + " messages (" + strconv.FormatInt(size, 10) + " octets)")
	return actContinue
}

// authFailed waits AuthFailureDelay, answers -ERR [AUTH] (RFC 3206 §4) and
// closes the connection after MaxAuthFailures.
func (ss *session) authFailed(user, mech string, err error, text string) act {
	ss.authFailures++
	ss.log.Info().Str("user", user).Str("mechanism", mech).AnErr("reason", err).Int("failures", ss.authFailures).Msg("authentication failed")
	if ss.o.AuthFailureDelay > 0 {
		t := time.NewTimer(ss.o.AuthFailureDelay)
		select {
		case <-t.C:
		case <-ss.ctx.Done():
			t.Stop()
		}
	}
	if text == "" {
		text = backends.ErrAuthFailed.Text
	}
	a := ss.refuse(backends.CodeAuth, text)
	if ss.authFailures >= ss.o.MaxAuthFailures {
		ss.end = endError
		return actClose
	}
	return a
}

// stat counts and sizes the messages not marked as deleted.
func (ss *session) stat() (int, int64) { return ss.snap.stat() }

// listed is the number of messages in the snapshot, 0 before login.
func (ss *session) listed() int {
	if ss.snap == nil {
		return 0
	}
	return ss.snap.len()
}

// parseNumber parses a message number or line count: decimal digits only.
func parseNumber(s string) (int, bool) {
	if len(s) == 0 || len(s) > 9 {
		return 0, false
	}
	n := 0
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c < '0' || c > '9' {
			return 0, false
		}
		n = n*10 + int(c-'0')
	}
	return n, true
}

// message resolves a message-number argument to its index (RFC 1939 §5:
// deleted messages are not to be referred to). When it cannot, it answers
// -ERR itself and returns ok false: a malformed number is a protocol fault,
// a well-formed one that is out of range or deleted is not.
func (ss *session) message(arg string) (i int, a act, ok bool) {
	n, valid := parseNumber(arg)
	if !valid {
		return 0, ss.fail(backends.CodeNone, "invalid message number"), false
	}
	if n < 1 || n > ss.snap.len() {
		return 0, ss.refuse(backends.CodeNone, "no such message, only "+strconv.Itoa(ss.snap.len())+" messages in maildrop"), false
	}
	if ss.snap.deleted(n - 1) {
		return 0, ss.refuse(backends.CodeNone, "message "+strconv.Itoa(n)+" already deleted"), false
	}
	return n - 1, actContinue, true
}

// cmdSTAT answers "+OK nn mm" (RFC 1939 §5).
func (ss *session) cmdSTAT(rest []byte) act {
	if len(fields(rest)) != 0 {
		return ss.fail(backends.CodeNone, "STAT takes no argument")
	}
	n, size := ss.stat()
	ss.ok(strconv.Itoa(n) + " " + strconv.FormatInt(size, 10))
	return actContinue
}

// cmdLIST serves LIST [n] (RFC 1939 §5) and UIDL [n] (RFC 1939 §7).
func (ss *session) cmdLIST(rest []byte, uidl bool) act {
	name := "LIST"
	if uidl {
		name = "UIDL"
	}
	// value writes the second field of a listing line.
	var num [20]byte
	value := func(i int) {
		if uidl {
			ss.snap.writeUIDL(ss.w, i)
		} else {
			ss.w.Write(strconv.AppendInt(num[:0], ss.snap.size(i), 10))
		}
	}
	args := fields(rest)
	switch len(args) {
	case 0:
		n, size := ss.stat()
		if uidl {
			ss.ok("unique-id listing follows")
		} else {
			ss.ok(strconv.Itoa(n) + " messages (" + strconv.FormatInt(size, 10) + " octets)")
		}
		for i := 0; i < ss.snap.len(); i++ {
			if ss.snap.deleted(i) {
				continue
			}
			ss.w.Write(strconv.AppendInt(num[:0], int64(i+1), 10))
			ss.w.WriteByte(' ')
			value(i)
			ss.w.WriteString("\r\n")
		}
		ss.w.WriteString(".\r\n")
		return actContinue
	case 1:
		i, a, ok := ss.message(args[0])
		if !ok {
			return a
		}
		ss.errs = 0
		ss.w.WriteString("+OK ")
		ss.w.Write(strconv.AppendInt(num[:0], int64(i+1), 10))
		ss.w.WriteByte(' ')
		value(i)
		ss.w.WriteString("\r\n")
		return actContinue
	}
	return ss.fail(backends.CodeNone, name+" takes at most one argument")
}

var copyBufPool = sync.Pool{New: func() any { b := make([]byte, 64*1024); return &b }}

// cmdRETR serves RETR n and TOP n k (RFC 1939 §5, §7). The message is
// opened before +OK, then streamed through the dot-stuffer with a fixed
// buffer (DESIGN invariant 7). A stream that fails after +OK closes the
// connection: a truncated message never gets a valid terminator.
func (ss *session) cmdRETR(rest []byte, top bool) act {
	args := fields(rest)
	lines := -1
	if top {
		if len(args) != 2 {
			return ss.fail(backends.CodeNone, "TOP needs a message number and a line count")
		}
		k, ok := parseNumber(args[1])
		if !ok {
			return ss.fail(backends.CodeNone, "invalid line count")
		}
		lines = k
	} else if len(args) != 1 {
		return ss.fail(backends.CodeNone, "RETR needs one message number")
	}
	i, a, ok := ss.message(args[0])
	if !ok {
		return a
	}
	m := ss.snap.msg(i)

	// Open is bounded by CommandTimeout; the stream lives on until Close
	// (an HTTP body, for one, dies with its context).
	ctx, cancel := context.WithCancel(ss.ctx)
	defer cancel()
	timer := time.AfterFunc(ss.o.CommandTimeout, cancel)
	rc, err := ss.mb.Open(ctx, m, lines)
	timer.Stop()
	if err == nil && rc == nil {
		err = errors.New("backend returned no reader and no error")
	}
	if err != nil {
		return ss.backendFail("open", err)
	}
	defer rc.Close()
	var src io.Reader = rc
	if top {
		src = &topReader{r: rc, k: lines}
	}
	bp := copyBufPool.Get().(*[]byte)
	defer copyBufPool.Put(bp)
	buf := *bp

	// Read the first chunk before +OK, so that an early failure is still a
	// clean -ERR.
	n, rerr := 0, error(nil)
	for tries := 0; n == 0 && rerr == nil && tries < 100; tries++ {
		n, rerr = src.Read(buf)
	}
	if rerr != nil && rerr != io.EOF {
		return ss.backendFail("read", rerr)
	}
	if top {
		ss.ok("top of message follows")
	} else {
		ss.ok(strconv.FormatInt(m.Size, 10) + " octets")
	}
	dw := dotWriter{w: ss.w}
	_, err = dw.Write(buf[:n])
	if err == nil && rerr == nil {
		if wt, ok := src.(io.WriterTo); ok {
			// The backend writes from its own (bounded) buffers: one copy
			// less. deadlineWriter still writes at most maxWrite at a time.
			_, err = wt.WriteTo(writerOnly{&dw})
		} else {
			_, err = io.CopyBuffer(writerOnly{&dw}, readerOnly{src}, buf)
		}
	}
	if err == nil {
		err = dw.Close()
	}
	if err != nil {
		if ss.dw.err != nil { // the client side failed
			ss.end = ss.endFor(ss.dw.err)
		} else {
			ss.log.Error().Err(err).Str("uidl", m.UIDL).Int64("sent", dw.n).Msg("message stream failed after +OK, closing connection")
			ss.end = endError
		}
		return actClose
	}
	if top {
		ss.topped++
	} else {
		ss.retrieved++
		if dw.n != m.Size { // DESIGN invariant 4
			ss.log.Warn().Str("uidl", m.UIDL).Int64("listed", m.Size).Int64("sent", dw.n).Msg("message size differs from the snapshot")
		}
	}
	return actContinue
}

// cmdDELE marks a message (RFC 1939 §5); nothing changes upstream before QUIT.
func (ss *session) cmdDELE(rest []byte) act {
	args := fields(rest)
	if len(args) != 1 {
		return ss.fail(backends.CodeNone, "DELE needs one message number")
	}
	i, a, ok := ss.message(args[0])
	if !ok {
		return a
	}
	ss.snap.markDeleted(i)
	ss.ok("message " + strconv.Itoa(i+1) + " deleted")
	return actContinue
}

// cmdRSET unmarks all messages (RFC 1939 §5).
func (ss *session) cmdRSET(rest []byte) act {
	if len(fields(rest)) != 0 {
		return ss.fail(backends.CodeNone, "RSET takes no argument")
	}
	ss.snap.resetDeleted()
	n, size := ss.stat()
	ss.ok("maildrop has " + strconv.Itoa(n) + " messages (" + strconv.FormatInt(size, 10) + " octets)")
	return actContinue
}

// cmdNOOP answers +OK (RFC 1939 §5).
func (ss *session) cmdNOOP(rest []byte) act {
	if len(fields(rest)) != 0 {
		return ss.fail(backends.CodeNone, "NOOP takes no argument")
	}
	ss.ok("")
	return actContinue
}

// cmdQUIT ends the session. From TRANSACTION it enters UPDATE (RFC 1939
// §6): Commit the marked messages, and +OK only if that succeeded
// (DESIGN invariant 3). The maildrop is unlocked before the answer is sent.
func (ss *session) cmdQUIT(rest []byte) act {
	if len(fields(rest)) != 0 {
		return ss.fail(backends.CodeNone, "QUIT takes no argument")
	}
	if ss.state == stateAuthorization {
		ss.ok("bye")
		ss.end = endQuit
		return actClose
	}
	var del []backends.Message
	for i := 0; i < ss.snap.len(); i++ {
		if ss.snap.deleted(i) {
			del = append(del, ss.snap.msg(i))
		}
	}
	if len(del) > 0 {
		ctx, cancel := context.WithTimeout(ss.ctx, ss.o.CommandTimeout)
		err := ss.mb.Commit(ctx, del)
		cancel()
		if err != nil {
			ss.log.Error().Err(err).Int("marked", len(del)).Msg("commit failed")
			ss.closeMailbox()
			code, text := backends.ClientError(err)
			if code == backends.CodeNone {
				code = backends.CodeSysTemp
			}
			ss.writeErr(code, text)
			ss.end = endCommitFailed
			return actClose
		}
		ss.deleted = len(del)
	}
	ss.closeMailbox()
	if ss.deleted == 0 {
		ss.ok("bye")
	} else {
		ss.ok("bye, " + strconv.Itoa(ss.deleted) + " messages deleted")
	}
	ss.end = endQuit
	return actClose
}
