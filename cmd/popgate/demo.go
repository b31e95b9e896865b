package main

import (
	"fmt"
	"io"
	"net"
	"time"

	"github.com/popgate/popgate/backends"
	"github.com/popgate/popgate/backends/demo"
	"github.com/popgate/popgate/proxy"
	"github.com/popgate/popgate/tlsconf"
)

func runDemo(args []string, stdout, stderr io.Writer) int {
	fs := newFlagSet("demo", "[flags]",
		"Run popgate on loopback in front of an embedded IMAP mail store holding a few\n"+
			"sample messages for the user demo (password demo), with a certificate\n"+
			"generated at start. It prints the commands to try. Stop it with Ctrl-C;\n"+
			"the mail store lives in memory only.", stdout, stderr)
	pop3 := fs.String("pop3", "127.0.0.1:1110", "POP3 `address` (STLS offered; login only after STLS)")
	pop3s := fs.String("pop3s", "127.0.0.1:1995", "POP3S `address` (implicit TLS)")
	imapAddr := fs.String("imap", demo.DefaultIMAPAddress, "`address` of the embedded IMAP store (loopback only)")
	level := fs.String("log-level", "info", "log `level`: debug, info, warn or error")
	format := fs.String("log-format", "console", "log `format`: console or json")
	if code, done := parseFlags(fs, args, stdout); done {
		return code
	}
	log, err := newLogger(stderr, *level, *format)
	if err != nil {
		fmt.Fprintf(stderr, "popgate demo: %v\n", err)
		return exitUsage
	}

	// Open the POP3 listeners first: nothing else starts if a port is taken.
	specs := []listenSpec{{Address: *pop3, TLS: proxy.TLSStartTLS}, {Address: *pop3s, TLS: proxy.TLSImplicit}}
	ls, err := listenAll(specs)
	if err != nil {
		fmt.Fprintf(stderr, "popgate demo: %v\n", err)
		return exitFailure
	}
	closeAll := func() {
		for _, l := range ls {
			l.Close()
		}
	}
	dc := demo.DefaultConfig()
	dc.Address = *imapAddr
	if err := backends.CheckConfig(&dc); err != nil {
		closeAll()
		fmt.Fprintf(stderr, "popgate demo: --imap: %v\n", err)
		return exitUsage
	}
	up, err := dc.Build(backends.Env{Name: "demo", Log: log})
	if err != nil {
		closeAll()
		fmt.Fprintf(stderr, "popgate demo: embedded store: %v\n", err)
		return exitFailure
	}
	defer up.Close()
	store := up.(*demo.Backend).Store

	router, err := backends.NewRouter([]backends.Route{{Match: "*", Backend: "demo"}}, map[string]backends.Backend{"demo": up}, log)
	if err != nil {
		closeAll()
		fmt.Fprintf(stderr, "popgate demo: %v\n", err)
		return exitFailure
	}
	cert, err := tlsconf.SelfSigned("localhost", "127.0.0.1")
	if err != nil {
		closeAll()
		fmt.Fprintf(stderr, "popgate demo: certificate: %v\n", err)
		return exitFailure
	}
	defer cert.Close()

	o := proxy.DefaultOptions()
	o.Backend, o.TLSConfig, o.Implementation, o.Logger = router, cert.ServerConfig(), "popgate-demo", log
	srv := proxy.New(o)
	g := &gateway{
		log:   log,
		srv:   srv,
		specs: specs,
		ls:    ls,
		drain: func() time.Duration { return 5 * time.Second },
		ready: func() { printDemoHelp(stdout, ls[0].Addr(), ls[1].Addr(), store.IMAPAddr()) },
	}
	return g.run()
}

func printDemoHelp(w io.Writer, pop3, pop3s net.Addr, imapAddr string) {
	fmt.Fprintf(w, `
popgate demo is running.

  POP3 with STLS   %[1]s
  POP3S            %[2]s   (self-signed certificate generated at start)
  embedded IMAP    %[3]s   (the mail store behind popgate, plaintext, loopback only)
  user / password  demo / demo

Try it (-k: the demo certificate is self-signed):

  curl -k pop3s://%[2]s/ -u demo:demo                   # LIST
  curl -k pop3s://%[2]s/1 -u demo:demo                  # RETR 1
  curl -k pop3s://%[2]s/ -u demo:demo -X UIDL           # UIDL
  curl -k --ssl-reqd pop3://%[1]s/ -u demo:demo          # STLS, then LIST

  openssl s_client -quiet -connect %[2]s                 # then type: USER demo, PASS demo, STAT, RETR 1, QUIT
  openssl s_client -quiet -starttls pop3 -connect %[1]s

A DELE is applied to the IMAP store at QUIT only; watch it with any IMAP
client on %[3]s (login demo / demo). Stop with Ctrl-C.

`, pop3, pop3s, imapAddr)
}
