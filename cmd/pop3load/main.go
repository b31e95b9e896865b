// Command pop3load is popgate's POP3 load generator: it measures a POP3
// server (popgate, or any other for comparison) on loopback.
//
// Modes:
//
//	login  connect, USER, PASS, STAT, QUIT; repeated             (sessions/s)
//	retr   connect, USER, PASS, STAT, RETR every message, QUIT    (MB/s)
//	idle   open -sessions logged-in sessions and hold them for -d (memory per session)
//	poll   a polling client (fetchmail in daemon mode with "keep"): each
//	       maildrop is polled every -interval (0: back to back): connect,
//	       USER, PASS, STAT, UIDL, RETR of each message whose UIDL this
//	       client has not retrieved yet, QUIT                     (sessions/s)
//
// In poll mode the client keeps the UIDLs it has retrieved per maildrop, as
// fetchmail keeps its .fetchids: in memory, and in -state FILE across runs
// when given (read at start, written at the end). A maildrop this client has
// no state for is primed before the clock starts (one untimed session that
// records the UIDLs without retrieving anything, as if the client had
// downloaded the maildrop before), unless -prime=false, so a run measures
// steady-state polls that retrieve only what arrived since. Something else
// must deliver new mail while it runs (bench/feedmaildir.py).
//
// POP3 locks a maildrop to one session at a time, so the load is spread over
// several users: -users is a comma-separated list, or a template with %d
// ("user%d") expanded for -nusers users numbered from -first. All users share
// -pass. Worker w only ever uses the users whose index is w modulo -c, so two
// workers never collide on a maildrop when there are at least -c users.
//
// It prints one summary line of key=value pairs, for example
//
//	mode=retr target=127.0.0.1:1110 c=8 sessions=16 errors=0 elapsed=10.41s sessions/s=1.54 messages=16000 MB/s=410.2 p50=5.1s p99=5.4s msg_p50=4.2ms msg_p99=11.0ms
//
// In idle mode it prints "ready sessions=N errors=E" once the sessions are
// open, holds them for -d (or until SIGINT/SIGTERM), then sends QUIT on each.
//
// pop3load only connects to loopback addresses and every run is bounded in
// time: -d (or -n, capped by -max), plus -timeout per exchange.
package main

import (
	"crypto/tls"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/popgate/popgate/internal/pop3client"
)

type config struct {
	addr      string
	mode      string
	conc      int
	duration  time.Duration
	count     int64
	max       time.Duration
	users     []string
	pass      string
	tls       pop3client.TLSMode
	tlsConf   *tls.Config
	timeout   time.Duration
	sessions  int
	verify    bool
	maxErrors int64
	interval  time.Duration // poll: from the start of one poll of a maildrop to the next
	statePath string        // poll: the UIDLs retrieved per maildrop, kept across runs
	prime     bool          // poll: prime maildrops without state before the clock starts
}

func main() {
	cfg, err := parseFlags(os.Args[1:], os.Stderr)
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			os.Exit(0)
		}
		fmt.Fprintln(os.Stderr, "pop3load:", err)
		os.Exit(2)
	}
	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGINT, syscall.SIGTERM)
	var res result
	switch cfg.mode {
	case "idle":
		res = runIdle(cfg, stop, os.Stdout)
	case "poll":
		res = runPoll(cfg, stop)
	default:
		res = runLoad(cfg, stop)
	}
	fmt.Println(res.String())
	for _, e := range res.firstErrors {
		fmt.Fprintln(os.Stderr, "pop3load: error:", e)
	}
	if res.sessions == 0 || (res.errors > 0 && res.errors*10 > res.sessions) {
		os.Exit(1)
	}
}

func parseFlags(args []string, out io.Writer) (*config, error) {
	fs := flag.NewFlagSet("pop3load", flag.ContinueOnError)
	fs.SetOutput(out)
	cfg := &config{}
	var users, tlsFlag string
	var nusers, first int
	var insecure bool
	fs.StringVar(&cfg.addr, "addr", "127.0.0.1:110", "POP3 server `host:port` (loopback only)")
	fs.StringVar(&cfg.mode, "mode", "login", "login | retr | idle | poll")
	fs.IntVar(&cfg.conc, "c", 8, "concurrent clients (idle: concurrent logins while opening)")
	fs.DurationVar(&cfg.duration, "d", 10*time.Second, "run for this long (idle: hold the sessions this long)")
	fs.Int64Var(&cfg.count, "n", 0, "run this many sessions in total instead of -d (login, retr, poll)")
	fs.DurationVar(&cfg.max, "max", 10*time.Minute, "hard limit on the whole run")
	fs.StringVar(&users, "users", "user%d", "comma-separated users, or a template with %d")
	fs.IntVar(&nusers, "nusers", 8, "number of users a template expands to")
	fs.IntVar(&first, "first", 1, "first number a template expands to")
	fs.StringVar(&cfg.pass, "pass", "", "password of every user")
	fs.StringVar(&tlsFlag, "tls", "none", "none | implicit | starttls")
	fs.BoolVar(&insecure, "insecure", false, "do not verify the server certificate")
	fs.DurationVar(&cfg.timeout, "timeout", 30*time.Second, "deadline of each exchange")
	fs.IntVar(&cfg.sessions, "sessions", 1000, "idle: sessions to open and hold")
	fs.BoolVar(&cfg.verify, "verify", false, "retr, poll: LIST first and check every RETR against its size")
	fs.DurationVar(&cfg.interval, "interval", 5*time.Second, "poll: poll each maildrop this often, start to start (0: back to back)")
	fs.StringVar(&cfg.statePath, "state", "", "poll: `file` of the UIDLs retrieved per maildrop, read at start and written at the end")
	fs.BoolVar(&cfg.prime, "prime", true, "poll: record the UIDLs of a maildrop without state before the clock starts")
	fs.Int64Var(&cfg.maxErrors, "maxerrors", 1000, "stop after this many errors")
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	switch cfg.mode {
	case "login", "retr", "idle", "poll":
	default:
		return nil, fmt.Errorf("-mode %q: want login, retr, idle or poll", cfg.mode)
	}
	if cfg.conc < 1 || cfg.sessions < 1 || cfg.timeout <= 0 || cfg.max <= 0 {
		return nil, errors.New("-c, -sessions, -timeout and -max must be positive")
	}
	if cfg.interval < 0 {
		return nil, errors.New("-interval must not be negative")
	}
	if cfg.count <= 0 && cfg.duration <= 0 {
		return nil, errors.New("give -d or -n")
	}
	if err := checkLoopback(cfg.addr); err != nil {
		return nil, err
	}
	if strings.Contains(users, "%d") {
		if nusers < 1 {
			return nil, errors.New("-nusers must be positive")
		}
		for i := 0; i < nusers; i++ {
			cfg.users = append(cfg.users, strings.ReplaceAll(users, "%d", strconv.Itoa(first+i)))
		}
	} else {
		for _, u := range strings.Split(users, ",") {
			if u = strings.TrimSpace(u); u != "" {
				cfg.users = append(cfg.users, u)
			}
		}
	}
	if len(cfg.users) == 0 {
		return nil, errors.New("no users")
	}
	for _, u := range cfg.users {
		if strings.ContainsAny(u, " \r\n") {
			return nil, fmt.Errorf("user %q: spaces and line breaks are not allowed", u)
		}
	}
	if strings.ContainsAny(cfg.pass, "\r\n") {
		return nil, errors.New("-pass holds a line break")
	}
	switch tlsFlag {
	case "none":
	case "implicit":
		cfg.tls = pop3client.Implicit
	case "starttls":
		cfg.tls = pop3client.STLSRequired
	default:
		return nil, fmt.Errorf("-tls %q: want none, implicit or starttls", tlsFlag)
	}
	host, _, _ := net.SplitHostPort(cfg.addr)
	cfg.tlsConf = &tls.Config{ServerName: host, InsecureSkipVerify: insecure}
	needUsers := cfg.conc
	if cfg.mode == "idle" {
		needUsers = cfg.sessions
	}
	if len(cfg.users) < needUsers {
		fmt.Fprintf(out, "pop3load: warning: %d users for %d concurrent sessions; sessions will collide on maildrop locks\n", len(cfg.users), needUsers)
	}
	return cfg, nil
}

// checkLoopback refuses targets that are not on this machine.
func checkLoopback(addr string) error {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("-addr %q: %w", addr, err)
	}
	if strings.EqualFold(host, "localhost") {
		return nil
	}
	if ip := net.ParseIP(host); ip != nil && ip.IsLoopback() {
		return nil
	}
	return fmt.Errorf("-addr %q: only loopback targets are allowed", addr)
}

// result is the outcome of a run.
type result struct {
	cfg         *config
	sessions    int64 // completed sessions (idle: sessions opened)
	errors      int64
	bytes       int64
	messages    int64
	withNew     int64 // poll: sessions that retrieved at least one message
	elapsed     time.Duration
	sessLat     []time.Duration
	msgLat      []time.Duration
	firstErrors []string
}

func (r result) String() string {
	var b strings.Builder
	secs := r.elapsed.Seconds()
	fmt.Fprintf(&b, "mode=%s target=%s c=%d sessions=%d errors=%d elapsed=%.2fs", r.cfg.mode, r.cfg.addr, r.cfg.conc, r.sessions, r.errors, secs)
	if secs > 0 {
		fmt.Fprintf(&b, " sessions/s=%.1f", float64(r.sessions)/secs)
	}
	if r.cfg.mode == "poll" {
		fmt.Fprintf(&b, " interval=%s polls_with_new=%d", r.cfg.interval, r.withNew)
	}
	if r.cfg.mode == "retr" || r.cfg.mode == "poll" {
		fmt.Fprintf(&b, " messages=%d bytes=%d", r.messages, r.bytes)
		if secs > 0 {
			fmt.Fprintf(&b, " MB/s=%.1f", float64(r.bytes)/1e6/secs)
		}
	}
	if len(r.sessLat) > 0 {
		fmt.Fprintf(&b, " p50=%s", fmtDur(percentile(r.sessLat, 50)))
		if r.cfg.mode == "poll" {
			fmt.Fprintf(&b, " p90=%s", fmtDur(percentile(r.sessLat, 90)))
		}
		fmt.Fprintf(&b, " p99=%s", fmtDur(percentile(r.sessLat, 99)))
	}
	if len(r.msgLat) > 0 {
		fmt.Fprintf(&b, " msg_p50=%s msg_p99=%s", fmtDur(percentile(r.msgLat, 50)), fmtDur(percentile(r.msgLat, 99)))
	}
	return b.String()
}

func fmtDur(d time.Duration) string {
	switch {
	case d >= time.Second:
		return fmt.Sprintf("%.2fs", d.Seconds())
	case d >= time.Millisecond:
		return fmt.Sprintf("%.2fms", float64(d)/1e6)
	default:
		return fmt.Sprintf("%.0fus", float64(d)/1e3)
	}
}

// percentile returns the p-th percentile (nearest rank) of d, sorting it.
func percentile(d []time.Duration, p int) time.Duration {
	if len(d) == 0 {
		return 0
	}
	sort.Slice(d, func(i, j int) bool { return d[i] < d[j] })
	rank := (p*len(d) + 99) / 100
	if rank < 1 {
		rank = 1
	}
	return d[rank-1]
}

// maxSamples bounds the latency samples kept per worker.
const maxSamples = 200000

// collector gathers the workers' counters.
type collector struct {
	sessions, errors, bytes, messages atomic.Int64

	mu          sync.Mutex
	sessLat     []time.Duration
	msgLat      []time.Duration
	firstErrors []string
}

func (c *collector) fail(err error) {
	c.errors.Add(1)
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.firstErrors) < 5 {
		c.firstErrors = append(c.firstErrors, err.Error())
	}
}

func (c *collector) merge(sess, msg []time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.sessLat = append(c.sessLat, sess...)
	c.msgLat = append(c.msgLat, msg...)
}

// runLoad runs the login or retr mode.
func runLoad(cfg *config, stop <-chan os.Signal) result {
	var col collector
	var started atomic.Int64
	start := time.Now()
	end := start.Add(cfg.max)
	if cfg.count <= 0 {
		end = start.Add(cfg.duration)
	}
	hard := start.Add(cfg.max)
	var stopped atomic.Bool
	go func() {
		<-stop
		stopped.Store(true)
	}()
	more := func() bool {
		if stopped.Load() || col.errors.Load() >= cfg.maxErrors {
			return false
		}
		now := time.Now()
		if now.After(end) || now.After(hard) {
			return false
		}
		return cfg.count <= 0 || started.Add(1) <= cfg.count
	}

	var wg sync.WaitGroup
	for w := 0; w < cfg.conc; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			var mine []string
			for i := w % len(cfg.users); i < len(cfg.users); i += cfg.conc {
				mine = append(mine, cfg.users[i])
			}
			if len(mine) == 0 { // fewer users than workers: share
				mine = []string{cfg.users[w%len(cfg.users)]}
			}
			var sessLat, msgLat []time.Duration
			for k := 0; more(); k++ {
				t0 := time.Now()
				nb, nm, err := session(cfg, mine[k%len(mine)], &msgLat)
				if err != nil {
					col.fail(err)
					time.Sleep(10 * time.Millisecond) // do not spin on a refusing server
					continue
				}
				col.sessions.Add(1)
				col.bytes.Add(nb)
				col.messages.Add(nm)
				if len(sessLat) < maxSamples {
					sessLat = append(sessLat, time.Since(t0))
				}
			}
			col.merge(sessLat, msgLat)
		}(w)
	}
	wg.Wait()
	return result{
		cfg: cfg, sessions: col.sessions.Load(), errors: col.errors.Load(),
		bytes: col.bytes.Load(), messages: col.messages.Load(), elapsed: time.Since(start),
		sessLat: col.sessLat, msgLat: col.msgLat, firstErrors: col.firstErrors,
	}
}

// dial connects as cfg says (pop3client, the client popgate's tests use too).
func dial(cfg *config) (*pop3client.Client, error) {
	return pop3client.Dial(cfg.addr, pop3client.Options{TLS: cfg.tls, TLSConfig: cfg.tlsConf, Timeout: cfg.timeout})
}

// listSizes returns the size of every message, indexed by message number
// - 1 (RFC 1939 §5 LIST); numbers not listed (deleted) are -1.
func listSizes(c *pop3client.Client, n int) ([]int64, error) {
	es, err := c.List()
	if err != nil {
		return nil, err
	}
	sizes := make([]int64, n)
	for i := range sizes {
		sizes[i] = -1
	}
	for _, e := range es {
		if e.Num > n {
			return nil, fmt.Errorf("LIST: message %d of %d", e.Num, n)
		}
		sizes[e.Num-1] = e.Size
	}
	return sizes, nil
}

// session runs one login or retr session and returns the message octets
// retrieved and the number of messages.
func session(cfg *config, user string, msgLat *[]time.Duration) (int64, int64, error) {
	c, err := dial(cfg)
	if err != nil {
		return 0, 0, err
	}
	defer c.Close()
	if err := c.Login(user, cfg.pass); err != nil {
		return 0, 0, fmt.Errorf("user %s: %w", user, err)
	}
	n, _, err := c.Stat()
	if err != nil {
		return 0, 0, err
	}
	var total, msgs int64
	if cfg.mode == "retr" {
		var sizes []int64
		if cfg.verify {
			if sizes, err = listSizes(c, n); err != nil {
				return 0, 0, err
			}
		}
		for i := 1; i <= n; i++ {
			t0 := time.Now()
			got, err := c.Retr(i, nil)
			if err != nil {
				return total, msgs, fmt.Errorf("user %s: %w", user, err)
			}
			if len(*msgLat) < maxSamples {
				*msgLat = append(*msgLat, time.Since(t0))
			}
			if sizes != nil && got != sizes[i-1] {
				return total, msgs, fmt.Errorf("user %s: RETR %d gave %d octets, LIST said %d", user, i, got, sizes[i-1])
			}
			total += got
			msgs++
		}
	}
	return total, msgs, c.Quit()
}

// runIdle opens cfg.sessions logged-in sessions, prints a ready line, holds
// them for cfg.duration (or until stop), then QUITs them.
func runIdle(cfg *config, stop <-chan os.Signal, out io.Writer) result {
	var col collector
	start := time.Now()
	conns := make([]*pop3client.Client, cfg.sessions)
	next := atomic.Int64{}
	var wg sync.WaitGroup
	for w := 0; w < cfg.conc; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1)) - 1
				if i >= cfg.sessions || time.Since(start) > cfg.max || col.errors.Load() >= cfg.maxErrors {
					return
				}
				user := cfg.users[i%len(cfg.users)]
				c, err := dial(cfg)
				if err == nil {
					if err = c.Login(user, cfg.pass); err == nil {
						_, _, err = c.Stat()
					}
					if err != nil {
						c.Close()
					}
				}
				if err != nil {
					col.fail(fmt.Errorf("session %d (user %s): %w", i, user, err))
					continue
				}
				conns[i] = c
				col.sessions.Add(1)
			}
		}()
	}
	wg.Wait()
	opened := time.Since(start)
	fmt.Fprintf(out, "ready sessions=%d errors=%d open_time=%.2fs\n", col.sessions.Load(), col.errors.Load(), opened.Seconds())
	if f, ok := out.(*os.File); ok {
		f.Sync()
	}
	hold := cfg.duration
	if rest := cfg.max - opened; hold > rest {
		hold = rest
	}
	select {
	case <-time.After(hold):
	case <-stop:
	}
	var qwg sync.WaitGroup
	sem := make(chan struct{}, 64)
	for _, c := range conns {
		if c == nil {
			continue
		}
		qwg.Add(1)
		sem <- struct{}{}
		go func(c *pop3client.Client) {
			defer qwg.Done()
			defer func() { <-sem }()
			if err := c.Quit(); err != nil {
				col.fail(fmt.Errorf("QUIT after holding: %w", err))
			}
			c.Close()
		}(c)
	}
	qwg.Wait()
	return result{
		cfg: cfg, sessions: col.sessions.Load(), errors: col.errors.Load(),
		elapsed: opened, firstErrors: col.firstErrors,
	}
}
