package backends

import (
	"errors"
)

// Code is a POP3 extended response code (RFC 2449 §8, RFC 3206).
type Code string

// The response codes a backend may ask the proxy to send.
const (
	CodeNone       Code = ""
	CodeAuth       Code = "AUTH"        // RFC 3206 §4: credentials are wrong
	CodeInUse      Code = "IN-USE"      // RFC 2449 §8.1.1: maildrop is locked
	CodeLoginDelay Code = "LOGIN-DELAY" // RFC 2449 §8.1.2: logged in too recently
	CodeSysTemp    Code = "SYS/TEMP"    // RFC 3206 §5: temporary system problem
	CodeSysPerm    Code = "SYS/PERM"    // RFC 3206 §5: permanent system problem
)

// Error is an error the client may see. Text is written to the client after
// the response code and must hold no secret and no upstream detail; Err is
// the cause, for the log only.
type Error struct {
	Code Code
	Text string
	Err  error
}

func (e *Error) Error() string {
	s := e.Text
	if e.Code != CodeNone {
		s = "[" + string(e.Code) + "] " + s
	}
	if e.Err != nil {
		s += ": " + e.Err.Error()
	}
	return s
}

func (e *Error) Unwrap() error { return e.Err }

// Is makes errors.Is(err, ErrX) match any *Error with the same code and text,
// so that a backend can wrap a cause into a copy of a sentinel.
func (e *Error) Is(target error) bool {
	t, ok := target.(*Error)
	return ok && t.Code == e.Code && t.Text == e.Text
}

// Wrap returns a copy of e carrying cause for the log.
func (e *Error) Wrap(cause error) *Error {
	c := *e
	c.Err = cause
	return &c
}

// Sentinel errors with their client-visible texts.
var (
	// ErrAuthFailed: the store rejected the credentials.
	ErrAuthFailed = &Error{Code: CodeAuth, Text: "authentication failed"}
	// ErrUnavailable: the store cannot be reached, timed out or failed.
	ErrUnavailable = &Error{Code: CodeSysTemp, Text: "mail store unavailable, try again later"}
	// ErrMessageGone: the message was removed upstream during the session.
	// RETR/TOP answer -ERR and the session goes on.
	ErrMessageGone = &Error{Code: CodeNone, Text: "message no longer available"}
	// ErrInUse: another session holds the maildrop.
	ErrInUse = &Error{Code: CodeInUse, Text: "maildrop already in use"}
)

// ClientError returns the code and text a client may see for err: the
// *Error's own for an *Error anywhere in the chain, else [SYS/TEMP] with a
// generic text (the detail belongs in the log, never to the client).
func ClientError(err error) (Code, string) {
	var e *Error
	if errors.As(err, &e) && e.Text != "" {
		return e.Code, e.Text
	}
	return CodeSysTemp, "internal error, try again later"
}
