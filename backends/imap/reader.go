package imap

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapclient"

	"github.com/popgate/popgate/backends"
)

// msgReader streams a message (RETR) or its header and first body lines
// (TOP) in chunks: each chunk is one UID FETCH of a partial section
// (BODY.PEEK[]<offset.size>, RFC 3501 §6.4.5), read off the socket at once
// into a buffer of Config.ChunkSize octets and then handed to the caller at
// the caller's pace. Memory stays one chunk (two while the next one is
// fetched ahead, ahead.go) whatever the message size, and a slow POP3
// client never holds an upstream literal open (go-imap allows a literal
// five minutes): each chunk is read off the socket as soon as it arrives.
type msgReader struct {
	m     *Mailbox
	ctx   context.Context
	uid   imap.UID
	size  int64 // snapshot size (RETR)
	lines int   // TOP body lines; < 0 for RETR

	section imap.PartSpecifier // what is being fetched now
	limit   int64              // octets expected in section (RETR), else -1
	off     int64              // next offset in section
	textN   int64              // next TEXT request size (TOP)
	left    int                // TOP body lines still to deliver

	bufp *[]byte
	buf  []byte // current chunk
	pos  int
	last bool // the current chunk is the last one
	err  error
}

func (r *msgReader) release() {
	if r.bufp != nil {
		r.m.b.putBuf(r.bufp)
		r.bufp = nil
		r.buf = nil
	}
}

// Read implements io.Reader.
func (r *msgReader) Read(p []byte) (int, error) {
	for r.pos >= len(r.buf) {
		if err := r.next(); err != nil {
			return 0, err
		}
	}
	n := copy(p, r.buf[r.pos:])
	r.pos += n
	return n, nil
}

// WriteTo implements io.WriterTo: each chunk is written straight from the
// buffer.
func (r *msgReader) WriteTo(w io.Writer) (int64, error) {
	var total int64
	for {
		if r.pos < len(r.buf) {
			n, err := w.Write(r.buf[r.pos:])
			r.pos += n
			total += int64(n)
			if err != nil {
				return total, err
			}
			continue
		}
		if err := r.next(); err == io.EOF {
			return total, nil
		} else if err != nil {
			return total, err
		}
	}
}

// Close returns the buffer; the upstream session stays usable.
func (r *msgReader) Close() error {
	r.release()
	if r.err == nil {
		r.err = errors.New("imap: reader closed")
	}
	if r.m.reader == r {
		r.m.reader = nil
	}
	return nil
}

// next moves to the next chunk, or returns io.EOF (after setting \Seen for
// a complete RETR) or the error.
func (r *msgReader) next() error {
	if r.err != nil {
		return r.err
	}
	if r.last {
		r.err = io.EOF
		r.buf, r.pos = nil, 0
		if r.lines < 0 && r.m.b.markSeen && !r.m.snap.isSeen(uint32(r.uid)) {
			// \Seen is set for all such messages in one STORE when the
			// session ends (Mailbox.queueSeen); not for a message the
			// snapshot found \Seen already.
			r.m.toSee.AddNum(r.uid)
		}
		r.release()
		return io.EOF
	}
	if err := r.fill(r.ctx, false); err != nil {
		r.err = err
		r.release()
		return err
	}
	return nil
}

// fill fetches the next chunk into the buffer and sets r.last when it is
// the final one. For RETR the chunk is taken from the fetch sent ahead
// when there is one for exactly this chunk (Mailbox.claim); once it has
// the chunk, fill sends the fetch of the following chunk, or of the first
// chunk of the hinted next message, ahead (Mailbox.startAhead).
func (r *msgReader) fill(ctx context.Context, first bool) error {
	chunk := int64(len(*r.bufp))
	for {
		var n int64
		whole := false
		switch r.section {
		case imap.PartSpecifierNone: // RETR
			if r.off >= r.limit {
				r.buf, r.pos, r.last = nil, 0, true
				return nil
			}
			chunk = int64(r.m.b.chunk)
			n = min(chunk, r.limit-r.off)
			whole = r.off == 0 && r.limit <= chunk
		case imap.PartSpecifierHeader: // TOP: the header, blank line included
			n = chunk
		case imap.PartSpecifierText: // TOP: body, until enough lines
			if r.textN == 0 {
				r.textN = min(chunk, max(4096, int64(r.left)*128))
			}
			n = r.textN
			r.textN = min(chunk, r.textN*2)
		}
		got, err := r.get(ctx, fetchKey{uid: r.uid, section: r.section, off: r.off, n: n, whole: whole})
		if err != nil {
			if errors.Is(err, backends.ErrMessageGone) && !first {
				// Mid-stream: the proxy has sent +OK already.
				return backends.ErrUnavailable.Wrap(fmt.Errorf("imap: message UID %d vanished while streaming", r.uid))
			}
			return err
		}
		if first && got == 0 && r.off == 0 {
			// Dovecot answers OK with an empty body for a message another
			// session expunged; a real message is never empty.
			return backends.ErrMessageGone.Wrap(fmt.Errorf("imap: UID %d: empty body, expunged meanwhile", r.uid))
		}
		first = false
		r.off += int64(got)
		r.buf, r.pos = (*r.bufp)[:got], 0
		switch r.section {
		case imap.PartSpecifierNone:
			if int64(got) != n {
				// RFC822.SIZE promised more: LIST would be wrong.
				return backends.ErrUnavailable.Wrap(fmt.Errorf("imap: UID %d: upstream sent %d octets at offset %d, expected %d (RFC822.SIZE %d)", r.uid, got, r.off-int64(got), n, r.size))
			}
			r.last = r.off >= r.limit
			if !r.last {
				// The next chunk is requested now and read by a goroutine
				// while this one goes to the client.
				next := min(chunk, r.limit-r.off)
				r.m.startAhead(fetchKey{uid: r.uid, section: imap.PartSpecifierNone, off: r.off, n: next}, false)
			} else {
				r.m.prefetchNext(r.uid)
			}
		case imap.PartSpecifierHeader:
			if int64(got) < n { // header complete
				r.section, r.off, r.left = imap.PartSpecifierText, 0, r.lines
				if r.lines == 0 {
					r.last = true
				}
			}
		case imap.PartSpecifierText:
			// RFC 1939 §7 TOP: cut after the requested number of lines.
			used := 0
			for r.left > 0 {
				i := bytes.IndexByte(r.buf[used:], '\n')
				if i < 0 {
					break
				}
				used += i + 1
				r.left--
			}
			if r.left == 0 {
				r.buf = r.buf[:used]
			}
			if r.left == 0 || int64(got) < n {
				r.last = true
			}
		}
		if len(r.buf) > 0 || r.last {
			return nil
		}
	}
}

// get reads the chunk k into r.bufp: from the fetch sent ahead for
// exactly k if there is one, else with one UID FETCH now.
func (r *msgReader) get(ctx context.Context, k fetchKey) (int, error) {
	bufp, got, err := r.m.claim(ctx, k)
	if err != nil {
		return 0, err
	}
	if bufp != nil {
		r.m.b.putBuf(r.bufp)
		r.bufp = bufp
		return got, nil
	}
	if int64(len(*r.bufp)) < k.n { // a smaller buffer taken from a fetch ahead
		r.m.b.putBuf(r.bufp)
		r.bufp = r.m.b.getBuf(k.n)
	}
	err = r.m.guard(ctx, "fetch", func() error {
		cmd, item := r.m.sendFetch(k)
		got, err = readFetch(cmd, item, k, *r.bufp)
		return err
	})
	return got, err
}

// fetchKey is one fetch of a message's octets: UID FETCH uid
// BODY.PEEK[section]<off.n>, or the whole section.
type fetchKey struct {
	uid     imap.UID
	section imap.PartSpecifier
	off, n  int64
	whole   bool
}

// sendFetch sends the UID FETCH of k without waiting for the answer.
func (m *Mailbox) sendFetch(k fetchKey) (*imapclient.FetchCommand, *imap.FetchItemBodySection) {
	item := &imap.FetchItemBodySection{Specifier: k.section, Peek: true}
	if !k.whole {
		item.Partial = &imap.SectionPartial{Offset: k.off, Size: k.n}
	}
	return m.c.Fetch(imap.UIDSetNum(k.uid), &imap.FetchOptions{UID: true, BodySection: []*imap.FetchItemBodySection{item}}), item
}

// readFetch reads the answer of the fetch k into buf (at least k.n
// octets). A message that is not there any more gives
// backends.ErrMessageGone; an error that is neither a *backends.Error nor
// an IMAP status means the connection failed (guard's classification).
func readFetch(cmd *imapclient.FetchCommand, item *imap.FetchItemBodySection, k fetchKey, buf []byte) (int, error) {
	got := 0
	found := false
	var rerr error
	for msg := cmd.Next(); msg != nil; msg = cmd.Next() {
		for it := msg.Next(); it != nil; it = msg.Next() {
			// go-imap hands a FETCH answer to the first pending command
			// that asked for its UID; MatchCommand also checks the section
			// and the partial offset, so octets of another message or
			// another chunk are never taken for these.
			body, ok := it.(imapclient.FetchItemDataBodySection)
			if !ok || found || !body.MatchCommand(item) {
				continue
			}
			found = true
			if body.Literal == nil { // NIL
				continue
			}
			if sz := body.Literal.Size(); sz > k.n {
				rerr = fmt.Errorf("UID %d: upstream sent %d octets, expected %d (RFC822.SIZE wrong?)", k.uid, sz, k.n)
				continue
			}
			got, rerr = io.ReadFull(body.Literal, buf[:body.Literal.Size()])
			if rerr != nil {
				// The connection broke mid-literal. Leave cmd alone:
				// go-imap would read the dead literal again while its
				// reader goroutine moves on. The caller closes the
				// connection, which ends the command.
				return got, fmt.Errorf("reading literal: %w", rerr)
			}
		}
	}
	err := cmd.Close()
	var ie *imap.Error
	switch {
	case errors.As(err, &ie) && ie.Type == imap.StatusResponseTypeNo:
		// e.g. Dovecot's NO [EXPUNGEISSUE] for a message expunged meanwhile
		return got, backends.ErrMessageGone.Wrap(err)
	case err != nil:
		return got, err
	case rerr != nil:
		return got, backends.ErrUnavailable.Wrap(rerr)
	case !found: // RFC 3501 §6.4.8: no FETCH answer for a UID that is gone
		return got, backends.ErrMessageGone.Wrap(fmt.Errorf("imap: UID %d not in mailbox", k.uid))
	}
	return got, nil
}
