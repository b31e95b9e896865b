package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"

	"github.com/popgate/popgate/backends/rest"
	"github.com/popgate/popgate/tlsconf"
)

// stdin is where --password-file - reads (a variable for the tests).
var stdin io.Reader = os.Stdin

func runCheckStore(args []string, stdout, stderr io.Writer) int {
	fs := newFlagSet("check-store", "--url URL --user U --password-file F [--destructive]",
		"Check a live REST store against popgate's store contract (docs/rest-store.md).\n"+
			"Prints one line per check (PASS, FAIL or SKIP) with what was expected and\n"+
			"what came back: session creation, paging and cursors, sizes equal to the\n"+
			"octets delivered, CRLF, 404 for an unknown id, state and 304, error shapes.\n"+
			"--destructive also checks commit, an idempotent retry and not_found: it\n"+
			"DELETES a message, so use a test maildrop. Exit 0 when no check fails, 1\n"+
			"otherwise, 2 on a usage error. The password comes from a file (- is\n"+
			"standard input), never from the command line.", stdout, stderr)
	u := fs.String("url", "", "the store's contract `url`, e.g. https://store.internal.example/pop/v1")
	user := fs.String("user", "", "login `name` of a test user")
	pwFile := fs.String("password-file", "", "`file` holding the password on its first line (- reads standard input)")
	destructive := fs.Bool("destructive", false, "also check commit (deletes a message of the maildrop)")
	caFile := fs.String("ca-file", "", "PEM `file` of extra trusted roots for https")
	serverName := fs.String("server-name", "", "`name` to verify in the store's certificate")
	insecure := fs.Bool("insecure-skip-verify", false, "do not verify the store's certificate")
	timeout := fs.Duration("timeout", rest.DefaultCommandTimeout, "per call")
	maxMsgs := fs.Int("max-messages", 200, "download at most this many messages to check sizes and CRLF")
	if code, done := parseFlags(fs, args, stdout); done {
		return code
	}
	if *u == "" || *user == "" || *pwFile == "" {
		fmt.Fprintln(stderr, "popgate check-store: --url, --user and --password-file are required")
		return exitUsage
	}
	var r io.Reader
	if *pwFile == "-" {
		r = stdin
	} else {
		f, err := os.Open(*pwFile)
		if err != nil {
			fmt.Fprintf(stderr, "popgate check-store: %v\n", err)
			return exitUsage
		}
		defer f.Close()
		r = f
	}
	line, err := bufio.NewReader(io.LimitReader(r, 64<<10)).ReadString('\n')
	password := strings.TrimRight(line, "\r\n")
	if password == "" {
		fmt.Fprintf(stderr, "popgate check-store: no password in %s (%v)\n", *pwFile, err)
		return exitUsage
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	ok := rest.Check(ctx, rest.CheckOptions{
		URL: *u, User: *user, Password: password, Destructive: *destructive,
		Upstream: tlsconf.Upstream{CAFile: *caFile, ServerName: *serverName, InsecureSkipVerify: *insecure},
		Timeout:  *timeout, MaxMessages: *maxMsgs,
	}, stdout)
	if !ok {
		return exitFailure
	}
	return exitOK
}
