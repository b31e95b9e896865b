package proxy

import (
	"errors"
	"fmt"
	"testing"

	"github.com/popgate/popgate/backends"
)

type namedResult struct{ error }

func (namedResult) LoginResult() string { return "throttled" }

type otherResult struct{ error }

func (otherResult) LoginResult() string { return "made-up" }

// TestLoginResult: [LOGIN-DELAY] counts as login_delay, an error naming
// "throttled" as throttled, anything else (a made-up name included: label
// values stay a fixed set) as error.
func TestLoginResult(t *testing.T) {
	for _, c := range []struct {
		err  error
		want string
	}{
		{&backends.Error{Code: backends.CodeLoginDelay, Text: "too soon"}, loginTooEarly},
		{fmt.Errorf("gate: %w", namedResult{backends.ErrUnavailable}), loginThrottled},
		{otherResult{backends.ErrUnavailable}, loginError},
		{backends.ErrUnavailable, loginError},
		{errors.New("plain"), loginError},
	} {
		code, _ := backends.ClientError(c.err)
		if got := loginResult(c.err, code); got != c.want {
			t.Errorf("loginResult(%v) = %q, want %q", c.err, got, c.want)
		}
	}
}
