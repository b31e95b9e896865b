// Command pop3attack plays hostile POP3 clients against a server on
// loopback, and measures what that costs the server and a normal client. It
// is pop3load's sibling: pop3load measures throughput, pop3attack measures
// bounded behaviour under abuse (issue 13).
//
// Attacks (-attacks, comma-separated):
//
//	slowloris   -n connections sending "USER " then one octet every -interval, never a line end
//	silent      -n connections that never send anything
//	sasl-slow   -n connections sending "AUTH PLAIN " and 16 KiB of base64, then one octet every
//	            -interval, never a line end (a long SASL line held open: auth.max_sasl_buffers)
//	tls-stall   -n connections stopping mid-handshake: 5 octets of a ClientHello on -tls-addr,
//	            and -n after STLS on -addr (nothing sent after STLS's +OK)
//	garbage     -garbage-n connections of each kind: a 1 MiB line, 64 KiB of random octets,
//	            NUL octets, invalid UTF-8 in USER and PASS, a 1 MiB base64 AUTH PLAIN response,
//	            10,000 commands pipelined in one write
//	tls-flood   -flood-n complete handshakes on -tls-addr and -flood-n after STLS on -addr,
//	            -c at a time, each closed at once
//
// Connections come from -sources addresses of 127.0.0.0/8 (127.0.10.1 on),
// in turn. The held attacks (slowloris, silent, sasl-slow, tls-stall) are opened
// first and held for -hold or until the server closes them; the others run
// meanwhile.
//
// With -probe-user, a normal client (USER/PASS, RETR 1, QUIT on -addr)
// runs -probes sessions before the attack (the quiet baseline) and -probes
// during it, and login and RETR latency percentiles are printed for both.
// With -pid (the server's process), its resident memory (VmRSS) and open
// files are sampled before and with every held connection open, and the
// resident memory per held connection is printed.
//
// Output: one line per measurement, key=value pairs, for example
//
//	hold slowloris+silent: opened=10000 dial_failed=0 server_closed=0 still_open=10000 max_time_to_close=0s
//	rss before_kb=23000 open_kb=91000 per_conn_kb=6.8 fds_before=12 fds_open=10012
//	probe quiet: sessions=200 errors=0 login_p50=0.9ms login_p99=2.1ms retr_p50=0.3ms retr_p99=0.8ms
//
// pop3attack only connects to loopback addresses, and every run is bounded
// by -max.
package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/popgate/popgate/internal/pop3client"
)

type config struct {
	target                   *target
	attacks                  map[string]bool
	n, garbageN, floodN      int
	conc                     int
	interval, hold, maxTotal time.Duration
	probeUser, probePass     string
	probes                   int
	pid                      int
}

func main() {
	cfg, err := parseFlags(os.Args[1:], os.Stderr)
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			os.Exit(0)
		}
		fmt.Fprintln(os.Stderr, "pop3attack:", err)
		os.Exit(2)
	}
	done := make(chan struct{})
	go func() {
		run(cfg, os.Stdout)
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(cfg.maxTotal):
		fmt.Fprintln(os.Stderr, "pop3attack: -max reached, stopping")
		os.Exit(1)
	}
}

func parseFlags(args []string, out io.Writer) (*config, error) {
	fs := flag.NewFlagSet("pop3attack", flag.ContinueOnError)
	fs.SetOutput(out)
	cfg := &config{target: &target{}}
	var attacks string
	var nsources int
	fs.StringVar(&cfg.target.plain, "addr", "127.0.0.1:110", "POP3 `host:port` (USER/PASS allowed, or STLS offered); loopback only")
	fs.StringVar(&cfg.target.implicit, "tls-addr", "", "POP3S `host:port` for tls-stall and tls-flood; empty: skip those on implicit TLS")
	fs.StringVar(&attacks, "attacks", "slowloris,silent", "comma-separated: slowloris, silent, sasl-slow, tls-stall, garbage, tls-flood")
	fs.IntVar(&cfg.n, "n", 100, "connections of each held attack (slowloris, silent, sasl-slow, tls-stall)")
	fs.IntVar(&cfg.garbageN, "garbage-n", 10, "connections of each garbage kind")
	fs.IntVar(&cfg.floodN, "flood-n", 200, "handshakes of each TLS flood")
	fs.IntVar(&cfg.conc, "c", 16, "concurrent garbage connections and handshakes")
	fs.IntVar(&nsources, "sources", 250, "client addresses in 127.0.0.0/8 to spread the connections over")
	fs.DurationVar(&cfg.interval, "interval", time.Second, "slowloris: time between two octets")
	fs.DurationVar(&cfg.hold, "hold", 10*time.Second, "how long held connections are kept open")
	fs.DurationVar(&cfg.target.timeout, "timeout", 10*time.Second, "deadline of each exchange (and of silence from the server in garbage)")
	fs.DurationVar(&cfg.maxTotal, "max", 10*time.Minute, "hard limit on the whole run")
	fs.StringVar(&cfg.probeUser, "probe-user", "", "user of the normal client; empty: no probe")
	fs.StringVar(&cfg.probePass, "probe-pass", "", "password of the normal client")
	fs.IntVar(&cfg.probes, "probes", 100, "normal-client sessions before and during the attack")
	fs.IntVar(&cfg.pid, "pid", 0, "server process whose VmRSS and open files are sampled; 0: none")
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	cfg.attacks = map[string]bool{}
	for _, a := range strings.Split(attacks, ",") {
		switch a = strings.TrimSpace(a); a {
		case "slowloris", "silent", "sasl-slow", "tls-stall", "garbage", "tls-flood":
			cfg.attacks[a] = true
		case "":
		default:
			return nil, fmt.Errorf("-attacks: unknown attack %q", a)
		}
	}
	for _, a := range []string{cfg.target.plain, cfg.target.implicit} {
		if a == "" {
			continue
		}
		if err := checkLoopback(a); err != nil {
			return nil, err
		}
	}
	if cfg.n < 0 || cfg.garbageN < 0 || cfg.floodN < 0 || cfg.conc < 1 || nsources < 1 || nsources > 254*200 {
		return nil, errors.New("-n, -garbage-n, -flood-n must be at least 0, -c at least 1, -sources 1 to 50800")
	}
	if cfg.interval <= 0 || cfg.hold <= 0 || cfg.target.timeout <= 0 || cfg.maxTotal <= 0 {
		return nil, errors.New("-interval, -hold, -timeout and -max must be positive")
	}
	cfg.target.sources = sources(nsources)
	return cfg, nil
}

// checkLoopback refuses anything but a loopback address: this tool is for
// one's own test machine.
func checkLoopback(addr string) error {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("address %q: %v", addr, err)
	}
	if host == "localhost" {
		return nil
	}
	if ip := net.ParseIP(host); ip == nil || !ip.IsLoopback() {
		return fmt.Errorf("address %q: only loopback addresses are allowed", addr)
	}
	return nil
}

// run runs the configured attacks and prints the measurements to out.
func run(cfg *config, out io.Writer) {
	t := cfg.target
	if cfg.probeUser != "" {
		fmt.Fprintln(out, "probe quiet:", probe(t.plain, cfg.probeUser, cfg.probePass, cfg.probes, t.timeout))
	}
	rssBefore, fdsBefore := sample(cfg.pid)

	// The held attacks, opened first.
	stop := make(chan struct{})
	h := &holdStats{}
	var opened sync.WaitGroup
	var held []*sync.WaitGroup
	var names []string
	if cfg.attacks["slowloris"] {
		opened.Add(cfg.n)
		held = append(held, slowloris(t, cfg.n, cfg.interval, stop, h, &opened))
		names = append(names, "slowloris")
	}
	if cfg.attacks["silent"] {
		opened.Add(cfg.n)
		held = append(held, silent(t, cfg.n, stop, h, &opened))
		names = append(names, "silent")
	}
	if cfg.attacks["sasl-slow"] {
		opened.Add(cfg.n)
		held = append(held, saslSlow(t, cfg.n, cfg.interval, stop, h, &opened))
		names = append(names, "sasl-slow")
	}
	if cfg.attacks["tls-stall"] {
		if t.implicit != "" {
			opened.Add(cfg.n)
			held = append(held, tlsStall(t, false, cfg.n, stop, h, &opened))
		}
		opened.Add(cfg.n)
		held = append(held, tlsStall(t, true, cfg.n, stop, h, &opened))
		names = append(names, "tls-stall")
	}
	opened.Wait()
	holdStart := time.Now()
	if len(held) > 0 && cfg.pid > 0 {
		time.Sleep(time.Second) // let the server take them all in
		rssOpen, fdsOpen := sample(cfg.pid)
		per := 0.0
		if n := h.opened.Load(); n > 0 {
			per = float64(rssOpen-rssBefore) / float64(n)
		}
		fmt.Fprintf(out, "rss before_kb=%d open_kb=%d per_conn_kb=%.1f fds_before=%d fds_open=%d\n", rssBefore, rssOpen, per, fdsBefore, fdsOpen)
	}

	// The others, and the probe, meanwhile.
	var wg sync.WaitGroup
	var mu sync.Mutex
	lines := []string{}
	report := func(s string) { mu.Lock(); lines = append(lines, s); mu.Unlock() }
	if cfg.attacks["garbage"] {
		for _, kind := range garbageKinds {
			wg.Add(1)
			go func() {
				defer wg.Done()
				report("garbage " + kind + ": " + garbage(t, kind, cfg.garbageN, cfg.conc).String())
			}()
		}
	}
	if cfg.attacks["tls-flood"] {
		if t.implicit != "" {
			wg.Add(1)
			go func() {
				defer wg.Done()
				report("tls-flood implicit: " + tlsFlood(t, false, cfg.floodN, cfg.conc).String())
			}()
		}
		wg.Add(1)
		go func() { defer wg.Done(); report("tls-flood stls: " + tlsFlood(t, true, cfg.floodN, cfg.conc).String()) }()
	}
	if cfg.probeUser != "" {
		wg.Add(1)
		go func() {
			defer wg.Done()
			report("probe under attack: " + probe(t.plain, cfg.probeUser, cfg.probePass, cfg.probes, t.timeout).String())
		}()
	}
	wg.Wait()
	sort.Strings(lines)
	for _, l := range lines {
		fmt.Fprintln(out, l)
	}

	if len(held) > 0 {
		if rest := cfg.hold - time.Since(holdStart); rest > 0 {
			time.Sleep(rest)
		}
		close(stop)
		for _, w := range held {
			w.Wait()
		}
		fmt.Fprintf(out, "hold %s: %s\n", strings.Join(names, "+"), h)
	}
	if cfg.pid > 0 {
		rss, fds := sample(cfg.pid)
		fmt.Fprintf(out, "rss after_kb=%d fds_after=%d\n", rss, fds)
	}
}

// sample returns pid's VmRSS in KB and its open files (0, 0 without pid).
func sample(pid int) (rssKB int64, fds int) {
	if pid <= 0 {
		return 0, 0
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if f := strings.Fields(l); len(f) >= 2 && f[0] == "VmRSS:" {
				rssKB, _ = strconv.ParseInt(f[1], 10, 64)
			}
		}
	}
	ents, _ := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	return rssKB, len(ents)
}

// probeStats are a normal client's latencies.
type probeStats struct {
	sessions, errors int
	login, retr      []time.Duration
	firstErr         string
}

func (p *probeStats) String() string {
	s := fmt.Sprintf("sessions=%d errors=%d login_p50=%s login_p99=%s retr_p50=%s retr_p99=%s",
		p.sessions, p.errors, fmtDur(percentile(p.login, 50)), fmtDur(percentile(p.login, 99)),
		fmtDur(percentile(p.retr, 50)), fmtDur(percentile(p.retr, 99)))
	if p.firstErr != "" {
		s += fmt.Sprintf(" first_error=%q", p.firstErr)
	}
	return s
}

// probe runs n sessions of a normal client one after the other: USER,
// PASS (login latency: from connect to PASS's +OK), RETR 1 (RETR latency:
// to the terminating dot), QUIT.
func probe(addr, user, pass string, n int, timeout time.Duration) *probeStats {
	p := &probeStats{}
	for i := 0; i < n; i++ {
		p.sessions++
		login, retr, err := probeOnce(addr, user, pass, timeout)
		if err != nil {
			p.errors++
			if p.firstErr == "" {
				p.firstErr = err.Error()
			}
			continue
		}
		p.login = append(p.login, login)
		p.retr = append(p.retr, retr)
	}
	return p
}

func probeOnce(addr, user, pass string, timeout time.Duration) (login, retr time.Duration, err error) {
	start := time.Now()
	c, err := pop3client.Dial(addr, pop3client.Options{TLS: pop3client.Plain, Timeout: timeout})
	if err != nil {
		return 0, 0, err
	}
	defer c.Close()
	if err := c.Login(user, pass); err != nil {
		return 0, 0, err
	}
	login = time.Since(start)
	start = time.Now()
	if _, err := c.Retr(1, nil); err != nil {
		return 0, 0, err
	}
	retr = time.Since(start)
	return login, retr, c.Quit()
}

func percentile(d []time.Duration, p int) time.Duration {
	if len(d) == 0 {
		return 0
	}
	s := append([]time.Duration(nil), d...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	i := (len(s)*p + 99) / 100
	return s[max(i-1, 0)]
}

func fmtDur(d time.Duration) string {
	switch {
	case d >= time.Second:
		return strconv.FormatFloat(d.Seconds(), 'f', 2, 64) + "s"
	case d >= time.Millisecond:
		return strconv.FormatFloat(float64(d)/float64(time.Millisecond), 'f', 1, 64) + "ms"
	}
	return strconv.FormatFloat(float64(d)/float64(time.Microsecond), 'f', 0, 64) + "µs"
}
