package config

import (
	"strings"
	"testing"
)

func TestOAuthKeys(t *testing.T) {
	t.Setenv("M365_SECRET", "s3cret-value-xyz")
	t.Setenv("POPGATE_TOKEN_KEY", "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=")
	c, err := Parse([]byte(withFiles(t, good)+`
credentials:
  m365-app:
    type: oauth2_client_credentials
    token_url: https://login.microsoftonline.com/TENANT/oauth2/v2.0/token
    client_id: "1111"
    client_secret: ${M365_SECRET}
    scopes: [https://outlook.office365.com/.default]
    ca_file: ""
  gmail-jane:
    type: oauth2_refresh_token
    token_url: https://oauth2.googleapis.com/token
    device_auth_url: https://oauth2.googleapis.com/device/code
    client_id: "2222"
    client_secret: ""
    scopes: [https://mail.google.com/]
token_store:
  path: /var/lib/popgate/tokens
  key: ${POPGATE_TOKEN_KEY}
`), types)
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(c.CredentialNames(), ","); got != "gmail-jane,m365-app" {
		t.Fatalf("credentials %s", got)
	}
	if c.Credentials["m365-app"].ClientSecret != "s3cret-value-xyz" || len(c.Credentials["gmail-jane"].Scopes) != 1 {
		t.Fatal("credential values not read")
	}

	_, err = Parse([]byte(withFiles(t, good)+`
credentials:
  bad:
    type: password
    token_url: ftp://x
    client_secret: ${M365_SECRET}
  other:
    type: oauth2_client_credentials
    token_url: https://x/token
    client_id: a
    client_secret: b
    scope: [x]
`), types)
	if err == nil {
		t.Fatal("bad credentials accepted")
	}
	for _, want := range []string{"credentials.bad.type", "credentials.bad.token_url", "credentials.bad.client_id", `unknown key "scope"`, "token_store: required"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("no problem %q in:\n%v", want, err)
		}
	}
	_, err = Parse([]byte(withFiles(t, good)+`
token_store:
  path: /x
  key: c2hvcnQta2V5LXZhbHVl
`), types)
	if err == nil || !strings.Contains(err.Error(), "token_store.key") {
		t.Fatalf("short key: %v", err)
	}
	for _, secret := range []string{"s3cret-value-xyz", "c2hvcnQta2V5LXZhbHVl", "short-key-value"} {
		if strings.Contains(err.Error(), secret) {
			t.Fatalf("secret in error: %v", err)
		}
	}
}
