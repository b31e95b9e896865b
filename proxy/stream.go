package proxy

import (
	"io"
	"sync/atomic"
	"time"
)

// stallWatch bounds how long a message stream may wait on the store: when
// the store delivers nothing for limit, stalled runs (once). Only time spent
// waiting on the store counts, never time spent writing to the client
// (WriteTimeout bounds that).
type stallWatch struct {
	t     *time.Timer
	limit time.Duration
	fired atomic.Bool
}

func newStallWatch(limit time.Duration, stalled func()) *stallWatch {
	w := &stallWatch{limit: limit}
	w.t = time.AfterFunc(limit, func() {
		w.fired.Store(true)
		stalled()
	})
	w.t.Stop()
	return w
}

// waiting starts (or restarts) the wait on the store.
func (w *stallWatch) waiting() { w.t.Reset(w.limit) }

// got stops the wait: the store answered.
func (w *stallWatch) got() { w.t.Stop() }

// watched is a message stream under a stallWatch. Read waits on the store.
// Write is for a store that writes the message itself (io.WriterTo): time
// inside Write is the client's, time between writes the store's.
type watched struct {
	r  io.Reader
	w  io.Writer
	sw *stallWatch
}

func (x watched) Read(p []byte) (int, error) {
	x.sw.waiting()
	defer x.sw.got()
	return x.r.Read(p)
}

func (x watched) Write(p []byte) (int, error) {
	x.sw.got()
	defer x.sw.waiting()
	return x.w.Write(p)
}
