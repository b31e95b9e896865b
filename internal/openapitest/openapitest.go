// Package openapitest checks HTTP traffic against popgate's REST store
// contract, docs/rest-store.openapi.yaml, with kin-openapi: the requests
// popgate sends and the responses a store gives.
package openapitest

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"

	"github.com/getkin/kin-openapi/openapi3"
	"github.com/getkin/kin-openapi/openapi3filter"
	"github.com/getkin/kin-openapi/routers"
	"github.com/getkin/kin-openapi/routers/gorillamux"
)

// Path is the contract document's path in the repository.
func Path() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "..", "..", "docs", "rest-store.openapi.yaml")
}

var loadOnce sync.Once
var loaded *openapi3.T
var loadErr error

func init() {
	openapi3filter.RegisterBodyDecoder("message/rfc822", openapi3filter.FileBodyDecoder)
	openapi3filter.RegisterBodyDecoder("application/problem+json", openapi3filter.RegisteredBodyDecoder("application/json"))
}

// Load loads and validates the document.
func Load(t testing.TB) *openapi3.T {
	t.Helper()
	loadOnce.Do(func() {
		loaded, loadErr = openapi3.NewLoader().LoadFromFile(Path())
		if loadErr == nil {
			loadErr = loaded.Validate(context.Background())
		}
	})
	if loadErr != nil {
		t.Fatalf("%s: %v", Path(), loadErr)
	}
	return loaded
}

// Validator validates traffic against the contract. Paths are matched
// after the contract's url prefix is stripped.
type Validator struct {
	t      testing.TB
	router routers.Router
	mu     sync.Mutex
	Calls  map[string]int // operationId → requests seen
}

// New returns a validator; failures are reported with t.Errorf.
func New(t testing.TB) *Validator {
	t.Helper()
	doc := *Load(t)
	doc.Servers = openapi3.Servers{{URL: "/"}}
	r, err := gorillamux.NewRouter(&doc)
	if err != nil {
		t.Fatal(err)
	}
	return &Validator{t: t, router: r, Calls: map[string]int{}}
}

func options() *openapi3filter.Options {
	return &openapi3filter.Options{
		// Bearer tokens are the store's business; the contract only says
		// they are sent, which CheckRequest's caller verifies.
		AuthenticationFunc: func(_ context.Context, in *openapi3filter.AuthenticationInput) error {
			if !strings.HasPrefix(in.RequestValidationInput.Request.Header.Get("Authorization"), "Bearer ") {
				return in.NewError(errNoBearer)
			}
			return nil
		},
		IncludeResponseStatus: true,
	}
}

type errString string

func (e errString) Error() string { return string(e) }

const errNoBearer = errString("no Authorization: Bearer header")

// Wrap returns h with every request and response validated. The request
// path is that seen by h (the url prefix already stripped).
func (v *Validator) Wrap(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		r.Body = io.NopCloser(bytes.NewReader(body))
		check := r.Clone(r.Context())
		check.Body = io.NopCloser(bytes.NewReader(body))
		check.Host = ""
		route, params, err := v.router.FindRoute(check)
		if err != nil {
			v.t.Errorf("openapi: %s %s: no such operation: %v", r.Method, r.URL, err)
			h.ServeHTTP(w, r)
			return
		}
		v.mu.Lock()
		v.Calls[route.Operation.OperationID]++
		v.mu.Unlock()
		in := &openapi3filter.RequestValidationInput{Request: check, PathParams: params, Route: route, Options: options()}
		if err := openapi3filter.ValidateRequest(r.Context(), in); err != nil {
			v.t.Errorf("openapi: request %s %s does not follow the contract: %v", r.Method, r.URL, err)
		}
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, r)
		res := rec.Result()
		out := &openapi3filter.ResponseValidationInput{
			RequestValidationInput: in,
			Status:                 res.StatusCode,
			Header:                 res.Header,
			Body:                   io.NopCloser(bytes.NewReader(rec.Body.Bytes())),
			Options:                options(),
		}
		if res.StatusCode != http.StatusNotModified && res.StatusCode != http.StatusNoContent {
			if err := openapi3filter.ValidateResponse(r.Context(), out); err != nil {
				v.t.Errorf("openapi: response %d to %s %s does not follow the contract: %v", res.StatusCode, r.Method, r.URL, err)
			}
		}
		for k, vs := range res.Header {
			w.Header()[k] = vs
		}
		w.WriteHeader(res.StatusCode)
		w.Write(rec.Body.Bytes())
	})
}

// Count returns how many requests of operation id the validator saw.
func (v *Validator) Count(id string) int {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.Calls[id]
}
