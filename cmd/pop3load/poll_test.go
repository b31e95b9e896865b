package main

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// fakeDrops is a POP3 server of several maildrops whose messages can be
// added while it runs; a session sees the maildrop as it was at login.
type fakeDrops struct {
	mu    sync.Mutex
	drops map[string][]string // user -> UIDLs; message body = "Subject: UIDL\r\n\r\nbody\r\n"
	retrs map[string]int      // user -> RETRs answered
}

func body(uidl string) string { return "Subject: " + uidl + "\r\n\r\n.dot\r\nbody\r\n" }

func (f *fakeDrops) add(user string, n int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for i := 0; i < n; i++ {
		f.drops[user] = append(f.drops[user], fmt.Sprintf("%s-%d", user, len(f.drops[user])+1))
	}
}

func (f *fakeDrops) retrCount(user string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.retrs[user]
}

func startFakeDrops(t *testing.T) (*fakeDrops, string) {
	t.Helper()
	f := &fakeDrops{drops: map[string][]string{}, retrs: map[string]int{}}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go f.serve(c)
		}
	}()
	return f, ln.Addr().String()
}

func (f *fakeDrops) serve(c net.Conn) {
	defer c.Close()
	c.SetDeadline(time.Now().Add(time.Minute))
	r := bufio.NewReader(c)
	fmt.Fprintf(c, "+OK ready\r\n")
	var user string
	var msgs []string
	for {
		line, err := r.ReadString('\n')
		if err != nil {
			return
		}
		fields := strings.Fields(line)
		if len(fields) == 0 {
			fmt.Fprintf(c, "-ERR empty\r\n")
			continue
		}
		switch strings.ToUpper(fields[0]) {
		case "USER":
			user = fields[1]
			fmt.Fprintf(c, "+OK\r\n")
		case "PASS":
			f.mu.Lock()
			msgs = append([]string(nil), f.drops[user]...)
			f.mu.Unlock()
			fmt.Fprintf(c, "+OK\r\n")
		case "STAT":
			var size int
			for _, m := range msgs {
				size += len(body(m))
			}
			fmt.Fprintf(c, "+OK %d %d\r\n", len(msgs), size)
		case "UIDL", "LIST":
			var b strings.Builder
			b.WriteString("+OK\r\n")
			for i, m := range msgs {
				if fields[0] == "UIDL" {
					fmt.Fprintf(&b, "%d %s\r\n", i+1, m)
				} else {
					fmt.Fprintf(&b, "%d %d\r\n", i+1, len(body(m)))
				}
			}
			b.WriteString(".\r\n")
			io.WriteString(c, b.String())
		case "RETR":
			n, err := strconv.Atoi(fields[1])
			if err != nil || n < 1 || n > len(msgs) {
				fmt.Fprintf(c, "-ERR no such message\r\n")
				continue
			}
			f.mu.Lock()
			f.retrs[user]++
			f.mu.Unlock()
			io.WriteString(c, "+OK\r\n"+strings.ReplaceAll(body(msgs[n-1]), "\r\n.", "\r\n..")+".\r\n")
		case "QUIT":
			fmt.Fprintf(c, "+OK bye\r\n")
			return
		default:
			fmt.Fprintf(c, "-ERR unknown\r\n")
		}
	}
}

// A polling client retrieves each message once: priming records what is
// there, later polls fetch only what arrived since, and -state carries the
// UIDLs from one run to the next.
func TestPoll(t *testing.T) {
	f, addr := startFakeDrops(t)
	f.add("p1", 5)
	f.add("p2", 3)
	state := filepath.Join(t.TempDir(), "state.json")
	never := make(chan os.Signal)
	args := []string{"-addr", addr, "-users", "p%d", "-nusers", "2", "-c", "2", "-mode", "poll", "-interval", "0", "-state", state, "-verify"}

	cfg, err := parseFlags(append(args, "-n", "6"), io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	res := runPoll(cfg, never)
	if res.errors != 0 || res.sessions != 6 || res.messages != 0 || f.retrCount("p1")+f.retrCount("p2") != 0 {
		t.Fatalf("primed run retrieved: %s %v", res, res.firstErrors)
	}

	// New mail between runs: the next run retrieves exactly that, once.
	f.add("p1", 2)
	f.add("p2", 1)
	cfg, err = parseFlags(append(args, "-n", "8"), io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	res = runPoll(cfg, never)
	want := int64(len(body("p1-6")) + len(body("p1-7")) + len(body("p2-4")))
	if res.errors != 0 || res.sessions != 8 || res.messages != 3 || res.bytes != want || res.withNew != 2 {
		t.Fatalf("second run: %s %v; want 3 messages, %d bytes, 2 polls with new mail", res, res.firstErrors, want)
	}
	if f.retrCount("p1") != 2 || f.retrCount("p2") != 1 {
		t.Fatalf("RETRs: p1 %d p2 %d; want 2 and 1", f.retrCount("p1"), f.retrCount("p2"))
	}
	if !strings.Contains(res.String(), "polls_with_new=2 messages=3") || !strings.Contains(res.String(), " p90=") {
		t.Errorf("summary %q", res.String())
	}

	// Without state and without priming, the first poll takes everything.
	cfg, err = parseFlags([]string{"-addr", addr, "-users", "p1", "-c", "1", "-mode", "poll", "-interval", "0", "-prime=false", "-n", "2"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	res = runPoll(cfg, never)
	if res.errors != 0 || res.sessions != 2 || res.messages != 7 || res.withNew != 1 {
		t.Fatalf("unprimed: %s %v; want 7 messages in the first poll only", res, res.firstErrors)
	}
}

// With an interval, each maildrop is polled no more often than that, and
// -d ends the run.
func TestPollInterval(t *testing.T) {
	_, addr := startFakeDrops(t)
	cfg, err := parseFlags([]string{"-addr", addr, "-users", "a,b", "-c", "1", "-mode", "poll", "-interval", "200ms", "-d", "500ms"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	t0 := time.Now()
	res := runPoll(cfg, make(chan os.Signal))
	// Polls start at 0, 200 and 400 ms for each maildrop: at most 6 (fewer
	// on a slow machine).
	if res.errors != 0 || res.sessions > 6 {
		t.Errorf("interval 200ms over 500ms, 2 maildrops: %s %v", res, res.firstErrors)
	}
	if d := time.Since(t0); d > 30*time.Second {
		t.Errorf("run took %s", d)
	}
	if _, err := parseFlags([]string{"-mode", "poll", "-interval", "-1s"}, io.Discard); err == nil {
		t.Error("negative -interval accepted")
	}
}
