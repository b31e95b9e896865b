// Package netconf holds the checks of network values in the configuration
// that both the configuration core and the backend types use, so that they
// cannot disagree.
package netconf

import (
	"fmt"
	"net"
	"strconv"
	"strings"
)

// CheckAddress checks a host:port to listen on or dial.
func CheckAddress(addr string) error {
	if addr == "" {
		return fmt.Errorf("required (host:port, for example 0.0.0.0:995)")
	}
	_, port, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("%q is not host:port (%s)", addr, strings.TrimPrefix(err.Error(), "address "+addr+": "))
	}
	n, err := strconv.Atoi(port)
	if err != nil || n < 0 || n > 65535 {
		return fmt.Errorf("%q: port %q is not a number from 0 to 65535", addr, port)
	}
	return nil
}
