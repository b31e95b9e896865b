package imap

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/emersion/go-imap/v2"

	"github.com/popgate/popgate/backends"
)

// Fetching ahead keeps the upstream busy while the client reads. One POP3
// session has at most one UID FETCH sent ahead of need (Mailbox.ahead), whose
// answer a goroutine reads into a pooled buffer of at most one chunk
// (Config.ChunkSize, 1 MiB) while the session writes the current chunk to
// the client:
//
//   - the next chunk of the message being retrieved (RETR of a message
//     larger than one chunk), sent as soon as the current chunk is read;
//   - the first chunk of the message the proxy hinted the client will
//     retrieve next (backends.NextHinter: RETR 1, 2, … in order), sent as soon
//     as the last chunk of the current message is read.
//
// So a streaming session holds at most two chunk buffers (the one going to
// the client and the one filling), and between two RETRs at most one
// prefetched chunk, for at most aheadIdle: a prefetched chunk nobody claims
// by then goes back to the pool, so an idle session holds none. A fetch
// ahead is only used for exactly the fetch it was sent for (same UID,
// section, offset and size; go-imap's MatchCommand checks the answer's
// section and offset, and routes answers by UID); any other outcome than a
// complete answer (NO, no answer, a stray FETCH taking its place) is thrown
// away and the chunk is fetched again the ordinary way, whose answer decides
// (message gone, size mismatch, …). A transport failure ends the session's
// upstream connection like any other.

// aheadIdle is how long a prefetched first chunk of the next message is
// kept for a RETR that does not come.
var aheadIdle = 2 * time.Second

// aheadFetch is one fetch sent ahead; a goroutine reads its answer.
type aheadFetch struct {
	key  fetchKey
	next bool          // the first chunk of the hinted next message
	done chan struct{} // closed when the goroutine has finished
	// Set by the goroutine before done is closed.
	got int
	err error
	// broken: err is a connection failure (the connection is closed).
	broken bool

	mu      sync.Mutex
	bufp    *[]byte // nil once taken or dropped
	settled bool    // claimed or given up: the idle timer must not start
	idle    *time.Timer
}

// HintNext implements backends.NextHinter: next is the message the client
// will likely retrieve after the one just opened. Its first chunk is
// fetched ahead once the current message has been read from upstream.
func (m *Mailbox) HintNext(next backends.Message) {
	uid, err := parseRef(next.Ref)
	if err != nil || next.Size <= 0 {
		m.next = nil
		return
	}
	m.next = &nextHint{uid: uid, size: next.Size}
	if r, ok := m.reader.(*msgReader); ok && r.last && r.lines < 0 && r.err == nil {
		m.prefetchNext(r.uid)
	}
}

// nextHint is the message of the last HintNext.
type nextHint struct {
	uid  imap.UID
	size int64
}

// prefetchNext sends the fetch of the hinted message's first chunk ahead,
// unless it is cur (the message just read) or something is in flight.
func (m *Mailbox) prefetchNext(cur imap.UID) {
	h := m.next
	if h == nil || h.uid == cur || m.ahead != nil {
		return
	}
	m.next = nil
	chunk := int64(m.b.chunk)
	m.startAhead(fetchKey{uid: h.uid, off: 0, n: min(chunk, h.size), whole: h.size <= chunk}, true)
}

// startAhead sends the fetch k and starts the goroutine reading its answer
// into a pooled buffer. It does nothing while another fetch ahead is
// pending or the connection failed.
func (m *Mailbox) startAhead(k fetchKey, next bool) {
	if m.ahead != nil || m.broken != nil || m.closed || len(m.pending) > 0 {
		return
	}
	bufp := m.b.getBuf(k.n)
	f := &aheadFetch{key: k, next: next, bufp: bufp, done: make(chan struct{})}
	cmd, item := m.sendFetch(k)
	conn := m.conn
	// go-imap has no deadlines of its own: as guard does, close the
	// connection when the answer does not come within the command timeout.
	watchdog := time.AfterFunc(m.b.cfg.CommandTimeout, func() { conn.Close() })
	m.ahead = f
	go func() {
		got, err := readFetch(cmd, item, k, *bufp)
		if !watchdog.Stop() && err == nil {
			err = errors.New("finished too late")
		}
		var be *backends.Error
		f.got, f.err = got, err
		f.broken = err != nil && !errors.As(err, &be) && !isIMAPStatus(err)
		if f.broken {
			conn.Close()
		}
		f.mu.Lock()
		if f.next && !f.settled {
			b := m.b
			f.idle = time.AfterFunc(aheadIdle, func() { f.drop(b) })
		}
		f.mu.Unlock()
		close(f.done)
	}()
}

// drop gives the buffer back unless the answer was taken.
func (f *aheadFetch) drop(b *Backend) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.settled = true
	if f.idle != nil {
		f.idle.Stop()
	}
	if f.bufp != nil {
		b.putBuf(f.bufp)
		f.bufp = nil
	}
}

// dropAhead waits for the fetch ahead, if any, to end (the command timeout
// bounds the wait) and throws its answer away.
func (m *Mailbox) dropAhead() {
	f := m.ahead
	if f == nil {
		return
	}
	m.ahead = nil
	<-f.done
	f.drop(m.b)
}

// claim returns the answer of the fetch ahead sent for exactly k: its
// buffer (the caller owns it) and the octets in it. It returns a nil
// buffer when there is none, or when the answer is anything but complete
// (the caller then fetches k itself); an error when the connection failed.
func (m *Mailbox) claim(ctx context.Context, k fetchKey) (*[]byte, int, error) {
	f := m.ahead
	if f == nil {
		return nil, 0, nil
	}
	if f.key != k {
		m.dropAhead()
		return nil, 0, nil
	}
	m.ahead = nil
	select {
	case <-f.done:
	case <-ctx.Done():
		m.conn.Close()
		<-f.done
		f.drop(m.b)
		m.broken = fmt.Errorf("fetch ahead: %w", ctx.Err())
		return nil, 0, backends.ErrUnavailable.Wrap(fmt.Errorf("imap fetch: %w", m.broken))
	}
	f.mu.Lock()
	f.settled = true
	if f.idle != nil {
		f.idle.Stop()
	}
	bufp := f.bufp
	f.bufp = nil
	f.mu.Unlock()
	switch {
	case f.broken:
		if bufp != nil {
			m.b.putBuf(bufp)
		}
		m.broken = fmt.Errorf("fetch ahead: %w", f.err)
		m.conn.Close()
		return nil, 0, backends.ErrUnavailable.Wrap(fmt.Errorf("imap fetch: %w", m.broken))
	case f.err != nil || bufp == nil:
		if bufp != nil {
			m.b.putBuf(bufp)
		}
		if f.err != nil {
			m.log.Debug().Err(f.err).Msg("fetch ahead not used; fetching again")
		}
		return nil, 0, nil
	}
	return bufp, f.got, nil
}
