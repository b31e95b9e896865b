package oauth

import (
	"bytes"
	"encoding/json"
	"errors"
	"strings"

	"github.com/emersion/go-sasl"
)

// SASL mechanism names.
const (
	XOAUTH2     = "XOAUTH2"     // Google's and Microsoft's bearer-token mechanism
	OAUTHBEARER = "OAUTHBEARER" // RFC 7628
)

// NewXOAUTH2Client returns the client side of XOAUTH2: the initial
// response "user=USER^Aauth=Bearer TOKEN^A^A". When the server refuses, it
// sends a JSON error as a challenge, to which the protocol wants an empty
// response; go-imap cannot send an empty continuation (it writes "=",
// which Dovecot refuses as bad base64), so Next returns a
// *RejectedError instead and the caller must drop the connection.
func NewXOAUTH2Client(user, token string) sasl.Client {
	return &xoauth2Client{user: user, token: token}
}

type xoauth2Client struct {
	user, token string
	failed      bool
}

func (c *xoauth2Client) Start() (string, []byte, error) {
	return XOAUTH2, []byte("user=" + c.user + "\x01auth=Bearer " + c.token + "\x01\x01"), nil
}

func (c *xoauth2Client) Next(challenge []byte) ([]byte, error) {
	if c.failed {
		return nil, errors.New("XOAUTH2: unexpected second challenge")
	}
	c.failed = true
	return nil, rejected(XOAUTH2, challenge)
}

// RejectedError reports that the server refused the bearer token (its
// error challenge, RFC 7628 §3.2.2). Status is the server's status text
// (e.g. "invalid_token", "401"); it holds no token.
type RejectedError struct {
	Mechanism string
	Status    string
}

func (e *RejectedError) Error() string {
	s := e.Mechanism + ": the server rejected the token"
	if e.Status != "" {
		s += " (status " + e.Status + ")"
	}
	return s
}

func rejected(mech string, challenge []byte) *RejectedError {
	var v struct {
		Status string `json:"status"`
	}
	_ = json.Unmarshal(challenge, &v)
	return &RejectedError{Mechanism: mech, Status: clip(v.Status, 64)}
}

// NewOAuthBearerClient returns the client side of OAUTHBEARER (RFC 7628
// §3.1): the GS2 header "n,a=USER," then "auth=Bearer TOKEN" between ^A
// separators. On failure the server sends an error JSON challenge and the
// client answers with a single ^A (RFC 7628 §3.2.3), after which the server
// fails the exchange.
func NewOAuthBearerClient(user, token string) sasl.Client {
	return &oauthBearerClient{user: user, token: token}
}

type oauthBearerClient struct {
	user, token string
	failed      bool
}

func (c *oauthBearerClient) Start() (string, []byte, error) {
	// RFC 7628 §3.1: the authzid carries the user; ',' and '=' in it are
	// escaped as =2C and =3D (RFC 5801 §4).
	a := strings.NewReplacer("=", "=3D", ",", "=2C").Replace(c.user)
	return OAUTHBEARER, []byte("n,a=" + a + ",\x01auth=Bearer " + c.token + "\x01\x01"), nil
}

func (c *oauthBearerClient) Next(challenge []byte) ([]byte, error) {
	if c.failed {
		return nil, errors.New("OAUTHBEARER: unexpected second challenge")
	}
	c.failed = true
	return []byte{0x01}, nil // RFC 7628 §3.2.3
}

// ErrBadSASL is returned by the parsers for a malformed client message.
var ErrBadSASL = errors.New("malformed OAuth SASL message")

// ParseXOAUTH2 reads a client's XOAUTH2 initial response
// ("user=USER^Aauth=Bearer TOKEN^A^A").
func ParseXOAUTH2(resp []byte) (user, token string, err error) {
	if !bytes.HasSuffix(resp, []byte("\x01\x01")) {
		return "", "", ErrBadSASL
	}
	for _, kv := range strings.Split(string(resp[:len(resp)-2]), "\x01") {
		k, v, ok := strings.Cut(kv, "=")
		if !ok {
			return "", "", ErrBadSASL
		}
		switch k {
		case "user":
			user = v
		case "auth":
			token, err = bearer(v)
			if err != nil {
				return "", "", err
			}
		}
	}
	if user == "" || token == "" {
		return "", "", ErrBadSASL
	}
	return user, token, nil
}

// ParseOAuthBearer reads a client's OAUTHBEARER initial response (RFC 7628
// §3.1): GS2 header, then key=value pairs separated by ^A. The user is the
// authzid of the GS2 header.
func ParseOAuthBearer(resp []byte) (user, token string, err error) {
	s := string(resp)
	if !strings.HasSuffix(s, "\x01\x01") {
		return "", "", ErrBadSASL
	}
	gs2, rest, ok := strings.Cut(s, "\x01")
	if !ok {
		return "", "", ErrBadSASL
	}
	// gs2-header = gs2-cbind-flag "," [ authzid ] "," (RFC 5801 §4)
	parts := strings.Split(gs2, ",")
	if len(parts) != 3 || (parts[0] != "n" && parts[0] != "y") || parts[2] != "" {
		return "", "", ErrBadSASL
	}
	if parts[1] != "" {
		if !strings.HasPrefix(parts[1], "a=") {
			return "", "", ErrBadSASL
		}
		user = strings.NewReplacer("=2C", ",", "=3D", "=").Replace(parts[1][2:])
	}
	for _, kv := range strings.Split(strings.TrimSuffix(rest, "\x01\x01"), "\x01") {
		k, v, ok := strings.Cut(kv, "=")
		if !ok {
			return "", "", ErrBadSASL
		}
		if k == "auth" {
			if token, err = bearer(v); err != nil {
				return "", "", err
			}
		}
	}
	if user == "" || token == "" {
		return "", "", ErrBadSASL
	}
	return user, token, nil
}

// bearer takes the token out of "Bearer TOKEN" (RFC 6750 §2.1; the scheme
// is case-insensitive).
func bearer(v string) (string, error) {
	scheme, tok, ok := strings.Cut(v, " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") || tok == "" {
		return "", ErrBadSASL
	}
	return tok, nil
}
