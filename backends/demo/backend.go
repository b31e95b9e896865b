package demo

import (
	"context"
	"fmt"

	"github.com/popgate/popgate/backends"
	"github.com/popgate/popgate/backends/imap"
	"github.com/popgate/popgate/internal/netconf"
)

// Type is the demo store type: `type: demo` in a backend section runs the
// embedded store in the gateway's process and serves it through the IMAP
// backend, so the demo exercises the real code path. Its mail lives in
// memory: it is gone when the backend is closed (at shutdown, or after a
// reload that changed the section).
var Type = backends.Type{Name: "demo", New: func() backends.Config { c := DefaultConfig(); return &c }}

// Config is one demo backend: the keys of a `type: demo` section. The
// store is reached over loopback without TLS, so the TLS keys of network
// stores do not exist here.
type Config struct {
	// Address is the loopback host:port the embedded IMAP server listens
	// on (port 0: any free port).
	Address string `yaml:"address"`
	// Seed creates the user demo (password demo) with the sample messages.
	Seed bool `yaml:"seed"`
	// Store holds the shared keys (delete, mark_seen, snapshot_cache,
	// dial_timeout, command_timeout), with the IMAP backend's meaning.
	backends.Store `yaml:",inline"`
}

// DefaultConfig returns a demo configuration holding every default.
func DefaultConfig() Config {
	return Config{Address: DefaultIMAPAddress, Seed: true, Store: backends.DefaultStore()}
}

// Check implements backends.Config.
func (c *Config) Check(k *backends.Checker) {
	if err := netconf.CheckAddress(c.Address); err != nil {
		k.Add("address", "%v", err)
	} else if err := checkLoopback(c.Address); err != nil {
		k.Add("address", "%v", err)
	}
	c.Store.Check(k, nil)
	if c.Delete.Policy == backends.PolicyMove && c.Delete.Folder == "INBOX" {
		k.Add("delete.folder", "%q is the mailbox itself", c.Delete.Folder)
	}
}

// Summary implements backends.Config.
func (c *Config) Summary() string {
	seed := "empty"
	if c.Seed {
		seed = "user demo with sample mail"
	}
	return fmt.Sprintf("embedded store on %s (%s), %s", c.Address, seed, c.Store.Summary())
}

// Build implements backends.Config: it starts the embedded store and the
// IMAP backend in front of it.
func (c *Config) Build(env backends.Env) (backends.Backend, error) {
	ctx, cancel := context.WithTimeout(context.Background(), c.DialTimeout)
	defer cancel()
	s, err := Start(ctx, Options{IMAPAddress: c.Address, Logger: env.Log.With().Str("component", "demo-store").Logger(), NoSeed: !c.Seed})
	if err != nil {
		return nil, err
	}
	ic := imap.DefaultConfig()
	ic.Address, ic.TLS, ic.Store = s.IMAPAddr(), "none", c.Store
	ic.Name = env.Name
	up, err := imap.New(ic, env.Log)
	if err != nil {
		s.Close()
		return nil, err
	}
	return &Backend{Backend: up, Store: s}, nil
}

// Backend is a running demo backend: the embedded store and the IMAP
// backend in front of it.
type Backend struct {
	*imap.Backend
	Store *Store
}

// Close implements backends.Backend: it closes the IMAP backend and stops
// the embedded store (its mail is gone).
func (b *Backend) Close() error {
	b.Backend.Close()
	return b.Store.Close()
}
