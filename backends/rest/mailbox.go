package rest

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"

	"github.com/rs/zerolog"

	"github.com/popgate/popgate/backends"
)

// Mailbox is one store session.
type Mailbox struct {
	b         *Backend
	log       zerolog.Logger
	token     string
	maildrop  string
	seen      map[string]bool // ids retrieved completely by RETR
	committed bool            // POST /commit was sent (or was not needed)
	dead      bool            // the store said 401: the session is over
	closed    bool
}

var _ backends.Mailbox = (*Mailbox)(nil)

// MaildropID implements backends.MaildropIdentifier: the store's maildrop.
func (m *Mailbox) MaildropID() string { return m.maildrop }

// sessionOver turns a 401 into the end of the session.
func (m *Mailbox) sessionOver(fe *callError) error {
	m.dead = true
	m.log.Warn().Err(fe).Msg("the store ended the session")
	return backends.ErrUnavailable.Wrap(fe)
}

// validUIDL reports whether s is a POP3 UIDL (RFC 1939 §7: 1–70 octets of
// 0x21–0x7E).
func validUIDL(s string) bool {
	if len(s) < 1 || len(s) > 70 {
		return false
	}
	for i := 0; i < len(s); i++ {
		if s[i] < 0x21 || s[i] > 0x7e {
			return false
		}
	}
	return true
}

// validState reports whether s can be the state (and be quoted as an ETag:
// RFC 9110 §8.8.3 etagc without obs-text).
func validState(s string) bool {
	if len(s) < 1 || len(s) > 256 {
		return false
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x21 || c == '"' || c > 0x7e {
			return false
		}
	}
	return true
}

// DerivedUIDL is the UIDL popgate uses for a message listed without one
// whose id is not itself a valid UIDL: "sha256-" and the first 56 hex
// digits of SHA-256(id) (docs/rest-store.md).
func DerivedUIDL(id string) string {
	h := sha256.Sum256([]byte(id))
	return "sha256-" + hex.EncodeToString(h[:28])
}

// Snapshot reads every page of GET {url}/messages, decoding each as a
// stream. With a cached listing of this maildrop the first page carries
// If-None-Match, and a 304 reuses it.
func (m *Mailbox) Snapshot(ctx context.Context) ([]backends.Message, error) {
	b := m.b
	var cached *snapEntry
	if b.cache != nil {
		cached, _ = b.cache.Get(m.maildrop)
	}
	var msgs []backends.Message
	state := ""
	cursor := ""
	cursors := map[string]bool{}
	for page := 0; ; page++ {
		c := call{method: http.MethodGet, path: "/messages", token: m.token, idempotent: true}
		if page == 0 && cached != nil {
			c.header = map[string]string{"If-None-Match": `"` + cached.state + `"`}
		}
		if page > 0 {
			c.query = url.Values{"cursor": {cursor}}
		}
		res, err := b.do(ctx, c)
		if err != nil {
			return nil, backends.ErrUnavailable.Wrap(err)
		}
		switch {
		case res.StatusCode == http.StatusNotModified && page == 0 && cached != nil:
			drain(res.Body)
			res.Body.Close()
			b.hits.Add(1)
			m.log.Debug().Int("messages", len(cached.msgs)).Msg("listing unchanged (304), cached snapshot used")
			return cached.msgs, nil
		case res.StatusCode == http.StatusUnauthorized:
			return nil, m.sessionOver(failure("GET /messages", res))
		case res.StatusCode != http.StatusOK:
			return nil, backends.ErrUnavailable.Wrap(failure("GET /messages", res))
		}
		var next *string
		var pageState string
		msgs, next, pageState, err = decodePage(res.Body, msgs)
		res.Body.Close()
		if err != nil {
			return nil, backends.ErrUnavailable.Wrap(fmt.Errorf("rest GET /messages (page %d): %w", page+1, err))
		}
		if page == 0 {
			state = pageState
		} else if pageState != state {
			return nil, backends.ErrUnavailable.Wrap(fmt.Errorf("rest GET /messages: state changed from %q to %q between pages", state, pageState))
		}
		if next == nil {
			break
		}
		if *next == "" || len(*next) > maxIDLen || cursors[*next] {
			return nil, backends.ErrUnavailable.Wrap(fmt.Errorf("rest GET /messages: page %d: cursor %q is empty, too long or repeats an earlier one", page+1, *next))
		}
		cursors[*next] = true
		cursor = *next
	}
	// Sizes counted on earlier RETRs where the store's were wrong.
	if b.sizes.Len() > 0 {
		for i := range msgs {
			if n, ok := b.sizes.Get(sizeKey(m.maildrop, msgs[i].Ref, msgs[i].Size)); ok {
				msgs[i].Size = n
			}
		}
	}
	if b.cache != nil {
		b.cache.Add(m.maildrop, &snapEntry{state: state, msgs: msgs})
	}
	return msgs, nil
}

// decodePage decodes one page from r as a stream, appending its entries to
// msgs.
func decodePage(r io.Reader, msgs []backends.Message) ([]backends.Message, *string, string, error) {
	lr := &limitReader{r: r, n: maxPageBody}
	dec := json.NewDecoder(lr)
	var next *string
	var state string
	var haveMsgs, haveNext, haveState bool
	if err := expectDelim(dec, '{'); err != nil {
		return msgs, nil, "", err
	}
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return msgs, nil, "", err
		}
		key, _ := tok.(string)
		switch key {
		case "messages":
			haveMsgs = true
			if err := expectDelim(dec, '['); err != nil {
				return msgs, nil, "", fmt.Errorf("messages: %w", err)
			}
			// One entry value reused: absent fields keep the sentinels
			// (no pointer per field, no allocation beyond the strings kept).
			var e struct {
				ID   string `json:"id"`
				Size int64  `json:"size"`
				UIDL string `json:"uidl"`
			}
			for dec.More() {
				e.ID, e.Size, e.UIDL = "", -1, absent
				if err := dec.Decode(&e); err != nil {
					return msgs, nil, "", fmt.Errorf("message %d: %w", len(msgs)+1, err)
				}
				if e.ID == "" || len(e.ID) > maxIDLen {
					return msgs, nil, "", fmt.Errorf("message %d: id missing, empty or longer than %d octets", len(msgs)+1, maxIDLen)
				}
				if e.Size < 0 {
					return msgs, nil, "", fmt.Errorf("message %d (id %q): size missing or negative", len(msgs)+1, e.ID)
				}
				var uidl string
				switch {
				case e.UIDL == e.ID:
					uidl = e.ID // one string for both
				case e.UIDL != absent:
					if !validUIDL(e.UIDL) {
						return msgs, nil, "", fmt.Errorf("message %d (id %q): uidl %q is not 1-70 octets of 0x21-0x7E", len(msgs)+1, e.ID, e.UIDL)
					}
					uidl = e.UIDL
				case validUIDL(e.ID):
					uidl = e.ID
				default:
					uidl = DerivedUIDL(e.ID)
				}
				if len(msgs) >= maxMessages {
					return msgs, nil, "", fmt.Errorf("more than %d messages", maxMessages)
				}
				msgs = append(msgs, backends.Message{UIDL: uidl, Size: e.Size, Ref: e.ID})
			}
			if err := expectDelim(dec, ']'); err != nil {
				return msgs, nil, "", err
			}
		case "next":
			haveNext = true
			if err := dec.Decode(&next); err != nil {
				return msgs, nil, "", fmt.Errorf("next: %w", err)
			}
		case "state":
			haveState = true
			if err := dec.Decode(&state); err != nil {
				return msgs, nil, "", fmt.Errorf("state: %w", err)
			}
			if !validState(state) {
				return msgs, nil, "", fmt.Errorf("state %q: want 1-256 octets of 0x21, 0x23-0x7E", state)
			}
		default:
			var skip json.RawMessage // an unknown field (bounded by the page limit)
			if err := dec.Decode(&skip); err != nil {
				return msgs, nil, "", err
			}
		}
	}
	if err := expectDelim(dec, '}'); err != nil {
		return msgs, nil, "", err
	}
	if !haveMsgs || !haveNext || !haveState {
		return msgs, nil, "", errors.New(`a page needs "messages", "next" and "state"`)
	}
	drain(lr)
	return msgs, next, state, nil
}

// absent marks a uidl the entry did not have (no valid uidl holds a NUL).
const absent = "\x00"

func expectDelim(dec *json.Decoder, want json.Delim) error {
	tok, err := dec.Token()
	if err != nil {
		return err
	}
	if d, ok := tok.(json.Delim); !ok || d != want {
		return fmt.Errorf("want %q, got %v", want, tok)
	}
	return nil
}

func sizeKey(maildrop, id string, listed int64) string {
	return maildrop + "\x00" + id + "\x00" + strconv.FormatInt(listed, 10)
}

// Open streams GET {url}/messages/{id}: bare LF turned into CRLF, and for
// a whole message (bodyLines < 0) exactly msg.Size octets or an error (see
// docs/rest-store.md on a store whose size is wrong). With bodyLines >= 0
// it asks for ?lines= and stops after the header and that many body lines
// whatever the store sends.
func (m *Mailbox) Open(ctx context.Context, msg backends.Message, bodyLines int) (io.ReadCloser, error) {
	if m.dead {
		return nil, backends.ErrUnavailable.Wrap(errors.New("the store ended the session"))
	}
	c := call{method: http.MethodGet, path: "/messages/" + url.PathEscape(msg.Ref), token: m.token, idempotent: true}
	if bodyLines >= 0 {
		c.query = url.Values{"lines": {strconv.Itoa(bodyLines)}}
	}
	res, err := m.b.do(ctx, c)
	if err != nil {
		return nil, backends.ErrUnavailable.Wrap(err)
	}
	switch res.StatusCode {
	case http.StatusOK:
	case http.StatusNotFound:
		return nil, backends.ErrMessageGone.Wrap(failure("GET /messages/{id}", res))
	case http.StatusUnauthorized:
		return nil, m.sessionOver(failure("GET /messages/{id}", res))
	default:
		return nil, backends.ErrUnavailable.Wrap(failure("GET /messages/{id}", res))
	}
	norm := &crlfReader{r: res.Body}
	if bodyLines >= 0 {
		return &topReader{r: norm, c: res.Body, left: bodyLines}, nil
	}
	sr := &sizeReader{m: m, msg: msg, r: norm, c: res.Body}
	if res.ContentLength > msg.Size {
		// Normalising only adds octets: the message is longer than listed.
		// Count it to fix the next listings, and fail before +OK.
		return nil, backends.ErrUnavailable.Wrap(sr.overflow())
	}
	return sr, nil
}

// Commit sends the session's deletions (and seen marks) in one POST
// {url}/commit.
func (m *Mailbox) Commit(ctx context.Context, deleted []backends.Message) error {
	if m.committed {
		return errors.New("rest: commit called twice")
	}
	m.committed = true
	if m.dead {
		return backends.ErrUnavailable.Wrap(errors.New("the store ended the session"))
	}
	var del []string
	if m.b.cfg.Delete.Policy != backends.PolicyKeep {
		for _, d := range deleted {
			del = append(del, d.Ref)
		}
	}
	return m.commit(ctx, del)
}

// commit posts {"delete": del, "seen": …}; nothing at all when both are
// empty. A transport failure is retried once with the same Idempotency-Key.
func (m *Mailbox) commit(ctx context.Context, del []string) error {
	dels := map[string]bool{}
	for _, id := range del {
		dels[id] = true
	}
	seen := []string{}
	if m.b.markSeen {
		for id := range m.seen {
			if !dels[id] {
				seen = append(seen, id)
			}
		}
	}
	if len(del) == 0 && len(seen) == 0 {
		return nil
	}
	if del == nil {
		del = []string{}
	}
	body, _ := json.Marshal(map[string][]string{"delete": del, "seen": seen})
	var k [16]byte
	rand.Read(k[:])
	k[6] = k[6]&0x0f | 0x40 // UUID version 4 (RFC 9562 §5.4)
	k[8] = k[8]&0x3f | 0x80
	key := fmt.Sprintf(`"%x-%x-%x-%x-%x"`, k[0:4], k[4:6], k[6:8], k[8:10], k[10:16])
	c := call{method: http.MethodPost, path: "/commit", token: m.token, body: body, header: map[string]string{"Idempotency-Key": key}}
	res, err := m.b.do(ctx, c)
	if err != nil {
		m.log.Warn().Err(err).Msg("commit got no answer, retrying once with the same Idempotency-Key")
		res, err = m.b.do(ctx, c)
		if err != nil {
			return backends.ErrUnavailable.Wrap(err)
		}
	}
	if res.StatusCode != http.StatusOK {
		return backends.ErrUnavailable.Wrap(failure("POST /commit", res))
	}
	var r struct {
		Deleted  *[]string `json:"deleted"`
		NotFound *[]string `json:"not_found"`
	}
	if err := readJSON(res, maxCommitBody, &r); err != nil {
		return backends.ErrUnavailable.Wrap(fmt.Errorf("rest POST /commit: %w", err))
	}
	if r.Deleted == nil || r.NotFound == nil {
		return backends.ErrUnavailable.Wrap(errors.New(`rest POST /commit: answer without "deleted" and "not_found"`))
	}
	done := map[string]bool{}
	for _, id := range *r.Deleted {
		done[id] = true
	}
	for _, id := range *r.NotFound {
		done[id] = true
	}
	for _, id := range del {
		if !done[id] {
			return backends.ErrUnavailable.Wrap(fmt.Errorf("rest POST /commit: id %q neither deleted nor not_found", id))
		}
	}
	if len(*r.NotFound) > 0 {
		m.log.Info().Int("not_found", len(*r.NotFound)).Msg("messages deleted by the client were already gone")
	}
	return nil
}

// Close sends the seen marks when no commit did (a session that ended
// without QUIT, or QUIT without DELE), then ends the store session.
func (m *Mailbox) Close() error {
	if m.closed {
		return nil
	}
	m.closed = true
	if !m.dead {
		if !m.committed {
			m.committed = true
			ctx, cancel := context.WithTimeout(context.Background(), m.b.cfg.CommandTimeout)
			if err := m.commit(ctx, nil); err != nil {
				m.log.Warn().Err(err).Msg("sending seen marks failed")
			}
			cancel()
		}
		m.b.endSession(m.token)
	}
	return nil
}

// crlfReader turns every LF not preceded by CR into CRLF.
type crlfReader struct {
	r       io.Reader
	lastCR  bool   // the last octet passed on was CR
	pending bool   // an LF is owed after an inserted CR
	buf     []byte // octets read, not yet passed on
	err     error
}

func (c *crlfReader) Read(p []byte) (int, error) {
	n := 0
	for n < len(p) {
		if c.pending {
			p[n] = '\n'
			n++
			c.pending, c.lastCR = false, false
			continue
		}
		if len(c.buf) == 0 {
			if c.err != nil || n > 0 {
				break
			}
			if cap(c.buf) == 0 {
				c.buf = make([]byte, 0, 32<<10)
			}
			k, err := c.r.Read(c.buf[:cap(c.buf)])
			c.buf, c.err = c.buf[:k], err
			continue
		}
		// Copy up to the next LF.
		i := bytes.IndexByte(c.buf, '\n')
		if i < 0 {
			k := copy(p[n:], c.buf)
			n += k
			c.lastCR = p[n-1] == '\r'
			c.buf = c.buf[k:]
			continue
		}
		if i > 0 {
			k := copy(p[n:], c.buf[:i])
			n += k
			c.lastCR = p[n-1] == '\r'
			c.buf = c.buf[k:]
			continue
		}
		// c.buf[0] is LF.
		c.buf = c.buf[1:]
		if c.lastCR {
			p[n] = '\n'
			n++
			c.lastCR = false
		} else {
			p[n] = '\r'
			n++
			c.lastCR, c.pending = true, true
		}
	}
	if n == 0 && len(c.buf) == 0 && !c.pending {
		return 0, c.err
	}
	return n, nil
}

// topReader passes the header, the empty line and left body lines, then
// EOF (RFC 1939 §7, TOP); it closes the HTTP body early so that nothing
// more is read, whether or not the store honoured ?lines=. Its input has
// CRLF line endings (crlfReader).
type topReader struct {
	r       io.Reader
	c       io.Closer
	inBody  bool
	midLine bool  // inside a line (not at its first octet)
	lineLen int64 // octets of the current header line so far
	left    int
	done    bool
}

func (t *topReader) Read(p []byte) (int, error) {
	if t.done {
		return 0, io.EOF
	}
	n, err := t.r.Read(p)
	for i := 0; i < n; i++ {
		if t.inBody && !t.midLine {
			if t.left == 0 {
				t.done = true
				t.c.Close()
				return i, nil
			}
			t.left--
		}
		t.midLine = true
		if p[i] == '\n' {
			if !t.inBody && t.lineLen == 1 { // the empty line "\r\n"
				t.inBody = true
			}
			t.midLine, t.lineLen = false, 0
			continue
		}
		t.lineLen++
	}
	return n, err
}

func (t *topReader) Close() error { return t.c.Close() }

// sizeReader passes exactly msg.Size octets; more or fewer is an error,
// logged once per message and remembered so that later listings show the
// octets delivered. A complete read marks the message seen.
type sizeReader struct {
	m    *Mailbox
	msg  backends.Message
	r    io.Reader
	c    io.Closer
	n    int64
	done bool
}

func (s *sizeReader) Read(p []byte) (int, error) {
	if s.done {
		return 0, io.EOF
	}
	if s.n == s.msg.Size {
		// Everything listed is through: the store must be at its end.
		var one [1]byte
		k, err := io.ReadFull(s.r, one[:])
		if k > 0 {
			return 0, s.overflowFrom(s.n + 1)
		}
		if err != io.EOF && err != io.ErrUnexpectedEOF {
			return 0, err
		}
		s.done = true
		s.m.seen[s.msg.Ref] = true
		return 0, io.EOF
	}
	if rest := s.msg.Size - s.n; int64(len(p)) > rest {
		p = p[:rest]
	}
	k, err := s.r.Read(p)
	s.n += int64(k)
	if err == io.EOF {
		if s.n < s.msg.Size {
			s.mismatch(s.n)
			return k, fmt.Errorf("rest: message %q ended after %d octets, %d listed", s.msg.Ref, s.n, s.msg.Size)
		}
		err = nil
	}
	return k, err
}

func (s *sizeReader) Close() error { return s.c.Close() }

// overflow counts the whole message from the start (nothing was read yet).
func (s *sizeReader) overflow() error {
	defer s.c.Close()
	return s.overflowFrom(0)
}

// overflowFrom reads the rest of a message longer than listed (bounded by
// the per-read deadline) to count its octets, and returns the error.
func (s *sizeReader) overflowFrom(n int64) error {
	k, err := io.Copy(io.Discard, s.r)
	if err == nil {
		s.mismatch(n + k)
	}
	return fmt.Errorf("rest: message %q is longer than the %d octets listed", s.msg.Ref, s.msg.Size)
}

// mismatch logs a wrong size once per message and remembers the octets
// delivered; the maildrop's cached listing is dropped so that the next
// login lists the right size.
func (s *sizeReader) mismatch(actual int64) {
	b := s.m.b
	key := sizeKey(s.m.maildrop, s.msg.Ref, s.msg.Size)
	if prev, ok := b.sizes.Get(key); ok && prev == actual {
		return
	}
	b.sizes.Add(key, actual)
	if b.cache != nil {
		b.cache.Remove(s.m.maildrop)
	}
	s.m.log.Warn().Str("id", s.msg.Ref).Int64("listed", s.msg.Size).Int64("delivered", actual).Msg("message size differs from the listed size (after LF to CRLF): the client's RETR is not completed; later listings show the delivered size")
}
