package backends

import (
	"context"
	"fmt"

	"github.com/rs/zerolog"
)

// LoginWithToken is the bearer-token login every store type shares. With
// no named credential it is login(ctx, c, c.Token) (c.Token may be empty:
// a password login). Otherwise it takes the credential's access token from
// tokens and logs in with it; when rejected(err) says the upstream refused
// that token (RFC 6750 §3.1 invalid_token: revoked or expired early), the
// token is reported invalid, a new one obtained and the login sent once
// more. A token that cannot be obtained is ErrUnavailable ([SYS/TEMP]).
// log gets the documented lines (README, "Logs"), never a token.
func LoginWithToken(ctx context.Context, c Credentials, tokens Tokens, log zerolog.Logger,
	login func(ctx context.Context, c Credentials, token string) (Mailbox, error), rejected func(error) bool) (Mailbox, error) {
	if c.Credential == "" {
		return login(ctx, c, c.Token)
	}
	log = log.With().Str("user", c.Username).Str("credential", c.Credential).Logger()
	if tokens == nil {
		err := fmt.Errorf("credential %s: no OAuth2 credentials configured", c.Credential)
		log.Error().Err(err).Msg("upstream login failed")
		return nil, ErrUnavailable.Wrap(err)
	}
	token := func() (string, error) {
		tok, err := tokens.AccessToken(ctx, c.Credential)
		if err != nil {
			log.Warn().Err(err).Msg("no OAuth2 token for the upstream login")
			return "", ErrUnavailable.Wrap(err)
		}
		return tok, nil
	}
	tok, err := token()
	if err != nil {
		return nil, err
	}
	mb, err := login(ctx, c, tok)
	if err == nil || !rejected(err) {
		return mb, err
	}
	tokens.Invalidate(c.Credential, tok)
	if tok, err = token(); err != nil {
		return nil, err
	}
	log.Info().Msg("upstream rejected the OAuth2 token: retrying once with a new one")
	return login(ctx, c, tok)
}
