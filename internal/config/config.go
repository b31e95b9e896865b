// Package config reads and checks popgate's YAML configuration file.
//
// The file is strict: an unknown key is an error naming the key and its line.
// Scalar values may use ${NAME} to take an environment variable (so secrets
// stay out of the file); an unset variable is an error. Durations are written
// like 30s, 10m or 1h. Keys left out take the defaults documented on each
// field (and in config.example.yaml).
//
// Parse and Load report every problem of a file at once, each naming the key
// path (for example routes[1].backend) and, when known, its line.
package config

import (
	"sort"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/popgate/popgate/internal/oauth"
	"github.com/popgate/popgate/internal/strictyaml"
	"github.com/popgate/popgate/proxy"
	"github.com/popgate/popgate/tlsconf"
)

// Config is the whole configuration file.
type Config struct {
	// Listeners are the addresses popgate accepts POP3 clients on.
	Listeners []Listener `yaml:"listeners"`
	// TLS holds the server certificate (static files or ACME); required
	// when a listener uses starttls or implicit TLS. tlsconf defines its
	// keys, defaults and checks.
	TLS *tlsconf.Config `yaml:"tls"`
	// Backends are the named upstream stores.
	Backends map[string]*Backend `yaml:"backends"`
	// Routes map login names to backends; the first match wins.
	Routes []Route `yaml:"routes"`
	// Accounts are device accounts (a file) or the auth hook (http); nil:
	// logins pass through to the routes with the client's credentials.
	Accounts *Accounts `yaml:"accounts"`
	// Auth controls login.
	Auth Auth `yaml:"auth"`
	// Session holds per-connection timeouts and limits.
	Session Session `yaml:"session"`
	// Shutdown controls SIGTERM/SIGINT.
	Shutdown Shutdown `yaml:"shutdown"`
	// Log controls the log output.
	Log Log `yaml:"log"`
	// Migration holds the UIDL maps captured from a retired POP3 server.
	Migration Migration `yaml:"migration"`
	// Credentials are named OAuth2 upstream credentials (Microsoft 365
	// client credentials, a Gmail refresh token); see package oauth.
	Credentials map[string]*oauth.CredentialConfig `yaml:"credentials"`
	// TokenStore is the encrypted file holding the credentials' tokens;
	// required when Credentials is not empty.
	TokenStore *oauth.StoreConfig `yaml:"token_store"`
	// Cluster shares locks and login state between nodes through Redis;
	// nil: everything stays in-process.
	Cluster *Cluster `yaml:"cluster"`
	// Admin is the admin HTTP server (metrics, health); nil: none.
	Admin *Admin `yaml:"admin"`

	// Path is the file the configuration was loaded from ("" for Parse).
	Path string `yaml:"-"`

	backendOrder []string            // backend names in file order
	dec          *strictyaml.Decoder // lines of the key paths
}

// TLS modes of a listener and of an upstream connection.
const (
	TLSNone     = "none"
	TLSStartTLS = "starttls"
	TLSImplicit = "implicit"
)

// Listener is one address popgate accepts clients on.
type Listener struct {
	// Address is host:port, e.g. 0.0.0.0:995 or [::]:110.
	Address string `yaml:"address"`
	// TLS is none, starttls (STLS offered, RFC 2595) or implicit (POP3S,
	// RFC 8314). Required.
	TLS string `yaml:"tls"`
	// ProxyProtocol requires a PROXY protocol header (v1 or v2) from the
	// trusted load balancers and refuses every other source; nil: off.
	ProxyProtocol *ProxyProtocol `yaml:"proxy_protocol"`
}

// Backend is one upstream store as the file gives it: its type, and its
// section, which the backends registry decodes, defaults and checks by that
// type (the configuration core knows no backend's keys).
type Backend struct {
	// Type names the store type (imap, demo, …): a key of the registry.
	Type string
	// Node is the backend's whole section, the type key included.
	Node *yaml.Node
	// Settings is what the type decoded from Node (a backends.Config);
	// nil when the section has problems or no BackendTypes was given.
	Settings any
}

// RawYAML marks Backend for strictyaml: its node is kept as it is.
func (*Backend) RawYAML() {}

// UnmarshalYAML keeps the node and reads the type key.
func (b *Backend) UnmarshalYAML(n *yaml.Node) error {
	b.Node = n
	for i := 0; i+1 < len(n.Content); i += 2 {
		if n.Content[i].Value == "type" && n.Content[i+1].Kind == yaml.ScalarNode {
			b.Type = n.Content[i+1].Value
		}
	}
	return nil
}

// Route sends the logins it matches to a backend.
type Route struct {
	// Match is "*" (everyone), "*@example.com" (a domain, case-insensitive)
	// or an exact login name.
	Match   string  `yaml:"match"`
	Backend string  `yaml:"backend"`
	Rewrite Rewrite `yaml:"rewrite"`
}

// Rewrite changes the login name sent upstream (strip first, then add).
type Rewrite struct {
	StripDomain bool   `yaml:"strip_domain"` // "alice@example.com" -> "alice"
	AddDomain   string `yaml:"add_domain"`   // "alice" -> "alice@example.com"
}

// Auth controls logins.
type Auth struct {
	// AllowPlaintext allows USER/PASS and AUTH PLAIN/LOGIN before TLS.
	AllowPlaintext bool `yaml:"allow_plaintext"`
	// FailureDelay is the pause before answering the first failed login of
	// a client address or user name (default 2s); each further failure of
	// the same address or user doubles it, up to FailureMaxDelay. Failures
	// are forgotten after 15 minutes without one. 0s turns the penalty off.
	FailureDelay time.Duration `yaml:"failure_delay"`
	// FailureMaxDelay caps the growing failure delay (default 15s).
	FailureMaxDelay time.Duration `yaml:"failure_max_delay"`
	// MaxFailures closes the connection after this many failed logins
	// (default 3).
	MaxFailures int `yaml:"max_failures"`
	// MaxSASLBuffers caps the SASL lines over 255 octets (AUTH initial
	// responses and continuation lines, up to 32 KiB each: OAuth tokens)
	// being read at once, all connections together (default 256, 8 MiB of
	// buffers); over it, AUTH gets -ERR [SYS/TEMP].
	MaxSASLBuffers int `yaml:"max_sasl_buffers"`
}

// Accounts is where device logins are decided: file or http, not both.
type Accounts struct {
	// File is the accounts file (see README "Device accounts"), reloaded
	// on SIGHUP and when it changes.
	File string `yaml:"file"`
	// HTTP is the auth hook.
	HTTP *AccountsHTTP `yaml:"http"`
}

// AccountsHTTP is the auth hook: popgate POSTs each login to URL.
type AccountsHTTP struct {
	URL     string            `yaml:"url"`     // http:// or https://; required
	Timeout time.Duration     `yaml:"timeout"` // per call; 0: DefaultHookTimeout (5s)
	Headers map[string]string `yaml:"headers"` // sent with every call, e.g. Authorization
	CAFile  string            `yaml:"ca_file"` // extra trusted roots (PEM) for https
}

// DefaultHookTimeout bounds one auth hook call when accounts.http.timeout
// is not set.
const DefaultHookTimeout = 5 * time.Second

// Session holds per-connection timeouts and limits.
type Session struct {
	// IdleTimeout closes an idle logged-in session (default 10m, the
	// minimum of RFC 1939 §3).
	IdleTimeout time.Duration `yaml:"idle_timeout"`
	// LoginTimeout closes a connection that has not logged in (default 1m).
	LoginTimeout time.Duration `yaml:"login_timeout"`
	// WriteTimeout is the deadline of every write to the client (default 1m).
	WriteTimeout time.Duration `yaml:"write_timeout"`
	// CommandTimeout bounds each backend call on its own, and how long a
	// message stream may wait for data from the store (default 1m).
	CommandTimeout time.Duration `yaml:"command_timeout"`
	// MaxErrors closes the connection after this many consecutive protocol
	// faults (default proxy.DefaultMaxErrors, 20): unknown commands, commands
	// not valid in the current state, missing, extra or malformed arguments,
	// overlong lines. Answers about deleted or out-of-range message numbers,
	// upstream failures and failed logins (auth.max_failures) do not count.
	MaxErrors int `yaml:"max_errors"`
	// MaxConnections is the limit of open connections (default 1000; 0: no
	// limit).
	MaxConnections int `yaml:"max_connections"`
	// MaxConnectionsPerIP is the limit per client address (default 0: no
	// limit, so that many clients behind one NAT or load balancer work).
	MaxConnectionsPerIP int `yaml:"max_connections_per_ip"`
	// LoginDelay is the minimum time between two logins to one maildrop,
	// announced as LOGIN-DELAY (RFC 2449 §6.5) and enforced: a login sooner
	// gets -ERR [LOGIN-DELAY] (§8.1.2). An account may set its own. 0: none.
	LoginDelay time.Duration `yaml:"login_delay"`
	// Expire is announced as EXPIRE (RFC 2449 §6.7): NEVER or a number of
	// days; empty: not announced.
	Expire string `yaml:"expire"`
}

// Shutdown controls graceful stop.
type Shutdown struct {
	// DrainTimeout is how long open sessions may finish after SIGTERM or
	// SIGINT (default 30s); then they are closed without committing.
	DrainTimeout time.Duration `yaml:"drain_timeout"`
	// ReadyDelay is how long /readyz fails before the listeners close on
	// SIGTERM, so that a load balancer stops sending connections first
	// (default 0; only useful with an admin section).
	ReadyDelay time.Duration `yaml:"ready_delay"`
}

// Migration configures UIDL migration (popgate uidl capture).
type Migration struct {
	// UIDLDir is where captured maps live (default /var/lib/popgate/uidl).
	UIDLDir string `yaml:"uidl_dir"`
}

// Log controls the log output.
type Log struct {
	Level  string `yaml:"level"`  // debug, info (default), warn, error
	Format string `yaml:"format"` // json (default) or console
}

// Defaults returns a configuration holding every default and nothing else.
// The auth and session defaults are proxy's (proxy.DefaultOptions).
func Defaults() *Config {
	o := proxy.DefaultOptions()
	return &Config{
		Auth: Auth{
			FailureDelay:    o.AuthFailureDelay,
			FailureMaxDelay: 15 * time.Second,
			MaxFailures:     o.MaxAuthFailures,
			MaxSASLBuffers:  o.MaxSASLBuffers,
		},
		Session: Session{
			IdleTimeout:         o.IdleTimeout,
			LoginTimeout:        o.LoginTimeout,
			WriteTimeout:        o.WriteTimeout,
			CommandTimeout:      o.CommandTimeout,
			MaxErrors:           o.MaxErrors,
			MaxConnections:      o.MaxConns,
			MaxConnectionsPerIP: o.MaxConnsPerIP,
		},
		Shutdown:  Shutdown{DrainTimeout: 30 * time.Second},
		Log:       Log{Level: "info", Format: "json"},
		Migration: Migration{UIDLDir: "/var/lib/popgate/uidl"},
	}
}

// BackendNames returns the backend names in the order of the file.
func (c *Config) BackendNames() []string {
	if len(c.backendOrder) == len(c.Backends) {
		return append([]string(nil), c.backendOrder...)
	}
	names := make([]string, 0, len(c.Backends))
	for n := range c.Backends {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}
