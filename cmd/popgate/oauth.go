package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"reflect"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/rs/zerolog"

	"github.com/popgate/popgate/internal/config"
	"github.com/popgate/popgate/internal/lock"
	"github.com/popgate/popgate/internal/oauth"
)

// runOAuth is `popgate oauth status|enroll|rekey`.
func runOAuth(args []string, stdout, stderr io.Writer) int {
	sub := ""
	if len(args) > 0 {
		sub = args[0]
	}
	switch sub {
	case "status":
		return runOAuthStatus(args[1:], stdout, stderr)
	case "enroll":
		return runOAuthEnroll(args[1:], stdout, stderr)
	case "rekey":
		return runOAuthRekey(args[1:], stdout, stderr)
	case "-h", "-help", "--help", "help":
		oauthUsage(stdout)
		return exitOK
	}
	if sub == "" {
		fmt.Fprintf(stderr, "popgate oauth: a subcommand is required\n\n")
	} else {
		fmt.Fprintf(stderr, "popgate oauth: unknown subcommand %q\n\n", sub)
	}
	oauthUsage(stderr)
	return exitUsage
}

func oauthUsage(w io.Writer) {
	fmt.Fprintf(w, `Usage: popgate oauth <subcommand> [flags]

Manage the OAuth2 credentials of the configuration and their encrypted token store.

Subcommands:
  status              list each credential's state and token expiry
  enroll NAME         run the device authorization flow for an oauth2_refresh_token credential
  rekey               re-encrypt the token store with a new key

Run "popgate oauth <subcommand> --help" for its flags.
`)
}

// loadOAuth loads the configuration and opens the store and a custodian.
// It prints problems itself; code is the exit status when cu is nil.
func loadOAuth(path string, stderr io.Writer) (*config.Config, *oauth.Store, *oauth.Custodian, int) {
	c, err := config.Load(path, storeTypes)
	if err != nil {
		printConfigProblems(stderr, path, err)
		return nil, nil, nil, exitUsage
	}
	if c.TokenStore == nil || len(c.Credentials) == 0 {
		fmt.Fprintf(stderr, "popgate: %s: no credentials and token_store configured\n", path)
		return nil, nil, nil, exitUsage
	}
	key, err := c.TokenStore.LoadKey()
	if err != nil {
		fmt.Fprintf(stderr, "popgate: %s: token_store: %v\n", path, err)
		return nil, nil, nil, exitUsage
	}
	st, err := oauth.OpenStore(c.TokenStore.Path, key)
	if err != nil {
		fmt.Fprintf(stderr, "popgate: %v\n", err)
		return nil, nil, nil, exitFailure
	}
	creds := map[string]oauth.CredentialConfig{}
	for n, cr := range c.Credentials {
		creds[n] = *cr
	}
	log := zerolog.New(zerolog.ConsoleWriter{Out: stderr, NoColor: true}).With().Timestamp().Logger()
	cu, err := oauth.New(creds, st, oauth.Options{Log: log})
	if err != nil {
		fmt.Fprintf(stderr, "popgate: %s: %v\n", path, err)
		return nil, nil, nil, exitUsage
	}
	return c, st, cu, exitOK
}

func runOAuthStatus(args []string, stdout, stderr io.Writer) int {
	fs := newFlagSet("oauth status", "[--config FILE]",
		"List each OAuth2 credential: its type, state (valid, expired, not enrolled, no token yet),\n"+
			"when its access token expires and whether a refresh token is held. Prints no token.", stdout, stderr)
	path := configFlag(fs)
	if code, done := parseFlags(fs, args, stdout); done {
		return code
	}
	c, st, cu, code := loadOAuth(*path, stderr)
	if cu == nil {
		return code
	}
	list, err := cu.Status()
	if err != nil {
		fmt.Fprintf(stderr, "popgate: %v\n", err)
		return exitFailure
	}
	fmt.Fprintf(stdout, "token store %s (%s)\n", st.Path(), keySource(c.TokenStore))
	tw := tabwriter.NewWriter(stdout, 2, 8, 2, ' ', 0)
	fmt.Fprintf(tw, "CREDENTIAL\tTYPE\tSTATE\tEXPIRES\tREFRESH TOKEN\n")
	for _, s := range list {
		exp := "-"
		if !s.Expiry.IsZero() {
			exp = s.Expiry.UTC().Format(time.RFC3339)
		}
		rt := "no"
		if s.Refresh {
			rt = "yes"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", s.Name, s.Type, s.State, exp, rt)
	}
	tw.Flush()
	return exitOK
}

func keySource(s *oauth.StoreConfig) string {
	if s.KeyFile != "" {
		return "key from " + s.KeyFile
	}
	return "key from the configuration"
}

func runOAuthEnroll(args []string, stdout, stderr io.Writer) int {
	fs := newFlagSet("oauth enroll", "[--config FILE] NAME",
		"Run the OAuth2 device authorization flow (RFC 8628) for the oauth2_refresh_token credential\n"+
			"NAME: prints a URL and a code, waits until a person approves there, then stores the token\n"+
			"(encrypted). A running gateway picks it up at the next login.\n"+
			"With --refresh-token-stdin it stores a refresh token obtained elsewhere instead (Google's\n"+
			"device flow does not grant the Gmail scope), after checking it with one refresh.", stdout, stderr)
	path := configFlag(fs)
	fromStdin := fs.Bool("refresh-token-stdin", false, "read a refresh token from standard input instead of running the device flow")
	// NAME may come before or after the flags.
	var name string
	if len(args) > 0 && !strings.HasPrefix(args[0], "-") {
		name, args = args[0], args[1:]
	} else if n := len(args); n > 0 && !strings.HasPrefix(args[n-1], "-") && (n < 2 || !isValueFlag(args[n-2])) {
		name, args = args[n-1], args[:n-1]
	}
	if code, done := parseFlags(fs, args, stdout); done {
		return code
	}
	if name == "" {
		fmt.Fprintf(stderr, "popgate oauth enroll: the credential NAME is required\n")
		return exitUsage
	}
	c, _, cu, code := loadOAuth(*path, stderr)
	if cu == nil {
		return code
	}
	if _, ok := c.Credentials[name]; !ok {
		fmt.Fprintf(stderr, "popgate oauth enroll: no credential %q in %s (have: %s)\n", name, *path, strings.Join(c.CredentialNames(), ", "))
		return exitUsage
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if *fromStdin {
		b, err := io.ReadAll(io.LimitReader(stdin, 64<<10))
		if err != nil {
			fmt.Fprintf(stderr, "popgate oauth enroll: reading standard input: %v\n", err)
			return exitFailure
		}
		if err := cu.Import(ctx, name, strings.TrimSpace(string(b))); err != nil {
			fmt.Fprintf(stderr, "popgate oauth enroll: %v\n", err)
			return exitFailure
		}
	} else if err := cu.Enroll(ctx, name, stdout); err != nil {
		fmt.Fprintf(stderr, "popgate oauth enroll: %v\n", err)
		return exitFailure
	}
	fmt.Fprintf(stdout, "%s enrolled: its token is stored in %s\n", name, c.TokenStore.Path)
	return exitOK
}

func isValueFlag(a string) bool {
	return (a == "-c" || a == "--c" || a == "-config" || a == "--config") && !strings.Contains(a, "=")
}

func runOAuthRekey(args []string, stdout, stderr io.Writer) int {
	fs := newFlagSet("oauth rekey", "[--config FILE] --new-key-file FILE",
		"Re-encrypt the token store with a new key (32 octets, base64, read from --new-key-file).\n"+
			"The store is replaced in one step. Then set token_store.key or key_file to the new key\n"+
			"and restart popgate: a gateway still running with the old key cannot store refreshed tokens.\n"+
			"A new key: head -c 32 /dev/urandom | base64 > /etc/popgate/token.key.new", stdout, stderr)
	path := configFlag(fs)
	newFile := fs.String("new-key-file", "", "`file` holding the new key")
	if code, done := parseFlags(fs, args, stdout); done {
		return code
	}
	if *newFile == "" {
		fmt.Fprintf(stderr, "popgate oauth rekey: --new-key-file is required\n")
		return exitUsage
	}
	newKey, err := (oauth.StoreConfig{KeyFile: *newFile}).LoadKey()
	if err != nil {
		fmt.Fprintf(stderr, "popgate oauth rekey: new key: %v\n", err)
		return exitUsage
	}
	_, st, cu, code := loadOAuth(*path, stderr)
	if cu == nil {
		return code
	}
	n, err := st.Rekey(newKey)
	if err != nil {
		fmt.Fprintf(stderr, "popgate oauth rekey: %v\n", err)
		return exitFailure
	}
	fmt.Fprintf(stdout, "token store %s re-encrypted with the key of %s (%d credentials)\n", st.Path(), *newFile, n)
	fmt.Fprintf(stdout, "now point token_store at the new key (key_file: %s) and restart popgate\n", *newFile)
	return exitOK
}

// summarizeOAuth prints the credentials and the store for check-config,
// without any secret.
func summarizeOAuth(w io.Writer, c *config.Config) {
	if len(c.Credentials) == 0 {
		return
	}
	fmt.Fprintf(w, "credentials:\n")
	for _, n := range c.CredentialNames() {
		cr := c.Credentials[n]
		secret := "no client secret"
		if cr.ClientSecret != "" {
			secret = "client secret set"
		}
		extra := ""
		if cr.CAFile != "" {
			extra = ", extra roots " + cr.CAFile
		}
		fmt.Fprintf(w, "  %-12s %s, client %s at %s, scopes %s, %s%s\n", n, cr.Type, cr.ClientID, cr.TokenURL, strings.Join(cr.Scopes, " "), secret, extra)
	}
	if c.TokenStore != nil {
		fmt.Fprintf(w, "token store: %s (%s)\n", c.TokenStore.Path, keySource(c.TokenStore))
	}
}

// custody is the token custodian serve built, with what it was built from
// (a reload keeps it, and its cached tokens, when that is unchanged).
type custody struct {
	cu    *oauth.Custodian
	creds map[string]oauth.CredentialConfig
	store oauth.StoreConfig
}

// buildCustody opens the token store and the custodian of cfg's
// credentials; nil when there are none. prev is reused when the
// credentials and the store are unchanged. sc (nil in tests that build a
// daemon directly) counts the refreshes and, with a cluster, gives the
// refresh lock every node shares.
func buildCustody(cfg *config.Config, log zerolog.Logger, prev *custody, sc *scale) (*custody, error) {
	if len(cfg.Credentials) == 0 {
		return nil, nil
	}
	c := &custody{creds: map[string]oauth.CredentialConfig{}, store: *cfg.TokenStore}
	for n, cr := range cfg.Credentials {
		c.creds[n] = *cr
	}
	if prev != nil && reflect.DeepEqual(prev.creds, c.creds) && prev.store == c.store {
		return prev, nil
	}
	key, err := c.store.LoadKey()
	if err != nil {
		return nil, fmt.Errorf("token_store: %v", err)
	}
	st, err := oauth.OpenStore(c.store.Path, key)
	if err != nil {
		return nil, fmt.Errorf("token_store: %w", err)
	}
	o := oauth.Options{Log: log}
	if sc != nil {
		o.OnRefresh = sc.metrics.TokenRefresh
		if sc.cluster != nil {
			o.RefreshLock = sc.cluster.RefreshLocker()
			o.LockHeld = func(err error) bool { return errors.Is(err, lock.ErrHeld) }
		}
	}
	if c.cu, err = oauth.New(c.creds, st, o); err != nil {
		return nil, fmt.Errorf("credentials: %w", err)
	}
	return c, nil
}
