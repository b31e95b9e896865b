package oauth

import (
	"context"
	"errors"
	"net"
	"testing"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapclient"
	"github.com/emersion/go-sasl"

	"github.com/popgate/popgate/internal/testserver/dovecot"
	"github.com/popgate/popgate/internal/testserver/idp"
)

// A real Dovecot with its oauth2 passdb accepts the custodian's
// client-credentials token through XOAUTH2 and OAUTHBEARER, and refuses a
// revoked one with a NO.
func TestDovecotAcceptsTokens(t *testing.T) {
	f := setup(t, idp.Options{})
	dv := dovecot.Start(t, dovecot.Options{OAuth2IntrospectionURL: f.idp.IntrospectURL, Users: map[string]string{"plainuser": "pw"}})
	tok, err := f.cu.Token(context.Background(), "m365-app")
	if err != nil {
		t.Fatal(err)
	}
	login := func(mech sasl.Client) error {
		conn, err := net.Dial("tcp", dv.Addr())
		if err != nil {
			t.Fatal(err)
		}
		c := imapclient.New(conn, nil)
		defer c.Close()
		if err := c.WaitGreeting(); err != nil {
			t.Fatal(err)
		}
		name, _, _ := mech.Start()
		if !c.Caps().Has(imap.AuthCap(name)) {
			t.Fatalf("Dovecot does not announce AUTH=%s: %v", name, c.Caps())
		}
		if err := c.Authenticate(mech); err != nil {
			return err
		}
		_, err = c.Select("INBOX", nil).Wait()
		return err
	}
	const user = "scans@corp.example"
	if err := login(NewXOAUTH2Client(user, tok.AccessToken)); err != nil {
		t.Fatalf("XOAUTH2: %v", err)
	}
	if err := login(NewOAuthBearerClient(user, tok.AccessToken)); err != nil {
		t.Fatalf("OAUTHBEARER: %v", err)
	}
	// The token belongs to scans@corp.example only.
	if err := login(NewXOAUTH2Client("plainuser", tok.AccessToken)); err == nil {
		t.Fatal("token accepted for another user")
	}
	f.idp.RevokeAccess()
	for _, mech := range []sasl.Client{NewXOAUTH2Client(user, tok.AccessToken), NewOAuthBearerClient(user, tok.AccessToken)} {
		err := login(mech)
		var ie *imap.Error
		var re *RejectedError
		if !errors.As(err, &re) && (!errors.As(err, &ie) || ie.Type != imap.StatusResponseTypeNo) {
			t.Fatalf("revoked token: %v, want a NO or a RejectedError", err)
		}
		t.Logf("revoked token: %v", err)
	}
}
