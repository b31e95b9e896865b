package openapitest

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

type recorder struct {
	testing.TB
	errs []string
}

func (r *recorder) Errorf(format string, a ...any) {
	r.errs = append(r.errs, fmt.Sprintf(format, a...))
}

// TestCatchesViolations: the validator reports a request and a response
// that break the contract, and passes conforming ones.
func TestCatchesViolations(t *testing.T) {
	cases := []struct {
		name, method, path, auth, body string
		status                         int
		wantErr                        string
	}{
		{"good page", "GET", "/messages", "Bearer x", `{"messages":[{"id":"a","size":3}],"next":null,"state":"s1"}`, 200, ""},
		{"missing size", "GET", "/messages", "Bearer x", `{"messages":[{"id":"a"}],"next":null,"state":"s1"}`, 200, "response"},
		{"uidl with a space", "GET", "/messages", "Bearer x", `{"messages":[{"id":"a","size":1,"uidl":"a b"}],"next":null,"state":"s"}`, 200, "response"},
		{"no bearer", "GET", "/messages", "", `{"messages":[],"next":null,"state":"s1"}`, 200, "request"},
		{"negative lines", "GET", "/messages/a?lines=-1", "Bearer x", "x", 200, "request"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			rec := &recorder{TB: t}
			v := New(rec)
			h := v.Wrap(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if strings.HasPrefix(r.URL.Path, "/messages/") {
					w.Header().Set("Content-Type", "message/rfc822")
				} else {
					w.Header().Set("Content-Type", "application/json")
				}
				w.WriteHeader(c.status)
				w.Write([]byte(c.body))
			}))
			req := httptest.NewRequest(c.method, c.path, nil)
			if c.auth != "" {
				req.Header.Set("Authorization", c.auth)
			}
			h.ServeHTTP(httptest.NewRecorder(), req)
			got := strings.Join(rec.errs, "\n")
			if c.wantErr == "" && got != "" {
				t.Fatalf("unexpected: %s", got)
			}
			if c.wantErr != "" && !strings.Contains(got, c.wantErr) {
				t.Fatalf("want a %s error, got %q", c.wantErr, got)
			}
		})
	}
}
