// Package store is the reference implementation of popgate's REST store
// contract, version 1 (docs/rest-store.md): it serves a folder of Maildirs
// over HTTP. Users and their bcrypt password hashes come from a users file.
//
// Layout: Root/<user>/{cur,new,tmp} is user's Maildir. A message's contract
// id is its Maildir unique name (the file name before ":2,"); its uidl is the
// same name when that is 1–70 printable octets, else left out (popgate then
// derives one). Files may hold LF or CRLF line endings: the store serves
// CRLF and lists the CRLF size (Dovecot's ",W=<size>" in the name when
// present, else counted once and remembered). A message with the Maildir
// flag T (trashed) is hidden from the list, as IMAP's \Deleted is. Commit
// removes deleted files and adds the S flag to seen ones.
package store

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/crypto/bcrypt"
)

// Defaults of Options.
const (
	DefaultPageSize    = 500
	DefaultIdleTimeout = 30 * time.Minute
	maxRequestBody     = 16 << 20
)

// Options configure a Store.
type Options struct {
	Root        string        // folder holding one Maildir per user
	UsersFile   string        // lines "user:bcrypt-hash"; '#' starts a comment
	PageSize    int           // messages per list page; default DefaultPageSize
	IdleTimeout time.Duration // a session unused this long is dropped; default DefaultIdleTimeout
}

// Store is an http.Handler serving the contract under its root path: mount
// it with http.StripPrefix when the url has a path.
type Store struct {
	opt Options

	mu       sync.Mutex
	users    map[string][]byte // user → bcrypt hash
	sessions map[string]*session
	sizes    map[string]int64 // maildir \x00 id → CRLF size
}

type session struct {
	user     string
	dir      string
	used     time.Time
	list     []entry // taken at the first GET /messages
	state    string
	listed   bool
	paths    map[string]string // id → file (relative to dir) at the last listing
	commits  map[string][]byte // Idempotency-Key → response body
	commitMu sync.Mutex
}

type entry struct {
	id   string
	path string // cur/… or new/…, relative to dir
	size int64
}

// New loads the users file and returns the store.
func New(opt Options) (*Store, error) {
	if opt.PageSize <= 0 {
		opt.PageSize = DefaultPageSize
	}
	if opt.IdleTimeout <= 0 {
		opt.IdleTimeout = DefaultIdleTimeout
	}
	users, err := LoadUsers(opt.UsersFile)
	if err != nil {
		return nil, err
	}
	return &Store{opt: opt, users: users, sessions: map[string]*session{}, sizes: map[string]int64{}}, nil
}

// LoadUsers reads a users file: "user:hash" per line, hash a bcrypt hash.
func LoadUsers(path string) (map[string][]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	users := map[string][]byte{}
	sc := bufio.NewScanner(f)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		u, h, ok := strings.Cut(line, ":")
		if !ok || u == "" || strings.ContainsAny(u, "/\\") || u == "." || u == ".." {
			return nil, fmt.Errorf("%s:%d: want user:bcrypt-hash", path, n)
		}
		if _, err := bcrypt.Cost([]byte(h)); err != nil {
			return nil, fmt.Errorf("%s:%d: %v", path, n, err)
		}
		users[u] = []byte(h)
	}
	return users, sc.Err()
}

// ServeHTTP implements the contract.
func (s *Store) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	p := r.URL.EscapedPath()
	switch {
	case p == "/sessions" && r.Method == http.MethodPost:
		s.createSession(w, r)
	case p == "/sessions/current" && r.Method == http.MethodDelete:
		if _, tok, ok := s.auth(w, r); ok {
			s.mu.Lock()
			delete(s.sessions, tok)
			s.mu.Unlock()
			w.WriteHeader(http.StatusNoContent)
		}
	case p == "/messages" && r.Method == http.MethodGet:
		if ss, _, ok := s.auth(w, r); ok {
			s.list(w, r, ss)
		}
	case strings.HasPrefix(p, "/messages/") && r.Method == http.MethodGet:
		if ss, _, ok := s.auth(w, r); ok {
			s.message(w, r, ss, strings.TrimPrefix(r.URL.Path, "/messages/"))
		}
	case p == "/commit" && r.Method == http.MethodPost:
		if ss, _, ok := s.auth(w, r); ok {
			s.commit(w, r, ss)
		}
	default:
		Problem(w, http.StatusNotFound, "no such endpoint")
	}
}

// Problem writes an RFC 9457 problem details answer.
func Problem(w http.ResponseWriter, status int, detail string) {
	w.Header().Set("Content-Type", "application/problem+json")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(map[string]any{"title": http.StatusText(status), "status": status, "detail": detail})
}

func (s *Store) auth(w http.ResponseWriter, r *http.Request) (*session, string, bool) {
	tok, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	now := time.Now()
	s.mu.Lock()
	defer s.mu.Unlock()
	for k, ss := range s.sessions { // expire idle sessions
		if now.Sub(ss.used) > s.opt.IdleTimeout {
			delete(s.sessions, k)
		}
	}
	ss := s.sessions[tok]
	if !ok || ss == nil {
		w.Header().Set("WWW-Authenticate", `Bearer error="invalid_token"`)
		Problem(w, http.StatusUnauthorized, "no such session")
		return nil, "", false
	}
	ss.used = now
	return ss, tok, true
}

func (s *Store) createSession(w http.ResponseWriter, r *http.Request) {
	var req struct {
		User     string `json:"user"`
		Password string `json:"password"`
	}
	if err := json.NewDecoder(io.LimitReader(r.Body, 64<<10)).Decode(&req); err != nil {
		Problem(w, http.StatusBadRequest, "body is not a session request")
		return
	}
	s.mu.Lock()
	hash, known := s.users[req.User]
	s.mu.Unlock()
	if !known {
		// The same work as for a known user, so that timing does not tell.
		hash = dummyHash
	}
	if bcrypt.CompareHashAndPassword(hash, []byte(req.Password)) != nil || !known {
		Problem(w, http.StatusUnauthorized, "authentication failed")
		return
	}
	dir := filepath.Join(s.opt.Root, req.User)
	if st, err := os.Stat(filepath.Join(dir, "cur")); err != nil || !st.IsDir() {
		Problem(w, http.StatusServiceUnavailable, "maildrop not available")
		return
	}
	b := make([]byte, 32)
	rand.Read(b)
	tok := base64.RawURLEncoding.EncodeToString(b)
	s.mu.Lock()
	s.sessions[tok] = &session{user: req.User, dir: dir, used: time.Now(), commits: map[string][]byte{}}
	s.mu.Unlock()
	writeJSON(w, http.StatusCreated, map[string]string{"session": tok, "maildrop": req.User})
}

var dummyHash, _ = bcrypt.GenerateFromPassword([]byte("dummy password"), bcrypt.MinCost)

func writeJSON(w http.ResponseWriter, status int, v any) {
	b, _ := json.Marshal(v)
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Content-Length", strconv.Itoa(len(b)))
	w.WriteHeader(status)
	w.Write(b)
}

// scan lists the maildrop: names and paths in arrival order, and the
// state, a digest of every listed file name. Maildir message files are
// never rewritten (a flag change is a rename), so the names are the
// listing: no message is opened or even stat'ed.
func scan(dir string) ([]entry, string, error) {
	var es []entry
	for _, sub := range []string{"new", "cur"} {
		des, err := os.ReadDir(filepath.Join(dir, sub))
		if err != nil {
			return nil, "", err
		}
		for _, de := range des {
			name := de.Name()
			if strings.HasPrefix(name, ".") || de.IsDir() {
				continue
			}
			id, flags, _ := strings.Cut(name, ":2,")
			if sub == "cur" && strings.Contains(flags, "T") {
				continue // trashed: hidden like IMAP \Deleted
			}
			es = append(es, entry{id: id, path: sub + "/" + name})
		}
	}
	// Maildir unique names start with the delivery time: name order is
	// arrival order.
	sort.Slice(es, func(a, b int) bool { return es[a].id < es[b].id })
	h := sha256.New()
	for _, e := range es {
		io.WriteString(h, e.path)
		h.Write([]byte{0})
	}
	return es, "v1-" + hex.EncodeToString(h.Sum(nil))[:32], nil
}

// crlfSize returns the octets of message id's file served with CRLF line
// endings: Dovecot's ",W=<size>" in the name when there, else counted once
// and remembered (message files never change).
func (s *Store) crlfSize(dir, id, path string) (int64, error) {
	if i := strings.Index(id, ",W="); i >= 0 {
		v := id[i+3:]
		if j := strings.IndexAny(v, ",:"); j >= 0 {
			v = v[:j]
		}
		if n, err := strconv.ParseInt(v, 10, 64); err == nil {
			return n, nil
		}
	}
	key := dir + "\x00" + id
	s.mu.Lock()
	n, ok := s.sizes[key]
	s.mu.Unlock()
	if ok {
		return n, nil
	}
	f, err := os.Open(path)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	cw := &countWriter{}
	if _, err := io.Copy(&crlfWriter{w: cw}, f); err != nil {
		return 0, err
	}
	s.mu.Lock()
	s.sizes[key] = cw.n
	s.mu.Unlock()
	return cw.n, nil
}

type countWriter struct{ n int64 }

func (c *countWriter) Write(p []byte) (int, error) { c.n += int64(len(p)); return len(p), nil }

// crlfWriter writes what it is given with every bare LF turned into CRLF.
type crlfWriter struct {
	w      io.Writer
	lastCR bool
}

func (c *crlfWriter) Write(p []byte) (int, error) {
	n := len(p)
	for len(p) > 0 {
		i := bytes.IndexByte(p, '\n')
		if i < 0 {
			c.lastCR = p[len(p)-1] == '\r'
			_, err := c.w.Write(p)
			return n, err
		}
		cr := (i > 0 && p[i-1] == '\r') || (i == 0 && c.lastCR)
		if cr {
			if _, err := c.w.Write(p[:i+1]); err != nil {
				return 0, err
			}
		} else {
			if _, err := c.w.Write(p[:i]); err != nil {
				return 0, err
			}
			if _, err := c.w.Write([]byte("\r\n")); err != nil {
				return 0, err
			}
		}
		c.lastCR = false
		p = p[i+1:]
	}
	return n, nil
}

func (s *Store) list(w http.ResponseWriter, r *http.Request, ss *session) {
	cursor := r.URL.Query().Get("cursor")
	ss.commitMu.Lock()
	defer ss.commitMu.Unlock()
	if cursor == "" {
		es, state, err := scan(ss.dir)
		if err != nil {
			Problem(w, http.StatusServiceUnavailable, "maildrop not readable")
			return
		}
		etag := `"` + state + `"`
		ss.paths = make(map[string]string, len(es))
		for _, e := range es {
			ss.paths[e.id] = e.path
		}
		if inm := r.Header.Get("If-None-Match"); inm != "" && inm == etag {
			ss.list, ss.state, ss.listed = nil, state, false
			w.Header().Set("ETag", etag)
			w.WriteHeader(http.StatusNotModified)
			return
		}
		for i := range es {
			n, err := s.crlfSize(ss.dir, es[i].id, filepath.Join(ss.dir, es[i].path))
			if err != nil {
				Problem(w, http.StatusServiceUnavailable, "maildrop changed while listing, try again")
				return
			}
			es[i].size = n
		}
		ss.list, ss.state, ss.listed = es, state, true
		w.Header().Set("ETag", etag)
	} else if !ss.listed {
		Problem(w, http.StatusBadRequest, "cursor before a first page")
		return
	}
	off := 0
	if cursor != "" {
		var err error
		off, err = strconv.Atoi(cursor)
		if err != nil || off < 0 || off > len(ss.list) {
			Problem(w, http.StatusBadRequest, "bad cursor")
			return
		}
	}
	end := min(off+s.opt.PageSize, len(ss.list))
	type msg struct {
		ID   string `json:"id"`
		Size int64  `json:"size"`
		UIDL string `json:"uidl,omitempty"`
	}
	page := struct {
		Messages []msg   `json:"messages"`
		Next     *string `json:"next"`
		State    string  `json:"state"`
	}{Messages: []msg{}, State: ss.state}
	for _, e := range ss.list[off:end] {
		m := msg{ID: e.id, Size: e.size}
		if validUIDL(e.id) {
			m.UIDL = e.id
		}
		page.Messages = append(page.Messages, m)
	}
	if end < len(ss.list) {
		n := strconv.Itoa(end)
		page.Next = &n
	}
	writeJSON(w, http.StatusOK, page)
}

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

// lookup returns the current file of message id ("" if gone): where the
// last listing saw it when it is still there (no directory scan per
// message), else wherever it went.
func (ss *session) lookup(id string) string {
	ss.commitMu.Lock()
	defer ss.commitMu.Unlock()
	return ss.lookupLocked(id)
}

func (ss *session) lookupLocked(id string) string {
	if rel, ok := ss.paths[id]; ok {
		p := filepath.Join(ss.dir, rel)
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	return find(ss.dir, id)
}

// find locates the current file of message id in the maildrop ("" if gone).
func find(dir, id string) string {
	if id == "" || strings.ContainsAny(id, "/\\\x00") || id == "." || id == ".." {
		return ""
	}
	if _, err := os.Stat(filepath.Join(dir, "new", id)); err == nil {
		return filepath.Join(dir, "new", id)
	}
	m, _ := filepath.Glob(filepath.Join(dir, "cur", globEscape(id)+":2,*"))
	for _, p := range m {
		if _, flags, _ := strings.Cut(filepath.Base(p), ":2,"); !strings.Contains(flags, "T") {
			return p
		}
	}
	return ""
}

func globEscape(s string) string {
	var b strings.Builder
	for _, r := range s {
		if strings.ContainsRune(`*?[\`, r) {
			b.WriteByte('\\')
		}
		b.WriteRune(r)
	}
	return b.String()
}

func (s *Store) message(w http.ResponseWriter, r *http.Request, ss *session, id string) {
	lines := int64(-1)
	if v := r.URL.Query().Get("lines"); v != "" {
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil || n < 0 {
			Problem(w, http.StatusBadRequest, "bad lines")
			return
		}
		lines = n
	}
	p := ss.lookup(id)
	f, err := os.Open(p)
	if p == "" || err != nil {
		Problem(w, http.StatusNotFound, "no such message")
		return
	}
	defer f.Close()
	w.Header().Set("Content-Type", "message/rfc822")
	if lines < 0 {
		if n, err := s.crlfSize(ss.dir, id, p); err == nil {
			w.Header().Set("Content-Length", strconv.FormatInt(n, 10))
		}
		w.WriteHeader(http.StatusOK)
		io.Copy(&crlfWriter{w: w}, f)
		return
	}
	// Header, the empty line, then lines body lines.
	w.WriteHeader(http.StatusOK)
	cw := &crlfWriter{w: w}
	br := bufio.NewReader(f)
	inBody := false
	for {
		line, err := br.ReadSlice('\n')
		if len(line) > 0 {
			if inBody {
				if lines == 0 {
					return
				}
				lines--
			}
			cw.Write(line)
			if !inBody && (string(line) == "\n" || string(line) == "\r\n") {
				inBody = true
			}
		}
		if err == bufio.ErrBufferFull {
			// A long line: the rest of it is written by the next round
			// without counting it as a line.
			for err == bufio.ErrBufferFull {
				line, err = br.ReadSlice('\n')
				cw.Write(line)
			}
		}
		if err != nil {
			return
		}
	}
}

func (s *Store) commit(w http.ResponseWriter, r *http.Request, ss *session) {
	key := r.Header.Get("Idempotency-Key")
	if key == "" {
		Problem(w, http.StatusBadRequest, "Idempotency-Key header is required")
		return
	}
	ss.commitMu.Lock()
	defer ss.commitMu.Unlock()
	if b, ok := ss.commits[key]; ok { // a retry: the same answer, no second effect
		w.Header().Set("Content-Type", "application/json")
		w.Write(b)
		return
	}
	var req struct {
		Delete []string `json:"delete"`
		Seen   []string `json:"seen"`
	}
	if err := json.NewDecoder(io.LimitReader(r.Body, maxRequestBody)).Decode(&req); err != nil {
		Problem(w, http.StatusBadRequest, "body is not a commit request")
		return
	}
	res := struct {
		Deleted  []string `json:"deleted"`
		NotFound []string `json:"not_found"`
	}{Deleted: []string{}, NotFound: []string{}}
	del := map[string]bool{}
	var errs []error
	for _, id := range req.Delete {
		del[id] = true
		p := ss.lookupLocked(id)
		if p == "" {
			res.NotFound = append(res.NotFound, id)
			continue
		}
		if err := os.Remove(p); err != nil {
			if errors.Is(err, os.ErrNotExist) {
				res.NotFound = append(res.NotFound, id)
				continue
			}
			errs = append(errs, err)
			continue
		}
		res.Deleted = append(res.Deleted, id)
	}
	for _, id := range req.Seen {
		if del[id] {
			continue
		}
		if p := ss.lookupLocked(id); p != "" {
			markSeen(ss.dir, p)
		}
	}
	if len(errs) > 0 {
		Problem(w, http.StatusInternalServerError, "some messages could not be removed")
		return
	}
	b, _ := json.Marshal(res)
	ss.commits[key] = b
	w.Header().Set("Content-Type", "application/json")
	w.Write(b)
}

// markSeen moves a message to cur/ with the S flag added (Maildir flags stay
// in ASCII order).
func markSeen(dir, p string) {
	name := filepath.Base(p)
	id, flags, _ := strings.Cut(name, ":2,")
	if strings.Contains(flags, "S") {
		return
	}
	fs := []byte(flags + "S")
	sort.Slice(fs, func(a, b int) bool { return fs[a] < fs[b] })
	os.Rename(p, filepath.Join(dir, "cur", id+":2,"+string(fs)))
}
