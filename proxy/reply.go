package proxy

// How a command's outcome becomes the answer on the wire and the session's
// fate. Command handlers never write a status line or end the session
// themselves: they return a reply or an error, and respond does the rest.

import (
	"github.com/popgate/popgate/backends"
)

// reply is a command's success: "+OK text" (RFC 1939 §3), then whatever
// then writes.
type reply struct {
	text string
	// then, if set, runs after the status line is buffered: it writes a
	// multi-line body (a listing, a message) or upgrades the connection
	// (STLS). An error from it closes the connection at once, so that a
	// body cut by a failure never gets its terminating "." (RFC 1939 §3):
	// the client never takes a truncated message for a whole one. then
	// logs what failed; respond only sets the end reason.
	then func() error
	// end, if not empty, ends the session after the answer (QUIT).
	end string
}

// cmdError is a command's failure: "-ERR [code] text" (RFC 2449 §8).
type cmdError struct {
	code backends.Code
	text string
	// fault marks a protocol fault (unknown command, command not valid in
	// this state, missing, extra or malformed arguments, overlong line):
	// MaxErrors consecutive ones close the connection. Answers about
	// well-formed requests that cannot be served (deleted or out-of-range
	// message numbers, upstream failures, failed logins) are not faults.
	fault bool
	// end, if not empty, ends the session after the answer, with this end
	// reason (too many failed logins, a failed commit).
	end string
}

func (e *cmdError) Error() string { return e.text }

// fault returns a protocol fault (it counts toward MaxErrors).
func fault(text string) error { return &cmdError{text: text, fault: true} }

// refusal returns a negative answer that is not a protocol fault.
func refusal(code backends.Code, text string) error {
	return &cmdError{code: code, text: text}
}

// sessionEnd ends the session without another answer: the connection
// failed or timed out mid-command (a SASL exchange, a TLS handshake).
type sessionEnd struct{ end string }

func (e *sessionEnd) Error() string { return "session ended: " + e.end }

// respond writes the answer to one command and returns whether the
// session goes on. A +OK resets the count of consecutive protocol faults.
func (ss *session) respond(r reply, err error) act {
	if err != nil {
		return ss.respondErr(err)
	}
	ss.errs = 0
	w := ss.conn.w
	if r.text == "" {
		w.WriteString("+OK\r\n")
	} else {
		w.WriteString("+OK ")
		w.WriteString(r.text)
		w.WriteString("\r\n")
	}
	if r.then != nil {
		if err := r.then(); err != nil {
			if e, ok := err.(*sessionEnd); ok {
				ss.end = e.end
			} else if werr := ss.conn.writeFailed(); werr != nil {
				ss.end = ss.endFor(werr) // the client side failed
			} else {
				ss.end = endError
			}
			return actClose
		}
	}
	if r.end != "" {
		ss.end = r.end
		return actClose
	}
	return actContinue
}

func (ss *session) respondErr(err error) act {
	e, ok := err.(*cmdError)
	if !ok {
		if se, ok := err.(*sessionEnd); ok {
			ss.end = se.end
			return actClose
		}
		// Not a client-facing error: never show its text (DESIGN: the
		// detail goes to the log, never to the client).
		ss.log.Error().Err(err).Msg("command failed")
		code, text := backends.ClientError(err)
		e = &cmdError{code: code, text: text}
	}
	w := ss.conn.w
	w.WriteString("-ERR ")
	if e.code != backends.CodeNone {
		w.WriteString("[" + string(e.code) + "] ")
	}
	w.WriteString(e.text)
	w.WriteString("\r\n")
	if e.end != "" {
		ss.end = e.end
		return actClose
	}
	if e.fault {
		ss.errs++
		if ss.errs >= ss.o.MaxErrors {
			ss.log.Info().Int("errors", ss.errs).Msg("too many consecutive errors, closing")
			ss.end = endError
			return actClose
		}
	}
	return actContinue
}
