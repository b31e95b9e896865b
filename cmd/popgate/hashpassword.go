package main

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"golang.org/x/term"

	"github.com/popgate/popgate/internal/passwd"
)

// maxPasswordLen bounds what hash-password reads.
const maxPasswordLen = 4096

// runHashPassword reads a password from standard input and prints its
// argon2id hash for the accounts file. On a terminal it asks twice without
// echo; otherwise it reads the first line (without its line end).
func runHashPassword(args []string, stdout, stderr io.Writer) int {
	fs := newFlagSet("hash-password", "",
		"Read a device password from standard input and print its argon2id hash\n"+
			"(m=64 MiB, t=3, p=2) for the password key of the accounts file:\n\n"+
			"  popgate hash-password                      # asks twice, without echo\n"+
			"  printf '%s\\n' \"$PW\" | popgate hash-password   # reads the first line", stdout, stderr)
	if code, done := parseFlags(fs, args, stdout); done {
		return code
	}
	pw, err := readPassword(stdin, stderr)
	if err != nil {
		fmt.Fprintf(stderr, "popgate hash-password: %v\n", err)
		return exitUsage
	}
	h, err := passwd.Hash(pw)
	if err != nil {
		fmt.Fprintf(stderr, "popgate hash-password: %v\n", err)
		return exitFailure
	}
	fmt.Fprintln(stdout, h)
	return exitOK
}

func readPassword(in io.Reader, prompt io.Writer) (string, error) {
	if f, ok := in.(*os.File); ok && term.IsTerminal(int(f.Fd())) {
		fd := int(f.Fd())
		fmt.Fprint(prompt, "Password: ")
		a, err := term.ReadPassword(fd)
		fmt.Fprintln(prompt)
		if err != nil {
			return "", errors.New("reading the password failed")
		}
		fmt.Fprint(prompt, "Again: ")
		b, err := term.ReadPassword(fd)
		fmt.Fprintln(prompt)
		if err != nil {
			return "", errors.New("reading the password failed")
		}
		if string(a) != string(b) {
			return "", errors.New("the two passwords differ")
		}
		return checkPassword(string(a))
	}
	return readPasswordLine(in)
}

// readPasswordLine reads the first line of r, without "\n" or "\r\n".
func readPasswordLine(r io.Reader) (string, error) {
	br := bufio.NewReaderSize(io.LimitReader(r, maxPasswordLen+2), maxPasswordLen+2)
	line, err := br.ReadString('\n')
	if err != nil && err != io.EOF {
		return "", errors.New("reading standard input failed")
	}
	if err == io.EOF && len(line) > maxPasswordLen {
		return "", fmt.Errorf("password longer than %d octets", maxPasswordLen)
	}
	line = strings.TrimSuffix(strings.TrimSuffix(line, "\n"), "\r")
	return checkPassword(line)
}

func checkPassword(pw string) (string, error) {
	switch {
	case pw == "":
		return "", errors.New("empty password on standard input")
	case len(pw) > maxPasswordLen:
		return "", fmt.Errorf("password longer than %d octets", maxPasswordLen)
	}
	return pw, nil
}
