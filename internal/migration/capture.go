package migration

import (
	"bytes"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/popgate/popgate/internal/pop3client"
)

// maxHeader bounds the header octets kept per message; a longer header is
// keyed on its first maxHeader octets (the key fields come first in
// practice).
const maxHeader = 256 << 10

// headerSink keeps the octets of a message up to the end of its header
// (the first empty line) and drops the rest.
type headerSink struct {
	buf  []byte
	done bool
}

func (h *headerSink) Write(p []byte) (int, error) {
	if h.done {
		return len(p), nil
	}
	h.buf = append(h.buf, p...)
	if i := bytes.Index(h.buf, []byte("\n\r\n")); i >= 0 {
		h.buf, h.done = h.buf[:i+1], true
	} else if i := bytes.Index(h.buf, []byte("\n\n")); i >= 0 {
		h.buf, h.done = h.buf[:i+1], true
	} else if len(h.buf) > maxHeader {
		h.buf, h.done = h.buf[:maxHeader], true
	}
	return len(p), nil
}

func (h *headerSink) reset() { h.buf, h.done = h.buf[:0], false }

// CaptureResult is what Capture read from the old server.
type CaptureResult struct {
	Entries []Entry
	UsedTOP bool // false: the server has no TOP, each message was read whole with RETR
	Skipped int  // messages listed by UIDL that could not be read (gone meanwhile)
}

// Capture logs in to the old server on c as user and reads its UIDL listing
// and the header of every message (TOP n 0, pipelined when the server
// offers PIPELINING; RETR when it has no TOP, which reads every message
// whole and is much slower). It never deletes anything: the session ends
// with QUIT before any DELE could have been sent, and the caller closes c.
func Capture(c *pop3client.Client, user, password string) (*CaptureResult, error) {
	if err := c.Login(user, password); err != nil {
		return nil, fmt.Errorf("login to the old server: %w", err)
	}
	list, err := c.UIDLs()
	if err != nil {
		var er *pop3client.ErrResponse
		if errors.As(err, &er) {
			return nil, fmt.Errorf("the old server does not answer UIDL (%s): its clients cannot have kept UIDL state, nothing to capture", er.Text)
		}
		return nil, err
	}
	for _, e := range list {
		if !ValidUIDL(e.UIDL) {
			return nil, fmt.Errorf("the old server's UIDL of message %d is not a valid UIDL (RFC 1939 §7): %.80q", e.Num, e.UIDL)
		}
	}
	res := &CaptureResult{UsedTOP: true}
	caps, capaErr := c.Capa()
	if capaErr == nil && !hasCap(caps, "TOP") {
		res.UsedTOP = false
	}
	var sink headerSink
	read := func(cmd func(e pop3client.Entry) string, todo []pop3client.Entry) ([]pop3client.Entry, error) {
		cmds := make([]string, len(todo))
		for i, e := range todo {
			cmds[i] = cmd(e)
		}
		var failed []pop3client.Entry
		err := c.Pipeline(cmds, func(i int, _ string, err error) error {
			if err != nil {
				failed = append(failed, todo[i])
				return nil
			}
			sink.reset()
			if _, err := c.Body(&sink); err != nil {
				return fmt.Errorf("message %d: %w", todo[i].Num, err)
			}
			res.Entries = append(res.Entries, Entry{UIDL: todo[i].UIDL, Key: MatchKey(sink.buf).String()})
			return nil
		})
		return failed, err
	}
	top := func(e pop3client.Entry) string { return "TOP " + strconv.Itoa(e.Num) + " 0" }
	retr := func(e pop3client.Entry) string { return "RETR " + strconv.Itoa(e.Num) }
	todo := list
	if res.UsedTOP && capaErr != nil && len(list) > 0 {
		// No CAPA (RFC 1939 server): TOP is optional there; try it once.
		failed, err := read(top, list[:1])
		if err != nil {
			return nil, err
		}
		if len(failed) == 1 {
			res.UsedTOP = false
		}
		todo = list[1:]
		if !res.UsedTOP {
			todo = list
		}
	}
	cmd := top
	if !res.UsedTOP {
		cmd = retr
	}
	failed, err := read(cmd, todo)
	if err != nil {
		return nil, err
	}
	res.Skipped = len(failed)
	// Keep the old server's order, whatever the reads' order was.
	order := make(map[string]int, len(list))
	for i, e := range list {
		order[e.UIDL] = i
	}
	sortEntries(res.Entries, order)
	if err := c.Quit(); err != nil {
		return nil, fmt.Errorf("QUIT on the old server: %w", err)
	}
	return res, nil
}

func hasCap(caps []string, name string) bool {
	for _, l := range caps {
		w, _, _ := bytes.Cut([]byte(l), []byte(" "))
		if string(bytes.ToUpper(w)) == name {
			return true
		}
	}
	return false
}

func sortEntries(es []Entry, order map[string]int) {
	// insertion-free: place by index
	out := make([]Entry, 0, len(es))
	byIdx := make([]*Entry, len(order))
	for i := range es {
		byIdx[order[es[i].UIDL]] = &es[i]
	}
	for _, e := range byIdx {
		if e != nil {
			out = append(out, *e)
		}
	}
	copy(es, out)
}

// NewMap is the map to store for maildrop from a capture of user on server.
func NewMap(maildrop, user, server string, r *CaptureResult) *Map {
	return &Map{Version: 1, Maildrop: maildrop, User: user, Server: server, CapturedAt: time.Now().UTC(), Entries: r.Entries}
}
