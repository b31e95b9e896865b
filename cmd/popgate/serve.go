package main

import (
	"fmt"
	"io"
)

// runServe is wired to the POP3 engine once it lands.
func runServe(args []string, stdout, stderr io.Writer) int {
	fmt.Fprintln(stderr, "popgate serve: not available in this build yet")
	return exitFailure
}

// runDemo is wired to the embedded store once it lands.
func runDemo(args []string, stdout, stderr io.Writer) int {
	fmt.Fprintln(stderr, "popgate demo: not available in this build yet")
	return exitFailure
}
