package jmap

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/popgate/popgate/backends"
)

// The capabilities every request uses (RFC 8620 §3.3, RFC 8621 §1.3.1).
const (
	capCore = "urn:ietf:params:jmap:core"
	capMail = "urn:ietf:params:jmap:mail"
)

// Retry-After handling (RFC 8620 §3.6.1 lists 429/503 as the server's way
// to ask for a pause; RFC 9110 §10.2.3 the header).
const (
	maxRetries    = 3
	maxRetryAfter = 10 * time.Second
)

// credential authorizes one HTTP request upstream: HTTP Basic with the
// client's USER/PASS, or an OAuth2 bearer token.
type credential interface {
	authorize(r *http.Request)
	// renew replaces the credential of req, which the server answered
	// 401 to; true when a new one is in place and the request may be
	// sent again.
	renew(ctx context.Context, req *http.Request) (bool, error)
}

// basicAuth forwards the POP3 client's credentials (RFC 7617).
type basicAuth struct{ user, pass string }

func (b basicAuth) authorize(r *http.Request)                        { r.SetBasicAuth(b.user, b.pass) }
func (basicAuth) renew(context.Context, *http.Request) (bool, error) { return false, nil }

// bearerAuth sends an OAuth2 bearer token (RFC 6750 §2.1): a named
// credential's, which renew refreshes through the custodian, or a fixed
// one (a client's own, a hook's), which cannot be renewed.
type bearerAuth struct {
	tokens backends.Tokens // nil: a fixed token
	name   string

	mu    sync.Mutex
	token string
}

func (a *bearerAuth) current() string {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.token
}

func (a *bearerAuth) authorize(r *http.Request) { r.Header.Set("Authorization", "Bearer "+a.current()) }

func (a *bearerAuth) renew(ctx context.Context, req *http.Request) (bool, error) {
	if a.tokens == nil {
		return false, nil
	}
	sent := strings.TrimPrefix(req.Header.Get("Authorization"), "Bearer ")
	if a.current() != sent {
		return true, nil // a concurrent request of the session renewed it already
	}
	// The custodian ignores a token it replaced already, so concurrent
	// renewals cause one refresh.
	a.tokens.Invalidate(a.name, sent)
	t, err := a.tokens.AccessToken(ctx, a.name)
	if err != nil {
		return false, err
	}
	a.mu.Lock()
	a.token = t
	a.mu.Unlock()
	return t != sent, nil
}

// session is the part of the JMAP session resource (RFC 8620 §2) popgate
// uses, URLs resolved.
type session struct {
	apiURL      string
	downloadURL string // RFC 6570 level-1 template
	accountID   string
	maxGet      int // maxObjectsInGet
	maxSet      int // maxObjectsInSet
	maxCalls    int // maxCallsInRequest
	sortByID    bool
}

type sessionJSON struct {
	APIURL          string                     `json:"apiUrl"`
	DownloadURL     string                     `json:"downloadUrl"`
	Capabilities    map[string]json.RawMessage `json:"capabilities"`
	PrimaryAccounts map[string]string          `json:"primaryAccounts"`
	Accounts        map[string]struct {
		AccountCapabilities map[string]json.RawMessage `json:"accountCapabilities"`
	} `json:"accounts"`
}

// statusError is an HTTP answer other than 2xx.
type statusError struct {
	code int
	op   string
}

func (e *statusError) Error() string {
	return fmt.Sprintf("jmap %s: HTTP %d %s", e.op, e.code, http.StatusText(e.code))
}

// classify turns a transport or HTTP error into what the client may see:
// 401/403 are wrong credentials ([AUTH], RFC 3206 §4), anything else a
// temporary failure ([SYS/TEMP]).
func classify(err error) error {
	var be *backends.Error
	if errors.As(err, &be) {
		return err
	}
	var se *statusError
	if errors.As(err, &se) && (se.code == http.StatusUnauthorized || se.code == http.StatusForbidden) {
		return backends.ErrAuthFailed.Wrap(err)
	}
	return backends.ErrUnavailable.Wrap(err)
}

// retryAfter returns the pause a 429 or 503 answer asks for, and whether
// it asked for one that popgate is willing to wait.
func retryAfter(resp *http.Response, now time.Time) (time.Duration, bool) {
	if resp.StatusCode != http.StatusTooManyRequests && resp.StatusCode != http.StatusServiceUnavailable {
		return 0, false
	}
	v := strings.TrimSpace(resp.Header.Get("Retry-After"))
	if v == "" {
		return 0, false
	}
	var d time.Duration
	if n, err := strconv.Atoi(v); err == nil {
		d = time.Duration(n) * time.Second
	} else if t, err := http.ParseTime(v); err == nil {
		d = t.Sub(now)
	} else {
		return 0, false
	}
	d = max(d, 0)
	return d, d <= maxRetryAfter
}

// do sends one HTTP request built by mk under ctx, retrying after a
// 429/503 with Retry-After when idempotent (a bounded number of times, only
// when the pause fits before ctx ends). A 401 with a credential that can
// be renewed (a named OAuth2 credential's token) renews it once and sends
// the request once more (a 401 means the server did nothing, RFC 6750
// §3.1 invalid_token). A non-2xx answer is a *statusError; the caller
// closes the returned body.
func (b *Backend) do(ctx context.Context, op string, idempotent bool, cred credential, mk func() (*http.Request, error)) (*http.Response, error) {
	renewed := false
	for attempt := 0; ; attempt++ {
		req, err := mk()
		if err != nil {
			return nil, err
		}
		resp, err := b.client.Do(req.WithContext(ctx))
		if err != nil {
			return nil, fmt.Errorf("jmap %s: %w", op, redactURL(err))
		}
		if resp.StatusCode >= 200 && resp.StatusCode < 300 {
			return resp, nil
		}
		drain(resp.Body)
		if resp.StatusCode == http.StatusUnauthorized && cred != nil && !renewed {
			renewed = true
			ok, err := cred.renew(ctx, req)
			if err != nil {
				return nil, fmt.Errorf("jmap %s: HTTP 401, and no new token: %w", op, err)
			}
			if ok {
				b.log.Info().Str("op", op).Msg("upstream rejected the OAuth2 token: retrying once with a new one")
				continue
			}
		}
		if d, ok := retryAfter(resp, time.Now()); ok && idempotent && attempt < maxRetries {
			if dl, has := ctx.Deadline(); !has || time.Until(dl) > d {
				b.log.Debug().Str("op", op).Int("status", resp.StatusCode).Dur("retry_after", d).Msg("upstream asks to retry later")
				t := time.NewTimer(d)
				select {
				case <-ctx.Done():
					t.Stop()
					return nil, fmt.Errorf("jmap %s: %w", op, ctx.Err())
				case <-t.C:
				}
				continue
			}
		}
		return nil, &statusError{code: resp.StatusCode, op: op}
	}
}

// redactURL drops the query of a URL in a *url.Error (a download URL's
// query holds no secret, but keep log lines short and uniform).
func redactURL(err error) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		return fmt.Errorf("%s %s: %w", ue.Op, stripQuery(ue.URL), ue.Err)
	}
	return err
}

func stripQuery(s string) string {
	if i := strings.IndexByte(s, '?'); i >= 0 {
		return s[:i]
	}
	return s
}

// drain reads a little of an unwanted body so the connection can be
// reused, then closes it.
func drain(body io.ReadCloser) {
	io.CopyN(io.Discard, body, 64<<10)
	body.Close()
}

// errTooLarge: a JSON response beyond MaxResponse.
var errTooLarge = errors.New("response too large")

// limitReader fails (rather than truncating) past n octets.
type limitReader struct {
	r io.Reader
	n int64
}

func (l *limitReader) Read(p []byte) (int, error) {
	if l.n <= 0 {
		return 0, errTooLarge
	}
	if int64(len(p)) > l.n {
		p = p[:l.n]
	}
	n, err := l.r.Read(p)
	l.n -= int64(n)
	return n, err
}

// fetchSession GETs the session resource (RFC 8620 §2), following
// redirects, and resolves the URLs it names against the final location
// (Cyrus answers relative ones).
func (b *Backend) fetchSession(ctx context.Context, cred credential) (*session, error) {
	ctx, cancel := context.WithTimeout(ctx, b.cfg.CommandTimeout)
	defer cancel()
	resp, err := b.do(ctx, "session", true, cred, func() (*http.Request, error) {
		req, err := http.NewRequest(http.MethodGet, b.cfg.URL, nil)
		if err != nil {
			return nil, err
		}
		req.Header.Set("Accept", "application/json")
		cred.authorize(req)
		return req, nil
	})
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	var sj sessionJSON
	if err := json.NewDecoder(&limitReader{resp.Body, maxSessionResponse}).Decode(&sj); err != nil {
		return nil, fmt.Errorf("jmap session: malformed JSON: %w", err)
	}
	base := resp.Request.URL
	s := &session{maxGet: 500, maxSet: 500, maxCalls: 16}
	resolve := func(name, v string) (string, error) {
		if v == "" {
			return "", fmt.Errorf("jmap session: no %s", name)
		}
		u, err := base.Parse(v)
		if err != nil {
			return "", fmt.Errorf("jmap session: %s: %w", name, err)
		}
		return u.String(), nil
	}
	if s.apiURL, err = resolve("apiUrl", sj.APIURL); err != nil {
		return nil, err
	}
	// The template's braces must survive: resolve it textually.
	if s.downloadURL, err = resolve("downloadUrl", sj.DownloadURL); err != nil {
		return nil, err
	}
	s.downloadURL = unescapeBraces(s.downloadURL)
	if _, ok := sj.Capabilities[capMail]; !ok {
		return nil, errors.New("jmap session: the server does not offer " + capMail)
	}
	var core struct {
		MaxObjectsInGet   int `json:"maxObjectsInGet"`
		MaxObjectsInSet   int `json:"maxObjectsInSet"`
		MaxCallsInRequest int `json:"maxCallsInRequest"`
	}
	if raw, ok := sj.Capabilities[capCore]; ok {
		if err := json.Unmarshal(raw, &core); err != nil {
			return nil, fmt.Errorf("jmap session: %s: %w", capCore, err)
		}
	}
	// RFC 8620 §2: the limits the server announces; keep requests within.
	if core.MaxObjectsInGet > 0 {
		s.maxGet = min(core.MaxObjectsInGet, 4096)
	}
	if core.MaxObjectsInSet > 0 {
		s.maxSet = min(core.MaxObjectsInSet, 4096)
	}
	if core.MaxCallsInRequest > 0 {
		s.maxCalls = min(core.MaxCallsInRequest, 64)
	}
	s.accountID = sj.PrimaryAccounts[capMail]
	if s.accountID == "" {
		return nil, errors.New("jmap session: no primary account for " + capMail)
	}
	if acc, ok := sj.Accounts[s.accountID]; ok {
		var mail struct {
			Sort []string `json:"emailsListSortOptions"`
		}
		if raw, ok := acc.AccountCapabilities[capMail]; ok && json.Unmarshal(raw, &mail) == nil {
			for _, o := range mail.Sort {
				if o == "id" {
					s.sortByID = true
				}
			}
		}
	}
	return s, nil
}

func unescapeBraces(s string) string {
	return strings.NewReplacer("%7B", "{", "%7D", "}", "%7b", "{", "%7d", "}").Replace(s)
}

// call is one method call of a request (RFC 8620 §3.2).
type call struct {
	name string
	args any
	id   string
}

// handler decodes the arguments of one method response: the next JSON value
// of dec. name is the response's method name; "error" responses never reach
// it.
type handler func(name string, dec *json.Decoder) error

// methodError is a method-level error response (RFC 8620 §3.6.2).
type methodError struct {
	Type        string `json:"type"`
	Description string `json:"description"`
}

func (e *methodError) Error() string {
	if e.Description != "" {
		return "method error " + e.Type + ": " + e.Description
	}
	return "method error " + e.Type
}

// api POSTs calls to the API URL (RFC 8620 §3.1) and streams the
// responses to h, in order, without holding the whole body: the response
// is decoded token by token. Read-only methods are idempotent and may be
// retried after a 429/503.
func (m *Mailbox) api(ctx context.Context, op string, idempotent bool, calls []call, h handler) error {
	var body bytes.Buffer
	body.WriteString(`{"using":["` + capCore + `","` + capMail + `"],"methodCalls":[`)
	for i, c := range calls {
		if i > 0 {
			body.WriteByte(',')
		}
		args, err := json.Marshal(c.args)
		if err != nil {
			return err
		}
		name, _ := json.Marshal(c.name)
		id, _ := json.Marshal(c.id)
		body.WriteByte('[')
		body.Write(name)
		body.WriteByte(',')
		body.Write(args)
		body.WriteByte(',')
		body.Write(id)
		body.WriteByte(']')
	}
	body.WriteString(`]}`)
	payload := body.Bytes()

	ctx, cancel := context.WithTimeout(ctx, m.b.cfg.CommandTimeout)
	defer cancel()
	resp, err := m.b.do(ctx, op, idempotent, m.cred, func() (*http.Request, error) {
		req, err := http.NewRequest(http.MethodPost, m.sess.apiURL, bytes.NewReader(payload))
		if err != nil {
			return nil, err
		}
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("Accept", "application/json")
		m.cred.authorize(req)
		return req, nil
	})
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	dec := json.NewDecoder(&limitReader{resp.Body, MaxResponse})
	if err := decodeResponse(dec, h); err != nil {
		if ctx.Err() != nil {
			err = fmt.Errorf("%w (%v)", err, ctx.Err())
		}
		return fmt.Errorf("jmap %s: %w", op, err)
	}
	return nil
}

// decodeResponse walks {"methodResponses":[[name, args, id], …], …}.
func decodeResponse(dec *json.Decoder, h handler) error {
	if err := expectDelim(dec, '{'); err != nil {
		return err
	}
	seen := false
	for dec.More() {
		key, err := dec.Token()
		if err != nil {
			return malformed(err)
		}
		if key != "methodResponses" {
			var skip json.RawMessage
			if err := dec.Decode(&skip); err != nil {
				return malformed(err)
			}
			continue
		}
		seen = true
		if err := expectDelim(dec, '['); err != nil {
			return err
		}
		for dec.More() {
			if err := expectDelim(dec, '['); err != nil {
				return err
			}
			var name string
			if err := dec.Decode(&name); err != nil {
				return malformed(err)
			}
			if name == "error" {
				var me methodError
				if err := dec.Decode(&me); err != nil {
					return malformed(err)
				}
				return &me
			}
			if err := h(name, dec); err != nil {
				return err
			}
			var id string
			if err := dec.Decode(&id); err != nil {
				return malformed(err)
			}
			if err := expectDelim(dec, ']'); err != nil {
				return err
			}
		}
		if err := expectDelim(dec, ']'); err != nil {
			return err
		}
	}
	if err := expectDelim(dec, '}'); err != nil {
		return err
	}
	if !seen {
		return malformed(errors.New("no methodResponses"))
	}
	return nil
}

func malformed(err error) error {
	if errors.Is(err, errTooLarge) {
		return err
	}
	return fmt.Errorf("malformed JSON: %w", err)
}

func expectDelim(dec *json.Decoder, d json.Delim) error {
	t, err := dec.Token()
	if err != nil {
		return malformed(err)
	}
	if t != d {
		return malformed(fmt.Errorf("want %q, got %v", d, t))
	}
	return nil
}

// skipValue consumes the next JSON value.
func skipValue(dec *json.Decoder) error {
	depth := 0
	for {
		t, err := dec.Token()
		if err != nil {
			return malformed(err)
		}
		switch t {
		case json.Delim('{'), json.Delim('['):
			depth++
		case json.Delim('}'), json.Delim(']'):
			depth--
		}
		if depth == 0 {
			return nil
		}
	}
}

// eachKey walks an object, calling f for every key with dec positioned at
// its value; f must consume the value.
func eachKey(dec *json.Decoder, f func(key string) error) error {
	t, err := dec.Token()
	if err != nil {
		return malformed(err)
	}
	if t == nil { // null: no keys
		return nil
	}
	if t != json.Delim('{') {
		return malformed(fmt.Errorf("want an object, got %v", t))
	}
	for dec.More() {
		k, err := dec.Token()
		if err != nil {
			return malformed(err)
		}
		ks, _ := k.(string)
		if err := f(ks); err != nil {
			return err
		}
	}
	_, err = dec.Token()
	if err != nil {
		return malformed(err)
	}
	return nil
}

// eachElem walks an array (null: none), calling f with dec positioned at
// each element; f must consume it.
func eachElem(dec *json.Decoder, f func() error) error {
	t, err := dec.Token()
	if err != nil {
		return malformed(err)
	}
	if t == nil {
		return nil
	}
	if t != json.Delim('[') {
		return malformed(fmt.Errorf("want an array, got %v", t))
	}
	for dec.More() {
		if err := f(); err != nil {
			return err
		}
	}
	_, err = dec.Token()
	if err != nil {
		return malformed(err)
	}
	return nil
}
