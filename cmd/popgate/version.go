package main

import (
	"fmt"
	"io"
	"runtime"
	"runtime/debug"
)

// version is set at build time with -ldflags "-X main.version=v1.2.3";
// otherwise it comes from the module and VCS information Go records.
var version = ""

// versionString returns the version, the commit when known, and the Go version.
func versionString() string {
	v := version
	rev, dirty := "", false
	if bi, ok := debug.ReadBuildInfo(); ok {
		if v == "" && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
			v = bi.Main.Version
		}
		for _, s := range bi.Settings {
			switch s.Key {
			case "vcs.revision":
				rev = s.Value
			case "vcs.modified":
				dirty = s.Value == "true"
			}
		}
	}
	if v == "" {
		v = "devel"
	}
	if rev != "" {
		if len(rev) > 12 {
			rev = rev[:12]
		}
		if dirty {
			rev += "-dirty"
		}
		v += " (" + rev + ")"
	}
	return v + " " + runtime.Version()
}

func runVersion(args []string, stdout, stderr io.Writer) int {
	fs := newFlagSet("version", "", "Print popgate's version, the commit it was built from, and the Go version.", stdout, stderr)
	if code, done := parseFlags(fs, args, stdout); done {
		return code
	}
	fmt.Fprintf(stdout, "popgate %s\n", versionString())
	return exitOK
}
