package oauth

import (
	"errors"
	"testing"
)

func TestSASLRoundTrip(t *testing.T) {
	_, ir, _ := NewXOAUTH2Client("jane@example.com", "tok.en-1").Start()
	if string(ir) != "user=jane@example.com\x01auth=Bearer tok.en-1\x01\x01" {
		t.Fatalf("XOAUTH2 initial response %q", ir)
	}
	u, tok, err := ParseXOAUTH2(ir)
	if err != nil || u != "jane@example.com" || tok != "tok.en-1" {
		t.Fatalf("ParseXOAUTH2: %q %q %v", u, tok, err)
	}
	_, ir, _ = NewOAuthBearerClient("a,b=c", "T").Start()
	if string(ir) != "n,a=a=2Cb=3Dc,\x01auth=Bearer T\x01\x01" { // RFC 7628 §3.1, RFC 5801 §4
		t.Fatalf("OAUTHBEARER initial response %q", ir)
	}
	u, tok, err = ParseOAuthBearer(ir)
	if err != nil || u != "a,b=c" || tok != "T" {
		t.Fatalf("ParseOAuthBearer: %q %q %v", u, tok, err)
	}
	// RFC 7628 §4.1 example shape, with host and port.
	u, tok, err = ParseOAuthBearer([]byte("n,a=user@example.com,\x01host=server.example.com\x01port=143\x01auth=Bearer vF9dft4qmTc2Nvb3RlckBhbHRhdmlzdGEuY29tCg==\x01\x01"))
	if err != nil || u != "user@example.com" || tok != "vF9dft4qmTc2Nvb3RlckBhbHRhdmlzdGEuY29tCg==" {
		t.Fatalf("RFC 7628 example: %q %q %v", u, tok, err)
	}
	for _, bad := range []string{"", "user=x\x01auth=Bearer t", "user=x\x01auth=Basic t\x01\x01", "auth=Bearer t\x01\x01", "user=x\x01\x01"} {
		if _, _, err := ParseXOAUTH2([]byte(bad)); !errors.Is(err, ErrBadSASL) {
			t.Errorf("ParseXOAUTH2(%q): %v", bad, err)
		}
	}
	for _, bad := range []string{"", "n,,\x01auth=Bearer t\x01\x01", "p=x,a=u,\x01auth=Bearer t\x01\x01", "n,a=u,\x01auth=Bearer \x01\x01", "n,a=u\x01auth=Bearer t\x01\x01"} {
		if _, _, err := ParseOAuthBearer([]byte(bad)); !errors.Is(err, ErrBadSASL) {
			t.Errorf("ParseOAuthBearer(%q): %v", bad, err)
		}
	}
	c := NewOAuthBearerClient("u", "t")
	c.Start()
	if r, err := c.Next([]byte(`{"status":"invalid_token"}`)); err != nil || string(r) != "\x01" {
		t.Fatalf("OAUTHBEARER failure answer %q %v", r, err)
	}
	x := NewXOAUTH2Client("u", "t")
	x.Start()
	_, err = x.Next([]byte(`{"status":"401","schemes":"bearer"}`))
	var re *RejectedError
	if !errors.As(err, &re) || re.Status != "401" {
		t.Fatalf("XOAUTH2 failure: %v", err)
	}
}
