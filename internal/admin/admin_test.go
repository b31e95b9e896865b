package admin_test

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/popgate/popgate/internal/admin"
	"github.com/popgate/popgate/internal/metrics"
)

func serve(t *testing.T, opts admin.Options) (*admin.Server, string) {
	t.Helper()
	s := admin.New(opts)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go s.Serve(l)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		s.Shutdown(ctx)
	})
	return s, "http://" + l.Addr().String()
}

func get(t *testing.T, url, token string) (int, string) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, url, nil)
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func TestReadiness(t *testing.T) {
	m := metrics.New(metrics.Build{Version: "v-test", Commit: "abc", GoVersion: "go"})
	var readyCalls []bool
	s, base := serve(t, admin.Options{Metrics: m.Handler(), OnReady: func(ok bool) { readyCalls = append(readyCalls, ok) }})

	if code, _ := get(t, base+"/healthz", ""); code != 200 {
		t.Fatalf("/healthz: %d", code)
	}
	if code, body := get(t, base+"/readyz", ""); code != 503 || !strings.Contains(body, "listeners not open") {
		t.Fatalf("/readyz before listening: %d %q", code, body)
	}
	s.SetListening(true)
	if code, body := get(t, base+"/readyz", ""); code != 200 {
		t.Fatalf("/readyz listening: %d %q", code, body)
	}
	redisDown := errors.New("dial tcp 127.0.0.1:1: connection refused")
	var fail error = redisDown
	s.AddCheck("redis", func(context.Context) error { return fail })
	if code, body := get(t, base+"/readyz", ""); code != 503 || !strings.Contains(body, "redis: ") {
		t.Fatalf("/readyz with Redis down: %d %q", code, body)
	}
	fail = nil
	if code, _ := get(t, base+"/readyz", ""); code != 200 {
		t.Fatalf("/readyz with Redis back: %d", code)
	}
	s.SetDraining()
	if code, body := get(t, base+"/readyz", ""); code != 503 || !strings.Contains(body, "draining") {
		t.Fatalf("/readyz draining: %d %q", code, body)
	}
	if code, _ := get(t, base+"/healthz", ""); code != 200 {
		t.Fatalf("/healthz while draining: %d", code)
	}
	code, body := get(t, base+"/metrics", "")
	if code != 200 || !strings.Contains(body, `popgate_build_info{commit="abc",goversion="go",version="v-test"} 1`) {
		t.Fatalf("/metrics: %d\n%s", code, body)
	}
	if len(readyCalls) != 5 || readyCalls[1] != true || readyCalls[4] != false {
		t.Fatalf("OnReady calls %v", readyCalls)
	}
}

func TestToken(t *testing.T) {
	s, base := serve(t, admin.Options{Token: "s3cret"})
	s.SetListening(true)
	for _, path := range []string{"/healthz", "/readyz", "/metrics"} {
		if code, _ := get(t, base+path, ""); code != 401 {
			t.Errorf("%s without token: %d, want 401", path, code)
		}
		if code, _ := get(t, base+path, "wrong"); code != 401 {
			t.Errorf("%s with a wrong token: %d, want 401", path, code)
		}
	}
	if code, _ := get(t, base+"/healthz", "s3cret"); code != 200 {
		t.Errorf("/healthz with the token: %d", code)
	}
	if code, _ := get(t, base+"/metrics", "s3cret"); code != 404 {
		t.Errorf("/metrics without a registry: %d, want 404", code)
	}
	resp, err := http.Post(base+"/healthz", "text/plain", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 401 {
		t.Errorf("POST without token: %d", resp.StatusCode)
	}
}
