package rest_test

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/popgate/popgate/backends/backendtest"
	"github.com/popgate/popgate/backends/rest"
	"github.com/popgate/popgate/examples/maildir-store/store"
	"github.com/popgate/popgate/examples/maildir-store/store/storetest"
)

// broken wraps the reference store with one fault.
type broken func(w http.ResponseWriter, r *http.Request, next http.Handler) bool

// rewrite serves r through next into a recorder and lets edit change the
// answer's body.
func rewrite(w http.ResponseWriter, r *http.Request, next http.Handler, edit func([]byte) []byte) {
	rec := httptest.NewRecorder()
	next.ServeHTTP(rec, r)
	for k, v := range rec.Header() {
		w.Header()[k] = v
	}
	body := edit(rec.Body.Bytes())
	w.Header().Del("Content-Length")
	w.WriteHeader(rec.Code)
	w.Write(body)
}

func checkStore(t *testing.T, fault broken, destructive bool) (bool, string) {
	root := storetest.NewRoot(t)
	root.AddUser(t, user, password)
	for _, m := range backendtest.Messages() {
		root.Deliver(t, user, m)
	}
	wrap := func(h http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if fault == nil || !fault(w, r, h) {
				h.ServeHTTP(w, r)
			}
		})
	}
	u := root.Serve(t, store.Options{PageSize: 2}, wrap)
	var out bytes.Buffer
	ok := rest.Check(context.Background(), rest.CheckOptions{URL: u, User: user, Password: password, Destructive: destructive}, &out)
	if strings.Contains(out.String(), password) {
		t.Fatalf("the output holds the password:\n%s", out.String())
	}
	return ok, out.String()
}

// TestCheckStoreReference: every check passes on the reference store.
func TestCheckStoreReference(t *testing.T) {
	ok, out := checkStore(t, nil, true)
	if !ok || strings.Contains(out, "FAIL") || strings.Contains(out, "SKIP") {
		t.Fatalf("check-store on the reference store:\n%s", out)
	}
	for _, name := range []string{"session", "wrong-password", "list", "etag", "not-modified", "sizes", "crlf", "lines", "unknown-id", "end-session", "commit", "commit-retry", "not-found"} {
		if !strings.Contains(out, "PASS  "+name+" ") {
			t.Errorf("no passing %s check:\n%s", name, out)
		}
	}
}

// TestCheckStoreBroken: each deliberately broken store fails the check
// for its fault.
func TestCheckStoreBroken(t *testing.T) {
	cases := map[string]struct {
		fault broken
		check string
	}{
		"wrong size": {func(w http.ResponseWriter, r *http.Request, next http.Handler) bool {
			if r.URL.Path != "/messages" {
				return false
			}
			rewrite(w, r, next, func(b []byte) []byte {
				var p map[string]any
				if json.Unmarshal(b, &p) != nil {
					return b
				}
				if ms, _ := p["messages"].([]any); len(ms) > 0 {
					m := ms[0].(map[string]any)
					m["size"] = m["size"].(float64) + 1
				}
				out, _ := json.Marshal(p)
				return out
			})
			return true
		}, "sizes"},
		"bare LF": {func(w http.ResponseWriter, r *http.Request, next http.Handler) bool {
			if !strings.HasPrefix(r.URL.Path, "/messages/") {
				return false
			}
			rewrite(w, r, next, func(b []byte) []byte { return bytes.ReplaceAll(b, []byte("\r\n"), []byte("\n")) })
			return true
		}, "crlf"},
		"looping cursor": {func(w http.ResponseWriter, r *http.Request, next http.Handler) bool {
			if r.URL.Path != "/messages" || r.URL.Query().Get("cursor") == "" {
				return false
			}
			rewrite(w, r, next, func(b []byte) []byte {
				return bytes.Replace(b, []byte(`"next":null`), []byte(`"next":"2"`), 1)
			})
			return true
		}, "cursor"},
		"500 on commit": {func(w http.ResponseWriter, r *http.Request, next http.Handler) bool {
			if r.URL.Path != "/commit" {
				return false
			}
			store.Problem(w, 500, "broken on purpose")
			return true
		}, "commit"},
		"plain-text errors": {func(w http.ResponseWriter, r *http.Request, next http.Handler) bool {
			if r.URL.Path != "/sessions" {
				return false
			}
			rec := httptest.NewRecorder()
			next.ServeHTTP(rec, r)
			if rec.Code == 401 {
				http.Error(w, "nope", http.StatusUnauthorized)
				return true
			}
			for k, v := range rec.Header() {
				w.Header()[k] = v
			}
			w.WriteHeader(rec.Code)
			w.Write(rec.Body.Bytes())
			return true
		}, "wrong-password"},
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			ok, out := checkStore(t, c.fault, true)
			if ok {
				t.Fatalf("check-store passed a store with %s:\n%s", name, out)
			}
			if !strings.Contains(out, "FAIL  "+c.check+" ") {
				t.Fatalf("check %s did not catch %s:\n%s", c.check, name, out)
			}
		})
	}
}
