package strictyaml

import (
	"reflect"
	"strings"
	"testing"
	"time"

	"gopkg.in/yaml.v3"
)

type shared struct {
	Timeout time.Duration `yaml:"timeout"`
	Nested  struct {
		Policy string `yaml:"policy"`
	} `yaml:"nested"`
}

type section struct {
	Address string `yaml:"address"`
	Shared  shared `yaml:",inline"`
	Hidden  string `yaml:"-"`
}

func node(t *testing.T, s string) *yaml.Node {
	t.Helper()
	var doc yaml.Node
	if err := yaml.Unmarshal([]byte(s), &doc); err != nil {
		t.Fatal(err)
	}
	return doc.Content[0]
}

func TestInlineKeysSkipAndLines(t *testing.T) {
	if got := strings.Join(FieldNames(reflect.TypeOf(section{})), ","); got != "address,timeout,nested" {
		t.Errorf("FieldNames = %s (inline in place, - left out)", got)
	}
	d := NewDecoder()
	v := section{Address: "default"}
	v.Shared.Timeout = time.Second
	d.Decode(node(t, "type: x\ntimeout: 5s\nnested: {policy: p, colour: red}\nbogus: 1\n"), &v, "backends.b", "type")
	var got []string
	for _, p := range d.Problems() {
		got = append(got, p.Error())
	}
	want := []string{
		`line 3: backends.b.nested: unknown key "colour" (known keys: policy)`,
		`line 4: backends.b: unknown key "bogus" (known keys: type, address, timeout, nested)`,
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("problems:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	if v.Address != "default" || v.Shared.Timeout != 5*time.Second || v.Shared.Nested.Policy != "p" {
		t.Errorf("decoded %+v: defaults kept, file values over them", v)
	}
	if !d.Has("backends.b.type") || d.Line("backends.b.nested.policy") != 3 || d.LineOf("backends.b.nested.nope") != 3 {
		t.Errorf("lines: type %v, policy %d", d.Has("backends.b.type"), d.Line("backends.b.nested.policy"))
	}
}

func TestDurationAndEnv(t *testing.T) {
	t.Setenv("SY_T", "7s")
	var v struct {
		A time.Duration `yaml:"a"`
		B time.Duration `yaml:"b"`
		C string        `yaml:"c"`
	}
	d := NewDecoder()
	d.Decode(node(t, "a: ${SY_T}\nb: 30\nc: ${SY_SURELY_UNSET}\n"), &v, "")
	got := d.Problems().Error()
	if v.A != 7*time.Second || !strings.Contains(got, `line 2: b: duration "30" needs a unit`) || !strings.Contains(got, "line 3: c: environment variable SY_SURELY_UNSET is not set") {
		t.Errorf("a = %v, problems %s", v.A, got)
	}
}
