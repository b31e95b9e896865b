package config

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"reflect"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"

	"gopkg.in/yaml.v3"
)

// Problem is one thing wrong with a configuration file.
type Problem struct {
	Path string // key path such as "routes[1].backend"; "" for the file as a whole
	Line int    // 1-based line in the file; 0 when unknown
	Msg  string
}

func (p Problem) Error() string {
	var b strings.Builder
	if p.Line > 0 {
		fmt.Fprintf(&b, "line %d: ", p.Line)
	}
	if p.Path != "" {
		b.WriteString(p.Path)
		b.WriteString(": ")
	}
	b.WriteString(p.Msg)
	return b.String()
}

// Problems is every problem found in a file, in the order of the file where
// lines are known. It is the error type of Parse, Load and Validate.
type Problems []Problem

func (ps Problems) Error() string {
	s := make([]string, len(ps))
	for i, p := range ps {
		s[i] = p.Error()
	}
	return strings.Join(s, "; ")
}

// FileError is the error of Load: the file name and what is wrong with it
// (a Problems, or the error of reading the file).
type FileError struct {
	Path string
	Err  error
}

func (e *FileError) Error() string { return e.Path + ": " + e.Err.Error() }
func (e *FileError) Unwrap() error { return e.Err }

// Problems returns every problem of the file; reading errors are one
// Problem without a path.
func (e *FileError) Problems() Problems {
	var ps Problems
	if errors.As(e.Err, &ps) {
		return ps
	}
	return Problems{{Msg: e.Err.Error()}}
}

// Load reads, parses and validates the file at path. On error it returns a
// *FileError; the returned *Config is nil then.
func Load(path string) (*Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		var pe *os.PathError
		if errors.As(err, &pe) {
			err = pe.Err // the path is already in FileError
		}
		return nil, &FileError{Path: path, Err: err}
	}
	c, err := Parse(data)
	if err != nil {
		return nil, &FileError{Path: path, Err: err}
	}
	c.Path = path
	return c, nil
}

// Parse parses and validates a configuration. Its error is a Problems
// holding every problem found.
func Parse(data []byte) (*Config, error) {
	c, ps := parse(data)
	if c != nil {
		ps = merge(ps, c.validate())
	}
	if len(ps) > 0 {
		return nil, ps
	}
	return c, nil
}

// merge appends the validation problems whose key path has no parse problem
// already (a value that did not decode also fails validation; say it once).
func merge(parse, valid Problems) Problems {
	seen := make(map[string]bool, len(parse))
	for _, p := range parse {
		if p.Path != "" {
			seen[p.Path] = true
		}
	}
	out := parse
	for _, p := range valid {
		if !seen[p.Path] {
			out = append(out, p)
		}
	}
	key := func(p Problem) int {
		if p.Line == 0 {
			return math.MaxInt // whole-file problems (a missing section) last
		}
		return p.Line
	}
	sort.SliceStable(out, func(i, j int) bool { return key(out[i]) < key(out[j]) })
	return out
}

// parse decodes data over the defaults. It returns nil only when the YAML
// itself cannot be read.
func parse(data []byte) (*Config, Problems) {
	var doc yaml.Node
	dec := yaml.NewDecoder(bytes.NewReader(data))
	if err := dec.Decode(&doc); err != nil {
		if errors.Is(err, io.EOF) {
			return nil, Problems{{Msg: "the file is empty"}}
		}
		return nil, Problems{{Msg: strings.TrimPrefix(err.Error(), "yaml: ")}}
	}
	var extra yaml.Node
	if err := dec.Decode(&extra); err == nil {
		return nil, Problems{{Line: extra.Line, Msg: "more than one YAML document in the file"}}
	}
	root := &doc
	if root.Kind == yaml.DocumentNode && len(root.Content) == 1 {
		root = root.Content[0]
	}
	c := Defaults()
	c.lines = map[string]int{}
	w := &walker{lines: c.lines}
	if root.Kind == yaml.ScalarNode && root.Tag == "!!null" {
		return nil, Problems{{Line: root.Line, Msg: "the file holds no settings"}}
	}
	w.walk(root, reflect.TypeOf(c).Elem(), "")
	if err := root.Decode(c); err != nil {
		var te *yaml.TypeError
		if !errors.As(err, &te) {
			return nil, append(w.problems, Problem{Msg: err.Error()})
		}
		for _, s := range te.Errors {
			w.problems = append(w.problems, c.typeProblem(s))
		}
	}
	c.backendOrder = w.backendOrder
	c.applyDefaults()
	return c, w.problems
}

var lineRE = regexp.MustCompile(`^line (\d+): (.*)$`)

// typeProblem turns a yaml.v3 type error ("line 7: cannot unmarshal …")
// into a Problem with the key path of that line.
func (c *Config) typeProblem(s string) Problem {
	m := lineRE.FindStringSubmatch(s)
	if m == nil {
		return Problem{Msg: s}
	}
	line, _ := strconv.Atoi(m[1])
	msg := m[2]
	if i := strings.Index(msg, " into "); i > 0 && strings.HasPrefix(msg, "cannot unmarshal ") {
		// "cannot unmarshal !!str `abc` into int" -> "want a whole number, got "abc""
		val := msg[len("cannot unmarshal "):i]
		if j := strings.IndexByte(val, ' '); j >= 0 {
			val = strings.Trim(val[j+1:], "`")
		}
		switch into := msg[i+len(" into "):]; into {
		case "int":
			msg = fmt.Sprintf("want a whole number, got %q", val)
		case "bool":
			msg = fmt.Sprintf("want true or false, got %q", val)
		case "string":
			msg = fmt.Sprintf("want a single value, got %q", val)
		}
	}
	path := ""
	for p, l := range c.lines {
		// the deepest key on that line
		if l == line && len(p) > len(path) {
			path = p
		}
	}
	return Problem{Path: path, Line: line, Msg: msg}
}

// walker checks the YAML tree against the Config type before decoding:
// unknown keys, mappings/lists where a value is expected (and the reverse),
// durations, and ${NAME} expansion in scalar values. It records the line of
// every key path.
type walker struct {
	lines        map[string]int
	problems     Problems
	backendOrder []string
}

var durationType = reflect.TypeOf(time.Duration(0))

func (w *walker) add(path string, line int, format string, args ...any) {
	w.problems = append(w.problems, Problem{Path: path, Line: line, Msg: fmt.Sprintf(format, args...)})
}

func join(path, key string) string {
	if path == "" {
		return key
	}
	return path + "." + key
}

func (w *walker) walk(n *yaml.Node, t reflect.Type, path string) {
	for n.Kind == yaml.AliasNode && n.Alias != nil {
		n = n.Alias
	}
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	if n.Kind == yaml.ScalarNode && n.Tag == "!!null" {
		return // an empty value: the default stays
	}
	switch t.Kind() {
	case reflect.Struct:
		if n.Kind != yaml.MappingNode {
			w.add(path, n.Line, "want a mapping of keys (%s), got %s", strings.Join(fieldNames(t), ", "), describe(n))
			blank(n)
			return
		}
		for i := 0; i+1 < len(n.Content); i += 2 {
			k, v := n.Content[i], n.Content[i+1]
			if k.Tag == "!!merge" {
				w.walk(v, t, path)
				continue
			}
			f, ok := fieldByKey(t, k.Value)
			if !ok {
				// RFC-free, but what users need: the key, its line, what is allowed.
				w.add(path, k.Line, "unknown key %q (known keys: %s)", k.Value, strings.Join(fieldNames(t), ", "))
				continue
			}
			p := join(path, k.Value)
			w.lines[p] = k.Line
			w.walk(v, f.Type, p)
		}
	case reflect.Map:
		if n.Kind != yaml.MappingNode {
			w.add(path, n.Line, "want a mapping of names, got %s", describe(n))
			blank(n)
			return
		}
		for i := 0; i+1 < len(n.Content); i += 2 {
			k, v := n.Content[i], n.Content[i+1]
			p := join(path, k.Value)
			w.lines[p] = k.Line
			if path == "backends" {
				w.backendOrder = append(w.backendOrder, k.Value)
			}
			w.walk(v, t.Elem(), p)
		}
	case reflect.Slice:
		if n.Kind != yaml.SequenceNode {
			w.add(path, n.Line, "want a list, got %s", describe(n))
			blank(n)
			return
		}
		for i, item := range n.Content {
			p := fmt.Sprintf("%s[%d]", path, i)
			w.lines[p] = item.Line
			w.walk(item, t.Elem(), p)
		}
	default:
		if n.Kind != yaml.ScalarNode {
			w.add(path, n.Line, "want a single value, got %s", describe(n))
			blank(n)
			return
		}
		w.expand(n, path)
		if t == durationType {
			if _, err := parseDuration(n.Value); err != nil {
				w.add(path, n.Line, "%v", err)
				blank(n)
			} else {
				n.Tag, n.Style = "!!str", 0
			}
		}
	}
}

// blank replaces a node that was reported so that decoding skips it.
func blank(n *yaml.Node) {
	*n = yaml.Node{Kind: yaml.ScalarNode, Tag: "!!null", Line: n.Line, Column: n.Column}
}

func describe(n *yaml.Node) string {
	switch n.Kind {
	case yaml.MappingNode:
		return "a mapping"
	case yaml.SequenceNode:
		return "a list"
	case yaml.ScalarNode:
		return fmt.Sprintf("%q", n.Value)
	}
	return "something else"
}

func fieldByKey(t reflect.Type, key string) (reflect.StructField, bool) {
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		if name, _, _ := strings.Cut(f.Tag.Get("yaml"), ","); name == key && f.IsExported() {
			return f, true
		}
	}
	return reflect.StructField{}, false
}

func fieldNames(t reflect.Type) []string {
	var names []string
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		if name, _, _ := strings.Cut(f.Tag.Get("yaml"), ","); name != "" && name != "-" && f.IsExported() {
			names = append(names, name)
		}
	}
	return names
}

// parseDuration accepts Go durations with a unit (30s, 10m, 1h30m); a bare
// number is refused because its unit would be a guess.
func parseDuration(s string) (time.Duration, error) {
	d, err := time.ParseDuration(s)
	if err != nil {
		if _, nerr := strconv.ParseFloat(s, 64); nerr == nil {
			return 0, fmt.Errorf("duration %q needs a unit (for example %ss or %sm)", s, s, s)
		}
		return 0, fmt.Errorf("invalid duration %q (use for example 30s, 10m, 1h)", s)
	}
	if d < 0 {
		return 0, fmt.Errorf("duration %q must not be negative", s)
	}
	return d, nil
}

var envName = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)

// expand replaces ${NAME} in a scalar value by the environment variable NAME
// ("$${" stands for a literal "${"). An unset variable is a problem. It runs
// on the parsed tree, so line numbers stay those of the file.
func (w *walker) expand(n *yaml.Node, path string) {
	s := n.Value
	if !strings.Contains(s, "${") {
		return
	}
	var b strings.Builder
	for {
		i := strings.Index(s, "${")
		if i < 0 {
			b.WriteString(s)
			break
		}
		if i > 0 && s[i-1] == '$' { // "$${" -> literal "${"
			b.WriteString(s[:i-1])
			b.WriteString("${")
			s = s[i+2:]
			continue
		}
		b.WriteString(s[:i])
		end := strings.IndexByte(s[i:], '}')
		if end < 0 {
			w.add(path, n.Line, "unterminated ${ in value")
			return
		}
		name := s[i+2 : i+end]
		if !envName.MatchString(name) {
			w.add(path, n.Line, "invalid environment variable name %q in ${…}", name)
			return
		}
		v, ok := os.LookupEnv(name)
		if !ok {
			w.add(path, n.Line, "environment variable %s is not set", name)
			return
		}
		b.WriteString(v)
		s = s[i+end+1:]
	}
	n.Value = b.String()
	if n.Style&(yaml.DoubleQuotedStyle|yaml.SingleQuotedStyle|yaml.LiteralStyle|yaml.FoldedStyle) == 0 && n.Style&yaml.TaggedStyle == 0 {
		n.Tag = "" // a plain scalar: resolve the expanded text (a number, a bool) again
	}
}

// Line returns the line of a key path in the file, or 0.
func (c *Config) Line(path string) int { return c.lines[path] }
