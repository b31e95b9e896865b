//go:build !unix

package oauth

// lockFile is a no-op where flock does not exist: only one process may
// write the store there.
func lockFile(string) (func(), error) { return func() {}, nil }
