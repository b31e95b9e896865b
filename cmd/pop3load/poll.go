package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"sort"
	"sync"
	"sync/atomic"
	"time"
)

// maildrop is what a polling client remembers of one maildrop: the UIDLs it
// has retrieved (fetchmail's .fetchids with "keep"), and when to poll next.
type maildrop struct {
	user string
	seen map[string]bool // nil: no state yet
	next time.Time
}

// loadState reads a -state file: {"user": ["uidl", …], …}. A missing file is
// an empty state.
func loadState(path string) (map[string][]string, error) {
	state := map[string][]string{}
	if path == "" {
		return state, nil
	}
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return state, nil
	}
	if err != nil {
		return nil, err
	}
	if err := json.Unmarshal(b, &state); err != nil {
		return nil, fmt.Errorf("-state %s: %w", path, err)
	}
	return state, nil
}

// saveState writes the maildrops' UIDLs to path (through a temporary file).
func saveState(path string, mds []*maildrop) error {
	state := map[string][]string{}
	for _, md := range mds {
		if md.seen == nil {
			continue
		}
		uidls := make([]string, 0, len(md.seen))
		for u := range md.seen {
			uidls = append(uidls, u)
		}
		sort.Strings(uidls)
		state[md.user] = uidls
	}
	b, err := json.Marshal(state)
	if err != nil {
		return err
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

// runPoll runs the poll mode: cfg.conc clients, client w polling the
// maildrops whose index is w modulo cfg.conc, each maildrop every
// cfg.interval (start to start; a poll that is due waits for none), for
// cfg.duration or cfg.count sessions.
func runPoll(cfg *config, stop <-chan os.Signal) result {
	var col collector
	state, err := loadState(cfg.statePath)
	if err != nil {
		col.fail(err)
		return result{cfg: cfg, errors: 1, firstErrors: col.firstErrors}
	}
	mds := make([]*maildrop, len(cfg.users))
	for i, u := range cfg.users {
		mds[i] = &maildrop{user: u}
		if uidls, ok := state[u]; ok {
			mds[i].seen = make(map[string]bool, len(uidls))
			for _, x := range uidls {
				mds[i].seen[x] = true
			}
		}
	}
	var stopped atomic.Bool
	go func() {
		<-stop
		stopped.Store(true)
	}()

	// Prime the maildrops this client knows nothing about, untimed.
	if cfg.prime {
		var todo []*maildrop
		for _, md := range mds {
			if md.seen == nil {
				todo = append(todo, md)
			}
		}
		var next atomic.Int64
		var wg sync.WaitGroup
		for w := 0; w < cfg.conc; w++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := int(next.Add(1)) - 1; i < len(todo) && !stopped.Load(); i = int(next.Add(1)) - 1 {
					if err := primeSession(cfg, todo[i]); err != nil {
						col.fail(fmt.Errorf("priming: %w", err))
					}
				}
			}()
		}
		wg.Wait()
		if col.errors.Load() > 0 {
			return result{cfg: cfg, errors: col.errors.Load(), firstErrors: col.firstErrors}
		}
	}

	start := time.Now()
	end := start.Add(cfg.max)
	if cfg.count <= 0 {
		end = start.Add(cfg.duration)
	}
	if hard := start.Add(cfg.max); end.After(hard) {
		end = hard
	}
	done := make(chan struct{})
	var closeDone sync.Once
	finish := func() { closeDone.Do(func() { close(done) }) }
	timer := time.AfterFunc(time.Until(end), finish)
	defer timer.Stop()
	go func() {
		for !stopped.Load() {
			select {
			case <-done:
				return
			case <-time.After(50 * time.Millisecond):
			}
		}
		finish()
	}()
	var started, withNew atomic.Int64
	more := func() bool {
		select {
		case <-done:
			return false
		default:
		}
		if col.errors.Load() >= cfg.maxErrors {
			return false
		}
		return cfg.count <= 0 || started.Add(1) <= cfg.count
	}

	var wg sync.WaitGroup
	for w := 0; w < cfg.conc; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			var mine []*maildrop
			for i := w % len(mds); i < len(mds); i += cfg.conc {
				mine = append(mine, mds[i])
			}
			if w >= len(mds) { // fewer maildrops than clients: this one has none
				return
			}
			var sessLat, msgLat []time.Duration
			for {
				md := mine[0] // the one due first
				for _, m := range mine[1:] {
					if m.next.Before(md.next) {
						md = m
					}
				}
				if wait := time.Until(md.next); wait > 0 {
					select {
					case <-done:
					case <-time.After(wait):
					}
				}
				if !more() {
					break
				}
				t0 := time.Now()
				md.next = t0.Add(cfg.interval)
				nb, nm, err := pollSession(cfg, md, &msgLat)
				if err != nil {
					col.fail(err)
					time.Sleep(10 * time.Millisecond) // do not spin on a refusing server
					continue
				}
				col.sessions.Add(1)
				col.bytes.Add(nb)
				col.messages.Add(nm)
				if nm > 0 {
					withNew.Add(1)
				}
				if len(sessLat) < maxSamples {
					sessLat = append(sessLat, time.Since(t0))
				}
			}
			col.merge(sessLat, msgLat)
		}(w)
	}
	wg.Wait()
	elapsed := time.Since(start)
	if cfg.statePath != "" {
		if err := saveState(cfg.statePath, mds); err != nil {
			col.fail(fmt.Errorf("-state: %w", err))
		}
	}
	return result{
		cfg: cfg, sessions: col.sessions.Load(), errors: col.errors.Load(),
		bytes: col.bytes.Load(), messages: col.messages.Load(), withNew: withNew.Load(),
		elapsed: elapsed, sessLat: col.sessLat, msgLat: col.msgLat, firstErrors: col.firstErrors,
	}
}

// primeSession records a maildrop's UIDLs without retrieving anything.
func primeSession(cfg *config, md *maildrop) error {
	c, err := dial(cfg)
	if err != nil {
		return err
	}
	defer c.Close()
	if err := c.Login(md.user, cfg.pass); err != nil {
		return fmt.Errorf("user %s: %w", md.user, err)
	}
	es, err := c.UIDLs()
	if err != nil {
		return fmt.Errorf("user %s: %w", md.user, err)
	}
	if err := c.Quit(); err != nil {
		return fmt.Errorf("user %s: %w", md.user, err)
	}
	md.seen = make(map[string]bool, len(es))
	for _, e := range es {
		md.seen[e.UIDL] = true
	}
	return nil
}

// pollSession is one poll: STAT, UIDL, RETR of every message whose UIDL is
// not in md.seen, QUIT (RFC 1939 §7: UIDL is how a client that leaves mail
// on the server finds what is new). Only after a successful QUIT does the
// client take the listing as its new state (what it retrieved, and no
// longer the UIDLs of messages gone from the server); a failed session
// retrieves the same messages next time. It returns the octets and the
// number of messages retrieved.
func pollSession(cfg *config, md *maildrop, msgLat *[]time.Duration) (int64, int64, error) {
	c, err := dial(cfg)
	if err != nil {
		return 0, 0, err
	}
	defer c.Close()
	if err := c.Login(md.user, cfg.pass); err != nil {
		return 0, 0, fmt.Errorf("user %s: %w", md.user, err)
	}
	n, _, err := c.Stat()
	if err != nil {
		return 0, 0, fmt.Errorf("user %s: %w", md.user, err)
	}
	es, err := c.UIDLs()
	if err != nil {
		return 0, 0, fmt.Errorf("user %s: %w", md.user, err)
	}
	if len(es) != n {
		return 0, 0, fmt.Errorf("user %s: UIDL listed %d messages, STAT said %d", md.user, len(es), n)
	}
	var sizes []int64
	if cfg.verify {
		if sizes, err = listSizes(c, n); err != nil {
			return 0, 0, fmt.Errorf("user %s: %w", md.user, err)
		}
	}
	seen := make(map[string]bool, len(es))
	var total, msgs int64
	for _, e := range es {
		seen[e.UIDL] = true
		if md.seen[e.UIDL] {
			continue
		}
		t0 := time.Now()
		got, err := c.Retr(e.Num, nil)
		if err != nil {
			return total, msgs, fmt.Errorf("user %s: %w", md.user, err)
		}
		if len(*msgLat) < maxSamples {
			*msgLat = append(*msgLat, time.Since(t0))
		}
		if sizes != nil && got != sizes[e.Num-1] {
			return total, msgs, fmt.Errorf("user %s: RETR %d gave %d octets, LIST said %d", md.user, e.Num, got, sizes[e.Num-1])
		}
		total += got
		msgs++
	}
	if err := c.Quit(); err != nil {
		return total, msgs, fmt.Errorf("user %s: %w", md.user, err)
	}
	md.seen = seen
	return total, msgs, nil
}
