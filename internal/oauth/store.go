package oauth

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"time"
)

// Record is what the store keeps for one credential.
type Record struct {
	Type         string    `json:"type"`
	AccessToken  string    `json:"access_token,omitempty"`
	TokenType    string    `json:"token_type,omitempty"`
	RefreshToken string    `json:"refresh_token,omitempty"`
	Expiry       time.Time `json:"expiry,omitempty"`   // zero: the provider gave no lifetime
	Obtained     time.Time `json:"obtained,omitempty"` // when AccessToken was issued
}

// String describes the record without its tokens.
func (r Record) String() string {
	return fmt.Sprintf("%s token (access %t, refresh %t, expiry %s)", r.Type, r.AccessToken != "", r.RefreshToken != "", r.Expiry.Format(time.RFC3339))
}

// GoString hides the tokens from %#v.
func (r Record) GoString() string { return "oauth.Record{" + r.String() + "}" }

// ErrUndecryptable is returned when the store file cannot be decrypted:
// a wrong key, or a damaged or foreign file.
var ErrUndecryptable = errors.New("cannot decrypt the token store (wrong key, or the file is damaged)")

// storeMagic starts every store file; it is also the AES-GCM additional
// data, so a file of another format or version cannot be decrypted.
const storeMagic = "popgate-tokens-v1\n"

// Store is the encrypted token file: one JSON document of all credentials'
// records, sealed with AES-256-GCM under a fresh random 96-bit nonce on
// every write (NIST SP 800-38D §8.2.2). Writes go to a temporary file that
// is synced and renamed over the old one, so a crash leaves the old or the
// new file, never a torn one. Writers of several processes (a running
// gateway and `popgate oauth enroll`) are serialised by an advisory lock
// on PATH.lock.
type Store struct {
	path string
	wmu  sync.Mutex   // serialises this process's writers (with the file lock: other processes')
	amu  sync.RWMutex // guards aead
	aead cipher.AEAD
}

// OpenStore opens the store at path with key (32 octets). When the file
// exists it must decrypt with key (ErrUndecryptable otherwise); when it is
// missing it is created at the first write.
func OpenStore(path string, key []byte) (*Store, error) {
	aead, err := newAEAD(key)
	if err != nil {
		return nil, err
	}
	s := &Store{path: path, aead: aead}
	if _, err := s.readAll(); err != nil {
		return nil, err
	}
	return s, nil
}

// Path returns the store file's path.
func (s *Store) Path() string { return s.path }

func (s *Store) key() cipher.AEAD {
	s.amu.RLock()
	defer s.amu.RUnlock()
	return s.aead
}

func newAEAD(key []byte) (cipher.AEAD, error) {
	if len(key) != KeySize {
		return nil, fmt.Errorf("token store key: %d octets, want %d", len(key), KeySize)
	}
	blk, err := aes.NewCipher(key)
	if err != nil {
		return nil, err
	}
	return cipher.NewGCM(blk)
}

type storeDoc struct {
	Credentials map[string]Record `json:"credentials"`
}

// readAll returns every record; a missing file is an empty store.
func (s *Store) readAll() (map[string]Record, error) {
	return readFile(s.path, s.key())
}

func readFile(path string, aead cipher.AEAD) (map[string]Record, error) {
	data, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return map[string]Record{}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("token store: %w", err)
	}
	ns := aead.NonceSize()
	if len(data) < len(storeMagic)+ns || string(data[:len(storeMagic)]) != storeMagic {
		return nil, fmt.Errorf("token store %s: %w", path, ErrUndecryptable)
	}
	nonce := data[len(storeMagic) : len(storeMagic)+ns]
	plain, err := aead.Open(nil, nonce, data[len(storeMagic)+ns:], []byte(storeMagic))
	if err != nil {
		return nil, fmt.Errorf("token store %s: %w", path, ErrUndecryptable)
	}
	var doc storeDoc
	if err := json.Unmarshal(plain, &doc); err != nil {
		return nil, fmt.Errorf("token store %s: %w", path, ErrUndecryptable)
	}
	if doc.Credentials == nil {
		doc.Credentials = map[string]Record{}
	}
	return doc.Credentials, nil
}

func writeFile(path string, aead cipher.AEAD, recs map[string]Record) error {
	plain, err := json.Marshal(storeDoc{Credentials: recs})
	if err != nil {
		return err
	}
	nonce := make([]byte, aead.NonceSize())
	if _, err := rand.Read(nonce); err != nil {
		return err
	}
	out := append([]byte(storeMagic), nonce...)
	out = aead.Seal(out, nonce, plain, []byte(storeMagic))
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("token store: %w", err)
	}
	tmp, err := os.CreateTemp(dir, filepath.Base(path)+".tmp*")
	if err != nil {
		return fmt.Errorf("token store: %w", err)
	}
	defer os.Remove(tmp.Name()) // after a successful rename: nothing to remove
	if _, err := tmp.Write(out); err != nil {
		tmp.Close()
		return fmt.Errorf("token store: %w", err)
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return fmt.Errorf("token store: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("token store: %w", err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("token store: %w", err)
	}
	return nil
}

// Get returns the record of name; ok is false when there is none.
func (s *Store) Get(name string) (r Record, ok bool, err error) {
	recs, err := s.readAll()
	if err != nil {
		return Record{}, false, err
	}
	r, ok = recs[name]
	return r, ok, nil
}

// Names returns the credentials that have a record, sorted.
func (s *Store) Names() ([]string, error) {
	recs, err := s.readAll()
	if err != nil {
		return nil, err
	}
	var names []string
	for n := range recs {
		names = append(names, n)
	}
	sort.Strings(names)
	return names, nil
}

// Put stores r as name's record, keeping the others. The file is read,
// changed and replaced under the lock, so concurrent writers of other
// processes lose nothing.
func (s *Store) Put(name string, r Record) error {
	s.wmu.Lock()
	defer s.wmu.Unlock()
	unlock, err := s.lock()
	if err != nil {
		return fmt.Errorf("token store: %w", err)
	}
	defer unlock()
	recs, err := readFile(s.path, s.key())
	if err != nil {
		return err
	}
	recs[name] = r
	return writeFile(s.path, s.key(), recs)
}

// Update runs f on name's record while holding the store lock, so that no
// other writer of this or another process runs meanwhile, and stores the
// record f returns when f says so. The gateway refreshes tokens inside
// Update: two processes sharing the store never spend one refresh token
// against each other (a provider that rotates refresh tokens would revoke
// the second).
func (s *Store) Update(name string, f func(r Record, found bool) (Record, bool, error)) error {
	s.wmu.Lock()
	defer s.wmu.Unlock()
	unlock, err := s.lock()
	if err != nil {
		return fmt.Errorf("token store: %w", err)
	}
	defer unlock()
	recs, err := readFile(s.path, s.key())
	if err != nil {
		return err
	}
	r, found := recs[name]
	nr, store, err := f(r, found)
	if err != nil || !store {
		return err
	}
	recs[name] = nr
	return writeFile(s.path, s.key(), recs)
}

// lock creates the store's folder when missing and takes the file lock.
func (s *Store) lock() (func(), error) {
	if err := os.MkdirAll(filepath.Dir(s.path), 0o700); err != nil {
		return nil, err
	}
	return lockFile(s.path + ".lock")
}

// Rekey re-encrypts the whole store with newKey and uses newKey from then
// on. The file is replaced in one rename: it is readable with the old key
// until then and with the new key after. It returns how many records the
// store holds.
func (s *Store) Rekey(newKey []byte) (int, error) {
	aead, err := newAEAD(newKey)
	if err != nil {
		return 0, err
	}
	s.wmu.Lock()
	defer s.wmu.Unlock()
	unlock, err := s.lock()
	if err != nil {
		return 0, fmt.Errorf("token store: %w", err)
	}
	defer unlock()
	recs, err := readFile(s.path, s.key())
	if err != nil {
		return 0, err
	}
	if err := writeFile(s.path, aead, recs); err != nil {
		return 0, err
	}
	s.amu.Lock()
	s.aead = aead
	s.amu.Unlock()
	return len(recs), nil
}
