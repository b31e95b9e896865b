package e2e

// Several popgate nodes (the built binary) behind a private HAProxy
// (send-proxy-v2, health checks on /readyz) with one private Redis for the
// maildrop locks, in front of the shared Dovecot (issue 12).

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/popgate/popgate/internal/pop3client"
	"github.com/popgate/popgate/internal/testserver/haproxy"
	"github.com/popgate/popgate/internal/testserver/redis"
)

const (
	clusterRedisPassword = "redis-pw-Hq8v"
	clusterAdminToken    = "admin-tok-Jr5w"
)

// clusterNode is one popgate process of a test cluster. Its ports stay the
// same across restarts.
type clusterNode struct {
	name      string
	pop3      string // POP3 listener (PROXY protocol from 127.0.0.1)
	admin     string // admin listener
	dir, conf string
	logPath   string

	mu     sync.Mutex
	cmd    *exec.Cmd
	exited chan struct{}
}

type testCluster struct {
	t     *testing.T
	redis *redis.Server
	nodes []*clusterNode
	hap   *haproxy.Server
}

// clusterLimits is the auth and session sections of the nodes of
// startCluster: no failure delay, no login delay.
const clusterLimits = `auth:
  allow_plaintext: true
  failure_delay: 0s
session:
  command_timeout: 120s
  login_timeout: 5m
`

// startCluster starts Redis, n popgate nodes with lock_lease lease, and
// HAProxy in front of them, all stopped at the end of t.
func startCluster(t *testing.T, n int, lease string) *testCluster {
	t.Helper()
	return startClusterWith(t, n, lease, clusterLimits)
}

// startClusterWith is startCluster with limits as the nodes' auth and
// session sections.
func startClusterWith(t *testing.T, n int, lease, limits string) *testCluster {
	t.Helper()
	require(t)
	redis.Require(t)
	haproxy.Require(t)
	c := &testCluster{t: t, redis: redis.Start(t, redis.Options{Password: clusterRedisPassword})}
	var bes []haproxy.Backend
	for i := range n {
		nd := &clusterNode{
			name:  fmt.Sprintf("n%d", i),
			pop3:  "127.0.0.1:" + freePort(t),
			admin: "127.0.0.1:" + freePort(t),
			dir:   t.TempDir(),
		}
		nd.conf = filepath.Join(nd.dir, "popgate.yaml")
		nd.logPath = filepath.Join(nd.dir, "popgate.log")
		writeFile(t, nd.conf, fmt.Sprintf(`# popgate e2e cluster node %s
listeners:
  - address: "%s"
    tls: none
    proxy_protocol: {trusted: [127.0.0.1/32]}
backends:
  dovecot:
    type: imap
    address: "%s"
    tls: none
    delete: {policy: expunge}
    # generous: these tests assert outcomes, not speed, on a shared machine
    dial_timeout: 60s
    command_timeout: 120s
routes:
  - {match: "*", backend: dovecot}
%scluster:
  redis:
    address: "%s"
    password: ${E2E_REDIS_PASSWORD}
    key_prefix: "e2e:"
  lock_lease: %s
admin:
  address: "%s"
  token: ${E2E_ADMIN_TOKEN}
shutdown:
  ready_delay: 2s
  drain_timeout: 20s
log:
  level: debug
  format: json
`, nd.name, nd.pop3, dc.Addr(), limits, c.redis.Addr(), lease, nd.admin), 0o600)
		c.nodes = append(c.nodes, nd)
		bes = append(bes, haproxy.Backend{Name: nd.name, Addr: nd.pop3, CheckAddr: nd.admin})
	}
	t.Cleanup(func() {
		for _, nd := range c.nodes {
			nd.stop(t, syscall.SIGKILL)
			log, _ := os.ReadFile(nd.logPath)
			for _, s := range []string{clusterRedisPassword, clusterAdminToken} {
				if bytes.Contains(log, []byte(s)) {
					t.Errorf("node %s logged a secret", nd.name)
				}
			}
			if t.Failed() {
				t.Logf("node %s log:\n%s", nd.name, clip(log))
			}
		}
	})
	for _, nd := range c.nodes {
		nd.start(t)
	}
	for _, nd := range c.nodes {
		nd.waitReady(t)
	}
	c.hap = haproxy.Start(t, haproxy.Options{Backends: bes, SendProxy: "v2", CheckToken: clusterAdminToken, CheckInterval: 100 * time.Millisecond})
	c.waitUp(t, len(c.nodes))
	return c
}

// waitUp waits until HAProxy sees want nodes up.
func (c *testCluster) waitUp(t *testing.T, want int) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for {
		st, err := c.hap.States()
		if err != nil {
			t.Fatal(err)
		}
		up := 0
		for _, s := range st {
			if s == "UP" {
				up++
			}
		}
		if up == want {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("HAProxy sees %v, want %d up", st, want)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func (nd *clusterNode) start(t *testing.T) {
	t.Helper()
	logf, err := os.OpenFile(nd.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(popgateBin, "serve", "--config", nd.conf)
	cmd.Env = append(os.Environ(), "E2E_REDIS_PASSWORD="+clusterRedisPassword, "E2E_ADMIN_TOKEN="+clusterAdminToken)
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		logf.Close()
		t.Fatal(err)
	}
	logf.Close()
	exited := make(chan struct{})
	go func() { cmd.Wait(); close(exited) }()
	nd.mu.Lock()
	nd.cmd, nd.exited = cmd, exited
	nd.mu.Unlock()
}

// stop sends sig and waits for the process to end (SIGKILL after 60s).
func (nd *clusterNode) stop(t *testing.T, sig syscall.Signal) {
	nd.mu.Lock()
	cmd, exited := nd.cmd, nd.exited
	nd.cmd = nil
	nd.mu.Unlock()
	if cmd == nil {
		return
	}
	cmd.Process.Signal(sig)
	select {
	case <-exited:
	case <-time.After(60 * time.Second):
		cmd.Process.Kill()
		<-exited
		t.Errorf("node %s did not exit within 60s of %v", nd.name, sig)
	}
}

// adminGet returns the status and body of an admin request.
func (nd *clusterNode) adminGet(path string) (int, string, error) {
	req, _ := http.NewRequest(http.MethodGet, "http://"+nd.admin+path, nil)
	req.Header.Set("Authorization", "Bearer "+clusterAdminToken)
	cl := &http.Client{Timeout: 10 * time.Second}
	resp, err := cl.Do(req)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), nil
}

func (nd *clusterNode) waitReady(t *testing.T) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for {
		code, body, err := nd.adminGet("/readyz")
		if code == 200 {
			return
		}
		if time.Now().After(deadline) {
			log, _ := os.ReadFile(nd.logPath)
			t.Fatalf("node %s not ready: %d %q %v\n%s", nd.name, code, body, err, clip(log))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func (nd *clusterNode) log(t *testing.T) string {
	b, err := os.ReadFile(nd.logPath)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// metric returns the value of one sample of nd's /metrics ("name{labels}"
// exactly as exposed), or -1 when absent.
func (nd *clusterNode) metric(t *testing.T, sample string) float64 {
	t.Helper()
	code, body, err := nd.adminGet("/metrics")
	if err != nil || code != 200 {
		t.Fatalf("scrape %s: %d %v", nd.name, code, err)
	}
	for _, l := range strings.Split(body, "\n") {
		if v, ok := strings.CutPrefix(l, sample+" "); ok {
			f, err := strconv.ParseFloat(v, 64)
			if err != nil {
				t.Fatalf("sample %q: %v", l, err)
			}
			return f
		}
	}
	return -1
}

// dialNode connects straight to a node as the load balancer would: a PROXY
// v1 header from 127.0.0.1 (trusted) naming client as the source.
func dialNode(t *testing.T, nd *clusterNode, client string) *pop3 {
	t.Helper()
	c, err := net.DialTimeout("tcp", nd.pop3, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	_, port, _ := net.SplitHostPort(nd.pop3)
	fmt.Fprintf(c, "PROXY TCP4 %s 127.0.0.1 40001 %s\r\n", client, port)
	p := &pop3{t: t, c: c, r: bufio.NewReader(c), id: client}
	if l, err := p.line(); err != nil || !strings.HasPrefix(l, "+OK") {
		t.Fatalf("greeting from %s: %q %v", nd.name, l, err)
	}
	return p
}

// servedBy returns the node whose log has a login from client ip.
func (c *testCluster) servedBy(t *testing.T, ip string) *clusterNode {
	t.Helper()
	re := regexp.MustCompile(`"remote":"` + regexp.QuoteMeta(ip) + `:\d+"[^\n]*"message":"logged in"`)
	var found *clusterNode
	eventually(t, "a node logs the login from "+ip, func() bool {
		for _, nd := range c.nodes {
			if re.MatchString(nd.log(t)) {
				found = nd
				return true
			}
		}
		return false
	})
	return found
}

func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting until %s", what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestClusterRace: 200 logins to one maildrop at once, spread by HAProxy
// over three nodes: exactly one gets in, every other one gets
// -ERR [IN-USE], and more than one node refused (the lock is shared).
func TestClusterRace(t *testing.T) {
	// A lease far longer than a renewal can be late on a loaded machine:
	// this test is about exclusion, not expiry.
	c := startCluster(t, 3, "60s")
	pass := newUser(t, "race")
	appendAll(t, "race", [][]byte{[]byte("Subject: r\r\n\r\nrace\r\n")})

	const attempts = 200
	type result struct {
		c   net.Conn // the winner's connection, still in TRANSACTION
		err error
	}
	results := make(chan result, attempts)
	start := make(chan struct{})
	// At most 50 logins in flight, so that the shared Dovecot is not the
	// bottleneck; the winner holds the maildrop until all 200 are done.
	inFlight := make(chan struct{}, 50)
	var wg sync.WaitGroup
	for i := range attempts {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			inFlight <- struct{}{}
			defer func() { <-inFlight }()
			// Each client from its own address, which the nodes must log.
			conn, err := raceLogin(fmt.Sprintf("127.0.3.%d", i+1), c.hap.Addr(), pass)
			results <- result{conn, err}
		}()
	}
	close(start)
	wg.Wait()
	close(results)
	var winners []net.Conn
	inUse := 0
	for r := range results {
		switch {
		case r.err == nil:
			winners = append(winners, r.c)
		case errors.Is(r.err, errInUse):
			inUse++
		default:
			t.Errorf("attempt: %v", r.err)
		}
	}
	if len(winners) != 1 || inUse != attempts-1 {
		t.Fatalf("%d got in and %d got [IN-USE] of %d, want 1 and %d", len(winners), inUse, attempts, attempts-1)
	}
	fmt.Fprintf(winners[0], "QUIT\r\n")
	if l, err := bufio.NewReader(winners[0]).ReadString('\n'); err != nil || !strings.HasPrefix(l, "+OK") {
		t.Fatalf("QUIT of the winner: %q %v", l, err)
	}
	winners[0].Close()
	// Every node logs the clients' own addresses (from the PROXY v2
	// header), never the balancer's.
	for _, nd := range c.nodes {
		log := nd.log(t)
		if !strings.Contains(log, `"remote":"127.0.3.`) {
			t.Errorf("node %s logs no client address", nd.name)
		}
		if strings.Contains(log, `"remote":"127.0.0.1:`) {
			t.Errorf("node %s logs the balancer's address as a client's", nd.name)
		}
	}
	refusing := 0
	total := 0.0
	for _, nd := range c.nodes {
		v := nd.metric(t, `popgate_logins_total{result="in_use"}`)
		total += v
		if v > 0 {
			refusing++
		}
	}
	if total != attempts-1 || refusing < 2 {
		t.Fatalf("in_use counted %v over %d nodes, want %d over at least 2", total, refusing, attempts-1)
	}
	// The maildrop is free again once the winner quit.
	cl, err := pop3client.Dial(c.hap.Addr(), pop3client.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if err := cl.Login("race", pass); err != nil {
		t.Fatalf("login after the winner quit: %v", err)
	}
	cl.Quit()
}

// TestClusterNodeKilled: SIGKILL of the node holding a session with
// pending DELEs deletes nothing upstream; the maildrop stays locked until
// the lease runs out, then opens on another node. The node's log shows the
// client's real address (from the PROXY v2 header HAProxy sent).
func TestClusterNodeKilled(t *testing.T) {
	c := startCluster(t, 3, "10s")
	pass := newUser(t, "killed")
	appendAll(t, "killed", [][]byte{[]byte("Subject: 1\r\n\r\none\r\n"), []byte("Subject: 2\r\n\r\ntwo\r\n")})

	const ip = "127.0.4.1"
	p := dialPOP3(t, ip, c.hap.Addr())
	p.cmd("USER killed")
	if l := p.cmd("PASS %s", pass); !strings.HasPrefix(l, "+OK") {
		t.Fatalf("PASS: %q", l)
	}
	p.cmd("DELE 1")
	p.cmd("DELE 2")
	victim := c.servedBy(t, ip)
	victim.stop(t, syscall.SIGKILL)
	if !p.closed() {
		t.Fatal("the session survived its node")
	}
	if _, msgs := upstream(t, "killed"); len(msgs) != 2 {
		t.Fatalf("%d messages upstream after the kill, want 2 (nothing deleted)", len(msgs))
	}
	c.waitUp(t, 2)
	// The lease (10s) has not run out: the lock of the dead node holds.
	p2 := dialPOP3(t, "127.0.4.2", c.hap.Addr())
	p2.cmd("USER killed")
	if l := p2.cmd("PASS %s", pass); !strings.HasPrefix(l, "-ERR [IN-USE]") {
		t.Fatalf("login right after the kill: %q, want -ERR [IN-USE]", l)
	}
	// After the lease the maildrop opens, with both messages.
	var l string
	eventually(t, "the maildrop opens after the lease", func() bool {
		p3 := dialPOP3(t, "127.0.4.3", c.hap.Addr())
		p3.cmd("USER killed")
		if l = p3.cmd("PASS %s", pass); strings.HasPrefix(l, "+OK") {
			if s := p3.cmd("STAT"); !strings.HasPrefix(s, "+OK 2 ") {
				t.Errorf("STAT after the kill: %q", s)
			}
			p3.cmd("QUIT")
			return true
		}
		if !strings.HasPrefix(l, "-ERR [IN-USE]") {
			t.Fatalf("login: %q", l)
		}
		p3.c.Close()
		time.Sleep(500 * time.Millisecond)
		return false
	})
}

// TestClusterRedisDown: Redis stopped during a session: that session does
// not commit ([SYS/TEMP], nothing deleted, the log says why), new logins get
// [SYS/TEMP], /readyz fails; with Redis back the service recovers.
func TestClusterRedisDown(t *testing.T) {
	c := startCluster(t, 2, "10s")
	pass := newUser(t, "redisdown")
	appendAll(t, "redisdown", [][]byte{[]byte("Subject: 1\r\n\r\none\r\n"), []byte("Subject: 2\r\n\r\ntwo\r\n")})

	const ip = "127.0.5.1"
	p := dialPOP3(t, ip, c.hap.Addr())
	p.cmd("USER redisdown")
	if l := p.cmd("PASS %s", pass); !strings.HasPrefix(l, "+OK") {
		t.Fatalf("PASS: %q", l)
	}
	p.cmd("DELE 1")
	nd := c.servedBy(t, ip)
	c.redis.Stop()
	if l := p.cmd("QUIT"); !strings.HasPrefix(l, "-ERR [SYS/TEMP]") {
		t.Fatalf("QUIT with Redis down: %q, want -ERR [SYS/TEMP]", l)
	}
	if _, msgs := upstream(t, "redisdown"); len(msgs) != 2 {
		t.Fatalf("%d messages upstream, want 2 (no commit)", len(msgs))
	}
	eventually(t, "the log says why", func() bool {
		return strings.Contains(nd.log(t), "maildrop lock could not be confirmed: nothing committed")
	})
	// New logins (straight to a node, as HAProxy takes unready nodes out).
	for i, n := range c.nodes {
		q := dialNode(t, n, fmt.Sprintf("192.0.2.%d", 10+i))
		q.cmd("USER redisdown")
		if l := q.cmd("PASS %s", pass); !strings.HasPrefix(l, "-ERR [SYS/TEMP]") {
			t.Fatalf("login on %s with Redis down: %q, want -ERR [SYS/TEMP]", n.name, l)
		}
		if code, body, _ := n.adminGet("/readyz"); code != 503 || !strings.Contains(body, "redis") {
			t.Fatalf("/readyz of %s with Redis down: %d %q", n.name, code, body)
		}
	}
	if err := c.redis.Resume(); err != nil {
		t.Fatal(err)
	}
	c.waitUp(t, 2)
	p = dialPOP3(t, "127.0.5.2", c.hap.Addr())
	p.cmd("USER redisdown")
	if l := p.cmd("PASS %s", pass); !strings.HasPrefix(l, "+OK") {
		t.Fatalf("login with Redis back: %q", l)
	}
	p.cmd("DELE 1")
	if l := p.cmd("QUIT"); !strings.HasPrefix(l, "+OK") {
		t.Fatalf("QUIT with Redis back: %q", l)
	}
	if _, msgs := upstream(t, "redisdown"); len(msgs) != 1 {
		t.Fatalf("%d messages upstream, want 1", len(msgs))
	}
}

// TestClusterRollingRestart: SIGTERM one node at a time under pop3load
// traffic through HAProxy: no session fails, /readyz goes red while the
// POP3 listener still accepts, and each node comes back.
func TestClusterRollingRestart(t *testing.T) {
	c := startCluster(t, 3, "5s")
	const users = 6
	pass := "pw-roll-Tz4"
	for i := 1; i <= users; i++ {
		name := fmt.Sprintf("roll%d", i)
		if err := dc.AddUser(name, pass); err != nil {
			t.Fatal(err)
		}
		appendAll(t, name, [][]byte{[]byte("Subject: r\r\n\r\nroll\r\n")})
	}
	load := exec.Command(pop3loadBin(t), "-addr", c.hap.Addr(), "-mode", "login", "-c", "6",
		"-users", "roll%d", "-nusers", strconv.Itoa(users), "-pass", pass, "-d", "10m", "-timeout", "60s")
	var out bytes.Buffer
	load.Stdout, load.Stderr = &out, &out
	if err := load.Start(); err != nil {
		t.Fatal(err)
	}
	loadDone := make(chan struct{})
	go func() { load.Wait(); close(loadDone) }()
	defer func() {
		load.Process.Kill()
		<-loadDone
	}()
	time.Sleep(time.Second) // traffic on every node before the first stop

	for _, nd := range c.nodes {
		nd.mu.Lock()
		cmd, exited := nd.cmd, nd.exited
		nd.cmd = nil
		nd.mu.Unlock()
		cmd.Process.Signal(syscall.SIGTERM)
		eventually(t, nd.name+" /readyz red after SIGTERM", func() bool {
			code, _, err := nd.adminGet("/readyz")
			return err == nil && code == 503
		})
		// Not ready, but the POP3 listener still serves (ready_delay).
		q := dialNode(t, nd, "192.0.2.99")
		q.cmd("QUIT")
		select {
		case <-exited:
		case <-time.After(60 * time.Second):
			t.Fatalf("%s did not stop within 60s of SIGTERM", nd.name)
		}
		log := nd.log(t)
		red := strings.LastIndex(log, "not ready: listeners stay open for the ready delay")
		stopped := strings.LastIndex(log, `"message":"stopped"`)
		if red < 0 || stopped < red {
			t.Fatalf("%s log: ready delay at %d, stopped at %d", nd.name, red, stopped)
		}
		nd.start(t)
		nd.waitReady(t)
		c.waitUp(t, len(c.nodes))
		time.Sleep(500 * time.Millisecond) // traffic on the restarted node
	}
	load.Process.Signal(syscall.SIGINT)
	select {
	case <-loadDone:
	case <-time.After(120 * time.Second):
		t.Fatal("pop3load did not stop")
	}
	summary := out.String()
	m := regexp.MustCompile(`sessions=(\d+) errors=(\d+)`).FindStringSubmatch(summary)
	if m == nil {
		t.Fatalf("pop3load output: %s", summary)
	}
	if m[2] != "0" || m[1] == "0" {
		t.Fatalf("rolling restart: %s", summary)
	}
	t.Logf("rolling restart under load: %s", strings.TrimSpace(summary))
}

// TestClusterMetrics: after a known workload on one node, its /metrics
// counts exactly that workload, and its log names the client addresses
// of the PROXY headers.
func TestClusterMetrics(t *testing.T) {
	c := startCluster(t, 1, "5s")
	nd := c.nodes[0]
	pass := newUser(t, "metrics")
	appendAll(t, "metrics", [][]byte{[]byte("Subject: 1\r\n\r\none\r\n"), []byte("Subject: 2\r\n\r\ntwo\r\n"), []byte("Subject: 3\r\n\r\nthree\r\n")})

	login := func(ip string) *pop3 {
		p := dialNode(t, nd, ip)
		p.cmd("USER metrics")
		if l := p.cmd("PASS %s", pass); !strings.HasPrefix(l, "+OK") {
			t.Fatalf("PASS: %q", l)
		}
		return p
	}
	// 1: RETR, DELE, QUIT (cache miss: first login).
	p := login("198.51.100.1")
	if l := p.cmd("RETR 1"); !strings.HasPrefix(l, "+OK") {
		t.Fatal(l)
	}
	p.multi()
	p.cmd("DELE 1")
	if l := p.cmd("QUIT"); !strings.HasPrefix(l, "+OK") {
		t.Fatal(l)
	}
	// 2: a wrong password.
	p = dialNode(t, nd, "198.51.100.2")
	p.cmd("USER metrics")
	if l := p.cmd("PASS wrong"); !strings.HasPrefix(l, "-ERR [AUTH]") {
		t.Fatal(l)
	}
	p.cmd("QUIT")
	// 3: miss (the mailbox changed), 4: hit, 5: in use while 4 is open.
	login("198.51.100.3").cmd("QUIT")
	p4 := login("198.51.100.4")
	p5 := dialNode(t, nd, "198.51.100.5")
	p5.cmd("USER metrics")
	if l := p5.cmd("PASS %s", pass); !strings.HasPrefix(l, "-ERR [IN-USE]") {
		t.Fatal(l)
	}
	p5.cmd("QUIT")
	p4.cmd("QUIT")
	// 6: a direct connection from an untrusted source is refused.
	if conn, err := dialFrom("127.0.6.1", nd.pop3); err == nil {
		conn.SetReadDeadline(time.Now().Add(30 * time.Second))
		if n, _ := conn.Read(make([]byte, 64)); n != 0 {
			t.Error("an untrusted source got an answer")
		}
		conn.Close()
	}

	want := map[string]float64{
		`popgate_sessions_open`:                                                              0,
		`popgate_sessions_ended_total{end="quit"}`:                                           5,
		`popgate_logins_total{result="ok"}`:                                                  3,
		`popgate_logins_total{result="auth"}`:                                                1,
		`popgate_logins_total{result="in_use"}`:                                              1,
		`popgate_commits_total{result="ok"}`:                                                 1,
		`popgate_deleted_messages_total`:                                                     1,
		`popgate_lock_conflicts_total`:                                                       1,
		`popgate_lock_wait_seconds_count`:                                                    4,
		`popgate_snapshot_cache_total{result="hit"}`:                                         1,
		`popgate_snapshot_cache_total{result="miss"}`:                                        2,
		`popgate_proxy_protocol_refused_total{reason="untrusted"}`:                           1,
		`popgate_upstream_call_duration_seconds_count{backend="dovecot",operation="login"}`:  5,
		`popgate_upstream_call_duration_seconds_count{backend="dovecot",operation="commit"}`: 1,
		`popgate_upstream_call_duration_seconds_count{backend="dovecot",operation="open"}`:   1,
		`popgate_redis_up`:                                                                   1,
	}
	eventually(t, "the counters match the workload", func() bool {
		for k, v := range want {
			if got := nd.metric(t, k); got != v {
				t.Logf("%s = %v, want %v", k, got, v)
				return false
			}
		}
		return true
	})
	if v := nd.metric(t, "popgate_sent_octets_total"); v <= 0 {
		t.Errorf("popgate_sent_octets_total = %v", v)
	}
	_, body, _ := nd.adminGet("/metrics")
	if !strings.Contains(body, "popgate_build_info{") {
		t.Error("popgate_build_info missing")
	}
	if strings.Contains(body, `="metrics"`) {
		t.Error("a user name in a label")
	}
	log := nd.log(t)
	for _, ip := range []string{"198.51.100.1", "198.51.100.4"} {
		if !strings.Contains(log, `"remote":"`+ip+`:40001"`) {
			t.Errorf("the log lacks the client address %s", ip)
		}
	}
	if !strings.Contains(log, "PROXY protocol: connection refused") {
		t.Error("the refusal of the untrusted source was not logged")
	}
}

var errInUse = errors.New("-ERR [IN-USE]")

// raceLogin logs in from source address ip and returns the connection in
// TRANSACTION, errInUse for -ERR [IN-USE], or another error.
func raceLogin(ip, addr, pass string) (net.Conn, error) {
	conn, err := dialFrom(ip, addr)
	if err != nil {
		return nil, err
	}
	conn.SetDeadline(time.Now().Add(5 * time.Minute))
	r := bufio.NewReader(conn)
	var last string
	for _, cmd := range []string{"", "USER race", "PASS " + pass} {
		if cmd != "" {
			fmt.Fprintf(conn, "%s\r\n", cmd)
		}
		l, err := r.ReadString('\n')
		if err != nil {
			conn.Close()
			return nil, fmt.Errorf("after %q: %w", strings.Fields(cmd + " greeting")[0], err)
		}
		last = strings.TrimRight(l, "\r\n")
		if !strings.HasPrefix(last, "+OK") {
			conn.Close()
			if strings.HasPrefix(last, "-ERR [IN-USE]") {
				return nil, errInUse
			}
			return nil, fmt.Errorf("%q", last)
		}
	}
	conn.SetDeadline(time.Time{})
	return conn, nil
}

var (
	pop3loadOnce sync.Once
	pop3loadPath string
	pop3loadErr  error
)

// pop3loadBin builds cmd/pop3load once per test run.
func pop3loadBin(t *testing.T) string {
	t.Helper()
	pop3loadOnce.Do(func() {
		dir, err := os.MkdirTemp("", "popgate-pop3load-")
		if err != nil {
			pop3loadErr = err
			return
		}
		pop3loadPath = filepath.Join(dir, "pop3load")
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		defer cancel()
		if out, err := exec.CommandContext(ctx, "go", "build", "-o", pop3loadPath, "github.com/popgate/popgate/cmd/pop3load").CombinedOutput(); err != nil {
			pop3loadErr = fmt.Errorf("go build ./cmd/pop3load: %v\n%s", err, out)
		}
	})
	if pop3loadErr != nil {
		t.Fatal(pop3loadErr)
	}
	return pop3loadPath
}
