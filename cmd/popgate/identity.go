package main

import (
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/rs/zerolog"

	"github.com/popgate/popgate/backends"
	"github.com/popgate/popgate/internal/accounts"
	"github.com/popgate/popgate/internal/authhook"
	"github.com/popgate/popgate/internal/config"
	"github.com/popgate/popgate/internal/identity"
	"github.com/popgate/popgate/internal/passwd"
	"github.com/popgate/popgate/internal/throttle"
)

// accountsWatchInterval is how often the accounts file is checked for
// changes.
const accountsWatchInterval = 2 * time.Second

// hookConfig converts the accounts.http section.
func hookConfig(h *config.AccountsHTTP) authhook.Config {
	return authhook.Config{URL: h.URL, Timeout: h.Timeout, Headers: h.Headers, CAFile: h.CAFile}
}

// credentialKnown reports whether cfg has an OAuth2 credential of that name.
func credentialKnown(cfg *config.Config) func(string) bool {
	return func(name string) bool { _, ok := cfg.Credentials[name]; return ok }
}

// backendKnown reports whether cfg has a backend of that name.
func backendKnown(cfg *config.Config) func(string) bool {
	return func(name string) bool { _, ok := cfg.Backends[name]; return ok }
}

// checkAccounts returns the problems of the accounts section beyond the
// configuration's own checks: the accounts file's content, the hook's
// settings (check-config reports them too). No value from either appears.
func checkAccounts(cfg *config.Config) config.Problems {
	a := cfg.Accounts
	if a == nil {
		return nil
	}
	var ps config.Problems
	if a.File != "" {
		f, err := accounts.Open(a.File, accounts.Options{BackendKnown: backendKnown(cfg), CredentialKnown: credentialKnown(cfg), Logger: zerolog.Nop()})
		if err != nil {
			var aps accounts.Problems
			if errors.As(err, &aps) {
				for _, p := range aps {
					ps = append(ps, config.Problem{Path: "accounts.file", Line: cfg.Line("accounts.file"), Msg: a.File + ": " + p.Error()})
				}
			} else {
				ps = append(ps, config.Problem{Path: "accounts.file", Line: cfg.Line("accounts.file"), Msg: err.Error()})
			}
		} else {
			f.Close()
		}
	}
	if a.HTTP != nil {
		if err := hookConfig(a.HTTP).Validate(); err != nil {
			ps = append(ps, config.Problem{Path: "accounts.http", Line: cfg.Line("accounts.http"), Msg: err.Error()})
		}
	}
	return ps
}

// identityParts are what build makes of the accounts and auth sections.
type identityParts struct {
	file *accounts.File // nil without accounts.file
	hook *authhook.Hook // nil without accounts.http
}

func (p identityParts) source() identity.Source {
	switch {
	case p.file != nil:
		return p.file
	case p.hook != nil:
		return p.hook
	}
	return nil
}

// buildIdentity opens the accounts file (or reuses and reloads the running
// one when the path is the same: SIGHUP) or the hook.
func buildIdentity(cfg *config.Config, log zerolog.Logger, prev *setup) (identityParts, error) {
	var p identityParts
	a := cfg.Accounts
	switch {
	case a == nil:
	case a.File != "":
		if prev != nil && prev.ident.file != nil && prev.ident.file.Path() == a.File {
			p.file = prev.ident.file
			_ = p.file.Reload() // a bad file is logged; the accounts in force stay
			return p, nil
		}
		f, err := accounts.Open(a.File, accounts.Options{BackendKnown: backendKnown(cfg), CredentialKnown: credentialKnown(cfg), Logger: log})
		if err != nil {
			return p, err
		}
		f.Watch(accountsWatchInterval)
		p.file = f
	case a.HTTP != nil:
		hc := hookConfig(a.HTTP)
		hc.CredentialKnown = credentialKnown(cfg)
		h, err := authhook.New(hc)
		if err != nil {
			return p, fmt.Errorf("accounts.http: %w", err)
		}
		p.hook = h
	}
	return p, nil
}

// close releases what p holds that next does not share.
func (p identityParts) close(next *identityParts) {
	if p.file != nil && (next == nil || next.file != p.file) {
		p.file.Close()
	}
	if p.hook != nil && (next == nil || next.hook != p.hook) {
		p.hook.Close()
	}
}

// newGate puts the identity gate in front of the router.
func newGate(cfg *config.Config, log zerolog.Logger, p identityParts, router *backends.Router, state throttle.Store, obs identity.Observer) *identity.Gate {
	return identity.New(identity.Options{
		Upstream:   router,
		Source:     p.source(),
		Store:      state,
		Policy:     throttle.Policy{Base: cfg.Auth.FailureDelay, Max: cfg.Auth.FailureMaxDelay},
		LoginDelay: cfg.Session.LoginDelay,
		Logger:     log,
		Observer:   obs,
	})
}

// summarizeIdentity prints the accounts, failure delay and login delay
// lines of check-config, without any secret (no header value, no hash).
func summarizeIdentity(w io.Writer, c *config.Config) {
	switch a := c.Accounts; {
	case a == nil:
		fmt.Fprintf(w, "accounts: none: logins pass through to the routes with the client's credentials\n")
	case a.File != "":
		n := "?"
		if f, err := accounts.Open(a.File, accounts.Options{BackendKnown: backendKnown(c), CredentialKnown: credentialKnown(c), Logger: zerolog.Nop()}); err == nil {
			n = fmt.Sprint(f.Len())
			f.Close()
		}
		fmt.Fprintf(w, "accounts: file %s (%s accounts; reloaded on SIGHUP and when it changes); hashes verified at most %d at once\n", a.File, n, passwd.DefaultConcurrency)
	case a.HTTP != nil:
		names := ""
		for k := range a.HTTP.Headers {
			names += " " + k
		}
		if names != "" {
			names = ", headers:" + names
		}
		timeout := a.HTTP.Timeout
		if timeout == 0 {
			timeout = authhook.DefaultTimeout
		}
		fmt.Fprintf(w, "accounts: auth hook POST %s (timeout %s%s)\n", a.HTTP.URL, timeout, names)
	}
	if c.Auth.FailureDelay > 0 {
		fmt.Fprintf(w, "failure delay: %s, doubling per failure of the same address or user up to %s; forgotten after %s without failures\n",
			c.Auth.FailureDelay, max(c.Auth.FailureMaxDelay, c.Auth.FailureDelay), throttle.DefaultQuiet)
	} else {
		fmt.Fprintf(w, "failure delay: off\n")
	}
	if c.Session.LoginDelay > 0 {
		fmt.Fprintf(w, "login delay: %s between logins to one maildrop (enforced)\n", c.Session.LoginDelay)
	}
}
