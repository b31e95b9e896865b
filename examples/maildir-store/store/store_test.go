package store_test

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"net/url"
	"strings"
	"testing"

	"github.com/popgate/popgate/examples/maildir-store/store"
	"github.com/popgate/popgate/examples/maildir-store/store/storetest"
	"github.com/popgate/popgate/internal/openapitest"
)

type client struct {
	t     *testing.T
	base  string
	token string
}

func (c *client) do(method, path string, body any, hdr map[string]string) (*http.Response, []byte) {
	c.t.Helper()
	var rd io.Reader
	if body != nil {
		b, _ := json.Marshal(body)
		rd = bytes.NewReader(b)
	}
	req, _ := http.NewRequest(method, c.base+path, rd)
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		c.t.Fatal(err)
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	return res, b
}

func login(t *testing.T, base, user, pw string) (*client, *http.Response, []byte) {
	c := &client{t: t, base: base}
	res, b := c.do("POST", "/sessions", map[string]any{"user": user, "password": pw, "mechanism": "USER", "remote_addr": "192.0.2.1:1234", "tls": true}, nil)
	var s struct{ Session, Maildrop string }
	json.Unmarshal(b, &s)
	c.token = s.Session
	return c, res, b
}

type page struct {
	Messages []struct {
		ID   string
		Size int64
		UIDL string
	}
	Next  *string
	State string
}

// TestContract drives every call of the contract against the reference
// store and validates each request and answer against the OpenAPI document.
func TestContract(t *testing.T) {
	root := storetest.NewRoot(t)
	root.AddUser(t, "alice", "secret")
	msgs := []string{
		"Subject: one\r\n\r\nbody 1\r\nline 2\r\n",
		"Subject: two, LF only\n\nbody 2\nline 2\nline 3\n",
		"Subject: three\r\n\r\n.dot\r\n",
	}
	var ids []string
	for _, m := range msgs {
		ids = append(ids, root.Deliver(t, "alice", []byte(m)))
	}
	v := openapitest.New(t)
	base := root.Serve(t, store.Options{PageSize: 2}, v.Wrap)

	if _, res, _ := login(t, base, "alice", "wrong"); res.StatusCode != 401 || res.Header.Get("Content-Type") != "application/problem+json" {
		t.Fatalf("wrong password: %d %s, want 401 problem+json", res.StatusCode, res.Header.Get("Content-Type"))
	}
	if _, res, _ := login(t, base, "nobody", "secret"); res.StatusCode != 401 {
		t.Fatalf("unknown user: %d, want 401", res.StatusCode)
	}
	c, res, b := login(t, base, "alice", "secret")
	if res.StatusCode != 201 || c.token == "" || !strings.Contains(string(b), `"maildrop":"alice"`) {
		t.Fatalf("login: %d %s", res.StatusCode, b)
	}

	// Paging: 2 + 1, the state on every page and as the first page's ETag.
	res, b = c.do("GET", "/messages", nil, nil)
	var p1, p2 page
	json.Unmarshal(b, &p1)
	if res.StatusCode != 200 || len(p1.Messages) != 2 || p1.Next == nil {
		t.Fatalf("first page: %d %s", res.StatusCode, b)
	}
	etag := res.Header.Get("ETag")
	if etag != `"`+p1.State+`"` {
		t.Fatalf("ETag %q, state %q", etag, p1.State)
	}
	_, b = c.do("GET", "/messages?cursor="+url.QueryEscape(*p1.Next), nil, nil)
	json.Unmarshal(b, &p2)
	if len(p2.Messages) != 1 || p2.Next != nil || p2.State != p1.State {
		t.Fatalf("second page: %s", b)
	}
	all := append(p1.Messages, p2.Messages...)
	for i, m := range all {
		if m.ID != ids[i] || m.UIDL != ids[i] {
			t.Errorf("message %d: id %q uidl %q, want %q", i+1, m.ID, m.UIDL, ids[i])
		}
		res, raw := c.do("GET", "/messages/"+url.PathEscape(m.ID), nil, nil)
		want := strings.ReplaceAll(strings.ReplaceAll(msgs[i], "\r\n", "\n"), "\n", "\r\n")
		if res.StatusCode != 200 || string(raw) != want || int64(len(raw)) != m.Size {
			t.Errorf("message %d: %d, %d octets %q; listed %d, want %q", i+1, res.StatusCode, len(raw), raw, m.Size, want)
		}
	}
	_, top := c.do("GET", "/messages/"+url.PathEscape(ids[1])+"?lines=1", nil, nil)
	if string(top) != "Subject: two, LF only\r\n\r\nbody 2\r\n" {
		t.Errorf("lines=1: %q", top)
	}
	if res, _ := c.do("GET", "/messages/nosuchid", nil, nil); res.StatusCode != 404 {
		t.Errorf("unknown id: %d, want 404", res.StatusCode)
	}

	// 304 for an unchanged maildrop.
	if res, _ := c.do("GET", "/messages", nil, map[string]string{"If-None-Match": etag}); res.StatusCode != 304 {
		t.Errorf("If-None-Match with the current state: %d, want 304", res.StatusCode)
	}

	// Commit: delete one, one unknown, see one; a retry with the same key
	// has the same answer and no further effect.
	key := map[string]string{"Idempotency-Key": `"k1"`}
	body := map[string]any{"delete": []string{ids[0], "gone"}, "seen": []string{ids[1]}}
	res, b = c.do("POST", "/commit", body, key)
	want := `{"deleted":["` + ids[0] + `"],"not_found":["gone"]}`
	if res.StatusCode != 200 || string(b) != want {
		t.Fatalf("commit: %d %s, want %s", res.StatusCode, b, want)
	}
	root.Deliver(t, "alice", []byte("Subject: new\r\n\r\n"))
	if res, b2 := c.do("POST", "/commit", body, key); res.StatusCode != 200 || string(b2) != want {
		t.Fatalf("retried commit: %d %s", res.StatusCode, b2)
	}
	files := root.Files(t, "alice")
	if len(files) != 3 || files[0].ID != ids[1] || files[0].Flags != "S" {
		t.Fatalf("after commit: %+v", files)
	}
	if res, _ := c.do("GET", "/messages", nil, map[string]string{"If-None-Match": etag}); res.StatusCode != 200 {
		t.Errorf("If-None-Match after a change: %d, want 200", res.StatusCode)
	}

	if res, _ := c.do("DELETE", "/sessions/current", nil, nil); res.StatusCode != 204 {
		t.Fatalf("end session: %d", res.StatusCode)
	}
	if res, _ := c.do("GET", "/messages", nil, nil); res.StatusCode != 401 {
		t.Fatalf("after the end: %d, want 401", res.StatusCode)
	}
	for _, op := range []string{"createSession", "listMessages", "getMessage", "commit", "endSession"} {
		if v.Count(op) == 0 {
			t.Errorf("operation %s not exercised", op)
		}
	}
}

// TestTrashedHidden: a message flagged T by another client is not listed.
func TestTrashedHidden(t *testing.T) {
	root := storetest.NewRoot(t)
	root.AddUser(t, "bob", "pw")
	a := root.Deliver(t, "bob", []byte("Subject: a\r\n\r\n"))
	root.Deliver(t, "bob", []byte("Subject: b\r\n\r\n"))
	root.AddFlag(t, "bob", a, 'T')
	base := root.Serve(t, store.Options{}, nil)
	c, _, _ := login(t, base, "bob", "pw")
	_, b := c.do("GET", "/messages", nil, nil)
	var p page
	json.Unmarshal(b, &p)
	if len(p.Messages) != 1 || p.Messages[0].ID == a {
		t.Fatalf("list %s: the trashed message must be left out", b)
	}
}
