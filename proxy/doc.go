// Package proxy is popgate's POP3 protocol engine: it accepts client
// connections (plain, STLS or implicit TLS), speaks POP3 to them (RFC 1939,
// RFC 2449, RFC 2595, RFC 5034) and drives one backends.Mailbox per
// session. It never imports a concrete backend.
//
// # Sessions
//
// One goroutine serves each connection. After USER/PASS or AUTH PLAIN/LOGIN
// the session calls Backend.Login, takes the maildrop lock
// (Locker.TryLock on backends.MaildropID; -ERR [IN-USE] if held) and the
// snapshot, whose order is the message numbering for the whole session.
// DELE only marks; QUIT in TRANSACTION calls Mailbox.Commit with the marked
// messages (not at all when none are marked) and answers +OK only if it
// succeeded. Any other end — dropped connection, timeout, Shutdown, too many
// errors, a panic in the session — commits nothing; the mailbox is always
// closed and the lock always released.
//
// RETR and TOP open the message before +OK and stream it through a
// dot-stuffer with a fixed buffer; a stream that fails after +OK closes the
// connection, so a client never sees a truncated message with a valid
// terminator. TOP is cut by the proxy even if the backend sends more.
//
// # Layout
//
// server.go accepts connections; conn.go is the connection plumbing (line
// reader, buffered deadline writer, TLS upgrade); session.go is a
// connection's life and the dispatch loop; commands.go holds the command
// table, the CAPA table and the handlers; login.go and sasl.go log in (the
// SASL mechanism table is in sasl.go); reply.go turns a handler's outcome
// into the answer. docs/architecture.md walks through a command.
//
// # Limits
//
// Command lines are at most 255 octets (RFC 2449 §4); longer ones are
// answered -ERR and dropped without being buffered. AUTH lines and SASL
// continuation lines may be 32 KiB. MaxErrors consecutive protocol faults
// (see Options.MaxErrors for what counts) or MaxAuthFailures failed logins
// close the connection; each failed login waits AuthFailureDelay first.
// Connections over MaxConns or MaxConnsPerIP get "-ERR [SYS/TEMP] too many
// connections" (implicit TLS: closed without a handshake), from the accept
// loop, without a goroutine of their own. Each backend call, and each wait
// for data of a message stream, is bounded by CommandTimeout.
//
// # Secrets in memory
//
// Command lines are zeroed in the pooled read buffer as soon as they are
// read; the line buffer of PASS and AUTH (with its SASL continuation
// lines) is zeroed when the command ends, and so are decoded SASL
// responses. What Go cannot clear stays until the garbage collector
// reuses the memory: the strings made from a password
// (backends.Credentials.Password, which the backend receives, and the
// fields of an AUTH line), and the buffers inside crypto/tls.
//
// # Logging
//
// Each connection logs through a child of Options.Logger with the fields
// conn, remote, listener, and user once logged in. Its last line, at info
// level, is "session end" with end (quit, drop, timeout, shutdown, error,
// commit_failed), listed, retrieved, top, deleted, octets and duration.
// Failed logins are logged at info, failed TLS handshakes at debug, command
// keywords (never arguments) at trace. Passwords and SASL payloads are never
// logged.
package proxy
