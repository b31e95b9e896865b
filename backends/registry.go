package backends

import (
	"errors"
	"fmt"
	"reflect"
	"strings"

	"github.com/rs/zerolog"
	"gopkg.in/yaml.v3"

	"github.com/popgate/popgate/internal/strictyaml"
)

// Type is one kind of store, as `type:` names it in a backend section. A
// store package exports one Type; cmd/popgate lists the built-in ones in
// one table (no init() registration) and hands them to NewRegistry.
type Type struct {
	// Name is the value of the type key: lowercase, such as "imap".
	Name string
	// New returns the configuration of one backend of this type holding the
	// type's defaults: a pointer to a struct whose yaml tags are the keys
	// allowed in the backend's section besides type (embed Store, and
	// tlsconf.Upstream for a network store, with `yaml:",inline"`). The
	// section is decoded over it strictly: an unknown key is a problem
	// naming the key, its line and the keys of this type.
	New func() Config
}

// Config is the decoded configuration of one backend of a Type.
type Config interface {
	// Check reports every problem of the configuration to c, by key
	// relative to the backend's section ("delete.folder"). It reads no
	// file beyond checking that it exists, and contacts no server.
	Check(c *Checker)
	// Summary is the line check-config prints after the backend's name
	// and type, such as `imap.example.com:993 (tls implicit), mailbox
	// INBOX, delete: expunge`.
	Summary() string
	// Build returns the running Backend. It is only called on a
	// configuration whose Check found nothing. It may start background
	// work; the Backend's Close ends it.
	Build(env Env) (Backend, error)
}

// Env is what Build gets from the gateway besides the configuration.
type Env struct {
	// Name is the backend's name in the file (for logs and lock keys).
	Name string
	// Log is the gateway's logger; add the backend name to it.
	Log zerolog.Logger
	// Tokens hands out the access tokens of the configured OAuth2
	// credentials (nil when there are none), for stores that log in with
	// bearer tokens (Credentials.Credential).
	Tokens Tokens
	// OnSnapshotCache, when set, is told at every login whether a store
	// with a snapshot cache served the listing from it (metrics). Stores
	// without such a cache ignore it.
	OnSnapshotCache func(hit bool)
}

// Registry maps type names to Types.
type Registry struct {
	types []Type
}

// NewRegistry returns the registry of types. An empty or repeated name is
// a programming error and panics.
func NewRegistry(types ...Type) *Registry {
	seen := map[string]bool{}
	for _, t := range types {
		if t.Name == "" || t.New == nil || seen[t.Name] {
			panic(fmt.Sprintf("backends: bad or repeated type %q", t.Name))
		}
		seen[t.Name] = true
	}
	return &Registry{types: append([]Type(nil), types...)}
}

// Names returns the registered type names in the order given.
func (r *Registry) Names() []string {
	names := make([]string, len(r.types))
	for i, t := range r.types {
		names[i] = t.Name
	}
	return names
}

// Types returns the registered types in the order given (to build a
// registry with one more, as tests do).
func (r *Registry) Types() []Type { return append([]Type(nil), r.types...) }

// Lookup returns the type registered as name.
func (r *Registry) Lookup(name string) (Type, bool) {
	for _, t := range r.types {
		if t.Name == name {
			return t, true
		}
	}
	return Type{}, false
}

func (r *Registry) nameList() string {
	names := r.Names()
	switch len(names) {
	case 0:
		return "none registered"
	case 1:
		return names[0]
	}
	return strings.Join(names[:len(names)-1], ", ") + " or " + names[len(names)-1]
}

// DecodeBackend decodes the section n of the backend at path (such as
// "backends.corp") by its type typ: strictly, over the type's defaults,
// then checked. Problems go to d with full key paths and lines. It returns
// the Config, or nil when there were problems. It implements
// config.BackendTypes.
func (r *Registry) DecodeBackend(d *strictyaml.Decoder, path, typ string, n *yaml.Node) any {
	before := len(d.Problems())
	t, ok := r.Lookup(typ)
	switch {
	case typ == "":
		d.Add(strictyaml.Join(path, "type"), "required (%s)", r.nameList())
		return nil
	case !ok:
		d.Add(strictyaml.Join(path, "type"), "unknown type %q (registered types: %s)", typ, r.nameList())
		return nil
	}
	cfg := t.New()
	d.Decode(n, cfg, path, "type")
	if len(d.Problems()) > before {
		return nil // a value that did not decode also fails the checks: say it once
	}
	cfg.Check(&Checker{d: d, path: path})
	if len(d.Problems()) > before {
		return nil
	}
	return cfg
}

// Build returns the Backend of a configuration DecodeBackend returned.
func (r *Registry) Build(settings any, env Env) (Backend, error) {
	cfg, ok := settings.(Config)
	if !ok {
		return nil, fmt.Errorf("backends.%s: not decoded (%T)", env.Name, settings)
	}
	return cfg.Build(env)
}

// Checker collects the problems of one backend section. Keys are relative
// to the section: "delete.folder" is reported as
// backends.NAME.delete.folder with its line.
type Checker struct {
	d    *strictyaml.Decoder // nil: standalone (CheckConfig)
	path string
	errs []error
}

// Add reports a problem with key ("" for the section itself).
func (c *Checker) Add(key, format string, args ...any) {
	if c.d == nil {
		msg := fmt.Sprintf(format, args...)
		if key != "" {
			msg = key + ": " + msg
		}
		c.errs = append(c.errs, errors.New(msg))
		return
	}
	c.d.Add(strictyaml.Join(c.path, key), format, args...)
}

// Has reports whether key was written in the file (false for a
// configuration built in code). Checks such as "only used with policy
// move" use it, so that defaults never trip them.
func (c *Checker) Has(key string) bool {
	return c.d != nil && c.d.Has(strictyaml.Join(c.path, key))
}

// CheckConfig runs cfg's checks outside a file (for a configuration built
// in code, such as in tests) and returns them as one error, each problem
// prefixed by its key.
func CheckConfig(cfg Config) error {
	c := &Checker{}
	cfg.Check(c)
	return errors.Join(c.errs...)
}

// Keys returns the keys a type allows in a backend section, type first, in
// the order the file documentation uses.
func (t Type) Keys() []string {
	return append([]string{"type"}, strictyaml.FieldNames(reflect.TypeOf(t.New()))...)
}
