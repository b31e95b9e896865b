// Command maildir-store is the reference implementation of popgate's REST
// store contract (docs/rest-store.md): it serves a folder of Maildirs over
// HTTP for popgate's `type: rest` backend.
//
//	maildir-store --listen 127.0.0.1:8080 --maildirs /srv/mail --users /srv/mail/users
//	maildir-store hash            # reads a password on stdin, prints its bcrypt hash
//
// The contract is served under /pop/v1 (the backend's url is
// http://127.0.0.1:8080/pop/v1). --tls-cert/--tls-key serve HTTPS.
package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"log"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"golang.org/x/crypto/bcrypt"

	"github.com/popgate/popgate/examples/maildir-store/store"
)

func main() {
	if len(os.Args) > 1 && os.Args[1] == "hash" {
		fs := flag.NewFlagSet("hash", flag.ExitOnError)
		cost := fs.Int("cost", bcrypt.DefaultCost, "bcrypt cost")
		fs.Parse(os.Args[2:])
		line, err := bufio.NewReader(os.Stdin).ReadString('\n')
		if err != nil && line == "" {
			log.Fatal("maildir-store hash: no password on stdin")
		}
		h, err := bcrypt.GenerateFromPassword([]byte(strings.TrimRight(line, "\r\n")), *cost)
		if err != nil {
			log.Fatal(err)
		}
		fmt.Println(string(h))
		return
	}
	listen := flag.String("listen", "127.0.0.1:8080", "address to listen on")
	root := flag.String("maildirs", "", "folder with one Maildir per user (required)")
	users := flag.String("users", "", "users file, lines user:bcrypt-hash (required)")
	prefix := flag.String("prefix", "/pop/v1", "path the contract is served under")
	page := flag.Int("page-size", store.DefaultPageSize, "messages per list page")
	cert := flag.String("tls-cert", "", "PEM certificate (with --tls-key: serve HTTPS)")
	key := flag.String("tls-key", "", "PEM private key")
	flag.Parse()
	if *root == "" || *users == "" {
		fmt.Fprintln(os.Stderr, "maildir-store: --maildirs and --users are required")
		os.Exit(2)
	}
	st, err := store.New(store.Options{Root: *root, UsersFile: *users, PageSize: *page})
	if err != nil {
		fmt.Fprintln(os.Stderr, "maildir-store:", err)
		os.Exit(2)
	}
	mux := http.NewServeMux()
	mux.Handle(strings.TrimRight(*prefix, "/")+"/", http.StripPrefix(strings.TrimRight(*prefix, "/"), st))
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		fmt.Fprintln(os.Stderr, "maildir-store:", err)
		os.Exit(1)
	}
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 30 * time.Second, IdleTimeout: 5 * time.Minute}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	go func() {
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		srv.Shutdown(sctx)
	}()
	log.Printf("maildir-store: serving %s on %s%s", *root, ln.Addr(), *prefix)
	if *cert != "" {
		err = srv.ServeTLS(ln, *cert, *key)
	} else {
		err = srv.Serve(ln)
	}
	if err != nil && !errors.Is(err, http.ErrServerClosed) {
		log.Fatal(err)
	}
}
