package migration

import (
	"context"
	"errors"
	"fmt"
	"hash/maphash"
	"io"
	"strings"
	"sync"
	"time"

	lru "github.com/hashicorp/golang-lru/v2"
	"github.com/rs/zerolog"

	"github.com/popgate/popgate/backends"
)

// DefaultCacheMaildrops is how many maildrops' header keys a Mapper keeps
// (about 24 octets a message, plus a UIDL header value where one is used).
const DefaultCacheMaildrops = 10000

// Mapper presents, at every login, the UIDLs the client knew: the old
// server's for messages matched by a captured map, the uidl_header value
// where configured, the store's own otherwise (see Match). It is safe for
// concurrent use by all sessions.
//
// Maildrop keys are the router's "backend/upstream-id": the part before the
// first '/' names the backend whose uidl_header applies.
type Mapper struct {
	store   Store
	headers map[string]string // backend name → uidl_header ("" none)
	log     zerolog.Logger
	seed    maphash.Seed
	cache   *lru.Cache[string, *cached]
	maps    sync.Map // maildrop → *loadedMap
}

// cached is what a Mapper remembers of one maildrop: the match key and
// uidl_header value of each message by its store UIDL, so that a login to
// an unchanged mailbox fetches no header.
type cached struct {
	mu     sync.Mutex
	keys   map[uint64]Key    // maphash of the store UIDL → key
	xuidl  map[uint64]string // store UIDL hash → uidl_header value (only non-empty ones)
	header string            // the uidl_header these values were read for
}

// loadedMap is a parsed map with the file stamp it was read at.
type loadedMap struct {
	stamp time.Time
	m     *Map
}

// NewMapper returns a Mapper reading maps from store, with uidlHeaders
// mapping backend names to their uidl_header setting.
func NewMapper(store Store, uidlHeaders map[string]string, cacheMaildrops int, log zerolog.Logger) *Mapper {
	if cacheMaildrops <= 0 {
		cacheMaildrops = DefaultCacheMaildrops
	}
	c, _ := lru.New[string, *cached](cacheMaildrops)
	h := make(map[string]string, len(uidlHeaders))
	for k, v := range uidlHeaders {
		if v != "" {
			h[k] = v
		}
	}
	return &Mapper{store: store, headers: h, log: log, seed: maphash.MakeSeed(), cache: c}
}

// loadMap returns maildrop's map, re-reading the file only when its stamp
// changed; nil when there is none.
func (mp *Mapper) loadMap(maildrop string) (*Map, error) {
	stamp, err := mp.store.Stamp(maildrop)
	if errors.Is(err, ErrNoMap) {
		mp.maps.Delete(maildrop)
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	if v, ok := mp.maps.Load(maildrop); ok && v.(*loadedMap).stamp.Equal(stamp) {
		return v.(*loadedMap).m, nil
	}
	m, err := mp.store.Load(maildrop)
	if errors.Is(err, ErrNoMap) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	mp.maps.Store(maildrop, &loadedMap{stamp: stamp, m: m})
	return m, nil
}

// MapUIDLs rewrites the UIDLs of msgs, the snapshot of maildrop just taken
// from mb, in place and returns it. Without a map and without a
// uidl_header for the backend it costs one stat of the map file. An error
// (the map unreadable, the headers not fetched) fails the login: presenting
// the store's own UIDLs would make the client download everything again.
func (mp *Mapper) MapUIDLs(ctx context.Context, maildrop string, mb backends.Mailbox, msgs []backends.Message) ([]backends.Message, error) {
	msgs, _, err := mp.MapWithStats(ctx, maildrop, mb, msgs)
	return msgs, err
}

// MapWithStats is MapUIDLs, also returning what Match did (zero Stats when
// the maildrop has neither a map nor a uidl_header).
func (mp *Mapper) MapWithStats(ctx context.Context, maildrop string, mb backends.Mailbox, msgs []backends.Message) ([]backends.Message, Stats, error) {
	backend, _, _ := strings.Cut(maildrop, "/")
	header := mp.headers[backend]
	old, err := mp.loadMap(maildrop)
	if err != nil {
		return nil, Stats{}, fmt.Errorf("uidl migration: %w", err)
	}
	if old == nil && header == "" {
		return msgs, Stats{Messages: len(msgs)}, nil
	}
	c, ok := mp.cache.Get(maildrop)
	if !ok || c.header != header {
		c = &cached{keys: map[uint64]Key{}, xuidl: map[uint64]string{}, header: header}
	}
	c.mu.Lock() // one session per maildrop holds the lock; this guards against a stale entry's sharer
	defer c.mu.Unlock()
	hashes := make([]uint64, len(msgs))
	var missing []int
	for i, m := range msgs {
		hashes[i] = maphash.String(mp.seed, m.UIDL)
		if _, ok := c.keys[hashes[i]]; !ok {
			missing = append(missing, i)
		}
	}
	fetched := 0
	if len(missing) > 0 {
		fields := KeyFields
		if header != "" {
			fields = append(append([]string(nil), KeyFields...), header)
		}
		sub := make([]backends.Message, len(missing))
		for j, i := range missing {
			sub[j] = msgs[i]
		}
		got := func(j int, h []byte) {
			i := missing[j]
			c.keys[hashes[i]] = MatchKey(h)
			if header != "" {
				if v := HeaderValues(h, []string{header})[0]; v != "" {
					c.xuidl[hashes[i]] = v
				}
			}
			fetched++
		}
		if err := fetchHeaders(ctx, mb, sub, fields, got); err != nil {
			return nil, Stats{}, fmt.Errorf("uidl migration: reading headers: %w", err)
		}
	}
	// Keep only the current messages: the cache never outgrows the mailbox.
	if len(c.keys) > len(msgs) {
		live := make(map[uint64]bool, len(msgs))
		for _, h := range hashes {
			live[h] = true
		}
		for h := range c.keys {
			if !live[h] {
				delete(c.keys, h)
				delete(c.xuidl, h)
			}
		}
	}
	own := make([]string, len(msgs))
	keys := make([]Key, len(msgs))
	var xuidl []string
	if header != "" {
		xuidl = make([]string, len(msgs))
	}
	for i, m := range msgs {
		own[i] = m.UIDL
		k, ok := c.keys[hashes[i]]
		if !ok {
			k = emptyKey // gone upstream since the snapshot: never matched
		}
		keys[i] = k
		if xuidl != nil {
			xuidl[i] = c.xuidl[hashes[i]]
		}
	}
	out, st := Match(own, keys, xuidl, old)
	for i := range msgs {
		msgs[i].UIDL = out[i]
	}
	mp.cache.Add(maildrop, c)
	if fetched > 0 { // logged when something was computed, not at every cached login
		ev := mp.log.Info()
		if st.Ambiguous > 0 {
			ev = mp.log.Warn()
		}
		ev.Str("maildrop", maildrop).Int("messages", st.Messages).Int("matched", st.Matched).
			Int("x_uidl", st.XUIDL).Int("ambiguous", st.Ambiguous).Int("altered", st.Altered).
			Int("old_unmatched", st.OldLeft).Int("headers_fetched", fetched).Msg("uidl migration")
	}
	return msgs, st, nil
}

// fetchHeaders reads the header fields of msgs through the store's
// HeaderFetcher, or else the header of each with Open(…, 0) (TOP n 0).
func fetchHeaders(ctx context.Context, mb backends.Mailbox, msgs []backends.Message, fields []string, fn func(i int, h []byte)) error {
	if hf, ok := backends.Find[backends.HeaderFetcher](mb); ok {
		return hf.FetchHeaders(ctx, msgs, fields, fn)
	}
	var sink headerSink
	for i, m := range msgs {
		r, err := mb.Open(ctx, m, 0)
		if errors.Is(err, backends.ErrMessageGone) {
			continue
		}
		if err != nil {
			return err
		}
		sink.reset()
		_, err = io.Copy(&sink, io.LimitReader(r, maxHeader+4))
		r.Close()
		if err != nil {
			return err
		}
		fn(i, sink.buf)
	}
	return nil
}
