// Command cyrusbench starts a private Cyrus (JMAP, IMAP and Cyrus' own
// POP3) for bench/compare-jmap.sh: it creates the users, seeds their INBOX
// over IMAP APPEND from Maildir folders, prints the addresses, and runs
// until SIGTERM/SIGINT, then stops Cyrus and removes its folder.
//
//	cyrusbench -pass PW -seed 'load%d:8:DIR' -seed 'big:1:DIR2' …
//
// Each -seed is PATTERN:COUNT:MAILDIR (PATTERN with %d gives users
// PATTERN(1..COUNT), without it one user): every such user gets the
// messages of MAILDIR/cur in file-name order, LF turned into CRLF.
// Output, one line each: "jmap URL", "imap ADDR", "pop3 ADDR", "ready".
package main

import (
	"bytes"
	"flag"
	"fmt"
	"log"
	"os"
	"os/signal"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/emersion/go-imap/v2"

	"github.com/popgate/popgate/internal/testserver/cyrus"
)

type seeds []string

func (s *seeds) String() string     { return strings.Join(*s, ",") }
func (s *seeds) Set(v string) error { *s = append(*s, v); return nil }

func main() {
	pass := flag.String("pass", "bench-Pw-1", "password of every user")
	par := flag.Int("parallel", 4, "users seeded at once")
	var ss seeds
	flag.Var(&ss, "seed", "PATTERN:COUNT:MAILDIR (repeatable)")
	flag.Parse()

	type job struct {
		user string
		msgs [][]byte
	}
	var jobs []job
	users := map[string]string{}
	for _, s := range ss {
		parts := strings.SplitN(s, ":", 3)
		if len(parts) != 3 {
			log.Fatalf("-seed %q: want PATTERN:COUNT:MAILDIR", s)
		}
		n, err := strconv.Atoi(parts[1])
		if err != nil {
			log.Fatal(err)
		}
		msgs, err := readMaildir(parts[2])
		if err != nil {
			log.Fatal(err)
		}
		for i := 1; i <= n; i++ {
			u := parts[0]
			if strings.Contains(u, "%d") {
				u = fmt.Sprintf(u, i)
			}
			users[u] = *pass
			jobs = append(jobs, job{u, msgs})
		}
	}
	srv, err := cyrus.New(cyrus.Options{Users: users, POP3: true})
	if err != nil {
		log.Fatal(err)
	}
	defer srv.Close()
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT)

	start := time.Now()
	work := make(chan job)
	var wg sync.WaitGroup
	var mu sync.Mutex
	var firstErr error
	for w := 0; w < *par; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := range work {
				if err := seed(srv, j.user, j.msgs); err != nil {
					mu.Lock()
					if firstErr == nil {
						firstErr = err
					}
					mu.Unlock()
				}
			}
		}()
	}
	for _, j := range jobs {
		work <- j
	}
	close(work)
	wg.Wait()
	if firstErr != nil {
		srv.Close()
		log.Fatal(firstErr)
	}
	fmt.Fprintf(os.Stderr, "cyrusbench: %d users seeded in %s\n", len(jobs), time.Since(start).Round(time.Millisecond))
	fmt.Printf("jmap %s\nimap %s\npop3 %s\ndir %s\nready\n", srv.SessionURL(), srv.Addr(), srv.POP3Addr(), srv.Dir)
	<-sigs
}

func readMaildir(dir string) ([][]byte, error) {
	names, err := filepath.Glob(filepath.Join(dir, "cur", "*"))
	if err != nil {
		return nil, err
	}
	sort.Strings(names)
	var out [][]byte
	for _, n := range names {
		b, err := os.ReadFile(n)
		if err != nil {
			return nil, err
		}
		b = bytes.ReplaceAll(b, []byte("\r\n"), []byte("\n"))
		out = append(out, bytes.ReplaceAll(b, []byte("\n"), []byte("\r\n")))
	}
	return out, nil
}

// seed APPENDs msgs to user's INBOX, internal dates a second apart.
func seed(srv *cyrus.Server, user string, msgs [][]byte) error {
	c, err := srv.Dial(user)
	if err != nil {
		return err
	}
	defer c.Close()
	base := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	for i, raw := range msgs {
		cmd := c.Append("INBOX", int64(len(raw)), &imap.AppendOptions{Time: base.Add(time.Duration(i) * time.Second)})
		if _, err := cmd.Write(raw); err != nil {
			cmd.Close()
			return err
		}
		if err := cmd.Close(); err != nil {
			return err
		}
		if _, err := cmd.Wait(); err != nil {
			return fmt.Errorf("%s: APPEND %d: %w", user, i, err)
		}
	}
	return c.Logout().Wait()
}
