// Package strictyaml decodes YAML nodes into Go values strictly, for
// popgate's configuration file: an unknown key is a problem naming the key,
// its line and the keys allowed there; a mapping where a value is expected
// (and the reverse) is a problem; durations need a unit; ${NAME} in a scalar
// value takes the environment variable NAME. Every problem carries the full
// key path (backends.corp.delete.folder) and its line.
//
// The configuration core (internal/config) and every backend type (through
// the backends registry) decode their parts with the same Decoder, so the
// rules above hold the same everywhere.
package strictyaml

import (
	"errors"
	"fmt"
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

// Problems is every problem found in a file.
type Problems []Problem

func (ps Problems) Error() string {
	s := make([]string, len(ps))
	for i, p := range ps {
		s[i] = p.Error()
	}
	return strings.Join(s, "; ")
}

// Sort orders problems by line; problems without a line (a missing
// section) come last. Problems on one line keep their order.
func (ps Problems) Sort() {
	key := func(p Problem) int {
		if p.Line == 0 {
			return math.MaxInt
		}
		return p.Line
	}
	sort.SliceStable(ps, func(i, j int) bool { return key(ps[i]) < key(ps[j]) })
}

// Raw is implemented by a struct type that takes its YAML node as it is
// (a backend section, decoded later by its type). The Decoder only checks
// that the node is a mapping and records the lines of its keys.
type Raw interface {
	RawYAML()
}

// Decoder decodes nodes of one file and collects their problems and the
// line of every key path. The zero value is not usable; call NewDecoder.
type Decoder struct {
	lines    map[string]int
	problems Problems
}

// NewDecoder returns an empty Decoder.
func NewDecoder() *Decoder { return &Decoder{lines: map[string]int{}} }

// Problems returns the problems found so far, in the order found.
func (d *Decoder) Problems() Problems { return d.problems }

// Add records a problem at path; its line is the line of path or of its
// nearest parent key.
func (d *Decoder) Add(path, format string, args ...any) {
	d.problems = append(d.problems, Problem{Path: path, Line: d.LineOf(path), Msg: fmt.Sprintf(format, args...)})
}

// addAt records a problem at an explicit line.
func (d *Decoder) addAt(path string, line int, format string, args ...any) {
	d.problems = append(d.problems, Problem{Path: path, Line: line, Msg: fmt.Sprintf(format, args...)})
}

// Has reports whether the key path was written in the file.
func (d *Decoder) Has(path string) bool {
	_, ok := d.lines[path]
	return ok
}

// Line returns the line of a key path in the file, or 0.
func (d *Decoder) Line(path string) int { return d.lines[path] }

// LineOf returns the line of path or of its nearest parent in the file.
func (d *Decoder) LineOf(path string) int {
	for p := path; p != ""; {
		if l, ok := d.lines[p]; ok {
			return l
		}
		i := strings.LastIndexAny(p, ".[")
		if i < 0 {
			break
		}
		p = p[:i]
	}
	return 0
}

// Join returns the key path of key below path.
func Join(path, key string) string {
	if path == "" {
		return key
	}
	if key == "" {
		return path
	}
	return path + "." + key
}

// Decode checks n against the type of v (a pointer) and decodes it over
// the values v already holds (its defaults stay where the file is silent).
// path is n's key path in the file ("" for the root). The keys in skip are
// allowed in the mapping n, listed first among the known keys, and left
// alone (the caller reads them). Problems go to d.
func (d *Decoder) Decode(n *yaml.Node, v any, path string, skip ...string) {
	rv := reflect.ValueOf(v)
	if rv.Kind() != reflect.Pointer || rv.IsNil() {
		panic("strictyaml: Decode needs a non-nil pointer")
	}
	n = d.prepare(n, path, skip)
	if n == nil {
		return
	}
	d.walk(n, rv.Type().Elem(), path, skip)
	if err := n.Decode(v); err != nil {
		var te *yaml.TypeError
		if !errors.As(err, &te) {
			d.addAt(path, n.Line, "%v", err)
			return
		}
		for _, s := range te.Errors {
			d.problems = append(d.problems, d.typeProblem(s))
		}
	}
}

// prepare resolves aliases and, with skip keys, returns a copy of the
// mapping without them (so that decoding into v does not meet them).
func (d *Decoder) prepare(n *yaml.Node, path string, skip []string) *yaml.Node {
	for n.Kind == yaml.AliasNode && n.Alias != nil {
		n = n.Alias
	}
	if len(skip) == 0 || n.Kind != yaml.MappingNode {
		return n
	}
	c := *n
	c.Content = nil
	for i := 0; i+1 < len(n.Content); i += 2 {
		k := n.Content[i]
		if contains(skip, k.Value) {
			d.lines[Join(path, k.Value)] = k.Line
			continue
		}
		c.Content = append(c.Content, k, n.Content[i+1])
	}
	return &c
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

var lineRE = regexp.MustCompile(`^line (\d+): (.*)$`)

// typeProblem turns a yaml.v3 type error ("line 7: cannot unmarshal …")
// into a Problem with the key path of that line.
func (d *Decoder) typeProblem(s string) Problem {
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
	for p, l := range d.lines {
		// the deepest key on that line
		if l == line && (len(p) > len(path) || len(p) == len(path) && p < path) {
			path = p
		}
	}
	return Problem{Path: path, Line: line, Msg: msg}
}

var (
	durationType = reflect.TypeOf(time.Duration(0))
	rawType      = reflect.TypeOf((*Raw)(nil)).Elem()
)

// walk checks the YAML tree against type t before decoding: unknown keys,
// mappings/lists where a value is expected (and the reverse), durations,
// and ${NAME} expansion in scalar values. It records the line of every key
// path.
func (d *Decoder) walk(n *yaml.Node, t reflect.Type, path string, skip []string) {
	for n.Kind == yaml.AliasNode && n.Alias != nil {
		n = n.Alias
	}
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	if n.Kind == yaml.ScalarNode && n.Tag == "!!null" {
		return // an empty value: the default stays
	}
	switch {
	case reflect.PointerTo(t).Implements(rawType):
		if n.Kind != yaml.MappingNode {
			d.addAt(path, n.Line, "want a mapping of keys, got %s", describe(n))
			blank(n)
			return
		}
		for i := 0; i+1 < len(n.Content); i += 2 {
			d.lines[Join(path, n.Content[i].Value)] = n.Content[i].Line
		}
	case t.Kind() == reflect.Struct:
		if n.Kind != yaml.MappingNode {
			d.addAt(path, n.Line, "want a mapping of keys (%s), got %s", strings.Join(append(skip, FieldNames(t)...), ", "), describe(n))
			blank(n)
			return
		}
		for i := 0; i+1 < len(n.Content); i += 2 {
			k, v := n.Content[i], n.Content[i+1]
			if k.Tag == "!!merge" {
				d.walk(v, t, path, skip)
				continue
			}
			f, ok := fieldByKey(t, k.Value)
			if !ok {
				// what users need: the key, its line, what is allowed there.
				d.addAt(path, k.Line, "unknown key %q (known keys: %s)", k.Value, strings.Join(append(skip, FieldNames(t)...), ", "))
				continue
			}
			p := Join(path, k.Value)
			d.lines[p] = k.Line
			d.walk(v, f.Type, p, nil)
		}
	case t.Kind() == reflect.Map:
		if n.Kind != yaml.MappingNode {
			d.addAt(path, n.Line, "want a mapping of names, got %s", describe(n))
			blank(n)
			return
		}
		for i := 0; i+1 < len(n.Content); i += 2 {
			k, v := n.Content[i], n.Content[i+1]
			p := Join(path, k.Value)
			d.lines[p] = k.Line
			d.walk(v, t.Elem(), p, nil)
		}
	case t.Kind() == reflect.Slice:
		if n.Kind != yaml.SequenceNode {
			d.addAt(path, n.Line, "want a list, got %s", describe(n))
			blank(n)
			return
		}
		for i, item := range n.Content {
			p := fmt.Sprintf("%s[%d]", path, i)
			d.lines[p] = item.Line
			d.walk(item, t.Elem(), p, nil)
		}
	default:
		if n.Kind != yaml.ScalarNode {
			d.addAt(path, n.Line, "want a single value, got %s", describe(n))
			blank(n)
			return
		}
		d.expand(n, path)
		if t == durationType {
			if _, err := parseDuration(n.Value); err != nil {
				d.addAt(path, n.Line, "%v", err)
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

// yamlName returns the key of a struct field and whether it is inlined.
func yamlName(f reflect.StructField) (name string, inline bool) {
	name, opts, _ := strings.Cut(f.Tag.Get("yaml"), ",")
	return name, strings.Contains(","+opts+",", ",inline,")
}

// eachField calls f with every key of struct type t and its field, in
// declaration order, those of inlined structs in place; f returns false to
// stop. It returns false when stopped.
func eachField(t reflect.Type, f func(key string, sf reflect.StructField) bool) bool {
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	for i := 0; i < t.NumField(); i++ {
		sf := t.Field(i)
		if !sf.IsExported() {
			continue
		}
		name, inline := yamlName(sf)
		if inline && sf.Type.Kind() == reflect.Struct {
			if !eachField(sf.Type, f) {
				return false
			}
			continue
		}
		if name != "" && name != "-" && !f(name, sf) {
			return false
		}
	}
	return true
}

func fieldByKey(t reflect.Type, key string) (found reflect.StructField, ok bool) {
	eachField(t, func(name string, sf reflect.StructField) bool {
		if name == key {
			found, ok = sf, true
		}
		return !ok
	})
	return found, ok
}

// FieldNames returns the keys of struct type t in declaration order, those
// of inlined structs in place.
func FieldNames(t reflect.Type) []string {
	var names []string
	eachField(t, func(name string, _ reflect.StructField) bool {
		names = append(names, name)
		return true
	})
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
func (d *Decoder) expand(n *yaml.Node, path string) {
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
			d.addAt(path, n.Line, "unterminated ${ in value")
			return
		}
		name := s[i+2 : i+end]
		if !envName.MatchString(name) {
			d.addAt(path, n.Line, "invalid environment variable name %q in ${…}", name)
			return
		}
		v, ok := os.LookupEnv(name)
		if !ok {
			d.addAt(path, n.Line, "environment variable %s is not set", name)
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
