// Package storetest runs the reference maildir store as a real HTTP server
// on loopback for tests: a fresh folder of Maildirs, users with bcrypt
// hashes, and helpers that act on the Maildirs as another client would.
package storetest

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/crypto/bcrypt"

	"github.com/popgate/popgate/examples/maildir-store/store"
)

// Prefix is the path the test servers serve the contract under.
const Prefix = "/pop/v1"

// Root is a folder of Maildirs with a users file.
type Root struct {
	Dir   string
	Users string
	Cost  int // bcrypt cost of AddUser; default bcrypt.MinCost
	seq   atomic.Int64
}

// NewRoot makes an empty root in a test temporary folder.
func NewRoot(t testing.TB) *Root {
	t.Helper()
	d := t.TempDir()
	r := &Root{Dir: d, Users: filepath.Join(d, "users"), Cost: bcrypt.MinCost}
	if err := os.WriteFile(r.Users, []byte("# user:bcrypt-hash\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return r
}

// AddUser adds a user with an empty Maildir.
func (r *Root) AddUser(t testing.TB, user, password string) {
	t.Helper()
	h, err := bcrypt.GenerateFromPassword([]byte(password), r.Cost)
	if err != nil {
		t.Fatal(err)
	}
	f, err := os.OpenFile(r.Users, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	fmt.Fprintf(f, "%s:%s\n", user, h)
	f.Close()
	for _, sub := range []string{"cur", "new", "tmp"} {
		if err := os.MkdirAll(filepath.Join(r.Dir, user, sub), 0o700); err != nil {
			t.Fatal(err)
		}
	}
}

// Deliver writes raw as the next message of user's Maildir (in new/) and
// returns its unique name.
func (r *Root) Deliver(t testing.TB, user string, raw []byte) string {
	t.Helper()
	name := fmt.Sprintf("1700000000.M%06dP1.popgate-test", r.seq.Add(1))
	tmp := filepath.Join(r.Dir, user, "tmp", name)
	if err := os.WriteFile(tmp, raw, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, filepath.Join(r.Dir, user, "new", name)); err != nil {
		t.Fatal(err)
	}
	return name
}

// File is one message file of a Maildir.
type File struct {
	ID    string // unique name
	Path  string
	Flags string // Maildir info flags ("" in new/)
}

// Files lists user's messages, trashed ones too, in name order.
func (r *Root) Files(t testing.TB, user string) []File {
	t.Helper()
	var out []File
	for _, sub := range []string{"new", "cur"} {
		des, err := os.ReadDir(filepath.Join(r.Dir, user, sub))
		if err != nil {
			t.Fatal(err)
		}
		for _, de := range des {
			id, flags, _ := strings.Cut(de.Name(), ":2,")
			out = append(out, File{ID: id, Path: filepath.Join(r.Dir, user, sub, de.Name()), Flags: flags})
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out
}

// AddFlag adds a Maildir flag (S seen, T trashed, …) to message id, as
// another client would.
func (r *Root) AddFlag(t testing.TB, user, id string, flag byte) {
	t.Helper()
	for _, f := range r.Files(t, user) {
		if f.ID == id {
			if strings.IndexByte(f.Flags, flag) >= 0 {
				return
			}
			fl := []byte(f.Flags + string(flag))
			sort.Slice(fl, func(i, j int) bool { return fl[i] < fl[j] })
			if err := os.Rename(f.Path, filepath.Join(r.Dir, user, "cur", id+":2,"+string(fl))); err != nil {
				t.Fatal(err)
			}
			return
		}
	}
	t.Fatalf("no message %s", id)
}

// Remove deletes message id, as another client would.
func (r *Root) Remove(t testing.TB, user, id string) {
	t.Helper()
	for _, f := range r.Files(t, user) {
		if f.ID == id {
			if err := os.Remove(f.Path); err != nil {
				t.Fatal(err)
			}
			return
		}
	}
	t.Fatalf("no message %s", id)
}

// Serve starts the store on a loopback port and returns the contract's
// url (http://127.0.0.1:PORT/pop/v1). wrap, when not nil, wraps the store's
// handler (a validator, a fault injector). The server stops at the end of
// the test.
func (r *Root) Serve(t testing.TB, opt store.Options, wrap func(http.Handler) http.Handler) string {
	t.Helper()
	opt.Root, opt.UsersFile = r.Dir, r.Users
	st, err := store.New(opt)
	if err != nil {
		t.Fatal(err)
	}
	var h http.Handler = st
	if wrap != nil {
		h = wrap(h)
	}
	mux := http.NewServeMux()
	mux.Handle(Prefix+"/", http.StripPrefix(Prefix, h))
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go srv.Serve(ln)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		srv.Shutdown(ctx)
	})
	return "http://" + ln.Addr().String() + Prefix
}
