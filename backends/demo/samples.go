package demo

import (
	"encoding/base64"
	"strconv"
	"strings"
	"time"
)

// Sample is one seeded message of the demo maildrop.
type Sample struct {
	// Name says what the message exercises ("plain", "dot-lines", "8bit",
	// "attachment", "newsletter").
	Name string
	// Date is the message's Date header, also used as its IMAP internal date.
	Date time.Time
	// Raw is the exact message as stored and as RETR delivers it (CRLF line
	// endings, no dot-stuffing). RFC822.SIZE and POP3 LIST equal len(Raw).
	Raw []byte
}

// crlf joins lines with CRLF and ends the last one with CRLF.
func crlf(lines ...string) []byte {
	return []byte(strings.Join(lines, "\r\n") + "\r\n")
}

// wrap76 splits a base64 text into lines of 76 characters (RFC 2045 §6.8).
func wrap76(s string) []string {
	var out []string
	for len(s) > 76 {
		out = append(out, s[:76])
		s = s[76:]
	}
	if s != "" {
		out = append(out, s)
	}
	return out
}

var sampleDate = time.Date(2026, time.March, 2, 9, 15, 0, 0, time.UTC)

// Samples returns the messages every demo user's INBOX is seeded with, in
// order (POP3 message 1 is the first). The result is a fresh copy.
func Samples() []Sample {
	d := func(h int) time.Time { return sampleDate.Add(time.Duration(h) * time.Hour) }
	date := func(t time.Time) string { return t.Format(time.RFC1123Z) }

	plain := crlf(
		"Return-Path: <alice@example.org>",
		"From: Alice Example <alice@example.org>",
		"To: Demo User <demo@example.org>",
		"Subject: Welcome to popgate",
		"Date: "+date(d(0)),
		"Message-ID: <welcome.1@example.org>",
		"MIME-Version: 1.0",
		"Content-Type: text/plain; charset=us-ascii",
		"",
		"Hello,",
		"",
		"this mailbox lives in popgate's embedded demo store. Any POP3 client",
		"can read it through the gateway, and you can watch it over IMAP too:",
		"a message you delete with DELE and QUIT disappears from the IMAP view.",
		"",
		"Alice",
	)

	dots := crlf(
		"From: Bob Builder <bob@example.net>",
		"To: demo@example.org",
		"Subject: Lines that start with a dot",
		"Date: "+date(d(1)),
		"Message-ID: <dots.2@example.net>",
		"MIME-Version: 1.0",
		"Content-Type: text/plain; charset=us-ascii",
		"",
		"POP3 must dot-stuff these lines (RFC 1939 section 3):",
		".",
		"..",
		".hidden-file",
		"...three dots",
		". a dot and a space",
		"",
		"The line with a single dot above must not end the message.",
		"-- ",
		"Bob",
	)

	utf8 := crlf(
		"From: =?utf-8?q?J=C3=BCrgen_M=C3=BCller?= <juergen@example.de>",
		"To: demo@example.org",
		"Subject: =?utf-8?q?Gr=C3=BC=C3=9Fe_aus_K=C3=B6ln?=",
		"Date: "+date(d(2)),
		"Message-ID: <gruesse.3@example.de>",
		"MIME-Version: 1.0",
		"Content-Type: text/plain; charset=utf-8",
		"Content-Transfer-Encoding: 8bit",
		"",
		"Hallo aus Köln!",
		"",
		"Straße, Größe, Übermaß — and a few more: naïve café, Ελληνικά, 日本語, 🙂.",
		"These octets go through POP3 untouched (8bit body, no re-encoding).",
		"",
		"Viele Grüße",
		"Jürgen",
	)

	// A small text attachment, base64-encoded (RFC 2045 §6.8).
	attachment := strings.Repeat("id,item,quantity\r\n1,widget,4\r\n2,gadget,12\r\n3,sprocket,7\r\n", 4)
	enc := wrap76(base64.StdEncoding.EncodeToString([]byte(attachment)))
	multipart := []string{
		"From: Carol Reports <reports@example.com>",
		"To: demo@example.org",
		"Subject: Monthly report (with attachment)",
		"Date: " + date(d(3)),
		"Message-ID: <report.4@example.com>",
		"MIME-Version: 1.0",
		"Content-Type: multipart/mixed; boundary=\"=_popgate_demo_boundary\"",
		"",
		"This is a multi-part message in MIME format.",
		"",
		"--=_popgate_demo_boundary",
		"Content-Type: text/plain; charset=us-ascii",
		"Content-Transfer-Encoding: 7bit",
		"",
		"Hi,",
		"",
		"the inventory report is attached as CSV.",
		"",
		"Carol",
		"",
		"--=_popgate_demo_boundary",
		"Content-Type: text/csv; name=\"inventory.csv\"",
		"Content-Disposition: attachment; filename=\"inventory.csv\"",
		"Content-Transfer-Encoding: base64",
		"",
	}
	multipart = append(multipart, enc...)
	multipart = append(multipart, "", "--=_popgate_demo_boundary--")

	var news []string
	news = append(news,
		"From: Example Weekly <newsletter@example.org>",
		"To: demo@example.org",
		"Subject: Example Weekly #42: a longer message for TOP",
		"Date: "+date(d(4)),
		"Message-ID: <weekly.42@example.org>",
		"List-Id: Example Weekly <weekly.example.org>",
		"MIME-Version: 1.0",
		"Content-Type: text/plain; charset=us-ascii",
		"",
	)
	for i := 1; i <= 40; i++ {
		news = append(news, "Item "+strconv.Itoa(i)+": try TOP with a small line count to read only the start of a message.")
	}

	return []Sample{
		{Name: "plain", Date: d(0), Raw: plain},
		{Name: "dot-lines", Date: d(1), Raw: dots},
		{Name: "8bit", Date: d(2), Raw: utf8},
		{Name: "attachment", Date: d(3), Raw: crlf(multipart...)},
		{Name: "newsletter", Date: d(4), Raw: crlf(news...)},
	}
}
