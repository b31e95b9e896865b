package config

import (
	"fmt"
	"net/netip"
	"os"
	"time"

	"github.com/popgate/popgate/internal/netconf"
)

// Cluster is what several popgate nodes share through one Redis (issue 12):
// the maildrop lock and the failure-penalty and LOGIN-DELAY state. Without
// it everything stays in the process.
type Cluster struct {
	Redis Redis `yaml:"redis"`
	// LockLease is the lease of a maildrop lock, renewed while the session
	// lives (default 30s). A node that dies frees its locks after at most
	// one lease.
	LockLease time.Duration `yaml:"lock_lease"`
}

// Redis is the connection to the shared Redis.
type Redis struct {
	Address  string `yaml:"address"`  // host:port, required
	Password string `yaml:"password"` // optional (requirepass / ACL default user)
	DB       int    `yaml:"db"`       // database number, default 0
	// TLS: true connects with TLS, verified with CAFile (else the system
	// roots) and ServerName (else the host of Address).
	TLS        bool   `yaml:"tls"`
	CAFile     string `yaml:"ca_file"`
	ServerName string `yaml:"server_name"`
	// KeyPrefix starts every key popgate writes (default "popgate:").
	KeyPrefix *string `yaml:"key_prefix"`
}

// DefaultLockLease and DefaultKeyPrefix apply inside a cluster section.
const (
	DefaultLockLease = 30 * time.Second
	DefaultKeyPrefix = "popgate:"
)

// ProxyProtocol turns on the PROXY protocol (v1 and v2) on a listener.
type ProxyProtocol struct {
	// Trusted are the load balancers (CIDRs or addresses). A connection
	// from one of them must start with a PROXY header; connections from any
	// other source are refused.
	Trusted []string `yaml:"trusted"`
}

// Admin is the admin HTTP server: GET /metrics, /healthz, /readyz.
type Admin struct {
	// Address is host:port (default 127.0.0.1:9110, loopback).
	Address string `yaml:"address"`
	// Token, when set, is required as "Authorization: Bearer TOKEN" on
	// every admin request.
	Token string `yaml:"token"`
}

// DefaultAdminAddress is the admin address when the section leaves it out.
const DefaultAdminAddress = "127.0.0.1:9110"

// applyClusterDefaults fills the defaults of the cluster and admin sections.
func (c *Config) applyClusterDefaults() {
	if cl := c.Cluster; cl != nil {
		if cl.LockLease == 0 {
			cl.LockLease = DefaultLockLease
		}
		if cl.Redis.KeyPrefix == nil {
			p := DefaultKeyPrefix
			cl.Redis.KeyPrefix = &p
		}
	}
	if a := c.Admin; a != nil && a.Address == "" {
		a.Address = DefaultAdminAddress
	}
}

// cluster checks the cluster, admin and listeners[].proxy_protocol keys and
// shutdown.ready_delay.
func (k *checker) cluster() {
	c := k.c
	if cl := c.Cluster; cl != nil {
		if err := netconf.CheckAddress(cl.Redis.Address); err != nil {
			k.add("cluster.redis.address", "%v", err)
		}
		if cl.Redis.DB < 0 {
			k.add("cluster.redis.db", "must not be negative")
		}
		if !cl.Redis.TLS && (cl.Redis.CAFile != "" || cl.Redis.ServerName != "") {
			k.add("cluster.redis.tls", "ca_file and server_name need tls: true")
		}
		if cl.Redis.CAFile != "" {
			if err := readable(cl.Redis.CAFile); err != nil {
				k.add("cluster.redis.ca_file", "%v", err)
			}
		}
		if cl.LockLease < 3*time.Second && cl.LockLease != 0 {
			k.add("cluster.lock_lease", "%v is too short (at least 3s: it is renewed every third of it)", cl.LockLease)
		}
	}
	if a := c.Admin; a != nil {
		if err := netconf.CheckAddress(a.Address); err != nil {
			k.add("admin.address", "%v", err)
		}
	}
	if c.Shutdown.ReadyDelay < 0 {
		k.add("shutdown.ready_delay", "must not be negative")
	}
	for i, l := range c.Listeners {
		if l.ProxyProtocol == nil {
			continue
		}
		p := fmt.Sprintf("listeners[%d].proxy_protocol.trusted", i)
		if len(l.ProxyProtocol.Trusted) == 0 {
			k.add(p, "required: the load balancers' addresses or CIDRs (10.0.0.0/8); other sources are refused")
		}
		for j, s := range l.ProxyProtocol.Trusted {
			if _, err := netip.ParsePrefix(s); err == nil {
				continue
			}
			if _, err := netip.ParseAddr(s); err != nil {
				k.add(fmt.Sprintf("%s[%d]", p, j), "%q is neither an IP address nor a CIDR", s)
			}
		}
	}
}

// readable checks that a file exists and can be opened.
func readable(path string) error {
	f, err := os.Open(path)
	if err != nil {
		if pe, ok := err.(*os.PathError); ok {
			return fmt.Errorf("%s: %v", path, pe.Err)
		}
		return err
	}
	return f.Close()
}
