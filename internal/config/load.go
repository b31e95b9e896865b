package config

import (
	"bytes"
	"errors"
	"io"
	"os"
	"strings"

	"gopkg.in/yaml.v3"

	"github.com/popgate/popgate/internal/strictyaml"
)

// Problem is one thing wrong with a configuration file.
type Problem = strictyaml.Problem

// Problems is every problem found in a file, in the order of the file where
// lines are known. It is the error type of Parse, Load and Validate.
type Problems = strictyaml.Problems

// BackendTypes decodes, defaults and checks a backend section by its type.
// The backends registry implements it; the configuration core knows no
// backend's keys.
type BackendTypes interface {
	// DecodeBackend decodes the section n of the backend at path (such as
	// "backends.corp") whose type key says typ, with d (so that every
	// problem names its full key path and line). It returns the decoded
	// settings, or nil when the section has problems.
	DecodeBackend(d *strictyaml.Decoder, path, typ string, n *yaml.Node) any
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

// Load reads, parses and validates the file at path; types decodes the
// backend sections. On error it returns a *FileError; the returned *Config
// is nil then.
func Load(path string, types BackendTypes) (*Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		var pe *os.PathError
		if errors.As(err, &pe) {
			err = pe.Err // the path is already in FileError
		}
		return nil, &FileError{Path: path, Err: err}
	}
	c, err := Parse(data, types)
	if err != nil {
		return nil, &FileError{Path: path, Err: err}
	}
	c.Path = path
	return c, nil
}

// Parse parses and validates a configuration; types decodes the backend
// sections (nil: they are kept undecoded, Settings stays nil). Its error is
// a Problems holding every problem found.
func Parse(data []byte, types BackendTypes) (*Config, error) {
	c, ps := parse(data)
	if c != nil {
		ps = merge(ps, c.validate())
		if types != nil {
			before := len(c.dec.Problems())
			for _, name := range c.BackendNames() {
				if b := c.Backends[name]; b != nil && b.Node != nil {
					b.Settings = types.DecodeBackend(c.dec, "backends."+name, b.Type, b.Node)
				}
			}
			ps = append(ps, c.dec.Problems()[before:]...)
			ps.Sort()
		}
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
	out.Sort()
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
	if root.Kind == yaml.ScalarNode && root.Tag == "!!null" {
		return nil, Problems{{Line: root.Line, Msg: "the file holds no settings"}}
	}
	c := Defaults()
	c.dec = strictyaml.NewDecoder()
	c.dec.Decode(root, c, "")
	c.backendOrder = backendOrder(root)
	c.applyClusterDefaults()
	return c, c.dec.Problems()
}

// backendOrder returns the backend names in the order of the file.
func backendOrder(root *yaml.Node) []string {
	if root.Kind != yaml.MappingNode {
		return nil
	}
	var names []string
	for i := 0; i+1 < len(root.Content); i += 2 {
		if root.Content[i].Value != "backends" || root.Content[i+1].Kind != yaml.MappingNode {
			continue
		}
		m := root.Content[i+1]
		for j := 0; j+1 < len(m.Content); j += 2 {
			names = append(names, m.Content[j].Value)
		}
	}
	return names
}

// Line returns the line of a key path in the file, or 0.
func (c *Config) Line(path string) int {
	if c.dec == nil {
		return 0
	}
	return c.dec.Line(path)
}

// lineOf returns the line of path or of its nearest parent in the file.
func (c *Config) lineOf(path string) int {
	if c.dec == nil {
		return 0
	}
	return c.dec.LineOf(path)
}
