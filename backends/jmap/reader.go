package jmap

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/popgate/popgate/backends"
)

// readBufSize is the raw read buffer of one download.
const readBufSize = 32 << 10

var readBufPool = sync.Pool{New: func() any { b := make([]byte, readBufSize); return &b }}

// errSizeCorrected is answered to a RETR of a message stored with bare LF
// line endings whose CRLF size was not known when the snapshot was listed:
// the size is measured and remembered, the next session lists it exactly.
var errSizeCorrected = &backends.Error{Code: backends.CodeSysTemp, Text: "message size being corrected, retry in a new session"}

// download starts GET downloadUrl for the blob (RFC 8620 §6.2). A 404 is
// ErrMessageGone.
func (m *Mailbox) download(ctx context.Context, blobID string, msg backends.Message, bodyLines int) (*msgReader, error) {
	u := m.expandDownload(blobID)
	rctx, cancel := context.WithCancel(ctx)
	r := &msgReader{b: m.b, blobID: blobID, cancel: cancel, timeout: m.b.cfg.CommandTimeout, lines: bodyLines, left: bodyLines, want: msg.Size}
	r.timer = time.AfterFunc(r.timeout, r.expire)
	resp, err := m.b.do(rctx, "download", true, m.cred, func() (*http.Request, error) {
		req, err := http.NewRequest(http.MethodGet, u, nil)
		if err != nil {
			return nil, err
		}
		m.cred.authorize(req)
		return req, nil
	})
	r.timer.Stop()
	if err != nil {
		cancel()
		var se *statusError
		if errors.As(err, &se) && se.code == http.StatusNotFound {
			return nil, backends.ErrMessageGone.Wrap(err)
		}
		if r.expired.Load() {
			err = fmt.Errorf("%w (no answer within %s)", err, r.timeout)
		}
		return nil, classify(err)
	}
	r.body = resp.Body
	r.bufp = readBufPool.Get().(*[]byte)
	r.knownExtra = refCorrected(msg.Ref)
	return r, nil
}

// msgReader delivers a blob with CRLF line endings: a bare LF becomes CRLF.
// For RETR it counts the octets against the listed size: a body that ends
// early (cut connection) or runs long is an error, never a short message
// ending cleanly. A blob with bare LFs whose CRLF size was not listed is
// measured once (read to its end, the extra octets remembered per blobId,
// see Backend.crlfExtra) and answered with errSizeCorrected: LIST stays
// the octets RETR sends (DESIGN invariant 4), and the next snapshot lists
// the corrected size. For TOP it stops after the header and bodyLines
// lines and closes the body. Every read of the body has its own deadline
// (the command timeout).
type msgReader struct {
	b       *Backend
	blobID  string
	body    io.ReadCloser
	cancel  context.CancelFunc
	timeout time.Duration
	timer   *time.Timer
	expired atomic.Bool
	bufp    *[]byte
	rs, re  int // unconsumed raw octets: (*bufp)[rs:re]
	eof     bool
	err     error // sticky

	lines      int   // TOP body lines; < 0: RETR
	want       int64 // RETR: the listed size
	sent       int64
	knownExtra bool // the listed size already counts the CRs added to bare LFs
	prevCR     bool // the last raw octet was CR
	insertedCR bool // a CR was emitted for the LF at rs

	// TOP
	inBody, nonBlank bool
	left             int
	done             bool

	onComplete func() // RETR delivered completely
	closed     bool
}

func (r *msgReader) expire() {
	r.expired.Store(true)
	r.cancel()
}

// fill reads the next raw chunk under the per-read deadline.
func (r *msgReader) fill() error {
	r.timer.Reset(r.timeout)
	n, err := r.body.Read(*r.bufp)
	r.timer.Stop()
	r.rs, r.re = 0, n
	if err == io.EOF {
		r.eof = true
		return nil
	}
	if err != nil {
		if r.expired.Load() {
			return fmt.Errorf("jmap download: no data for %s: %w", r.timeout, err)
		}
		return fmt.Errorf("jmap download: %w", err)
	}
	return nil
}

// prefetch reads the first chunk (Open calls it before +OK).
func (r *msgReader) prefetch() error {
	for r.re == 0 && !r.eof {
		if err := r.fill(); err != nil {
			return backends.ErrUnavailable.Wrap(err)
		}
	}
	return nil
}

func (r *msgReader) Read(p []byte) (int, error) {
	if r.err != nil {
		return 0, r.err
	}
	if r.closed {
		return 0, errors.New("jmap: read after close")
	}
	n := 0
	for n < len(p) && !r.done {
		if r.rs == r.re {
			if n > 0 {
				break
			}
			if r.eof {
				return 0, r.finish()
			}
			if err := r.fill(); err != nil {
				r.err = err
				return 0, err
			}
			continue
		}
		buf := *r.bufp
		c := buf[r.rs]
		if c == '\n' && !r.prevCR && !r.insertedCR {
			if r.lines < 0 && !r.knownExtra {
				r.err = r.measure()
				return n, r.err
			}
			p[n] = '\r'
			n++
			r.insertedCR = true
			if n == len(p) {
				break
			}
		}
		p[n] = c
		n++
		r.rs++
		r.insertedCR = false
		r.prevCR = c == '\r'
		if r.lines >= 0 {
			r.top(c)
		}
	}
	r.sent += int64(n)
	if r.lines < 0 && r.sent > r.want {
		r.err = fmt.Errorf("jmap download: blob %s runs past its listed size %d", r.blobID, r.want)
		return 0, r.err
	}
	if r.done && n == 0 {
		return 0, io.EOF
	}
	return n, nil
}

// top follows TOP's header and line count (RFC 1939 §7) on the CRLF stream.
func (r *msgReader) top(c byte) {
	if !r.inBody {
		switch c {
		case '\n':
			if !r.nonBlank {
				r.inBody = true
				if r.left <= 0 {
					r.done = true
				}
			}
			r.nonBlank = false
		case '\r':
		default:
			r.nonBlank = true
		}
		return
	}
	if c == '\n' {
		r.left--
		if r.left <= 0 {
			r.done = true
		}
	}
}

// finish ends a stream at the body's EOF.
func (r *msgReader) finish() error {
	if r.lines < 0 && r.sent != r.want {
		r.err = fmt.Errorf("jmap download: blob %s ended after %d of %d octets: %w", r.blobID, r.sent, r.want, io.ErrUnexpectedEOF)
		return r.err
	}
	if r.lines < 0 && r.onComplete != nil {
		r.onComplete()
		r.onComplete = nil
	}
	r.done = true
	return io.EOF
}

// measure counts the bare LFs of the rest of the blob (the one at rs is
// the first) and remembers the correction.
func (r *msgReader) measure() error {
	extra := int64(0)
	for {
		buf := *r.bufp
		for i := r.rs; i < r.re; i++ {
			if buf[i] == '\n' && !r.prevCR {
				extra++
			}
			r.prevCR = buf[i] == '\r'
		}
		r.rs = r.re
		if r.eof {
			break
		}
		if err := r.fill(); err != nil {
			return err
		}
	}
	r.b.crlfExtra.Add(r.blobID, extra)
	return errSizeCorrected.Wrap(fmt.Errorf("jmap: blob %s has %d bare LF line endings; listed %d octets, CRLF size %d", r.blobID, extra, r.want, r.want+extra))
}

// Close stops the download (TOP stops early this way) and releases the
// buffer.
func (r *msgReader) Close() error {
	if r.closed {
		return nil
	}
	r.closed = true
	r.timer.Stop()
	r.cancel()
	err := r.body.Close()
	readBufPool.Put(r.bufp)
	r.bufp = nil
	return err
}
