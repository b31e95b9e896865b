package proxy

// The POP3 commands: one table says, for each, the states it is valid in,
// the shape of its arguments and its handler; dispatch (session.go) checks
// state and arguments from it, so handlers start from valid input. CAPA's
// lines come from the capabilities table below. The AUTHORIZATION
// commands that log in are in login.go and sasl.go.

import (
	"context"
	"errors"
	"io"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/popgate/popgate/backends"
)

// argShape is the shape of a command's arguments.
type argShape uint8

const (
	argNone     argShape = iota // no argument
	argOptMsg                   // an optional message number
	argMsg                      // one message number
	argMsgCount                 // a message number and a non-negative count
	argText                     // the rest of the line, as sent; the handler checks it
)

// command is one row of the command table.
type command struct {
	name   string // upper case, at most 4 letters
	states state  // the states it is valid in
	args   argShape
	run    func(ss *session, a args) (reply, error)
	// secret: the line (and SASL continuation lines) may hold a password;
	// the line buffer is wiped after the command, whatever its outcome.
	secret bool
}

// args are a command's checked arguments.
type args struct {
	text   []byte // argText: the rest of the line; valid during the call only
	msg    int    // argMsg, argMsgCount, argOptMsg with hasMsg: message index (0-based)
	hasMsg bool
	count  int // argMsgCount
}

const anyState = stateAuthorization | stateTransaction

// commands is the command table (RFC 1939 §4–§7, RFC 2449 §5, RFC 2595 §4,
// RFC 5034 §4).
var commands = [...]command{
	{name: "CAPA", states: anyState, args: argNone, run: (*session).cmdCAPA},
	{name: "QUIT", states: anyState, args: argNone, run: (*session).cmdQUIT},
	{name: "STLS", states: stateAuthorization, args: argNone, run: (*session).cmdSTLS},
	{name: "USER", states: stateAuthorization, args: argText, run: (*session).cmdUSER},
	{name: "PASS", states: stateAuthorization, args: argText, run: (*session).cmdPASS, secret: true},
	{name: "AUTH", states: stateAuthorization, args: argText, run: (*session).cmdAUTH, secret: true},
	{name: "APOP", states: stateAuthorization, args: argText, run: (*session).cmdAPOP},
	{name: "STAT", states: stateTransaction, args: argNone, run: (*session).cmdSTAT},
	{name: "LIST", states: stateTransaction, args: argOptMsg, run: (*session).cmdLIST},
	{name: "UIDL", states: stateTransaction, args: argOptMsg, run: (*session).cmdUIDL},
	{name: "RETR", states: stateTransaction, args: argMsg, run: (*session).cmdRETR},
	{name: "TOP", states: stateTransaction, args: argMsgCount, run: (*session).cmdTOP},
	{name: "DELE", states: stateTransaction, args: argMsg, run: (*session).cmdDELE},
	{name: "RSET", states: stateTransaction, args: argNone, run: (*session).cmdRSET},
	{name: "NOOP", states: stateTransaction, args: argNone, run: (*session).cmdNOOP},
}

// lookup finds the command of a line and returns it (nil if unknown), its
// keyword upper-cased (for the log; "" when longer than 4 octets) and the
// rest of the line after the first space. Keywords are case-insensitive
// (RFC 1939 §3).
func lookup(line []byte) (*command, string, []byte) {
	i := 0
	for i < len(line) && line[i] != ' ' {
		i++
	}
	kw, rest := line[:i], line[i:]
	if len(rest) > 0 {
		rest = rest[1:]
	}
	if len(kw) > 4 || len(kw) == 0 {
		return nil, "", rest
	}
	var b [4]byte
	for j, c := range kw {
		if 'a' <= c && c <= 'z' {
			c -= 'a' - 'A'
		}
		b[j] = c
	}
	for k := range commands {
		if c := &commands[k]; c.name == string(b[:len(kw)]) {
			return c, c.name, rest
		}
	}
	return nil, string(b[:len(kw)]), rest
}

// parseArgs checks the arguments against the command's shape. Malformed
// arguments are protocol faults; a well-formed message number that is out
// of range or deleted is not.
func (ss *session) parseArgs(cmd *command, rest []byte) (args, error) {
	var a args
	if cmd.args == argText {
		a.text = rest
		return a, nil
	}
	f := fields(rest)
	switch cmd.args {
	case argNone:
		if len(f) != 0 {
			return a, fault(cmd.name + " takes no argument")
		}
		return a, nil
	case argOptMsg:
		if len(f) > 1 {
			return a, fault(cmd.name + " takes at most one argument")
		}
	case argMsg:
		if len(f) != 1 {
			return a, fault(cmd.name + " needs one message number")
		}
	case argMsgCount:
		if len(f) != 2 {
			return a, fault(cmd.name + " needs a message number and a line count")
		}
		n, ok := parseNumber(f[1])
		if !ok {
			return a, fault("invalid line count")
		}
		a.count = n
	}
	if len(f) == 0 {
		return a, nil
	}
	i, err := ss.message(f[0])
	a.msg, a.hasMsg = i, err == nil
	return a, err
}

// fields splits command arguments on spaces.
func fields(rest []byte) []string { return strings.Fields(string(rest)) }

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
// deleted messages are not to be referred to).
func (ss *session) message(arg string) (int, error) {
	n, ok := parseNumber(arg)
	if !ok {
		return 0, fault("invalid message number")
	}
	if n < 1 || n > ss.snap.len() {
		return 0, refusal(backends.CodeNone, "no such message, only "+strconv.Itoa(ss.snap.len())+" messages in maildrop")
	}
	if ss.snap.deleted(n - 1) {
		return 0, refusal(backends.CodeNone, "message "+strconv.Itoa(n)+" already deleted")
	}
	return n - 1, nil
}

// capabilities are CAPA's lines in the order they are listed (RFC 2449 §5,
// §6). offer says whether the session offers the capability now and with
// what argument.
var capabilities = [...]struct {
	name  string
	offer func(ss *session) (arg string, ok bool)
}{
	{"TOP", always},                             // RFC 2449 §6.1
	{"UIDL", always},                            // RFC 2449 §6.2
	{"RESP-CODES", always},                      // RFC 2449 §6.4
	{"AUTH-RESP-CODE", always},                  // RFC 3206 §6
	{"PIPELINING", always},                      // RFC 2449 §6.6
	{"USER", (*session).offerUSER},              // RFC 2449 §6.8
	{"SASL", (*session).offerSASL},              // RFC 5034 §6
	{"STLS", (*session).offerSTLS},              // RFC 2595 §4
	{"LOGIN-DELAY", (*session).offerLoginDelay}, // RFC 2449 §6.5
	{"EXPIRE", func(ss *session) (string, bool) { return ss.o.Expire, ss.o.Expire != "" }},    // RFC 2449 §6.7
	{"IMPLEMENTATION", func(ss *session) (string, bool) { return ss.o.Implementation, true }}, // RFC 2449 §6.9
}

func always(*session) (string, bool) { return "", true }

// offerSTLS: STLS is offered on starttls listeners before TLS (RFC 2595 §4).
func (ss *session) offerSTLS() (string, bool) {
	return "", ss.state == stateAuthorization && ss.lc.TLS == TLSStartTLS && !ss.conn.tls && ss.o.TLSConfig != nil
}

// cmdCAPA lists the capabilities for the current state and TLS (RFC 2449 §5).
func (ss *session) cmdCAPA(args) (reply, error) {
	return reply{text: "capability list follows", then: func() error {
		w := ss.conn.w
		for _, c := range capabilities {
			arg, ok := c.offer(ss)
			if !ok {
				continue
			}
			w.WriteString(c.name)
			if arg != "" {
				w.WriteByte(' ')
				w.WriteString(arg)
			}
			w.WriteString("\r\n")
		}
		w.WriteString(".\r\n")
		return nil
	}}, nil
}

// cmdSTLS starts TLS (RFC 2595 §4).
func (ss *session) cmdSTLS(args) (reply, error) {
	if ss.conn.tls {
		return reply{}, fault("TLS already active")
	}
	if _, ok := ss.offerSTLS(); !ok {
		return reply{}, fault("STLS not available on this port")
	}
	if ss.conn.pendingInput() {
		// Data after STLS before the handshake would be read as if it came
		// through TLS (command injection, CVE-2011-0411): refuse.
		ss.log.Info().Msg("STLS refused: data pipelined after STLS")
		return reply{}, fault("STLS refused: commands sent after STLS before TLS negotiation")
	}
	return reply{text: "begin TLS negotiation", then: func() error {
		if err := ss.conn.flush(); err != nil {
			return ss.gone(err)
		}
		if !ss.handshake() {
			return &sessionEnd{end: ss.end}
		}
		ss.pendingUser = ""
		return nil
	}}, nil
}

// maildropText is the +OK text after login and RSET.
func (ss *session) maildropText() string {
	n, size := ss.snap.stat()
	return "maildrop has " + strconv.Itoa(n) + " messages (" + strconv.FormatInt(size, 10) + " octets)"
}

// cmdSTAT answers "+OK nn mm" (RFC 1939 §5).
func (ss *session) cmdSTAT(args) (reply, error) {
	n, size := ss.snap.stat()
	return reply{text: strconv.Itoa(n) + " " + strconv.FormatInt(size, 10)}, nil
}

// cmdLIST serves LIST [n] (RFC 1939 §5).
func (ss *session) cmdLIST(a args) (reply, error) {
	if a.hasMsg {
		return reply{text: strconv.Itoa(a.msg+1) + " " + strconv.FormatInt(ss.snap.size(a.msg), 10)}, nil
	}
	n, size := ss.snap.stat()
	return reply{
		text: strconv.Itoa(n) + " messages (" + strconv.FormatInt(size, 10) + " octets)",
		then: ss.listing(false),
	}, nil
}

// cmdUIDL serves UIDL [n] (RFC 1939 §7).
func (ss *session) cmdUIDL(a args) (reply, error) {
	if a.hasMsg {
		return reply{text: strconv.Itoa(a.msg+1) + " " + ss.snap.uidl(a.msg)}, nil
	}
	return reply{text: "unique-id listing follows", then: ss.listing(true)}, nil
}

// listing writes the body of LIST or UIDL: one line per message not
// marked as deleted.
func (ss *session) listing(uidl bool) func() error {
	return func() error {
		w := ss.conn.w
		var num [20]byte
		for i := 0; i < ss.snap.len(); i++ {
			if ss.snap.deleted(i) {
				continue
			}
			w.Write(strconv.AppendInt(num[:0], int64(i+1), 10))
			w.WriteByte(' ')
			if uidl {
				ss.snap.writeUIDL(w, i)
			} else {
				w.Write(strconv.AppendInt(num[:0], ss.snap.size(i), 10))
			}
			w.WriteString("\r\n")
		}
		w.WriteString(".\r\n")
		return nil
	}
}

// cmdRETR serves RETR n (RFC 1939 §5).
func (ss *session) cmdRETR(a args) (reply, error) { return ss.retrieve(a.msg, -1) }

// cmdTOP serves TOP n k (RFC 1939 §7).
func (ss *session) cmdTOP(a args) (reply, error) { return ss.retrieve(a.msg, a.count) }

var copyBufPool = sync.Pool{New: func() any { b := make([]byte, 64*1024); return &b }}

// retrieve serves RETR (lines < 0) and TOP. The message is opened, and its
// first chunk read, before +OK, so that an early failure is still a clean
// -ERR; then it is streamed through the dot-stuffer with a fixed buffer
// (DESIGN invariant 7). A stream that fails after +OK closes the
// connection: a truncated message never gets a valid terminator. Open and
// every wait for data from the store are bounded by CommandTimeout: a
// store that stalls is cut off (its context cancelled) and, once +OK is
// sent, so is the client.
func (ss *session) retrieve(i, lines int) (reply, error) {
	top := lines >= 0
	m := ss.snap.msg(i)

	// The stream lives on until Close (an HTTP body, for one, dies with its
	// context).
	ctx, cancel := context.WithCancel(ss.ctx)
	var sentOK atomic.Bool
	watch := newStallWatch(ss.o.CommandTimeout, func() {
		cancel()
		if sentOK.Load() {
			ss.conn.raw.Close()
		}
	})
	watch.waiting()
	rc, err := ss.mb.Open(ctx, m, lines)
	watch.got()
	if err == nil && rc == nil {
		err = errors.New("backend returned no reader and no error")
	}
	if err != nil {
		cancel()
		return reply{}, ss.backendError("open", err)
	}
	if !top {
		ss.hintNext(i)
	}
	var src io.Reader = watched{r: rc, sw: watch}
	if top {
		src = &topReader{r: src, k: lines}
	}
	bp := copyBufPool.Get().(*[]byte)
	buf := *bp

	n, rerr := 0, error(nil)
	for tries := 0; n == 0 && rerr == nil && tries < 100; tries++ {
		n, rerr = src.Read(buf)
	}
	if rerr != nil && rerr != io.EOF {
		copyBufPool.Put(bp)
		rc.Close()
		cancel()
		return reply{}, ss.backendError("read", rerr)
	}
	text := "top of message follows"
	if !top {
		text = strconv.FormatInt(m.Size, 10) + " octets"
	}
	return reply{text: text, then: func() error {
		defer func() {
			watch.got()
			copyBufPool.Put(bp)
			rc.Close()
			cancel()
		}()
		sentOK.Store(true)
		body := dotWriter{w: ss.conn.w, out: &ss.conn.out}
		_, err := body.Write(buf[:n])
		if err == nil && rerr == nil {
			if wt, ok := rc.(io.WriterTo); ok && !top {
				// The backend writes from its own (bounded) buffers: one copy
				// less. deadlineWriter still writes at most maxWrite at a time.
				watch.waiting()
				_, err = wt.WriteTo(watched{w: writerOnly{&body}, sw: watch})
				watch.got()
			} else {
				_, err = io.CopyBuffer(writerOnly{&body}, readerOnly{src}, buf)
			}
		}
		if err == nil {
			err = body.Close()
		}
		switch {
		case err == nil:
		case watch.fired.Load():
			ss.log.Error().Str("uidl", m.UIDL).Int64("sent", body.n).Dur("command_timeout", ss.o.CommandTimeout).
				Msg("message stream stalled: no data from the store within command_timeout, closing connection")
			return &sessionEnd{end: endError}
		case ss.conn.writeFailed() == nil: // the upstream side failed
			ss.log.Error().Err(err).Str("uidl", m.UIDL).Int64("sent", body.n).Msg("message stream failed after +OK, closing connection")
			return err
		default:
			return err
		}
		if top {
			ss.topped++
		} else {
			ss.retrieved++
			if body.n != m.Size { // DESIGN invariant 4
				ss.log.Warn().Str("uidl", m.UIDL).Int64("listed", m.Size).Int64("sent", body.n).Msg("message size differs from the snapshot")
			}
		}
		return nil
	}}, nil
}

// hintNext tells a store that fetches ahead (backends.NextHinter) which
// message the client will likely retrieve after message i: the next one,
// when the client retrieves in order (its first RETR, or the one after its
// last), and unless it is marked deleted.
func (ss *session) hintNext(i int) {
	inOrder := !ss.retrSeen || i == ss.lastRetr+1
	ss.retrSeen, ss.lastRetr = true, i
	if !inOrder || i+1 >= ss.snap.len() || ss.snap.deleted(i+1) {
		return
	}
	if h, ok := backends.Find[backends.NextHinter](ss.mb); ok {
		h.HintNext(ss.snap.msg(i + 1))
	}
}

// backendError logs a failed backend call (ErrMessageGone is expected, not
// logged) and returns the answer: code and text from ClientError, never
// the detail. Not a protocol fault.
func (ss *session) backendError(op string, err error) error {
	if !errors.Is(err, backends.ErrMessageGone) {
		ss.log.Warn().Err(err).Str("op", op).Msg("backend call failed")
	}
	return refusal(backends.ClientError(err))
}

// cmdDELE marks a message (RFC 1939 §5); nothing changes upstream before QUIT.
func (ss *session) cmdDELE(a args) (reply, error) {
	ss.snap.markDeleted(a.msg)
	return reply{text: "message " + strconv.Itoa(a.msg+1) + " deleted"}, nil
}

// cmdRSET unmarks all messages (RFC 1939 §5).
func (ss *session) cmdRSET(args) (reply, error) {
	ss.snap.resetDeleted()
	return reply{text: ss.maildropText()}, nil
}

// cmdNOOP answers +OK (RFC 1939 §5).
func (ss *session) cmdNOOP(args) (reply, error) { return reply{}, nil }

// cmdQUIT ends the session. From TRANSACTION it enters UPDATE (RFC 1939
// §6): Commit the marked messages, and +OK only if that succeeded
// (DESIGN invariant 3). The maildrop is unlocked before the answer is sent.
func (ss *session) cmdQUIT(args) (reply, error) {
	if ss.state == stateAuthorization {
		return reply{text: "bye", end: endQuit}, nil
	}
	var del []backends.Message
	for i := 0; i < ss.snap.len(); i++ {
		if ss.snap.deleted(i) {
			del = append(del, ss.snap.msg(i))
		}
	}
	if len(del) > 0 {
		ctx, cancel, ok := ss.confirmLock(len(del))
		if !ok {
			ss.closeMailbox()
			return reply{}, &cmdError{code: backends.CodeSysTemp, text: "maildrop lock lost, nothing deleted, try again", end: endCommitFailed}
		}
		err := ss.mb.Commit(ctx, del)
		cancel()
		if err != nil {
			ss.o.Metrics.Commit("failed", len(del))
			ss.log.Error().Err(err).Int("marked", len(del)).Msg("commit failed")
			ss.closeMailbox()
			code, text := backends.ClientError(err)
			if code == backends.CodeNone {
				code = backends.CodeSysTemp
			}
			return reply{}, &cmdError{code: code, text: text, end: endCommitFailed}
		}
		ss.deleted = len(del)
		ss.o.Metrics.Commit("ok", len(del))
	}
	ss.closeMailbox()
	if ss.deleted == 0 {
		return reply{text: "bye", end: endQuit}, nil
	}
	return reply{text: "bye, " + strconv.Itoa(ss.deleted) + " messages deleted", end: endQuit}, nil
}

// confirmLock confirms, before a commit, that this session still holds the
// maildrop lock (RFC 1939 §8: one session per maildrop through UPDATE) and
// extends it past the commit's deadline. It returns the commit's context,
// bounded by CommandTimeout and by the time the lock is held for certain.
// When the lock cannot be confirmed (lease lost, lock store unreachable) it
// logs why and reports false: the session must not commit.
func (ss *session) confirmLock(marked int) (context.Context, context.CancelFunc, bool) {
	hold := ss.o.CommandTimeout + commitMargin
	cctx, ccancel := context.WithTimeout(ss.ctx, ss.o.CommandTimeout)
	until, err := ss.held.Confirm(cctx, hold)
	ccancel()
	if err != nil {
		ss.o.Metrics.Commit("not_confirmed", marked)
		ss.log.Error().Err(err).Int("marked", marked).Msg("maildrop lock could not be confirmed: nothing committed")
		return nil, nil, false
	}
	deadline := time.Now().Add(ss.o.CommandTimeout)
	if !until.IsZero() && until.Before(deadline) {
		deadline = until
	}
	ctx, cancel := context.WithDeadline(ss.ctx, deadline)
	return ctx, cancel, true
}
