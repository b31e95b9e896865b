// Package accounts holds popgate's device accounts: a YAML file mapping a
// device's login name to its password hash and to the upstream credentials
// popgate logs in with on its behalf:
//
//	scanner-3@corp.example:
//	  password: "$argon2id$v=19$m=65536,t=3,p=2$…"   # or a bcrypt $2y$/$2b$/$2a$ hash; never plain text
//	  backend: corp                                   # optional: else the routes decide on upstream.user
//	  upstream: {user: scans@corp.example, password: ${SCANS_PASSWORD}}
//	  login_delay: 5m                                 # optional, per account
//	scanner-4@corp.example:
//	  password: "$argon2id$…"
//	  upstream: {user: scans@corp.example, credential: m365-app}   # an OAuth2 credential of the configuration
//
// An upstream has exactly one of password and credential: with a
// credential, popgate logs in upstream with that credential's OAuth2
// access token (XOAUTH2/OAUTHBEARER on IMAP, a bearer token on HTTP).
//
// Scalar values may use ${NAME} for an environment variable ("$${" is a
// literal "${"). Unknown keys are errors. Error texts name the account, the
// key and the line, never a value. A File reloads on Reload (SIGHUP) and
// when the file changes (Watch); a bad file keeps the accounts in force.
package accounts

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"regexp"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/rs/zerolog"
	"gopkg.in/yaml.v3"

	"github.com/popgate/popgate/internal/identity"
	"github.com/popgate/popgate/internal/passwd"
)

// Account is one device account.
type Account struct {
	Name string
	// Hash is the argon2id or bcrypt hash of the device password.
	Hash    string
	Backend string // "": the routes decide on UpstreamUser
	// UpstreamUser and UpstreamPassword log in upstream.
	UpstreamUser     string
	UpstreamPassword string
	// UpstreamCredential names the OAuth2 credential (`credentials:`)
	// whose token logs in upstream instead of UpstreamPassword.
	UpstreamCredential string
	LoginDelay         time.Duration
	HasLoginDelay      bool
}

// String describes the account without hash or password.
func (a Account) String() string {
	s := "account " + a.Name + " backend=" + a.Backend + " upstream_user=" + a.UpstreamUser
	if a.UpstreamCredential != "" {
		return s + " credential=" + a.UpstreamCredential
	}
	return s + " password=<redacted>"
}

// GoString hides the secrets from %#v as well.
func (a Account) GoString() string { return "accounts.Account{" + a.String() + "}" }

// Problem is one thing wrong with an accounts file.
type Problem struct {
	Line int    // 1-based; 0 when unknown
	Path string // "scanner-3@corp.example.upstream.user"
	Msg  string
}

func (p Problem) Error() string {
	s := ""
	if p.Line > 0 {
		s = fmt.Sprintf("line %d: ", p.Line)
	}
	if p.Path != "" {
		s += p.Path + ": "
	}
	return s + p.Msg
}

// Problems is every problem of a file.
type Problems []Problem

func (ps Problems) Error() string {
	s := make([]string, len(ps))
	for i, p := range ps {
		s[i] = p.Error()
	}
	return strings.Join(s, "; ")
}

// Parse reads an accounts file. backendKnown, when not nil, reports
// whether a backend name exists; an account naming another is a problem.
// The error is a Problems.
func Parse(data []byte, backendKnown func(string) bool) (map[string]*Account, error) {
	return ParseKnown(data, backendKnown, nil)
}

// ParseKnown is Parse that also checks the credential an upstream names:
// credentialKnown, when not nil, reports whether the configuration has an
// OAuth2 credential of that name.
func ParseKnown(data []byte, backendKnown, credentialKnown func(string) bool) (map[string]*Account, error) {
	var doc yaml.Node
	var ps Problems
	if err := yaml.Unmarshal(data, &doc); err != nil {
		// yaml.v3 syntax errors name a line, not the text; keep only that.
		return nil, Problems{{Msg: "not valid YAML: " + syntaxOnly(err)}}
	}
	out := map[string]*Account{}
	if len(doc.Content) == 0 {
		return out, nil // an empty file: no accounts
	}
	root := doc.Content[0]
	if root.Kind != yaml.MappingNode {
		return nil, Problems{{Line: root.Line, Msg: "must be a mapping of login names to accounts"}}
	}
	for i := 0; i+1 < len(root.Content); i += 2 {
		k, v := root.Content[i], root.Content[i+1]
		name := k.Value
		if k.Kind != yaml.ScalarNode || name == "" || strings.ContainsAny(name, " \x00\r\n") {
			ps = append(ps, Problem{Line: k.Line, Msg: "an account name must be a login name without spaces"})
			continue
		}
		if _, dup := out[name]; dup {
			ps = append(ps, Problem{Line: k.Line, Path: name, Msg: "account defined twice"})
			continue
		}
		a, aps := parseAccount(name, v, backendKnown, credentialKnown)
		ps = append(ps, aps...)
		if a != nil {
			out[name] = a
		}
	}
	if len(ps) > 0 {
		sort.SliceStable(ps, func(i, j int) bool { return ps[i].Line < ps[j].Line })
		return nil, ps
	}
	return out, nil
}

var lineRE = regexp.MustCompile(`line \d+`)

// syntaxOnly keeps the line number of a YAML error and drops the rest (it
// may quote file content).
func syntaxOnly(err error) string {
	if l := lineRE.FindString(err.Error()); l != "" {
		return "syntax error at " + l
	}
	return "syntax error"
}

func parseAccount(name string, v *yaml.Node, backendKnown, credentialKnown func(string) bool) (*Account, Problems) {
	var ps Problems
	add := func(line int, path, msg string) { ps = append(ps, Problem{Line: line, Path: name + path, Msg: msg}) }
	if v.Kind != yaml.MappingNode {
		add(v.Line, "", "must be a mapping with password and upstream")
		return nil, ps
	}
	a := &Account{Name: name}
	var havePass, haveUp bool
	for i := 0; i+1 < len(v.Content); i += 2 {
		k, val := v.Content[i], v.Content[i+1]
		switch k.Value {
		case "password":
			s, ok := scalar(val, name+".password", &ps)
			if !ok {
				continue
			}
			havePass = true
			if err := passwd.Check(s); err != nil {
				add(val.Line, ".password", "not an argon2id or bcrypt hash, or its parameters are out of bounds (plain text is not accepted; make one with: popgate hash-password)")
				continue
			}
			a.Hash = s
		case "backend":
			s, ok := scalar(val, name+".backend", &ps)
			if !ok {
				continue
			}
			if backendKnown != nil && !backendKnown(s) {
				add(val.Line, ".backend", fmt.Sprintf("no backend named %q in the configuration", s))
				continue
			}
			a.Backend = s
		case "login_delay":
			s, ok := scalar(val, name+".login_delay", &ps)
			if !ok {
				continue
			}
			d, err := time.ParseDuration(s)
			if err != nil || d < 0 {
				add(val.Line, ".login_delay", "not a duration such as 5m or 0s")
				continue
			}
			a.LoginDelay, a.HasLoginDelay = d, true
		case "upstream":
			haveUp = true
			if val.Kind != yaml.MappingNode {
				add(val.Line, ".upstream", "must be a mapping with user and password (or credential)")
				continue
			}
			var passLine, credLine int
			for j := 0; j+1 < len(val.Content); j += 2 {
				uk, uv := val.Content[j], val.Content[j+1]
				switch uk.Value {
				case "user":
					if s, ok := scalar(uv, name+".upstream.user", &ps); ok {
						a.UpstreamUser = s
					}
				case "password":
					passLine = uk.Line
					if s, ok := scalar(uv, name+".upstream.password", &ps); ok {
						a.UpstreamPassword = s
					}
				case "credential":
					credLine = uk.Line
					s, ok := scalar(uv, name+".upstream.credential", &ps)
					if !ok {
						continue
					}
					if s == "" {
						add(uv.Line, ".upstream.credential", "must name a credential of the configuration")
						continue
					}
					if credentialKnown != nil && !credentialKnown(s) {
						add(uv.Line, ".upstream.credential", fmt.Sprintf("no credential named %q in the configuration (credentials:)", s))
						continue
					}
					a.UpstreamCredential = s
				default:
					add(uk.Line, ".upstream."+uk.Value, "unknown key (known: user, password, credential)")
				}
			}
			if a.UpstreamUser == "" {
				add(val.Line, ".upstream.user", "required")
			}
			switch {
			case passLine > 0 && credLine > 0:
				add(credLine, ".upstream", "give password or credential, not both")
			case passLine == 0 && credLine == 0:
				add(val.Line, ".upstream.password", "required (or credential: the name of an OAuth2 credential)")
			case passLine > 0 && a.UpstreamPassword == "":
				add(passLine, ".upstream.password", "required (or credential: the name of an OAuth2 credential)")
			}
		default:
			add(k.Line, "."+k.Value, "unknown key (known: password, backend, upstream, login_delay)")
		}
	}
	if !havePass {
		add(v.Line, ".password", "required: the hash of the device password")
	}
	if !haveUp {
		add(v.Line, ".upstream", "required: {user, password} or {user, credential} to log in upstream with")
	}
	if len(ps) > 0 {
		return nil, ps
	}
	return a, nil
}

var envName = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)

// scalar returns a scalar's value with ${NAME} expanded.
func scalar(n *yaml.Node, path string, ps *Problems) (string, bool) {
	if n.Kind != yaml.ScalarNode {
		*ps = append(*ps, Problem{Line: n.Line, Path: path, Msg: "must be a single value"})
		return "", false
	}
	s := n.Value
	var b strings.Builder
	for {
		i := strings.Index(s, "${")
		if i < 0 {
			b.WriteString(s)
			break
		}
		if i > 0 && s[i-1] == '$' { // "$${" is a literal "${"
			b.WriteString(s[:i-1] + "${")
			s = s[i+2:]
			continue
		}
		b.WriteString(s[:i])
		end := strings.IndexByte(s[i:], '}')
		if end < 0 {
			*ps = append(*ps, Problem{Line: n.Line, Path: path, Msg: "unterminated ${ in value"})
			return "", false
		}
		name := s[i+2 : i+end]
		if !envName.MatchString(name) {
			*ps = append(*ps, Problem{Line: n.Line, Path: path, Msg: "invalid environment variable name in ${…}"})
			return "", false
		}
		v, ok := os.LookupEnv(name)
		if !ok {
			*ps = append(*ps, Problem{Line: n.Line, Path: path, Msg: "environment variable " + name + " is not set"})
			return "", false
		}
		b.WriteString(v)
		s = s[i+end+1:]
	}
	return b.String(), true
}

// Options configure a File.
type Options struct {
	// BackendKnown reports whether a backend name exists (nil: any).
	BackendKnown func(string) bool
	// CredentialKnown reports whether an OAuth2 credential name exists
	// (nil: any).
	CredentialKnown func(string) bool
	// Verifier checks the hashes; nil: passwd.NewVerifier(0).
	Verifier *passwd.Verifier
	Logger   zerolog.Logger
}

// File is an accounts file in force, and an identity.Source. Safe for
// concurrent use.
type File struct {
	path string
	o    Options

	mu       sync.RWMutex
	accounts map[string]*Account
	stamp    fileStamp

	stop chan struct{}
	done chan struct{}
}

// fileStamp tells whether a file changed since it was read: the SHA-256
// of its content (the file is small; a same-size edit within one mtime
// tick is caught too).
type fileStamp struct {
	sum [32]byte
}

// Open reads and checks the file at path. Its error is a *FileError.
func Open(path string, o Options) (*File, error) {
	if o.Verifier == nil {
		o.Verifier = passwd.NewVerifier(0)
	}
	f := &File{path: path, o: o}
	accts, st, err := f.read()
	if err != nil {
		return nil, err
	}
	f.accounts, f.stamp = accts, st
	return f, nil
}

// FileError is an accounts file that cannot be read or has problems.
type FileError struct {
	Path string
	Err  error // a Problems, or the error of reading the file
}

func (e *FileError) Error() string { return "accounts file " + e.Path + ": " + e.Err.Error() }
func (e *FileError) Unwrap() error { return e.Err }

func (f *File) read() (map[string]*Account, fileStamp, error) {
	data, err := os.ReadFile(f.path)
	if err != nil {
		var pe *os.PathError
		if errors.As(err, &pe) {
			err = pe.Err
		}
		return nil, fileStamp{}, &FileError{Path: f.path, Err: err}
	}
	st := stampOf(data)
	accts, err := ParseKnown(data, f.o.BackendKnown, f.o.CredentialKnown)
	if err != nil {
		return nil, st, &FileError{Path: f.path, Err: err}
	}
	return accts, st, nil
}

func stampOf(data []byte) fileStamp { return fileStamp{sum: sha256.Sum256(data)} }

// Path is the file's path.
func (f *File) Path() string { return f.path }

// Len is the number of accounts in force.
func (f *File) Len() int {
	f.mu.RLock()
	defer f.mu.RUnlock()
	return len(f.accounts)
}

// Reload reads the file again. On an error the accounts in force stay and
// the error (no secret in it) is returned and logged.
func (f *File) Reload() error {
	accts, st, err := f.read()
	if err != nil {
		f.o.Logger.Error().Str("accounts", f.path).Str("error", err.Error()).Msg("accounts reload failed: the accounts in force stay")
		return err
	}
	f.mu.Lock()
	f.accounts, f.stamp = accts, st
	f.mu.Unlock()
	f.o.Logger.Info().Str("accounts", f.path).Int("accounts_count", len(accts)).Msg("accounts reloaded")
	return nil
}

// changed reports whether the file differs from what is in force.
func (f *File) changed() bool {
	data, err := os.ReadFile(f.path)
	if err != nil {
		return false // gone for a moment (an editor's rename): keep what is in force
	}
	f.mu.RLock()
	st := f.stamp
	f.mu.RUnlock()
	return stampOf(data) != st
}

// Watch checks the file every interval and reloads it when its content
// changed, until Close.
func (f *File) Watch(interval time.Duration) {
	f.mu.Lock()
	if f.stop != nil {
		f.mu.Unlock()
		return
	}
	stop, done := make(chan struct{}), make(chan struct{})
	f.stop, f.done = stop, done
	f.mu.Unlock()
	go func() {
		defer close(done)
		t := time.NewTicker(interval)
		defer t.Stop()
		for {
			select {
			case <-stop:
				return
			case <-t.C:
				if f.changed() {
					_ = f.Reload()
				}
			}
		}
	}()
}

// Close stops Watch.
func (f *File) Close() {
	f.mu.Lock()
	stop, done := f.stop, f.done
	f.stop = nil
	f.mu.Unlock()
	if stop != nil {
		close(stop)
		<-done
	}
}

// PerUserLoginDelay implements identity.Source: whether an account has its
// own login_delay.
func (f *File) PerUserLoginDelay() bool {
	f.mu.RLock()
	defer f.mu.RUnlock()
	for _, a := range f.accounts {
		if a.HasLoginDelay {
			return true
		}
	}
	return false
}

// dummyHash is verified for unknown names, so that an unknown name takes
// as long as a wrong password.
var dummyHash = sync.OnceValue(func() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	h, err := passwd.Hash(hex.EncodeToString(b[:]))
	if err != nil {
		return ""
	}
	return h
})

// Authenticate implements identity.Source.
func (f *File) Authenticate(ctx context.Context, r identity.Request) (*identity.Identity, error) {
	f.mu.RLock()
	a := f.accounts[r.User]
	f.mu.RUnlock()
	if a == nil {
		if h := dummyHash(); h != "" {
			_, _ = f.o.Verifier.Verify(ctx, h, r.Password)
		}
		return nil, &identity.Rejected{Reason: "no such account"}
	}
	ok, err := f.o.Verifier.Verify(ctx, a.Hash, r.Password)
	if err != nil {
		return nil, fmt.Errorf("account %s: verifying the password: %w", a.Name, err)
	}
	if !ok {
		return nil, &identity.Rejected{Reason: "wrong password"}
	}
	return &identity.Identity{
		Backend: a.Backend, UpstreamUser: a.UpstreamUser, UpstreamPassword: a.UpstreamPassword,
		UpstreamCredential: a.UpstreamCredential,
		LoginDelay:         a.LoginDelay, HasLoginDelay: a.HasLoginDelay,
	}, nil
}

var _ identity.Source = (*File)(nil)
