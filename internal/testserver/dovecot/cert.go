package dovecot

import "github.com/popgate/popgate/internal/testutil"

// WriteSelfSigned writes a self-signed certificate for localhost and
// 127.0.0.1 and its key into dir (PEM). The certificate is its own CA: pass
// certFile as the client's CA file.
func WriteSelfSigned(dir string) (certFile, keyFile string, err error) {
	c, err := testutil.SelfSigned()
	if err != nil {
		return "", "", err
	}
	return c.WriteFiles(dir)
}
