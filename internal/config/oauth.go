package config

import (
	"sort"

	"github.com/popgate/popgate/internal/oauth"
)

// CredentialNames returns the names of the OAuth2 credentials, sorted.
func (c *Config) CredentialNames() []string {
	names := make([]string, 0, len(c.Credentials))
	for n := range c.Credentials {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// oauth checks credentials and token_store. Problems name keys, never
// secret values.
func (k *checker) oauth() {
	for _, name := range k.c.CredentialNames() {
		cr := k.c.Credentials[name]
		path := "credentials." + name
		if !oauth.ValidName(name) {
			k.add(path, "a credential name holds letters, digits and . _ - @ only")
		}
		if cr == nil {
			k.add(path, "empty credential")
			continue
		}
		for _, p := range cr.Check() {
			k.add(path+"."+p.Key, "%s", p.Msg)
		}
	}
	if k.c.TokenStore == nil {
		if len(k.c.Credentials) > 0 {
			k.add("token_store", "required when credentials are configured (path and key or key_file)")
		}
		return
	}
	for _, p := range k.c.TokenStore.Check() {
		k.add("token_store."+p.Key, "%s", p.Msg)
	}
}
