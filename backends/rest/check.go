package rest

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"mime"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/popgate/popgate/tlsconf"
)

// CheckOptions configure Check.
type CheckOptions struct {
	URL      string
	User     string
	Password string
	// Destructive adds the commit checks: they delete a message of the
	// maildrop (use a test maildrop).
	Destructive bool
	Upstream    tlsconf.Upstream
	Timeout     time.Duration // per call; default 30s
	// MaxMessages bounds how many messages are downloaded to check sizes
	// and line endings; default 200.
	MaxMessages int
}

// checker runs the checks of `popgate check-store` (docs/rest-store.md):
// plain HTTP calls, so that it sees exactly what the store answers.
type checker struct {
	o      CheckOptions
	base   string
	client *http.Client
	out    io.Writer
	failed int
}

// Check runs the contract's checks against a live store, writing one line
// per check to out ("PASS", "FAIL" or "SKIP", its name, what was expected
// and what came back), and reports whether none failed. Secrets (the
// password, session tokens) are never printed.
func Check(ctx context.Context, o CheckOptions, out io.Writer) bool {
	if o.Timeout <= 0 {
		o.Timeout = DefaultCommandTimeout
	}
	if o.MaxMessages <= 0 {
		o.MaxMessages = 200
	}
	c := &checker{o: o, base: strings.TrimRight(o.URL, "/"), out: out}
	u, err := url.Parse(o.URL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		c.report(false, "url", "an http(s) url", fmt.Sprintf("%q", o.URL))
		return false
	}
	tr := &http.Transport{ForceAttemptHTTP2: true, DisableCompression: true, ResponseHeaderTimeout: o.Timeout}
	if u.Scheme == "https" {
		if tr.TLSClientConfig, err = o.Upstream.ClientConfig(u.Hostname()); err != nil {
			c.report(false, "tls", "a usable TLS configuration", err.Error())
			return false
		}
	}
	defer tr.CloseIdleConnections()
	c.client = &http.Client{Transport: tr, Timeout: 10 * o.Timeout,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	c.run(ctx)
	return c.failed == 0
}

func (c *checker) report(ok bool, name, want, got string) {
	word := "PASS"
	if !ok {
		word = "FAIL"
		c.failed++
	}
	fmt.Fprintf(c.out, "%s  %-16s want %s; got %s\n", word, name, want, got)
}

func (c *checker) skip(name, why string) {
	fmt.Fprintf(c.out, "SKIP  %-16s %s\n", name, why)
}

type answer struct {
	status int
	header http.Header
	body   []byte
	err    error
}

func (a answer) String() string {
	if a.err != nil {
		return "no answer: " + a.err.Error()
	}
	s := fmt.Sprintf("%d", a.status)
	if ct := a.header.Get("Content-Type"); ct != "" {
		s += " " + ct
	}
	return s
}

// send makes one call; the body is read up to limit octets.
func (c *checker) send(ctx context.Context, method, path, token string, hdr map[string]string, body any, limit int64) answer {
	var rd io.Reader
	if body != nil {
		b, _ := json.Marshal(body)
		rd = bytes.NewReader(b)
	}
	ctx, cancel := context.WithTimeout(ctx, c.o.Timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, method, c.base+path, rd)
	if err != nil {
		return answer{err: err}
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	res, err := c.client.Do(req)
	if err != nil {
		return answer{err: scrub(err)}
	}
	defer res.Body.Close()
	b, err := io.ReadAll(io.LimitReader(res.Body, limit))
	return answer{status: res.StatusCode, header: res.Header, body: b, err: err}
}

// isProblem reports whether a is an RFC 9457 problem details answer.
func isProblem(a answer) bool {
	mt, _, _ := mime.ParseMediaType(a.header.Get("Content-Type"))
	var p map[string]any
	return mt == "application/problem+json" && json.Unmarshal(a.body, &p) == nil
}

func (c *checker) login(ctx context.Context, password string) (answer, string, string) {
	a := c.send(ctx, "POST", "/sessions", "", nil, map[string]any{
		"user": c.o.User, "password": password, "mechanism": "USER", "remote_addr": "", "tls": true,
	}, maxSessionBody)
	var s struct{ Session, Maildrop string }
	if a.err == nil && a.status == 201 {
		json.Unmarshal(a.body, &s)
	}
	return a, s.Session, s.Maildrop
}

type checkEntry struct {
	ID   string  `json:"id"`
	Size *int64  `json:"size"`
	UIDL *string `json:"uidl"`
}

func randomID() string {
	b := make([]byte, 8)
	rand.Read(b)
	return "popgate-check-" + hex.EncodeToString(b)
}

func (c *checker) run(ctx context.Context) {
	// Session creation.
	a, tok, md := c.login(ctx, c.o.Password)
	ok := a.err == nil && a.status == 201 && b64token.MatchString(tok) && len(tok) <= 4096 && md != "" && len(md) <= maxIDLen
	got := a.String()
	if ok {
		got += fmt.Sprintf(", session of %d octets, maildrop %q", len(tok), md)
	}
	c.report(ok, "session", `201 {"session": b64token, "maildrop": 1-1024 octets}`, got)
	if !ok {
		return
	}
	defer func() { c.send(context.Background(), "DELETE", "/sessions/current", tok, nil, nil, maxProblemBody) }()

	wrong, _, _ := c.login(ctx, c.o.Password+"\x00wrong-"+randomID())
	c.report(wrong.err == nil && (wrong.status == 401 || wrong.status == 403) && isProblem(wrong),
		"wrong-password", "401 or 403 application/problem+json", wrong.String())

	noauth := c.send(ctx, "GET", "/messages", "", nil, nil, maxProblemBody)
	c.report(noauth.err == nil && noauth.status == 401 && isProblem(noauth), "no-session", "401 application/problem+json without a bearer token", noauth.String())

	// Paging and cursors.
	entries, state, etag, pages, listOK := c.list(ctx, tok, false)
	if !listOK {
		return
	}
	c.report(etag == `"`+state+`"`, "etag", fmt.Sprintf("the first page's ETag to be the state in quotes (%s)", `"`+state+`"`), etag)
	nm := c.send(ctx, "GET", "/messages", tok, map[string]string{"If-None-Match": `"` + state + `"`}, nil, maxPageBody)
	switch {
	case nm.err == nil && nm.status == 304:
		c.report(true, "not-modified", "304 to If-None-Match with the current state", nm.String())
	case nm.err == nil && nm.status == 200:
		c.skip("not-modified", "the store answers 200 to If-None-Match with the current state (allowed, but popgate cannot reuse its cached listing)")
	default:
		c.report(false, "not-modified", "304 (or 200) to If-None-Match with the current state", nm.String())
	}
	uidls := map[string]bool{}
	ids := map[string]bool{}
	dupes := ""
	for _, e := range entries {
		u := e.ID
		if e.UIDL != nil {
			u = *e.UIDL
		} else if !validUIDL(u) {
			u = DerivedUIDL(u)
		}
		if (ids[e.ID] || uidls[u]) && dupes == "" {
			dupes = fmt.Sprintf("id %q / uidl %q twice", e.ID, u)
		}
		ids[e.ID], uidls[u] = true, true
	}
	c.report(dupes == "", "unique", "ids and UIDLs unique in the maildrop", fmt.Sprintf("%d messages in %d pages%s", len(entries), pages, prefix(", ", dupes)))

	// Messages: sizes, CRLF, lines.
	sizeBad, crlfBad, checked := "", "", 0
	for _, e := range entries {
		if checked == c.o.MaxMessages {
			break
		}
		checked++
		m := c.send(ctx, "GET", "/messages/"+url.PathEscape(e.ID), tok, nil, nil, *e.Size+1)
		if m.err != nil || m.status != 200 {
			if sizeBad == "" {
				sizeBad = fmt.Sprintf("id %q: %s", e.ID, m)
			}
			continue
		}
		if int64(len(m.body)) != *e.Size && sizeBad == "" {
			more := ""
			if int64(len(m.body)) > *e.Size {
				more = " or more"
			}
			sizeBad = fmt.Sprintf("id %q: listed %d, delivered %d%s octets", e.ID, *e.Size, len(m.body), more)
		}
		if i := bareLF(m.body); i >= 0 && crlfBad == "" {
			crlfBad = fmt.Sprintf("id %q: bare LF at octet %d", e.ID, i)
		}
	}
	if checked == 0 {
		c.skip("sizes", "the maildrop is empty: deliver a few messages to check sizes and line endings")
		c.skip("crlf", "the maildrop is empty")
	} else {
		c.report(sizeBad == "", "sizes", fmt.Sprintf("each message's octets equal to its listed size (%d checked)", checked), orOK(sizeBad))
		c.report(crlfBad == "", "crlf", "CRLF line endings only", orOK(crlfBad))
		e := entries[0]
		full := c.send(ctx, "GET", "/messages/"+url.PathEscape(e.ID), tok, nil, nil, *e.Size+1)
		top := c.send(ctx, "GET", "/messages/"+url.PathEscape(e.ID)+"?lines=0", tok, nil, nil, *e.Size+1)
		hdr := full.body
		if i := bytes.Index(hdr, []byte("\r\n\r\n")); i >= 0 {
			hdr = hdr[:i+4]
		}
		c.report(top.err == nil && top.status == 200 && bytes.HasPrefix(top.body, hdr) && bytes.HasPrefix(full.body, top.body), "lines",
			"?lines=0: 200 with the header (and possibly more of the message)", fmt.Sprintf("%s, %d octets", top, len(top.body)))
	}
	nf := c.send(ctx, "GET", "/messages/"+url.PathEscape(randomID()), tok, nil, nil, maxProblemBody)
	c.report(nf.err == nil && nf.status == 404 && isProblem(nf), "unknown-id", "404 application/problem+json for an unknown id", nf.String())

	end := c.send(ctx, "DELETE", "/sessions/current", tok, nil, nil, maxProblemBody)
	after := c.send(ctx, "GET", "/messages", tok, nil, nil, maxProblemBody)
	c.report(end.err == nil && end.status == 204 && after.err == nil && after.status == 401, "end-session",
		"204 to DELETE /sessions/current, then 401 for the ended session", end.String()+", then "+after.String())

	if !c.o.Destructive {
		c.skip("commit", "needs --destructive (deletes a message: use a test maildrop)")
		return
	}
	c.destructive(ctx)
}

// list walks every page of the listing.
func (c *checker) list(ctx context.Context, tok string, quiet bool) (all []checkEntry, state, etag string, pages int, ok bool) {
	cursor := ""
	seen := map[string]bool{}
	for {
		path := "/messages"
		if pages > 0 {
			path += "?cursor=" + url.QueryEscape(cursor)
		}
		a := c.send(ctx, "GET", path, tok, nil, nil, maxPageBody+1)
		pages++
		var p struct {
			Messages *[]checkEntry `json:"messages"`
			Next     *string       `json:"next"`
			State    *string       `json:"state"`
		}
		var raw map[string]json.RawMessage
		mt, _, _ := mime.ParseMediaType(a.header.Get("Content-Type"))
		switch {
		case a.err != nil || a.status != 200 || mt != "application/json":
			c.report(false, "list", "200 application/json", fmt.Sprintf("page %d: %s", pages, a))
			return nil, "", "", pages, false
		case len(a.body) > maxPageBody:
			c.report(false, "list", "a page of at most 32 MiB", fmt.Sprintf("page %d is larger", pages))
			return nil, "", "", pages, false
		case json.Unmarshal(a.body, &p) != nil || json.Unmarshal(a.body, &raw) != nil || p.Messages == nil || p.State == nil || raw["next"] == nil:
			c.report(false, "list", `{"messages": [...], "next": cursor or null, "state": T}`, fmt.Sprintf("page %d: %.120q", pages, a.body))
			return nil, "", "", pages, false
		}
		if pages == 1 {
			state, etag = *p.State, a.header.Get("ETag")
			if !validState(state) {
				c.report(false, "list", "state of 1-256 octets of 0x21, 0x23-0x7E", fmt.Sprintf("%q", state))
				return nil, "", "", pages, false
			}
		} else if *p.State != state {
			c.report(false, "list", fmt.Sprintf("the same state on every page (%q)", state), fmt.Sprintf("page %d: %q", pages, *p.State))
			return nil, "", "", pages, false
		}
		for i, e := range *p.Messages {
			bad := ""
			switch {
			case e.ID == "" || len(e.ID) > maxIDLen:
				bad = "id missing or not 1-1024 octets"
			case e.Size == nil || *e.Size < 0:
				bad = "size missing or negative"
			case e.UIDL != nil && !validUIDL(*e.UIDL):
				bad = fmt.Sprintf("uidl %q not 1-70 octets of 0x21-0x7E", *e.UIDL)
			}
			if bad != "" {
				c.report(false, "list", "entries {id, size, uidl?} as the contract says", fmt.Sprintf("page %d entry %d: %s", pages, i+1, bad))
				return nil, "", "", pages, false
			}
		}
		all = append(all, *p.Messages...)
		if p.Next == nil {
			if quiet {
				return all, state, etag, pages, true
			}
			c.report(true, "list", "pages of {messages, next, state} ending with next null", fmt.Sprintf("%d messages in %d pages", len(all), pages))
			return all, state, etag, pages, true
		}
		if *p.Next == "" || seen[*p.Next] || pages > 1_000_000 {
			c.report(false, "cursor", "each next cursor new, non-empty, ending with null", fmt.Sprintf("page %d: next %q was already given (the listing loops)", pages, *p.Next))
			return nil, "", "", pages, false
		}
		seen[*p.Next] = true
		cursor = *p.Next
	}
}

// destructive checks commit, an idempotent retry and not_found.
func (c *checker) destructive(ctx context.Context) {
	a, tok, _ := c.login(ctx, c.o.Password)
	if a.err != nil || a.status != 201 {
		c.report(false, "commit", "a second session", a.String())
		return
	}
	entries, _, _, _, ok := c.list(ctx, tok, true)
	if !ok {
		return
	}
	if len(entries) == 0 {
		c.send(ctx, "DELETE", "/sessions/current", tok, nil, nil, maxProblemBody)
		c.skip("commit", "the maildrop is empty: deliver a message to check commit")
		return
	}
	victim := entries[len(entries)-1].ID
	key := `"` + randomID() + `"`
	body := map[string][]string{"delete": {victim}, "seen": {}}
	first := c.send(ctx, "POST", "/commit", tok, map[string]string{"Idempotency-Key": key}, body, maxCommitBody)
	var r1, r2 commitAnswer
	j1 := json.Unmarshal(first.body, &r1) == nil
	c.report(first.err == nil && first.status == 200 && j1 && contains(r1.Deleted, victim), "commit",
		fmt.Sprintf(`200 {"deleted": [%q], "not_found": []}`, victim), fmt.Sprintf("%s %.200s", first, first.body))
	retry := c.send(ctx, "POST", "/commit", tok, map[string]string{"Idempotency-Key": key}, body, maxCommitBody)
	j2 := json.Unmarshal(retry.body, &r2) == nil
	c.send(ctx, "DELETE", "/sessions/current", tok, nil, nil, maxProblemBody)

	a, tok, _ = c.login(ctx, c.o.Password)
	if a.err != nil || a.status != 201 {
		c.report(false, "commit-retry", "a third session", a.String())
		return
	}
	defer c.send(context.Background(), "DELETE", "/sessions/current", tok, nil, nil, maxProblemBody)
	after, _, _, _, ok := c.list(ctx, tok, true)
	if !ok {
		return
	}
	gone := true
	for _, e := range after {
		if e.ID == victim {
			gone = false
		}
	}
	c.report(retry.err == nil && retry.status == 200 && j2 && (contains(r2.Deleted, victim) || contains(r2.NotFound, victim)) && gone && len(after) == len(entries)-1,
		"commit-retry", fmt.Sprintf("the retry with the same Idempotency-Key: 200, the same effect (%d messages left, %q gone)", len(entries)-1, victim),
		fmt.Sprintf("%s %.200s, %d messages left", retry, retry.body, len(after)))

	unknown := randomID()
	nf := c.send(ctx, "POST", "/commit", tok, map[string]string{"Idempotency-Key": `"` + randomID() + `"`}, map[string][]string{"delete": {unknown}, "seen": {}}, maxCommitBody)
	var r3 commitAnswer
	j3 := json.Unmarshal(nf.body, &r3) == nil
	c.report(nf.err == nil && nf.status == 200 && j3 && contains(r3.NotFound, unknown), "not-found",
		fmt.Sprintf(`200 {"deleted": [], "not_found": [%q]} for an unknown id`, unknown), fmt.Sprintf("%s %.200s", nf, nf.body))
}

type commitAnswer struct {
	Deleted  []string `json:"deleted"`
	NotFound []string `json:"not_found"`
}

func contains(s []string, v string) bool {
	for _, x := range s {
		if x == v {
			return true
		}
	}
	return false
}

// bareLF returns the offset of the first LF not after CR, or -1.
func bareLF(b []byte) int {
	for i, ch := range b {
		if ch == '\n' && (i == 0 || b[i-1] != '\r') {
			return i
		}
	}
	return -1
}

func orOK(s string) string {
	if s == "" {
		return "as expected"
	}
	return s
}

func prefix(p, s string) string {
	if s == "" {
		return ""
	}
	return p + s
}
