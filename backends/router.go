package backends

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/rs/zerolog"
)

// Route sends the logins it matches to one named backend, optionally with a
// rewritten login name.
type Route struct {
	// Match is "*" (every login), "*@example.com" (every login whose domain,
	// the part after the last '@', is example.com, compared
	// case-insensitively) or an exact login name (its domain part compared
	// case-insensitively, the local part exactly).
	Match string
	// Backend names the backend in the map given to NewRouter.
	Backend string
	// StripDomain removes "@domain" from the name sent upstream.
	StripDomain bool
	// AddDomain appends "@AddDomain" to a name that has no domain. With
	// StripDomain it always appends: both together replace the domain.
	AddDomain string
}

// Router is a Backend that picks, for every login, the backend of the first
// route matching the login name, and logs in there with the (possibly
// rewritten) name. A login no route matches fails with ErrAuthFailed; the
// reason goes to the log only.
//
// The Mailbox it returns reports MaildropID "backend/upstream-id" (the
// backend's own MaildropID, else the upstream login name, prefixed with the
// backend name unless it already is), so that the same upstream user reached
// through two routes is one maildrop, and two backends with the same user
// names are not.
type Router struct {
	routes   []Route
	backends map[string]Backend
	log      zerolog.Logger
}

// NewRouter checks that every route names a backend of backends and a valid
// pattern, and returns the Router.
func NewRouter(routes []Route, backends map[string]Backend, log zerolog.Logger) (*Router, error) {
	var errs []error
	for i, r := range routes {
		if _, ok := backends[r.Backend]; !ok {
			errs = append(errs, fmt.Errorf("route %d: unknown backend %q", i, r.Backend))
		}
		if err := CheckMatch(r.Match); err != nil {
			errs = append(errs, fmt.Errorf("route %d: match: %w", i, err))
		}
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return &Router{routes: append([]Route(nil), routes...), backends: backends, log: log}, nil
}

// CheckMatch reports whether pattern is a valid Route.Match: "*", "*@"
// followed by a domain, or a login name without "*". The configuration
// check and NewRouter both use it.
func CheckMatch(pattern string) error {
	switch {
	case pattern == "":
		return errors.New(`required ("*", "*@example.com" or a login name)`)
	case pattern == "*":
	case strings.HasPrefix(pattern, "*@"):
		if dom := pattern[2:]; dom == "" || strings.ContainsAny(dom, "*@ ") {
			return fmt.Errorf(`%q: want "*@" followed by a domain`, pattern)
		}
	case strings.Contains(pattern, "*"):
		return fmt.Errorf(`%q: a wildcard is only allowed as "*" or "*@domain"`, pattern)
	}
	return nil
}

// splitDomain splits a login at its last '@'; domain is "" without one.
func splitDomain(login string) (local, domain string) {
	if i := strings.LastIndexByte(login, '@'); i >= 0 {
		return login[:i], login[i+1:]
	}
	return login, ""
}

// matches reports whether login matches the route pattern.
func (r Route) matches(login string) bool {
	switch {
	case r.Match == "*":
		return true
	case strings.HasPrefix(r.Match, "*@"):
		_, dom := splitDomain(login)
		return strings.Contains(login, "@") && strings.EqualFold(dom, r.Match[2:])
	default:
		ml, md := splitDomain(r.Match)
		ll, ld := splitDomain(login)
		return ml == ll && strings.EqualFold(md, ld) && strings.Contains(r.Match, "@") == strings.Contains(login, "@")
	}
}

// rewrite returns the login name to send upstream.
func (r Route) rewrite(login string) string {
	if r.StripDomain {
		login, _ = splitDomain(login)
	}
	if r.AddDomain != "" && (r.StripDomain || !strings.Contains(login, "@")) {
		login += "@" + r.AddDomain
	}
	return login
}

// Resolve returns the backend name and the upstream login name for login,
// or ok false when no route matches.
func (rt *Router) Resolve(login string) (backend, upstream string, ok bool) {
	for _, r := range rt.routes {
		if r.matches(login) {
			return r.Backend, r.rewrite(login), true
		}
	}
	return "", "", false
}

// Login implements Backend.
func (rt *Router) Login(ctx context.Context, c Credentials) (Mailbox, error) {
	return rt.LoginTo(ctx, "", c)
}

// LoginTo logs in at the backend named backend with c as it is (no route,
// no rewrite), or, for backend "", routes c.Username like Login. The
// Mailbox reports the same MaildropID as one from Login. An unknown
// backend name is an error with the generic [SYS/TEMP] text.
func (rt *Router) LoginTo(ctx context.Context, backend string, c Credentials) (Mailbox, error) {
	name, uc := backend, c
	if name == "" {
		var ok bool
		name, uc.Username, ok = rt.Resolve(c.Username)
		if !ok {
			rt.log.Debug().Str("user", c.Username).Msg("login refused: no route matches the login name")
			return nil, ErrAuthFailed.Wrap(errors.New("no route matches the login name"))
		}
	}
	b, ok := rt.backends[name]
	if !ok {
		return nil, fmt.Errorf("no backend named %q", name)
	}
	mb, err := b.Login(ctx, uc)
	if err != nil {
		return nil, err
	}
	id := MaildropID(mb, uc)
	if !strings.HasPrefix(id, name+"/") {
		id = name + "/" + id
	}
	return &routedMailbox{Mailbox: mb, id: id}, nil
}

// AcceptsBearer implements BearerAcceptor: some backend of the router can
// log in with a client's bearer token.
func (rt *Router) AcceptsBearer() bool {
	found := false
	for _, b := range rt.backends {
		// Ask every one: the first question starts their capability checks.
		if AcceptsBearer(b) {
			found = true
		}
	}
	return found
}

// Close implements Backend. The router owns none of its backends (a reload
// may hand them to the next router), so it closes nothing: whoever built
// the backends closes them.
func (rt *Router) Close() error { return nil }

// routedMailbox is the Mailbox of a backend behind the router, with the
// backend name in its maildrop id.
type routedMailbox struct {
	Mailbox
	id string
}

// MaildropID implements MaildropIdentifier.
func (m *routedMailbox) MaildropID() string { return m.id }

// Unwrap returns the backend's own Mailbox, for optional interfaces found by
// type assertion.
func (m *routedMailbox) Unwrap() Mailbox { return m.Mailbox }
