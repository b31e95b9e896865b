package main

import (
	"github.com/popgate/popgate/backends"
	"github.com/popgate/popgate/backends/demo"
	"github.com/popgate/popgate/backends/imap"
	"github.com/popgate/popgate/backends/jmap"
	"github.com/popgate/popgate/backends/rest"
)

// storeTypes are the store types a backend section may name in its type
// key. This table is the one place that enables them (no init()
// registration): adding a store type is its folder under backends/ and one
// line here. See docs/architecture.md.
var storeTypes = backends.NewRegistry(
	imap.Type, // IMAP4rev1 server (Dovecot, Cyrus, …)
	jmap.Type, // JMAP server (RFC 8620/8621: Cyrus, Fastmail, Stalwart, …)
	rest.Type, // popgate's REST store contract (docs/rest-store.md)
	demo.Type, // the embedded store of popgate demo, in the gateway's process
)
