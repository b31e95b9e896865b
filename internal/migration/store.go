package migration

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"time"
)

// DefaultDir is where captured maps live unless migration.uidl_dir says
// otherwise.
const DefaultDir = "/var/lib/popgate/uidl"

// Entry is one message of the old server: its UIDL and its match key.
type Entry struct {
	UIDL string `json:"uidl"`
	Key  string `json:"key"` // Key.String()
}

// Map is what a capture stored for one maildrop.
type Map struct {
	Version    int       `json:"version"`     // 1
	Maildrop   string    `json:"maildrop"`    // popgate's maildrop key ("backend/upstream-user")
	User       string    `json:"user"`        // the login name used on the old server
	Server     string    `json:"server"`      // the old server, as given to capture (no password)
	CapturedAt time.Time `json:"captured_at"` // when the capture finished
	Messages   int       `json:"messages"`    // len(Entries)
	Entries    []Entry   `json:"entries"`     // in the old server's order
}

// Store keeps maps as one JSON file per maildrop in Dir, named by a digest
// of the maildrop key (so any key is a safe file name). Files are written
// atomically (temporary file, then rename) with mode 0600.
type Store struct {
	Dir string
}

// path returns the file of maildrop.
func (s Store) path(maildrop string) string {
	sum := sha256.Sum256([]byte(maildrop))
	return filepath.Join(s.Dir, hex.EncodeToString(sum[:16])+".json")
}

// ErrNoMap is returned by Load for a maildrop without a captured map.
var ErrNoMap = errors.New("no captured UIDL map")

// Load reads the map of maildrop, or returns ErrNoMap.
func (s Store) Load(maildrop string) (*Map, error) {
	b, err := os.ReadFile(s.path(maildrop))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, ErrNoMap
	}
	if err != nil {
		return nil, err
	}
	var m Map
	if err := json.Unmarshal(b, &m); err != nil {
		return nil, fmt.Errorf("UIDL map %s: %w", s.path(maildrop), err)
	}
	if m.Version != 1 || m.Maildrop != maildrop {
		return nil, fmt.Errorf("UIDL map %s: version %d for %q, want version 1 for %q", s.path(maildrop), m.Version, m.Maildrop, maildrop)
	}
	return &m, nil
}

// Stamp returns the modification time of maildrop's map (zero and ErrNoMap
// without one): cheap enough to check at every login whether a cached
// result is still the map's.
func (s Store) Stamp(maildrop string) (time.Time, error) {
	fi, err := os.Stat(s.path(maildrop))
	if errors.Is(err, fs.ErrNotExist) {
		return time.Time{}, ErrNoMap
	}
	if err != nil {
		return time.Time{}, err
	}
	return fi.ModTime(), nil
}

// Save writes m under m.Maildrop, replacing any earlier map.
func (s Store) Save(m *Map) error {
	m.Version = 1
	m.Messages = len(m.Entries)
	if err := os.MkdirAll(s.Dir, 0o700); err != nil {
		return err
	}
	b, err := json.Marshal(m)
	if err != nil {
		return err
	}
	f, err := os.CreateTemp(s.Dir, ".map-*")
	if err != nil {
		return err
	}
	defer os.Remove(f.Name()) // after a successful rename it no longer exists
	if _, err := f.Write(b); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Rename(f.Name(), s.path(m.Maildrop))
}

// Forget removes maildrop's map; it returns ErrNoMap when there is none.
func (s Store) Forget(maildrop string) error {
	err := os.Remove(s.path(maildrop))
	if errors.Is(err, fs.ErrNotExist) {
		return ErrNoMap
	}
	return err
}
