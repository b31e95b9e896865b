package backends

import "context"

// HeaderFetcher is an optional interface of a Mailbox: the named header
// fields of several messages in as few upstream calls as the store allows.
// UIDL migration uses it to compute match keys; without it the header of
// each message is read with Open(ctx, m, 0).
//
// fn is called once per message still present upstream, with its index in
// msgs and the header lines of the named fields as the store holds them
// ("Name: value" lines, folded as stored, ending with an empty line or
// not); a message gone upstream is skipped. The header slice is only valid
// during the call.
type HeaderFetcher interface {
	FetchHeaders(ctx context.Context, msgs []Message, fields []string, fn func(i int, header []byte)) error
}

// Unwrapper is implemented by a Mailbox that wraps another one (the
// router's), so that optional interfaces of the inner one can be found.
type Unwrapper interface {
	Unwrap() Mailbox
}

// Find returns the first Mailbox of mb's wrapping chain (mb, then what
// Unwrap returns, and so on) that implements T.
func Find[T any](mb Mailbox) (T, bool) {
	for mb != nil {
		if t, ok := mb.(T); ok {
			return t, true
		}
		u, ok := mb.(Unwrapper)
		if !ok {
			break
		}
		mb = u.Unwrap()
	}
	var zero T
	return zero, false
}
