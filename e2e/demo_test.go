package e2e

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"fmt"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapclient"
	"github.com/popgate/popgate/backends/demo"
	"github.com/popgate/popgate/internal/testutil"
)

// startDemo runs `popgate demo` on free loopback ports until the end of t
// and returns its POP3 (STLS), POP3S and IMAP addresses.
func startDemo(t *testing.T) (pop3, pop3s, imapAddr string) {
	t.Helper()
	if *reference {
		t.Skip("popgate demo has no Dovecot reference")
	}
	pop3, pop3s, imapAddr = "127.0.0.1:"+freePort(t), "127.0.0.1:"+freePort(t), "127.0.0.1:"+freePort(t)
	p := testutil.StartProc(t, testutil.ProcOptions{Graceful: true}, popgateBin,
		"demo", "-pop3", pop3, "-pop3s", pop3s, "-imap", imapAddr, "-log-format", "json", "-log-level", "debug")
	p.WaitGreeting(t, pop3)
	return pop3, pop3s, imapAddr
}

// `popgate demo` with real clients over TLS: curl with STLS (--ssl-reqd) and
// over POP3S sees the embedded store's sample messages byte for byte; the
// demo refuses USER before TLS; a DELE shows up in the store over IMAP at
// QUIT.
func TestDemo(t *testing.T) {
	requireBin(t, "curl")
	pop3, pop3s, imapAddr := startDemo(t)
	samples := demo.Samples()
	k := []string{"-k"} // the demo's certificate is self-signed

	// LIST over STLS (RFC 2595): the sizes of the samples.
	var want strings.Builder
	for i, s := range samples {
		fmt.Fprintf(&want, "%d %d\r\n", i+1, len(s.Raw))
	}
	if got := curl(t, pop3, demo.DemoUser, demo.DemoPassword, "", append(k, "--ssl-reqd")...); string(got) != want.String() {
		t.Errorf("LIST over STLS:\n got %q\nwant %q", got, want.String())
	}
	// RETR of every sample over implicit TLS, byte for byte.
	for i, s := range samples {
		got := curlTLS(t, pop3s, fmt.Sprint(i+1))
		if !bytes.Equal(got, s.Raw) {
			t.Errorf("RETR %d (%s) over POP3S differs:\n got %q\nwant %q", i+1, s.Name, got, s.Raw)
		}
	}

	// No password in clear: USER before STLS is refused.
	c, err := net.DialTimeout("tcp", pop3, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	c.SetDeadline(time.Now().Add(10 * time.Second))
	r := bufio.NewReader(c)
	r.ReadString('\n')
	fmt.Fprintf(c, "USER demo\r\n")
	if line, _ := r.ReadString('\n'); !strings.HasPrefix(line, "-ERR") {
		t.Errorf("USER before STLS: %q, want -ERR", line)
	}
	c.Close()

	// DELE 2 over POP3S; at QUIT the store over IMAP no longer has it.
	curlTLSArgs(t, pop3s, "2", "-X", "DELE", "-I")
	ic, err := imapclient.DialInsecure(imapAddr, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer ic.Close()
	if err := ic.Login(demo.DemoUser, demo.DemoPassword).Wait(); err != nil {
		t.Fatal(err)
	}
	if _, err := ic.Select("INBOX", &imap.SelectOptions{ReadOnly: true}).Wait(); err != nil {
		t.Fatal(err)
	}
	var all imap.UIDSet
	all.AddRange(1, 0)
	section := &imap.FetchItemBodySection{Peek: true}
	msgs, err := ic.Fetch(all, &imap.FetchOptions{UID: true, BodySection: []*imap.FetchItemBodySection{section}}).Collect()
	if err != nil {
		t.Fatal(err)
	}
	var left []string
	for _, m := range msgs {
		body := m.FindBodySection(section)
		for _, s := range samples {
			if bytes.Equal(body, s.Raw) {
				left = append(left, s.Name)
			}
		}
	}
	var wantLeft []string
	for i, s := range samples {
		if i != 1 {
			wantLeft = append(wantLeft, s.Name)
		}
	}
	if strings.Join(left, ",") != strings.Join(wantLeft, ",") {
		t.Errorf("store after DELE 2 + QUIT holds %v, want %v", left, wantLeft)
	}
}

// curlTLS retrieves path over POP3S as the demo user, without verifying
// the demo's self-signed certificate.
func curlTLS(t *testing.T, addr, path string) []byte {
	t.Helper()
	return curlTLSArgs(t, addr, path)
}

func curlTLSArgs(t *testing.T, addr, path string, args ...string) []byte {
	t.Helper()
	dir := t.TempDir()
	host, port := splitHostPort(addr)
	writeFile(t, dir+"/netrc", fmt.Sprintf("machine %s login %s password %s\n", host, demo.DemoUser, demo.DemoPassword), 0o600)
	all := append([]string{"-sS", "-k", "--max-time", "60", "--netrc-file", dir + "/netrc"}, args...)
	all = append(all, fmt.Sprintf("pop3s://%s:%s/%s", host, port, path))
	out, stderr, err := runClient(t, dir, nil, "curl", all...)
	if err != nil {
		t.Fatalf("curl pop3s %s: %v: %s", strings.Join(args, " "), err, stderr)
	}
	return out
}

// The demo's POP3S endpoint speaks TLS 1.2 or later and announces pop3 by
// ALPN (RFC 8314 §3, RFC 7301), as any client library can check.
func TestDemoTLS(t *testing.T) {
	_, pop3s, _ := startDemo(t)
	c, err := tls.DialWithDialer(&net.Dialer{Timeout: 10 * time.Second}, "tcp", pop3s, &tls.Config{InsecureSkipVerify: true, NextProtos: []string{"pop3"}})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	st := c.ConnectionState()
	if st.Version < tls.VersionTLS12 {
		t.Errorf("TLS version %x, want 1.2 or later", st.Version)
	}
	if st.NegotiatedProtocol != "pop3" {
		t.Errorf("ALPN protocol %q, want pop3", st.NegotiatedProtocol)
	}
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if line, err := bufio.NewReader(c).ReadString('\n'); err != nil || !strings.HasPrefix(line, "+OK") {
		t.Errorf("greeting over POP3S: %q %v", line, err)
	}
}

// mpop and fetchmail negotiate STLS with the demo (certificate checks off:
// it is self-signed) and deliver every sample unchanged.
func TestDemoSTLSClients(t *testing.T) {
	requireBin(t, "mpop", "fetchmail")
	pop3, _, _ := startDemo(t)
	host, port := splitHostPort(pop3)
	samples := demo.Samples()

	dir := t.TempDir()
	mda := deliverScript(t, dir)
	mpop(t, dir, fmt.Sprintf(`account default
host %s
port %s
tls on
tls_starttls on
tls_certcheck off
auth user
user %s
password %s
delivery mda %s
uidls_file %s
keep on
`, host, port, demo.DemoUser, demo.DemoPassword, mda, filepath.Join(dir, "uidls")))
	got := delivered(t, dir)
	if len(got) != len(samples) {
		t.Fatalf("mpop delivered %d messages, want %d", len(got), len(samples))
	}
	for i, s := range samples {
		checkDelivered(t, "mpop "+s.Name, got[i], s.Raw)
	}

	dir = t.TempDir()
	mda = deliverScript(t, dir)
	if code := fetchmail(t, dir, fmt.Sprintf(`set no bouncemail
poll %s service %s protocol POP3 uidl auth password timeout 60
  user "%s" there with password "%s" is "nobody" here
  sslproto "tls1.2+" no sslcertck
  mda "%s"
  keep
`, host, port, demo.DemoUser, demo.DemoPassword, mda)); code != 0 {
		t.Fatalf("fetchmail exit code %d, want 0", code)
	}
	got = delivered(t, dir)
	if len(got) != len(samples) {
		t.Fatalf("fetchmail delivered %d messages, want %d", len(got), len(samples))
	}
	for i, s := range samples {
		checkDelivered(t, "fetchmail "+s.Name, got[i], s.Raw)
	}
}
