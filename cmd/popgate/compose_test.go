package main

import (
	"os"
	"os/exec"
	"strings"
	"testing"

	"gopkg.in/yaml.v3"

	"github.com/popgate/popgate/internal/testserver/haproxy"
)

// TestComposeFile checks deploy/compose.yaml and its files for syntax (no
// Docker daemon is available to run them): the compose file parses and
// names its services, the node configuration passes check-config, and
// HAProxy accepts its configuration.
func TestComposeFile(t *testing.T) {
	raw, err := os.ReadFile("../../deploy/compose.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var compose struct {
		Services map[string]struct {
			Image   string   `yaml:"image"`
			Volumes []string `yaml:"volumes"`
		} `yaml:"services"`
	}
	if err := yaml.Unmarshal(raw, &compose); err != nil {
		t.Fatalf("compose.yaml: %v", err)
	}
	for _, s := range []string{"redis", "dovecot", "haproxy", "popgate1", "popgate2", "popgate3"} {
		if _, ok := compose.Services[s]; !ok {
			t.Errorf("compose.yaml lacks service %s", s)
		}
	}
	for name, s := range compose.Services {
		for _, v := range s.Volumes {
			src, _, _ := strings.Cut(v, ":")
			if strings.HasPrefix(src, "./") {
				if _, err := os.Stat("../../deploy/" + src); err != nil {
					t.Errorf("service %s mounts %s: %v", name, src, err)
				}
			}
		}
	}

	t.Setenv("REDIS_PASSWORD", "x")
	t.Setenv("ADMIN_TOKEN", "y")
	code, out, errOut := runPopgate(t, "check-config", "--config", "../../deploy/cluster/popgate.yaml")
	if code != 0 || !strings.Contains(out, "cluster: Redis redis:6379") {
		t.Fatalf("check-config deploy/cluster/popgate.yaml: %d\n%s%s", code, out, errOut)
	}

	haproxy.Require(t)
	hc := exec.Command("haproxy", "-c", "-f", "../../deploy/cluster/haproxy.cfg")
	if b, err := hc.CombinedOutput(); err != nil || !strings.Contains(string(b), "Configuration file is valid") {
		t.Fatalf("haproxy -c: %v\n%s", err, b)
	}
}
