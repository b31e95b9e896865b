// Command popgate is a POP3 gateway: legacy POP3 clients on one side, an
// IMAP mailbox behind it.
//
//	popgate serve [--config FILE]         run the gateway (default /etc/popgate/config.yaml)
//	popgate demo                          run it on loopback in front of an embedded mail store
//	popgate check-config [--config FILE]  validate a configuration file
//	popgate check-store --url URL --user U --password-file F [--destructive]
//	                                      check a REST store against the contract
//	popgate oauth status|enroll NAME|rekey  OAuth2 credentials and their token store
//	popgate version                       print the version
//
// Exit status: 0 success, 1 a runtime failure (such as an address already
// in use), 2 a usage or configuration error.
package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
)

// Exit codes.
const (
	exitOK      = 0
	exitFailure = 1 // runtime failure: address in use, upstream store gone at start
	exitUsage   = 2 // bad flags, missing or invalid configuration
)

// defaultConfigPath is where serve and check-config look without --config.
const defaultConfigPath = "/etc/popgate/config.yaml"

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

// command is one subcommand.
type command struct {
	name    string
	summary string
	run     func(args []string, stdout, stderr io.Writer) int
}

func commands() []command {
	return []command{
		{"serve", "run the gateway with a configuration file", runServe},
		{"demo", "run the gateway on loopback in front of an embedded mail store", runDemo},
		{"check-config", "validate a configuration file and print what it sets up", runCheckConfig},
		{"uidl", "capture, show or forget the UIDLs of a retired POP3 server (migration)", runUIDL},
		{"check-store", "check a live REST store against popgate's store contract", runCheckStore},
		{"hash-password", "print the argon2id hash of a device password read from standard input", runHashPassword},
		{"oauth", "OAuth2 credentials: status, enroll NAME, rekey", runOAuth},
		{"version", "print the version", runVersion},
	}
}

func usage(w io.Writer) {
	fmt.Fprintf(w, `popgate is a POP3 gateway in front of IMAP mail stores.

Usage:
  popgate <command> [flags]

Commands:
`)
	for _, c := range commands() {
		fmt.Fprintf(w, "  %-13s %s\n", c.name, c.summary)
	}
	fmt.Fprintf(w, `
Run "popgate <command> --help" for the flags of a command.
Try it: popgate demo
`)
}

func run(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		usage(stderr)
		return exitUsage
	}
	switch args[0] {
	case "-h", "-help", "--help", "help":
		if len(args) > 1 && args[0] == "help" {
			return run([]string{args[1], "--help"}, stdout, stderr)
		}
		usage(stdout)
		return exitOK
	case "-version", "--version":
		return runVersion(nil, stdout, stderr)
	}
	for _, c := range commands() {
		if c.name == args[0] {
			return c.run(args[1:], stdout, stderr)
		}
	}
	fmt.Fprintf(stderr, "popgate: unknown command %q\n\n", args[0])
	usage(stderr)
	return exitUsage
}

// newFlagSet returns a FlagSet for a subcommand whose --help prints the
// description and the flags to stdout.
func newFlagSet(name, synopsis, description string, stdout, stderr io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		w := fs.Output()
		fmt.Fprintf(w, "Usage: popgate %s %s\n\n%s\n", name, synopsis, description)
		has := false
		fs.VisitAll(func(*flag.Flag) { has = true })
		if has {
			fmt.Fprintf(w, "\nFlags:\n")
			fs.PrintDefaults()
		}
	}
	return fs
}

// parseFlags parses args; done is true when the caller must return code
// (after --help: 0 with the usage on stdout; after a bad flag: 2).
func parseFlags(fs *flag.FlagSet, args []string, stdout io.Writer) (code int, done bool) {
	for _, a := range args {
		if a == "-h" || a == "-help" || a == "--help" {
			fs.SetOutput(stdout)
			fs.Usage()
			return exitOK, true
		}
		if a == "--" {
			break
		}
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return exitOK, true
		}
		return exitUsage, true
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(fs.Output(), "popgate %s: unexpected argument %q\n", fs.Name(), fs.Arg(0))
		return exitUsage, true
	}
	return 0, false
}

// configFlag adds --config and its short form -c to fs.
func configFlag(fs *flag.FlagSet) *string {
	p := fs.String("config", defaultConfigPath, "configuration `file`")
	fs.StringVar(p, "c", defaultConfigPath, "configuration `file` (short for --config)")
	return p
}
