package jmap

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"strconv"
	"strings"
	"time"

	"github.com/rs/zerolog"

	"github.com/popgate/popgate/backends"
)

// Mailbox is one POP3 session on a JMAP account. Its methods are called
// from one goroutine (backends.Mailbox).
type Mailbox struct {
	b    *Backend
	cred credential
	user string
	sess *session
	log  zerolog.Logger

	snap   *snapEntry
	toSee  []string // ids retrieved completely (mark_seen)
	reader *msgReader
	closed bool
}

var (
	_ backends.Mailbox            = (*Mailbox)(nil)
	_ backends.MaildropIdentifier = (*Mailbox)(nil)
)

// MaildropID is the lock key: the backend name (or its URL) and the user.
func (m *Mailbox) MaildropID() string {
	if m.b.cfg.Name != "" {
		return m.b.cfg.Name + "/" + m.user
	}
	return m.b.cfg.URL + "/" + m.user
}

// cacheKey: one account's listing of the configured mailbox.
func (m *Mailbox) cacheKey() string { return m.sess.accountID + "\x00" + m.user }

// errRelist: the mailbox changed while it was listed; list again.
var errRelist = errors.New("mailbox changed during listing")

// mailboxInfo is what identifies the configured mailbox.
type mailboxInfo struct {
	ID       string  `json:"id"`
	Name     string  `json:"name"`
	Role     *string `json:"role"`
	ParentID *string `json:"parentId"`
}

// Snapshot lists the mailbox: a cached listing is reused when the
// account's Email state is still the one it was listed at (see
// unchanged); otherwise Email/query sorted by
// receivedAt (then id where the server can) in pages chained into Email/get
// (id, blobId, size) by back-reference (RFC 8620 §3.7). Messages with the
// policy-flag keyword are left out by the query filter (RFC 8621 §4.4.1
// notKeyword). Sizes are the blobs' octets (RFC 8621 §4.1.1 size), which
// is what Open delivers.
func (m *Mailbox) Snapshot(ctx context.Context) ([]backends.Message, error) {
	key := m.cacheKey()
	mailboxID := ""
	if e := m.b.cache.get(key); e != nil {
		same, err := m.unchanged(ctx, e)
		if err != nil {
			return nil, classify(err)
		}
		if same {
			m.b.cache.hits.Add(1)
			m.snap = e
			m.log.Debug().Int("messages", e.len()).Msg("snapshot from cache")
			return e.messages(m.b), nil
		}
		mailboxID = e.mailboxID
	}
	var e *snapEntry
	var err error
	for attempt := 0; attempt < 4; attempt++ {
		if mailboxID == "" {
			if mailboxID, err = m.findMailbox(ctx); err != nil {
				return nil, classify(err)
			}
		}
		e, err = m.list(ctx, mailboxID)
		if errors.Is(err, errWrongMailbox) {
			mailboxID = ""
			continue
		}
		if !errors.Is(err, errRelist) {
			break
		}
	}
	if err != nil {
		m.b.cache.remove(key)
		return nil, classify(err)
	}
	m.b.cache.put(key, e)
	m.snap = e
	return e.messages(m.b), nil
}

// unchanged tells whether nothing changed since e was listed: the
// account's Email state (RFC 8620 §5.1: it changes whenever any Email
// does) is still e's, asked with an Email/get of no ids, and e's mailbox
// is still the configured one. On Cyrus 3.6 this costs a third of an
// Email/changes; a state that moved means a fresh listing.
func (m *Mailbox) unchanged(ctx context.Context, e *snapEntry) (bool, error) {
	state, mailboxOK := "", false
	err := m.api(ctx, "changes", true, []call{
		{"Email/get", map[string]any{"accountId": m.sess.accountID, "ids": []string{}, "properties": []string{"id"}}, "s"},
		{"Mailbox/get", map[string]any{"accountId": m.sess.accountID, "ids": []string{e.mailboxID}, "properties": []string{"id", "name", "role", "parentId"}}, "m"},
	}, func(name string, dec *json.Decoder) error {
		switch name {
		case "Email/get":
			var r struct {
				State string `json:"state"`
			}
			if err := dec.Decode(&r); err != nil {
				return malformed(err)
			}
			state = r.State
			return nil
		case "Mailbox/get":
			var r struct {
				List []mailboxInfo `json:"list"`
			}
			if err := dec.Decode(&r); err != nil {
				return malformed(err)
			}
			mailboxOK = len(r.List) == 1 && m.matches(r.List[0], nil)
			return nil
		}
		return skipValue(dec)
	})
	return err == nil && state != "" && state == e.state && mailboxOK, err
}

// matches reports whether mb is the configured mailbox. For a name, the
// full path "Parent/Child" is checked when all mailboxes are known (byID),
// else the last part of it and that it has a parent exactly when the path
// has one.
func (m *Mailbox) matches(mb mailboxInfo, byID map[string]mailboxInfo) bool {
	if r := m.b.cfg.MailboxRole; r != "" {
		return mb.Role != nil && strings.EqualFold(*mb.Role, r)
	}
	want := m.b.cfg.Mailbox
	if byID == nil {
		last := want[strings.LastIndexByte(want, '/')+1:]
		return mb.Name == last && (mb.ParentID != nil) == strings.Contains(want, "/")
	}
	path := mb.Name
	for p, depth := mb.ParentID, 0; p != nil && depth < 64; depth++ {
		parent, ok := byID[*p]
		if !ok {
			return false
		}
		path = parent.Name + "/" + path
		p = parent.ParentID
	}
	return path == want || (strings.EqualFold(want, "INBOX") && mb.Role != nil && *mb.Role == "inbox")
}

// errWrongMailbox: a cached mailbox id no longer names the configured
// mailbox.
var errWrongMailbox = errors.New("mailbox id no longer the configured mailbox")

// mailboxes lists every mailbox of the account (Mailbox/get with ids
// null, RFC 8621 §2.1: accounts hold few); op names the call in errors.
func (m *Mailbox) mailboxes(ctx context.Context, op string) ([]mailboxInfo, error) {
	var all []mailboxInfo
	err := m.api(ctx, op, true, []call{
		{"Mailbox/get", map[string]any{"accountId": m.sess.accountID, "ids": nil, "properties": []string{"id", "name", "role", "parentId"}}, "m"},
	}, func(name string, dec *json.Decoder) error {
		var r struct {
			List []mailboxInfo `json:"list"`
		}
		if err := dec.Decode(&r); err != nil {
			return malformed(err)
		}
		all = r.List
		return nil
	})
	return all, err
}

// findMailbox returns the id of the configured mailbox (Mailbox/get of all
// mailboxes, RFC 8621 §2.1: accounts hold few).
func (m *Mailbox) findMailbox(ctx context.Context) (string, error) {
	all, err := m.mailboxes(ctx, "mailbox")
	if err != nil {
		return "", err
	}
	byID := make(map[string]mailboxInfo, len(all))
	for _, mb := range all {
		byID[mb.ID] = mb
	}
	for _, mb := range all {
		if m.matches(mb, byID) {
			return mb.ID, nil
		}
	}
	if r := m.b.cfg.MailboxRole; r != "" {
		return "", fmt.Errorf("jmap: no mailbox with role %q", r)
	}
	return "", fmt.Errorf("jmap: no mailbox named %q", m.b.cfg.Mailbox)
}

// page is one Email/query + Email/get pair of a listing.
type page struct {
	position   int // asked
	gotPos     int
	queryState string
	total      int
	ids        []string
	items      map[string]emailItem
	getState   string
}

type emailItem struct {
	BlobID   string `json:"blobId"`
	Size     int64  `json:"size"`
	Keywords struct {
		Seen bool `json:"$seen"`
	} `json:"keywords"`
}

// list builds the listing of mailboxID page by page. All pages must share
// one queryState and one Email state, else errRelist.
func (m *Mailbox) list(ctx context.Context, mailboxID string) (*snapEntry, error) {
	filter := map[string]any{"inMailbox": mailboxID}
	if m.b.cfg.Delete.Policy == backends.PolicyFlag {
		filter["notKeyword"] = m.b.cfg.Delete.Keyword
	}
	sort := []map[string]any{{"property": "receivedAt", "isAscending": true}}
	if m.sess.sortByID {
		sort = append(sort, map[string]any{"property": "id", "isAscending": true})
	}
	limit := m.sess.maxGet
	if m.b.pageSize > 0 {
		limit = min(limit, m.b.pageSize)
	}
	var b entryBuilder
	queryState, getState := "", ""
	position, total := 0, -1
	verify := true
	for total < 0 || position < total {
		npages := 1
		if total >= 0 {
			npages = min((m.sess.maxCalls-1)/2, 8, (total-position+limit-1)/limit)
			npages = max(npages, 1)
		}
		var calls []call
		if verify {
			calls = append(calls, call{"Mailbox/get", map[string]any{"accountId": m.sess.accountID, "ids": []string{mailboxID}, "properties": []string{"id", "name", "role", "parentId"}}, "m"})
		}
		pages := make([]*page, npages)
		for k := range pages {
			pages[k] = &page{position: position + k*limit, gotPos: -1}
			q := "q" + strconv.Itoa(k)
			calls = append(calls,
				call{"Email/query", map[string]any{"accountId": m.sess.accountID, "filter": filter, "sort": sort,
					"position": pages[k].position, "limit": limit, "calculateTotal": true}, q},
				call{"Email/get", map[string]any{"accountId": m.sess.accountID,
					"#ids":       map[string]any{"resultOf": q, "name": "Email/query", "path": "/ids"},
					"properties": []string{"id", "blobId", "size", "keywords"}}, "g" + strconv.Itoa(k)})
		}
		qi, gi := 0, 0
		mailboxOK := !verify
		err := m.api(ctx, "list", true, calls, func(name string, dec *json.Decoder) error {
			switch name {
			case "Mailbox/get":
				var r struct {
					List []mailboxInfo `json:"list"`
				}
				if err := dec.Decode(&r); err != nil {
					return malformed(err)
				}
				mailboxOK = len(r.List) == 1 && m.matches(r.List[0], nil)
				return nil
			case "Email/query":
				if qi >= len(pages) {
					return malformed(errors.New("more Email/query responses than calls"))
				}
				p := pages[qi]
				qi++
				return decodeQuery(dec, p)
			case "Email/get":
				if gi >= len(pages) {
					return malformed(errors.New("more Email/get responses than calls"))
				}
				p := pages[gi]
				gi++
				return decodeGet(dec, p)
			}
			return skipValue(dec)
		})
		if err != nil {
			return nil, err
		}
		if !mailboxOK {
			return nil, errWrongMailbox
		}
		verify = false
		if qi != len(pages) || gi != len(pages) {
			return nil, malformed(errors.New("missing method responses"))
		}
		for _, p := range pages {
			if queryState == "" {
				queryState, getState, total = p.queryState, p.getState, p.total
			}
			if p.queryState != queryState || p.getState != getState || p.total != total {
				return nil, errRelist
			}
			if p.gotPos != p.position || p.position != position {
				break // the server capped the limit: continue from here
			}
			for _, id := range p.ids {
				it, ok := p.items[id]
				if !ok {
					continue // destroyed between query and get: gone
				}
				if it.Size < 0 || it.Size > math.MaxUint32 || it.BlobID == "" || strings.ContainsAny(it.BlobID, " +") || strings.ContainsAny(id, " +") || id == "" {
					return nil, fmt.Errorf("jmap list: email %q: bad blobId or size", id)
				}
				b.add(id, it.BlobID, uint32(it.Size), it.Keywords.Seen)
			}
			position += len(p.ids)
			if len(p.ids) < limit && position < total {
				if len(p.ids) == 0 {
					return nil, fmt.Errorf("jmap list: empty page at position %d of %d", position, total)
				}
				limit = len(p.ids) // the server's cap (RFC 8620 §5.5)
				break
			}
		}
		if total < 0 {
			return nil, malformed(errors.New("no total in the Email/query response"))
		}
	}
	if getState == "" && total > 0 {
		return nil, malformed(errors.New("no state in the Email/get response"))
	}
	if total == 0 {
		// Nothing to get: Email/get still reported the state.
		getState = firstNonEmpty(getState, queryState)
	}
	return b.entry(mailboxID, getState), nil
}

func firstNonEmpty(a, b string) string {
	if a != "" {
		return a
	}
	return b
}

// decodeQuery reads an Email/query response (RFC 8620 §5.5).
func decodeQuery(dec *json.Decoder, p *page) error {
	return eachKey(dec, func(key string) error {
		switch key {
		case "queryState":
			return dec.Decode(&p.queryState)
		case "position":
			return dec.Decode(&p.gotPos)
		case "total":
			return dec.Decode(&p.total)
		case "ids":
			return eachElem(dec, func() error {
				var id string
				if err := dec.Decode(&id); err != nil {
					return malformed(err)
				}
				p.ids = append(p.ids, id)
				return nil
			})
		}
		return skipValue(dec)
	})
}

// decodeGet reads an Email/get response (RFC 8620 §5.1) element by
// element; the list may come in any order.
func decodeGet(dec *json.Decoder, p *page) error {
	p.items = make(map[string]emailItem, len(p.ids))
	return eachKey(dec, func(key string) error {
		switch key {
		case "state":
			return dec.Decode(&p.getState)
		case "list":
			return eachElem(dec, func() error {
				var it struct {
					ID string `json:"id"`
					emailItem
				}
				if err := dec.Decode(&it); err != nil {
					return malformed(err)
				}
				p.items[it.ID] = it.emailItem
				return nil
			})
		}
		return skipValue(dec)
	})
}

// splitRef returns the id and blobId of a message reference.
func splitRef(ref string) (id, blobID string, err error) {
	ref = strings.TrimSuffix(ref, correctedMark)
	i := strings.IndexAny(ref, " +")
	if i <= 0 || i == len(ref)-1 {
		return "", "", fmt.Errorf("jmap: bad message reference %q", ref)
	}
	id, blobID = ref[:i], ref[i+1:]
	if strings.ContainsAny(blobID, " +") {
		return "", "", fmt.Errorf("jmap: bad message reference %q", ref)
	}
	return id, blobID, nil
}

// stillHere checks with Email/get that the Email is still in the
// mailbox: Cyrus keeps serving a destroyed message's blob for a while
// (delayed expunge), so the download alone does not tell. (Email/get of
// one id is as cheap as a JMAP request gets on Cyrus 3.6; Email/changes
// costs about three times as much.)
func (m *Mailbox) stillHere(ctx context.Context, id string) (bool, error) {
	here := false
	err := m.api(ctx, "check", true, []call{
		{"Email/get", map[string]any{"accountId": m.sess.accountID, "ids": []string{id}, "properties": []string{"mailboxIds"}}, "g"},
	}, func(name string, dec *json.Decoder) error {
		var r struct {
			List []struct {
				ID         string          `json:"id"`
				MailboxIDs map[string]bool `json:"mailboxIds"`
			} `json:"list"`
		}
		if err := dec.Decode(&r); err != nil {
			return malformed(err)
		}
		for _, e := range r.List {
			if e.ID == id && e.MailboxIDs[m.snap.mailboxID] {
				here = true
			}
		}
		return nil
	})
	return here, err
}

// Open streams the message from the download URL (RFC 8620 §6.2), or its
// header and first bodyLines lines (TOP stops reading there and closes the
// body). A check sent alongside the download (stillHere) tells whether
// the Email is still in the mailbox: if not, ErrMessageGone. Bare LF line endings in
// the blob are delivered as CRLF; see msgReader for how LIST stays exact.
// The reader must be closed before the next call; ctx must live while it
// is read.
func (m *Mailbox) Open(ctx context.Context, msg backends.Message, bodyLines int) (io.ReadCloser, error) {
	if m.reader != nil {
		m.reader.Close()
		m.reader = nil
	}
	if m.snap == nil {
		return nil, errors.New("jmap: Open before Snapshot")
	}
	id, blobID, err := splitRef(msg.Ref)
	if err != nil {
		return nil, err
	}
	type result struct {
		here bool
		err  error
	}
	check := make(chan result, 1)
	cctx, ccancel := context.WithCancel(ctx)
	defer ccancel()
	go func() {
		here, err := m.stillHere(cctx, id)
		check <- result{here, err}
	}()
	r, derr := m.download(ctx, blobID, msg, bodyLines)
	c := <-check
	if c.err == nil && !c.here {
		if r != nil {
			r.Close()
		}
		return nil, backends.ErrMessageGone.Wrap(fmt.Errorf("jmap: email %s no longer in the mailbox", id))
	}
	if derr != nil {
		return nil, derr
	}
	if c.err != nil {
		r.Close()
		return nil, classify(c.err)
	}
	if err := r.prefetch(); err != nil {
		r.Close()
		return nil, err
	}
	if bodyLines < 0 && m.b.markSeen && !refSeen(msg.Ref) {
		r.onComplete = func() { m.toSee = append(m.toSee, id) }
	}
	m.reader = r
	return r, nil
}

// expandDownload fills the download URL template (RFC 8620 §2: accountId,
// blobId, type, name; RFC 6570 level 1, values percent-encoded).
func (m *Mailbox) expandDownload(blobID string) string {
	return strings.NewReplacer(
		"{accountId}", escape(m.sess.accountID),
		"{blobId}", escape(blobID),
		"{type}", escape("message/rfc822"),
		"{name}", "msg.eml",
	).Replace(m.sess.downloadURL)
}

// escape percent-encodes all but RFC 3986 unreserved characters (RFC 6570
// §3.2.2 simple string expansion).
func escape(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		if 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '-' || c == '.' || c == '_' || c == '~' {
			b.WriteByte(c)
		} else {
			fmt.Fprintf(&b, "%%%02X", c)
		}
	}
	return b.String()
}

// ptrEscape escapes a JSON Pointer reference token (RFC 6901 §3), for
// patch paths (RFC 8620 §5.3).
func ptrEscape(s string) string {
	return strings.NewReplacer("~", "~0", "/", "~1").Replace(s)
}

// seenKey is the mark_seen part of an update (RFC 8621 §4.1.1 $seen).
const seenKey = "keywords/$seen"

// Commit applies the policy to the deleted messages with Email/set (RFC
// 8621 §4.6), chunked by maxObjectsInSet, with the session's $seen in the
// same requests:
//   - expunge: an Email only in this mailbox is destroyed; one also in
//     other mailboxes loses this one (a mailboxIds patch), as IMAP's
//     UID EXPUNGE removes it from this mailbox only (an Email keeps at
//     least one mailbox, RFC 8621 §4.1.1). Which is which comes from an
//     Email/get, and the Email/set carries its state as ifInState, so a
//     change in between is noticed (and the pair retried).
//   - move: the mailboxIds patch swaps this mailbox for the folder
//     (created when missing).
//   - flag: the keyword is set.
//   - keep: nothing.
//
// An Email already gone is skipped. On the first failure nothing more is
// sent and an error (→ [SYS/TEMP]) is returned.
func (m *Mailbox) Commit(ctx context.Context, deleted []backends.Message) error {
	if m.reader != nil {
		m.reader.Close()
		m.reader = nil
	}
	if m.snap == nil {
		return errors.New("jmap: Commit before Snapshot")
	}
	ids := make([]string, 0, len(deleted))
	for _, d := range deleted {
		id, _, err := splitRef(d.Ref)
		if err != nil {
			return err
		}
		ids = append(ids, id)
	}
	if m.b.cfg.Delete.Policy == backends.PolicyKeep {
		ids = nil
	}
	err := m.commit(ctx, ids)
	if err != nil {
		m.b.cache.remove(m.cacheKey())
		return classify(err)
	}
	return nil
}

// commit tries the policy up to three times when the account changed
// between the Email/get and the Email/set (stateMismatch).
func (m *Mailbox) commit(ctx context.Context, ids []string) error {
	var err error
	for attempt := 0; attempt < 3; attempt++ {
		err = m.commitOnce(ctx, ids)
		var me *methodError
		if !errors.As(err, &me) || me.Type != "stateMismatch" {
			return err
		}
	}
	return err
}

// setOp is one Email's change: destroy, or a patch.
type setOp struct {
	id      string
	destroy bool
	patch   map[string]any
}

func (m *Mailbox) commitOnce(ctx context.Context, ids []string) error {
	mine := m.snap.mailboxID
	seen := map[string]bool{}
	for _, id := range m.toSee {
		seen[id] = true
	}
	var ops []setOp
	ifInState := ""
	dropped := map[string]bool{}
	switch m.b.cfg.Delete.Policy {
	case backends.PolicyExpunge:
		if len(ids) > 0 {
			where, state, err := m.mailboxesOf(ctx, ids)
			if err != nil {
				return err
			}
			ifInState = state
			for _, id := range ids {
				mbs, ok := where[id]
				if !ok || !mbs[mine] {
					dropped[id] = true // gone, or no longer in this mailbox
					continue
				}
				dropped[id] = true
				if len(mbs) == 1 {
					ops = append(ops, setOp{id: id, destroy: true})
					delete(seen, id)
				} else {
					p := map[string]any{"mailboxIds/" + mine: nil}
					if seen[id] {
						p[seenKey] = true
						delete(seen, id)
					}
					ops = append(ops, setOp{id: id, patch: p})
				}
			}
		}
	case backends.PolicyMove:
		if len(ids) > 0 {
			target, err := m.folder(ctx)
			if err != nil {
				return err
			}
			for _, id := range ids {
				p := map[string]any{"mailboxIds/" + mine: nil, "mailboxIds/" + target: true}
				if seen[id] {
					p[seenKey] = true
					delete(seen, id)
				}
				ops = append(ops, setOp{id: id, patch: p})
				dropped[id] = true
			}
		}
	case backends.PolicyFlag:
		for _, id := range ids {
			p := map[string]any{"keywords/" + ptrEscape(m.b.cfg.Delete.Keyword): true}
			if seen[id] {
				p[seenKey] = true
				delete(seen, id)
			}
			ops = append(ops, setOp{id: id, patch: p})
			dropped[id] = true
		}
	}
	for _, id := range m.toSee {
		if seen[id] {
			ops = append(ops, setOp{id: id, patch: map[string]any{seenKey: true}})
			delete(seen, id)
		}
	}
	if len(ops) == 0 {
		m.toSee = nil
		return nil
	}
	oldState, newState, err := m.set(ctx, ops, ifInState)
	if err != nil {
		return err
	}
	nowSeen := make(map[string]bool, len(m.toSee))
	for _, id := range m.toSee {
		nowSeen[id] = true
	}
	m.toSee = nil
	// Move the cached listing forward when the account's Email state was
	// the listing's own: nothing but this session changed it.
	key := m.cacheKey()
	if oldState != "" && oldState == m.snap.state && newState != "" {
		e := m.snap.without(dropped, nowSeen, newState)
		m.snap = e
		m.b.cache.put(key, e)
	} else {
		m.b.cache.remove(key)
	}
	return nil
}

// mailboxesOf returns each existing Email's mailboxIds and the Email
// state of the answer.
func (m *Mailbox) mailboxesOf(ctx context.Context, ids []string) (map[string]map[string]bool, string, error) {
	out := make(map[string]map[string]bool, len(ids))
	state := ""
	for start := 0; start < len(ids); start += m.sess.maxGet {
		chunk := ids[start:min(start+m.sess.maxGet, len(ids))]
		err := m.api(ctx, "commit-get", true, []call{
			{"Email/get", map[string]any{"accountId": m.sess.accountID, "ids": chunk, "properties": []string{"mailboxIds"}}, "g"},
		}, func(name string, dec *json.Decoder) error {
			var r struct {
				State string `json:"state"`
				List  []struct {
					ID         string          `json:"id"`
					MailboxIDs map[string]bool `json:"mailboxIds"`
				} `json:"list"`
			}
			if err := dec.Decode(&r); err != nil {
				return malformed(err)
			}
			if state != "" && r.State != state {
				return &methodError{Type: "stateMismatch", Description: "state moved between Email/get chunks"}
			}
			state = r.State
			for _, e := range r.List {
				set := map[string]bool{}
				for k, v := range e.MailboxIDs {
					if v {
						set[k] = true
					}
				}
				out[e.ID] = set
			}
			return nil
		})
		if err != nil {
			return nil, "", err
		}
	}
	return out, state, nil
}

// folder returns the id of the move target: role:NAME or a mailbox name
// (created at the top level when missing, RFC 8621 §2.5).
func (m *Mailbox) folder(ctx context.Context) (string, error) {
	f := m.b.cfg.Delete.Folder
	role, byRole := strings.CutPrefix(f, "role:")
	all, err := m.mailboxes(ctx, "folder")
	if err != nil {
		return "", err
	}
	for _, mb := range all {
		if byRole && mb.Role != nil && *mb.Role == role {
			return mb.ID, nil
		}
		if !byRole && mb.Name == f && mb.ParentID == nil {
			return mb.ID, nil
		}
	}
	if byRole {
		return "", fmt.Errorf("jmap: no mailbox with role %q for policy move", role)
	}
	created := ""
	err = m.api(ctx, "folder-create", false, []call{
		{"Mailbox/set", map[string]any{"accountId": m.sess.accountID, "create": map[string]any{"f": map[string]any{"name": f, "parentId": nil}}}, "s"},
	}, func(name string, dec *json.Decoder) error {
		var r struct {
			Created    map[string]struct{ ID string } `json:"created"`
			NotCreated map[string]setError            `json:"notCreated"`
		}
		if err := dec.Decode(&r); err != nil {
			return malformed(err)
		}
		if c, ok := r.Created["f"]; ok {
			created = c.ID
			return nil
		}
		return fmt.Errorf("jmap: creating mailbox %q: %v", f, r.NotCreated["f"])
	})
	if err == nil && created == "" {
		err = fmt.Errorf("jmap: creating mailbox %q: no id returned", f)
	}
	return created, err
}

// setError is a SetError (RFC 8620 §5.3).
type setError struct {
	Type        string `json:"type"`
	Description string `json:"description"`
}

func (e setError) String() string { return e.Type + " " + e.Description }

// set sends ops as Email/set calls of at most maxObjectsInSet objects,
// several calls per request up to maxCallsInRequest. It returns the state
// before the first call and after the last when the calls chained (each
// oldState the previous newState), else "". Email/set is not idempotent:
// it is never retried.
func (m *Mailbox) set(ctx context.Context, ops []setOp, ifInState string) (oldState, newState string, err error) {
	chained := true
	per := m.sess.maxSet
	for start := 0; start < len(ops); {
		var calls []call
		for len(calls) < m.sess.maxCalls && start < len(ops) {
			chunk := ops[start:min(start+per, len(ops))]
			start += len(chunk)
			args := map[string]any{"accountId": m.sess.accountID}
			upd := map[string]any{}
			var destroy []string
			for _, op := range chunk {
				if op.destroy {
					destroy = append(destroy, op.id)
				} else {
					upd[op.id] = op.patch
				}
			}
			if len(upd) > 0 {
				args["update"] = upd
			}
			if len(destroy) > 0 {
				args["destroy"] = destroy
			}
			if ifInState != "" && len(calls) == 0 && oldState == "" {
				args["ifInState"] = ifInState
			}
			calls = append(calls, call{"Email/set", args, "s" + strconv.Itoa(len(calls))})
		}
		err := m.api(ctx, "commit", false, calls, func(name string, dec *json.Decoder) error {
			var r struct {
				OldState     string              `json:"oldState"`
				NewState     string              `json:"newState"`
				NotUpdated   map[string]setError `json:"notUpdated"`
				NotDestroyed map[string]setError `json:"notDestroyed"`
			}
			if err := dec.Decode(&r); err != nil {
				return malformed(err)
			}
			if oldState == "" {
				oldState = r.OldState
			} else if r.OldState != newState {
				chained = false
			}
			newState = r.NewState
			var fails []string
			for id, e := range r.NotUpdated {
				if e.Type != "notFound" { // gone meanwhile: nothing to do
					fails = append(fails, id+": "+e.String())
				}
			}
			for id, e := range r.NotDestroyed {
				if e.Type != "notFound" {
					fails = append(fails, id+": "+e.String())
				}
			}
			if len(fails) > 0 {
				return fmt.Errorf("email/set refused %d of the changes: %s", len(fails), strings.Join(fails[:min(len(fails), 5)], "; "))
			}
			return nil
		})
		if err != nil {
			return "", "", err
		}
	}
	if !chained {
		return "", "", nil
	}
	return oldState, newState, nil
}

// Close sets $seen on the messages retrieved when no Commit did (the
// session ended without QUIT): mark_seen happens at the session's end,
// whatever the end. Nothing is deleted.
func (m *Mailbox) Close() error {
	if m.closed {
		return nil
	}
	m.closed = true
	if m.reader != nil {
		m.reader.Close()
		m.reader = nil
	}
	if len(m.toSee) > 0 && m.snap != nil {
		ctx, cancel := context.WithTimeout(context.Background(), min(m.b.cfg.CommandTimeout, 5*time.Second))
		defer cancel()
		if err := m.commitOnce(ctx, nil); err != nil {
			m.log.Warn().Err(err).Msg("upstream refused to set $seen")
		}
	}
	return nil
}
