package tlsconf

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"fmt"
	"math/big"
	"os"
	"time"

	"github.com/rs/zerolog"
)

// SelfSigned returns a Manager serving a self-signed ECDSA P-256 certificate
// generated now, valid for hosts (DNS names or IP addresses; "localhost",
// 127.0.0.1 and ::1 when none are given) for 30 days. It is what
// `popgate demo` uses; clients must be told to trust it (see Leaf).
func SelfSigned(hosts ...string) (*Manager, error) {
	if len(hosts) == 0 {
		hosts = []string{"localhost", "127.0.0.1", "::1"}
	}
	cert, err := selfSignedCert(hosts, 30*24*time.Hour)
	if err != nil {
		return nil, err
	}
	m := &Manager{log: zerolog.Nop(), stop: make(chan struct{})}
	m.tlsConfig = m.newTLSConfig(tls.VersionTLS12)
	m.cert.Store(cert)
	return m, nil
}

func selfSignedCert(hosts []string, validity time.Duration) (*tls.Certificate, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("tls: self-signed key: %w", err)
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return nil, fmt.Errorf("tls: self-signed serial: %w", err)
	}
	dns, ips := hostList(hosts)
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: hosts[0], Organization: []string{"popgate demo"}},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(validity),
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		IsCA:                  true, // so clients can pin it as its own root
		DNSNames:              dns,
		IPAddresses:           ips,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, fmt.Errorf("tls: self-signed certificate: %w", err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("tls: self-signed certificate: %w", err)
	}
	return &tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf}, nil
}

func statFile(name string) (os.FileInfo, error) { return os.Stat(name) }
