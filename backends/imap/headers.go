package imap

import (
	"context"

	"github.com/emersion/go-imap/v2"

	"github.com/popgate/popgate/backends"
)

var _ backends.HeaderFetcher = (*Mailbox)(nil)

// headerBatch is the number of UIDs per header FETCH, bounding the command
// line and what one command holds in flight.
const headerBatch = 500

// FetchHeaders implements backends.HeaderFetcher with UID FETCH
// (BODY.PEEK[HEADER.FIELDS (…)]) (RFC 3501 §6.4.5), which leaves \Seen
// alone, in batches of headerBatch UIDs.
func (m *Mailbox) FetchHeaders(ctx context.Context, msgs []backends.Message, fields []string, fn func(i int, header []byte)) error {
	if m.reader != nil {
		m.reader.Close()
	}
	for start := 0; start < len(msgs); start += headerBatch {
		batch := msgs[start:min(start+headerBatch, len(msgs))]
		index := make(map[imap.UID]int, len(batch))
		var set imap.UIDSet
		for i, msg := range batch {
			uid, err := parseRef(msg.Ref)
			if err != nil {
				return err
			}
			index[uid] = start + i
			set.AddNum(uid)
		}
		err := m.guard(ctx, "fetch headers", func() error {
			item := &imap.FetchItemBodySection{Specifier: imap.PartSpecifierHeader, HeaderFields: fields, Peek: true}
			cmd := m.c.Fetch(set, &imap.FetchOptions{UID: true, BodySection: []*imap.FetchItemBodySection{item}})
			defer cmd.Close()
			for {
				msg := cmd.Next()
				if msg == nil {
					break
				}
				buf, err := msg.Collect()
				if err != nil {
					return err
				}
				i, ok := index[buf.UID]
				if !ok {
					continue // not asked for (an unsolicited FETCH)
				}
				for _, sec := range buf.BodySection {
					fn(i, sec.Bytes)
					break
				}
			}
			return cmd.Close()
		})
		if err != nil {
			return err
		}
	}
	return nil
}
