package tlsconf

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"

	"github.com/rs/zerolog"
	"go.uber.org/zap"
)

func TestZapBridge(t *testing.T) {
	var buf syncBuffer
	zl := newZapLogger(zerolog.New(&buf).Level(zerolog.InfoLevel)).Named("acme").With(zap.String("issuer", "pebble"))
	zl.Debug("hidden", zap.Int("n", 1))
	zl.Info("obtained", zap.String("identifier", "pop.example.com"), zap.Int("attempt", 2))
	zl.Error("failed", zap.Error(errors.New("boom")))

	lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
	if len(lines) != 2 {
		t.Fatalf("got %d lines, want 2 (debug filtered by the zerolog level):\n%s", len(lines), buf.String())
	}
	var info, errl map[string]any
	if err := json.Unmarshal([]byte(lines[0]), &info); err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal([]byte(lines[1]), &errl); err != nil {
		t.Fatal(err)
	}
	for k, want := range map[string]any{"level": "info", "message": "obtained", "logger": "acme",
		"issuer": "pebble", "identifier": "pop.example.com", "attempt": float64(2)} {
		if info[k] != want {
			t.Errorf("info line %s = %v, want %v (%s)", k, info[k], want, lines[0])
		}
	}
	if errl["level"] != "error" || errl["error"] != "boom" || errl["issuer"] != "pebble" {
		t.Errorf("error line: %s", lines[1])
	}
}
