package imap

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"time"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapclient"
	"github.com/rs/zerolog"

	"github.com/popgate/popgate/backends"
)

// Mailbox is one POP3 session's upstream IMAP session. Its methods are
// called from one goroutine (backends.Mailbox); every upstream command uses
// UIDs, so EXPUNGEs announced by the server (another client deleting) never
// shift what a POP3 message number refers to (RFC 3501 §7.4.1).
type Mailbox struct {
	b    *Backend
	c    *imapclient.Client
	conn net.Conn
	log  zerolog.Logger
	user string
	caps imap.CapSet

	uidValidity uint32
	snap        *snapEntry // the listing of Snapshot (shared with the cache, never modified)
	// toSee are the messages retrieved completely whose \Seen is not set
	// yet (mark_seen).
	toSee imap.UIDSet
	// pending are commands sent without waiting for their answer (the
	// \Seen STORE); they are completed before the next command.
	pending []*imapclient.FetchCommand
	broken  error // set when the connection is unusable
	reader  io.Closer
	closed  bool
	// ahead is the fetch sent ahead of need, if any (ahead.go); next is
	// the message HintNext named.
	ahead *aheadFetch
	next  *nextHint

	poolKey  string    // with reuse on: the warm pool key of this user and credential
	loggedIn time.Time // when the upstream accepted the credential (reuse max_age)
}

var (
	_ backends.Mailbox            = (*Mailbox)(nil)
	_ backends.MaildropIdentifier = (*Mailbox)(nil)
	_ backends.NextHinter         = (*Mailbox)(nil)
)

// MaildropID is the lock key: the backend name (or its address) and the
// user name, so that two popgate sessions never share one upstream mailbox.
func (m *Mailbox) MaildropID() string {
	if m.b.cfg.Name != "" {
		return m.b.cfg.Name + "/" + m.user
	}
	return m.b.cfg.Address + "/" + m.user
}

// guard runs f, one exchange with the server, under the command timeout and
// ctx: go-imap has no contexts, so a watchdog closes the connection when
// either ends first, which fails every pending command. A connection error
// or timeout marks the session broken; the result is ErrUnavailable.
func (m *Mailbox) guard(ctx context.Context, op string, f func() error) error {
	m.dropAhead()
	if m.broken != nil {
		return backends.ErrUnavailable.Wrap(fmt.Errorf("imap %s: connection already failed: %w", op, m.broken))
	}
	tctx, cancel := context.WithTimeout(ctx, m.b.cfg.CommandTimeout)
	defer cancel()
	stop := context.AfterFunc(tctx, func() { m.conn.Close() })
	if err := m.flushPending(); err == nil {
		err = f()
		if stop() {
			var be *backends.Error
			switch {
			case err == nil, errors.As(err, &be):
				return err
			case isIMAPStatus(err):
				return backends.ErrUnavailable.Wrap(fmt.Errorf("imap %s: %w", op, err))
			}
		} else if err == nil {
			err = errors.New("finished too late")
		}
		if tctx.Err() != nil {
			err = fmt.Errorf("%w (%v after %s)", err, tctx.Err(), m.b.cfg.CommandTimeout)
		}
		m.broken = fmt.Errorf("%s: %w", op, err)
	} else {
		stop()
		m.broken = fmt.Errorf("%s: completing earlier command: %w", op, err)
	}
	m.conn.Close()
	return backends.ErrUnavailable.Wrap(fmt.Errorf("imap %s: %w", op, m.broken))
}

// isIMAPStatus reports whether err is a NO/BAD answer (the connection is
// still fine) rather than a broken connection.
func isIMAPStatus(err error) bool {
	var ie *imap.Error
	return errors.As(err, &ie)
}

// flushPending completes the commands sent without waiting. Their NO
// answers are logged, not returned: only a broken connection is an error.
func (m *Mailbox) flushPending() error {
	for len(m.pending) > 0 {
		cmd := m.pending[0]
		m.pending = m.pending[1:]
		if err := cmd.Close(); err != nil {
			if !isIMAPStatus(err) {
				return err
			}
			m.log.Warn().Err(err).Msg("upstream refused to set \\Seen")
		}
	}
	return nil
}

// Snapshot selects the mailbox and lists it with one UID FETCH 1:* (UID
// RFC822.SIZE FLAGS), leaving out messages flagged \Deleted (and, with
// policy flag, those with the keyword). Sizes are RFC822.SIZE: the octets of
// the message with CRLF line endings, which is what Open delivers.
//
// With the snapshot cache on and CONDSTORE offered, SELECT asks for
// HIGHESTMODSEQ (RFC 7162 §3.1.8) and the UID FETCH is skipped when the
// cached listing is proved current (see snapCache), or replaced by a
// listing of what changed since (see listSince).
func (m *Mailbox) Snapshot(ctx context.Context) ([]backends.Message, error) {
	var e *snapEntry
	err := m.guard(ctx, "snapshot", func() error {
		var opts *imap.SelectOptions
		condStore := m.b.cache != nil && m.caps.Has(imap.CapCondStore)
		if condStore {
			opts = &imap.SelectOptions{CondStore: true}
		}
		// SELECT, not EXAMINE: \Seen and the deletions are stored later.
		sel, err := m.c.Select(m.b.cfg.Mailbox, opts).Wait()
		if err != nil {
			return err
		}
		m.uidValidity = sel.UIDValidity
		key := m.user
		if !condStore || !cacheable(sel) {
			m.b.cache.remove(key)
			condStore = false
		} else if e = m.b.cache.get(key, sel); e != nil {
			m.log.Debug().Int("messages", e.n).Msg("snapshot from cache")
			m.b.cacheEvent(true)
			return nil
		}
		m.b.cacheEvent(false)
		if old := m.b.cache.peek(key); condStore && old != nil {
			ne, err := m.listSince(old, sel)
			switch {
			case err != nil && isIMAPStatus(err):
				// The server refused a command (NO, BAD): list everything,
				// as without the cache.
				m.log.Debug().Err(err).Msg("listing what changed was refused: full listing")
			case err != nil:
				return err
			case ne != nil:
				m.log.Debug().Int("messages", ne.n).Int("before", old.n).Msg("snapshot from cache, brought up to date")
				e = ne
				m.b.cache.updates.Add(1)
				m.b.cache.put(key, e)
				return nil
			}
		}
		e = &snapEntry{
			uidValidity: sel.UIDValidity, uidNext: uint32(sel.UIDNext),
			exists: sel.NumMessages, modSeq: sel.HighestModSeq,
		}
		if sel.NumMessages > 0 {
			if err := m.list(e); err != nil {
				return err
			}
		}
		if condStore {
			m.b.cache.put(key, e)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	m.snap = e
	return e.messages(m.b.uidl), nil
}

// list fills e with one UID FETCH 1:* (RFC 3501 §6.4.8), in UID order
// whatever order the server answered in, leaving out the hidden messages.
// Nothing is preallocated from EXISTS: a broken or hostile server may
// announce 4294967295; the listing grows with what actually arrives.
func (m *Mailbox) list(e *snapEntry) error {
	all, err := m.fetchListed(imap.UIDRange{Start: 1, Stop: 0}, 0)
	if err != nil {
		return err
	}
	uids := make([]uint32, 0, len(all))
	sizes := make([]uint32, 0, len(all))
	seen := make([]bool, 0, len(all))
	for _, c := range all {
		if !c.hidden {
			uids, sizes, seen = append(uids, c.uid), append(sizes, c.size), append(seen, c.seen)
		}
	}
	e.pack(uids, sizes, seen)
	return nil
}

func (m *Mailbox) skip(flags []imap.Flag) bool {
	for _, f := range flags {
		if f == imap.FlagDeleted {
			return true
		}
		if m.b.cfg.Delete.Policy == backends.PolicyFlag && equalFoldFlag(f, m.b.keyword) {
			return true
		}
	}
	return false
}

func equalFoldFlag(a, b imap.Flag) bool {
	if len(a) != len(b) {
		return false
	}
	for i := 0; i < len(a); i++ {
		x, y := a[i], b[i]
		if 'A' <= x && x <= 'Z' {
			x += 'a' - 'A'
		}
		if 'A' <= y && y <= 'Z' {
			y += 'a' - 'A'
		}
		if x != y {
			return false
		}
	}
	return true
}

func parseRef(ref string) (imap.UID, error) {
	n, err := strconv.ParseUint(ref, 10, 32)
	if err != nil || n == 0 {
		return 0, fmt.Errorf("imap: bad message reference %q", ref)
	}
	return imap.UID(n), nil
}

// Open streams the message (bodyLines < 0) or its header and first
// bodyLines body lines (TOP). The first chunk is fetched before Open
// returns, so a message gone upstream gives backends.ErrMessageGone before
// the proxy answers +OK. Later chunks are fetched under ctx too, so the
// caller keeps ctx alive while it reads. The reader must be closed before
// the next call.
func (m *Mailbox) Open(ctx context.Context, msg backends.Message, bodyLines int) (io.ReadCloser, error) {
	uid, err := parseRef(msg.Ref)
	if err != nil {
		return nil, err
	}
	if m.reader != nil {
		m.reader.Close()
	}
	r := &msgReader{m: m, ctx: ctx, uid: uid, size: msg.Size, lines: bodyLines}
	if bodyLines < 0 {
		r.bufp = m.b.getBuf(msg.Size)
	} else {
		r.bufp = m.b.getBuf(64 << 10)
	}
	if bodyLines < 0 {
		r.section = imap.PartSpecifierNone
		r.limit = msg.Size
	} else {
		r.section = imap.PartSpecifierHeader
		r.limit = -1
	}
	if err := r.fill(ctx, true); err != nil {
		r.release()
		return nil, err
	}
	m.reader = r
	return r, nil
}

// Commit applies the policy to the deleted messages (RFC 1939 §6, UPDATE
// state). Only these UIDs are touched; messages other clients flagged
// \Deleted stay (DESIGN invariant 2).
func (m *Mailbox) Commit(ctx context.Context, deleted []backends.Message) error {
	if m.reader != nil {
		m.reader.Close()
	}
	m.dropAhead() // nothing fetched ahead is in flight when the \Seen STORE is sent
	m.next = nil
	if len(deleted) == 0 || m.b.cfg.Delete.Policy == backends.PolicyKeep {
		if len(deleted) > 0 {
			m.log.Debug().Int("messages", len(deleted)).Msg("delete policy keep: nothing changed upstream")
		}
		m.queueSeen()
		return m.guard(ctx, "commit", func() error { return nil }) // completes the \Seen STORE
	}
	var uids imap.UIDSet
	for _, d := range deleted {
		uid, err := parseRef(d.Ref)
		if err != nil {
			return err
		}
		uids.AddNum(uid)
	}
	m.queueSeen() // before the deletions: moved messages keep \Seen
	return m.guard(ctx, "commit", func() error {
		switch m.b.cfg.Delete.Policy {
		case backends.PolicyFlag:
			return m.store(uids, m.b.keyword)
		case backends.PolicyMove:
			return m.move(uids)
		default:
			return m.expunge(uids)
		}
	})
}

func (m *Mailbox) store(uids imap.UIDSet, flag imap.Flag) error {
	return m.c.Store(uids, &imap.StoreFlags{Op: imap.StoreFlagsAdd, Silent: true, Flags: []imap.Flag{flag}}, nil).Close()
}

// expunge removes exactly uids: UID STORE +FLAGS.SILENT (\Deleted) then
// UID EXPUNGE (RFC 4315 §2.1). Without UIDPLUS a plain EXPUNGE would also
// remove what other clients flagged \Deleted, so by default the messages
// are only flagged.
func (m *Mailbox) expunge(uids imap.UIDSet) error {
	if err := m.store(uids, imap.FlagDeleted); err != nil {
		return err
	}
	switch {
	case m.caps.Has(imap.CapUIDPlus) || m.caps.Has(imap.CapIMAP4rev2):
		return m.c.UIDExpunge(uids).Close()
	case m.b.cfg.AllowPlainExpunge:
		return m.c.Expunge().Close() // RFC 3501 §6.4.3, allowed by configuration
	default:
		m.b.warnNoUIDPlus.Do(func() {
			m.b.log.Warn().Str("address", m.b.cfg.Address).Msg("upstream lacks UIDPLUS: deleted messages are only flagged \\Deleted, not expunged (set allow_plain_expunge to expunge anyway)")
		})
		return nil
	}
}

// move moves uids to the folder: UID MOVE (RFC 6851 §3.2) when offered,
// else UID COPY and the same scoped expunge as policy expunge. A missing
// folder is created once ([TRYCREATE], RFC 3501 §6.4.7).
func (m *Mailbox) move(uids imap.UIDSet) error {
	folder := m.b.cfg.Delete.Folder
	do := func() error {
		if m.caps.Has(imap.CapMove) || m.caps.Has(imap.CapIMAP4rev2) {
			_, err := moveCmd(m.c, uids, folder)
			return err
		}
		if _, err := m.c.Copy(uids, folder).Wait(); err != nil {
			return err
		}
		return m.expunge(uids)
	}
	err := do()
	var ie *imap.Error
	if errors.As(err, &ie) && ie.Code == imap.ResponseCodeTryCreate {
		if cerr := m.c.Create(folder, nil).Wait(); cerr != nil {
			return fmt.Errorf("%w; create %q: %v", err, folder, cerr)
		}
		err = do()
	}
	return err
}

// moveCmd sends UID MOVE. (go-imap's Client.Move falls back on its own to
// a plain EXPUNGE without UIDPLUS; it is only called when MOVE is offered.)
func moveCmd(c *imapclient.Client, uids imap.UIDSet, folder string) (*imapclient.MoveData, error) {
	return c.Move(uids, folder).Wait()
}

// queueSeen sends one UID STORE +FLAGS.SILENT (\Seen) (RFC 3501 §6.4.6)
// for the messages retrieved completely, without waiting for its answer
// (flushPending reads it before the next command). One STORE per session
// instead of one per RETR: each STORE is an index transaction upstream.
func (m *Mailbox) queueSeen() {
	if len(m.toSee) == 0 || m.broken != nil {
		return
	}
	uids := m.toSee
	m.toSee = nil
	m.pending = append(m.pending, m.c.Store(uids,
		&imap.StoreFlags{Op: imap.StoreFlagsAdd, Silent: true, Flags: []imap.Flag{imap.FlagSeen}}, nil))
}

// Close logs out (no CLOSE, which would expunge) and closes the connection;
// with reuse on, a healthy connection is parked for the next login of the
// same user and credential instead (its \Seen STORE completed first).
func (m *Mailbox) Close() error {
	if m.closed {
		return nil
	}
	if m.reader != nil {
		m.reader.Close()
	}
	m.dropAhead()
	m.next = nil
	m.closed = true
	if m.park() {
		return nil
	}
	m.logout()
	return nil
}

// park hands a healthy connection to the warm pool and reports whether it
// did. The session's state (snapshot, marks) stays behind: the next
// session selects the mailbox afresh.
func (m *Mailbox) park() bool {
	p := m.b.pool
	if p == nil || m.poolKey == "" || m.broken != nil {
		return false
	}
	m.queueSeen()
	if err := m.guard(context.Background(), "complete session", func() error { return nil }); err != nil {
		return false // guard marked it broken; logout just closes it
	}
	shell := &Mailbox{b: m.b, c: m.c, conn: m.conn, log: m.b.log, user: m.user, caps: m.caps}
	p.put(m.poolKey, &warmConn{m: shell, loggedIn: m.loggedIn})
	return true
}

// logout ends the upstream session and closes the connection.
func (m *Mailbox) logout() {
	if m.broken == nil {
		ctx, cancel := context.WithTimeout(context.Background(), min(m.b.cfg.CommandTimeout, 5*time.Second))
		defer cancel()
		stop := context.AfterFunc(ctx, func() { m.conn.Close() })
		m.queueSeen()
		logout := m.c.Logout() // RFC 3501 §6.1.3, pipelined after the STORE
		m.flushPending()
		logout.Wait()
		stop()
	}
	m.c.Close()
}
