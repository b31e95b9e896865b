package config

import (
	"strings"
	"testing"
	"time"
)

const clusterPart = `
cluster:
  redis:
    address: 127.0.0.1:6379
    password: ${REDIS_PASSWORD}
    db: 2
  lock_lease: 20s
admin:
  token: ${ADMIN_TOKEN}
shutdown:
  ready_delay: 5s
`

func TestClusterKeys(t *testing.T) {
	t.Setenv("REDIS_PASSWORD", "redis-secret")
	t.Setenv("ADMIN_TOKEN", "admin-secret")
	s := strings.Replace(withFiles(t, good), "    tls: implicit\ntls:", "    tls: implicit\n    proxy_protocol: {trusted: [10.0.0.0/8, 192.0.2.7]}\ntls:", 1) + clusterPart
	c, err := Parse([]byte(s), types)
	if err != nil {
		t.Fatal(err)
	}
	cl := c.Cluster
	if cl == nil || cl.Redis.Address != "127.0.0.1:6379" || cl.Redis.Password != "redis-secret" || cl.Redis.DB != 2 || cl.LockLease != 20*time.Second {
		t.Fatalf("cluster %+v", cl)
	}
	if cl.Redis.KeyPrefix == nil || *cl.Redis.KeyPrefix != DefaultKeyPrefix {
		t.Fatalf("key_prefix default: %v", cl.Redis.KeyPrefix)
	}
	if c.Admin == nil || c.Admin.Address != DefaultAdminAddress || c.Admin.Token != "admin-secret" {
		t.Fatalf("admin %+v", c.Admin)
	}
	if c.Shutdown.ReadyDelay != 5*time.Second {
		t.Fatalf("ready_delay %v", c.Shutdown.ReadyDelay)
	}
	if c.Listeners[0].ProxyProtocol != nil || c.Listeners[1].ProxyProtocol == nil || len(c.Listeners[1].ProxyProtocol.Trusted) != 2 {
		t.Fatalf("proxy_protocol: %+v %+v", c.Listeners[0].ProxyProtocol, c.Listeners[1].ProxyProtocol)
	}

	// Without the sections: nothing shared, no admin server.
	c, err = Parse([]byte(withFiles(t, good)), types)
	if err != nil {
		t.Fatal(err)
	}
	if c.Cluster != nil || c.Admin != nil || c.Shutdown.ReadyDelay != 0 {
		t.Fatalf("defaults: %+v %+v %v", c.Cluster, c.Admin, c.Shutdown.ReadyDelay)
	}
	// An empty key_prefix stays empty.
	c, err = Parse([]byte(withFiles(t, good)+"cluster: {redis: {address: \"r:6379\", key_prefix: \"\"}}\n"), types)
	if err != nil {
		t.Fatal(err)
	}
	if *c.Cluster.Redis.KeyPrefix != "" {
		t.Fatalf("key_prefix %q", *c.Cluster.Redis.KeyPrefix)
	}
}

func TestClusterProblems(t *testing.T) {
	s := strings.Replace(withFiles(t, good), "    tls: implicit\ntls:", "    tls: implicit\n    proxy_protocol: {trusted: [10.0.0.0/33]}\ntls:", 1) + `
cluster:
  redis: {address: "redis", db: -1, server_name: x}
  lock_lease: 1s
admin: {address: "nope"}
shutdown: {ready_delay: -1s}
`
	got := strings.Join(problems(t, s), "\n")
	for _, want := range []string{
		`listeners[1].proxy_protocol.trusted[0]: "10.0.0.0/33" is neither an IP address nor a CIDR`,
		`cluster.redis.address: "redis" is not host:port`,
		`cluster.redis.db: must not be negative`,
		`cluster.redis.tls: ca_file and server_name need tls: true`,
		`cluster.lock_lease: 1s is too short`,
		`admin.address: "nope" is not host:port`,
		`shutdown.ready_delay: duration "-1s" must not be negative`,
	} {
		if !strings.Contains(got, want) {
			t.Errorf("problems lack %q:\n%s", want, got)
		}
	}
	s = strings.Replace(withFiles(t, good), "    tls: implicit\ntls:", "    tls: implicit\n    proxy_protocol: {}\ntls:", 1)
	if got := strings.Join(problems(t, s), "\n"); !strings.Contains(got, "listeners[1].proxy_protocol.trusted: required") {
		t.Errorf("empty trusted: %s", got)
	}
}
