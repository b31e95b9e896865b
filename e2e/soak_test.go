package e2e

// The soak test (issue 13), run by scripts/soak.sh, never in CI: popgate's
// engine in this process in front of the shared Dovecot, pop3load (login
// and retr modes) on some users, and churn clients on others (RETR+DELE+
// QUIT, DELE then dropped connections, DELE+RSET+QUIT) with new mail
// appended as mail is deleted. Every -sample it prints the process's
// resident memory, goroutines and open files; at the end it checks that
// Dovecot holds exactly the messages the workload did not delete.

import (
	"bytes"
	"context"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2"
	"github.com/rs/zerolog"

	imapbackend "github.com/popgate/popgate/backends/imap"
	"github.com/popgate/popgate/internal/pop3client"
	"github.com/popgate/popgate/proxy"
)

// soakMessage is message n of user, identified by its Message-ID.
func soakMessage(user string, n int, size int) []byte {
	var b bytes.Buffer
	fmt.Fprintf(&b, "From: soak@example.com\r\nTo: %s@example.org\r\nSubject: soak %d\r\nMessage-ID: <%s.%d@soak>\r\n\r\n", user, n, user, n)
	for i := 0; b.Len() < size; i++ {
		if i%40 == 0 {
			b.WriteString(".dot line\r\n")
		}
		fmt.Fprintf(&b, "line %d of message %d for %s\r\n", i, n, user)
	}
	return b.Bytes()
}

var messageID = regexp.MustCompile(`(?m)^Message-ID: <([^>]+)>`)

// soakSample is one line of the soak's measurements.
type soakSample struct {
	at                     time.Duration
	rssKB, goroutines, fds int
	sessions               int
}

func selfSample() (rssKB, fds int) {
	b, _ := os.ReadFile("/proc/self/status")
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Fields(l); len(f) >= 2 && f[0] == "VmRSS:" {
			rssKB, _ = strconv.Atoi(f[1])
		}
	}
	ents, _ := os.ReadDir("/proc/self/fd")
	return rssKB, len(ents)
}

// churnUser is a maildrop the churn clients delete from, with the
// Message-IDs it must hold.
type churnUser struct {
	name, pass string
	mu         sync.Mutex
	want       map[string]bool // Message-IDs that must be upstream
	maybe      map[string]bool // deleted by a QUIT whose answer was lost: either way
	next       int
}

func TestSoak(t *testing.T) {
	spec := os.Getenv("POPGATE_SOAK")
	if spec == "" {
		t.Skip("the soak test runs from scripts/soak.sh (POPGATE_SOAK=duration)")
	}
	require(t)
	dur, err := time.ParseDuration(spec)
	if err != nil {
		t.Fatalf("POPGATE_SOAK=%q: %v", spec, err)
	}
	every := 10 * time.Second
	if s := os.Getenv("POPGATE_SOAK_SAMPLE"); s != "" {
		if every, err = time.ParseDuration(s); err != nil {
			t.Fatal(err)
		}
	}
	dir := t.TempDir()

	// Users: 8 for pop3load (one password), 4 for the churn clients.
	const loadPass = "soak-load-pw"
	var loadMsgs int
	for i := 1; i <= 8; i++ {
		u := "soak-load-" + strconv.Itoa(i)
		if err := dc.AddUser(u, loadPass); err != nil {
			t.Fatal(err)
		}
		for n := 0; n < 20; n++ {
			if _, err := dc.Append(u, "INBOX", soakMessage(u, n, 2000+n*3000)); err != nil {
				t.Fatal(err)
			}
		}
		loadMsgs = 20
	}
	var churn []*churnUser
	for i := 1; i <= 4; i++ {
		u := &churnUser{name: "soak-churn-" + strconv.Itoa(i), want: map[string]bool{}, maybe: map[string]bool{}}
		u.pass = newUser(t, u.name)
		for ; u.next < 10; u.next++ {
			if _, err := dc.Append(u.name, "INBOX", soakMessage(u.name, u.next, 3000)); err != nil {
				t.Fatal(err)
			}
			u.want[fmt.Sprintf("%s.%d@soak", u.name, u.next)] = true
		}
		churn = append(churn, u)
	}

	// popgate's engine in front of Dovecot.
	cfg := imapbackend.DefaultConfig()
	cfg.Name, cfg.Address, cfg.TLS = "dovecot", dc.Addr(), "none"
	be, err := imapbackend.New(cfg, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	logf, err := os.Create(filepath.Join(dir, "popgate.log"))
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	srv := proxy.New(proxy.Options{Backend: be, AllowPlaintext: true, AuthFailureDelay: -1, Logger: zerolog.New(logf)})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(ln, proxy.ListenerConfig{Name: "pop3", TLS: proxy.TLSNone})
	addr := ln.Addr().String()

	// pop3load: login and retr, 2 clients each.
	bin := filepath.Join(dir, "pop3load")
	if out, err := exec.Command("go", "build", "-o", bin, "github.com/popgate/popgate/cmd/pop3load").CombinedOutput(); err != nil {
		t.Fatalf("building pop3load: %v\n%s", err, out)
	}
	type loadRun struct {
		mode string
		out  bytes.Buffer
		err  error
	}
	var loads []*loadRun
	var lwg sync.WaitGroup
	for i, mode := range []string{"login", "retr"} {
		lr := &loadRun{mode: mode}
		loads = append(loads, lr)
		cmd := exec.Command(bin, "-addr", addr, "-mode", mode, "-c", "2", "-users", "soak-load-%d", "-nusers", "4",
			"-first", strconv.Itoa(1+4*i), "-pass", loadPass, "-d", dur.String(), "-max", (dur + 5*time.Minute).String(), "-verify=true")
		if mode == "login" {
			cmd.Args = cmd.Args[:len(cmd.Args)-1]
		}
		cmd.Stdout, cmd.Stderr = &lr.out, &lr.out
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		lwg.Add(1)
		go func() { defer lwg.Done(); lr.err = cmd.Wait() }()
	}

	// Churn clients, until the end.
	var deletes, drops, rsets, failures atomic.Int64
	ctx, cancel := context.WithTimeout(context.Background(), dur)
	defer cancel()
	var cwg sync.WaitGroup
	for w := 0; w < 2; w++ {
		cwg.Add(1)
		go func() {
			defer cwg.Done()
			rng := rand.New(rand.NewPCG(uint64(w), 13))
			for i := 0; ctx.Err() == nil; i++ {
				u := churn[w+2*(i%2)]
				var err error
				switch k := rng.IntN(10); {
				case k < 5:
					err = churnDelete(addr, u)
					if err == nil {
						deletes.Add(1)
					}
				case k < 8:
					err = churnDrop(addr, u)
					drops.Add(1)
				default:
					err = churnRset(addr, u)
					rsets.Add(1)
				}
				if err != nil {
					failures.Add(1)
					t.Logf("churn %s: %v", u.name, err)
				}
				time.Sleep(20 * time.Millisecond)
			}
		}()
	}

	// Samples every `every`.
	var samples []soakSample
	start := time.Now()
	tick := time.NewTicker(every)
	for done := false; !done; {
		select {
		case <-ctx.Done():
			done = true
		case <-tick.C:
		}
		rss, fds := selfSample()
		s := soakSample{at: time.Since(start), rssKB: rss, goroutines: runtime.NumGoroutine(), fds: fds, sessions: srv.Sessions()}
		samples = append(samples, s)
		fmt.Printf("sample t=%s rss_kb=%d goroutines=%d open_files=%d sessions=%d deletes=%d drops=%d rsets=%d churn_failures=%d\n",
			s.at.Round(time.Second), s.rssKB, s.goroutines, s.fds, s.sessions, deletes.Load(), drops.Load(), rsets.Load(), failures.Load())
	}
	tick.Stop()
	cwg.Wait()
	lwg.Wait()
	sctx, scancel := context.WithTimeout(context.Background(), 30*time.Second)
	srv.Shutdown(sctx)
	scancel()
	be.Close()
	runtime.GC()
	rss, fds := selfSample()
	fmt.Printf("after shutdown: rss_kb=%d goroutines=%d open_files=%d\n", rss, runtime.NumGoroutine(), fds)
	for _, lr := range loads {
		fmt.Printf("pop3load %s: %s", lr.mode, lr.out.String())
		if lr.err != nil {
			t.Errorf("pop3load %s: %v", lr.mode, lr.err)
		}
		if m := regexp.MustCompile(`errors=(\d+)`).FindStringSubmatch(lr.out.String()); m == nil || m[1] != "0" {
			t.Errorf("pop3load %s reported errors", lr.mode)
		}
	}
	fmt.Println(soakFlatness(samples))

	// Dovecot holds exactly what was not deleted.
	for _, u := range churn {
		_, held := upstream(t, u.name)
		got := map[string]bool{}
		for _, m := range held {
			if mm := messageID.FindSubmatch(m.Raw); mm != nil {
				got[string(mm[1])] = true
			}
			if m.has(imap.FlagDeleted) {
				t.Errorf("%s: UID %d flagged \\Deleted but not expunged", u.name, m.UID)
			}
		}
		for id := range u.want {
			if !got[id] && !u.maybe[id] {
				t.Errorf("%s: %s missing upstream: it was never deleted by a committed QUIT", u.name, id)
			}
		}
		for id := range got {
			if !u.want[id] && !u.maybe[id] {
				t.Errorf("%s: %s still upstream after its QUIT committed the deletion", u.name, id)
			}
		}
		fmt.Printf("upstream %s: holds %d messages, as expected (%d with an unknown outcome)\n", u.name, len(got), len(u.maybe))
	}
	for i := 1; i <= 8; i++ {
		u := "soak-load-" + strconv.Itoa(i)
		if _, held := upstream(t, u); len(held) != loadMsgs {
			t.Errorf("%s: %d messages upstream, want %d (pop3load deletes nothing)", u, len(held), loadMsgs)
		}
	}
}

// soakFlatness compares the first and last quarter of the samples.
func soakFlatness(s []soakSample) string {
	if len(s) < 4 {
		return "flatness: too few samples"
	}
	avg := func(part []soakSample, f func(soakSample) int) float64 {
		var sum int
		for _, x := range part {
			sum += f(x)
		}
		return float64(sum) / float64(len(part))
	}
	q := len(s) / 4
	first, last := s[:q], s[len(s)-q:]
	var b strings.Builder
	b.WriteString("flatness (mean of the first quarter -> the last quarter):")
	for _, m := range []struct {
		name string
		f    func(soakSample) int
	}{
		{"rss_kb", func(x soakSample) int { return x.rssKB }},
		{"goroutines", func(x soakSample) int { return x.goroutines }},
		{"open_files", func(x soakSample) int { return x.fds }},
	} {
		fmt.Fprintf(&b, " %s %.0f -> %.0f;", m.name, avg(first, m.f), avg(last, m.f))
	}
	return b.String()
}

// churnLogin logs in as u, retrying while the maildrop is still locked by
// u's previous session (its upstream logout may not be finished: [IN-USE]
// is the right answer then, RFC 2449 §8.1.1).
func churnLogin(addr string, u *churnUser) (*pop3client.Client, error) {
	for try := 0; ; try++ {
		c, err := pop3client.Dial(addr, pop3client.Options{TLS: pop3client.Plain, Timeout: time.Minute})
		if err != nil {
			return nil, err
		}
		if err = c.Login(u.name, u.pass); err == nil {
			return c, nil
		}
		c.Close()
		if !strings.Contains(err.Error(), "[IN-USE]") || try == 50 {
			return nil, err
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// churnDelete retrieves and deletes message 1 and quits; after the QUIT's
// +OK the message must be gone, and a new one is appended.
func churnDelete(addr string, u *churnUser) error {
	c, err := churnLogin(addr, u)
	if err != nil {
		return err
	}
	defer c.Close()
	var raw bytes.Buffer
	if _, err := c.Retr(1, &raw); err != nil {
		return err
	}
	m := messageID.FindSubmatch(raw.Bytes())
	if m == nil {
		return fmt.Errorf("RETR 1: no Message-ID")
	}
	id := string(m[1])
	if err := c.Dele(1); err != nil {
		return err
	}
	err = c.Quit()
	u.mu.Lock()
	defer u.mu.Unlock()
	if err != nil {
		u.maybe[id] = true // the commit may or may not have run
		delete(u.want, id)
		return err
	}
	delete(u.want, id)
	n := u.next
	u.next++
	if _, err := dc.Append(u.name, "INBOX", soakMessage(u.name, n, 3000)); err != nil {
		return err
	}
	u.want[fmt.Sprintf("%s.%d@soak", u.name, n)] = true
	return nil
}

// churnDrop deletes message 1, starts RETR 2 and drops the connection:
// nothing may be deleted.
func churnDrop(addr string, u *churnUser) error {
	c, err := churnLogin(addr, u)
	if err != nil {
		return err
	}
	defer c.Close()
	if err := c.Dele(1); err != nil {
		return err
	}
	_, err = c.Cmd("RETR 2")
	return err
}

// churnRset deletes message 1, then RSET and QUIT: nothing deleted.
func churnRset(addr string, u *churnUser) error {
	c, err := churnLogin(addr, u)
	if err != nil {
		return err
	}
	defer c.Close()
	if err := c.Dele(1); err != nil {
		return err
	}
	if _, err := c.Cmd("RSET"); err != nil {
		return err
	}
	return c.Quit()
}
