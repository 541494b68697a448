package main

import (
	"encoding/json"
	"fmt"
	"math"
	"regexp"
	"slices"
	"sort"
	"strings"
	"time"
)

// schemaDoc checks JSON values against the schemas of an OpenAPI 3
// document. It knows the subset of JSON Schema openapi.json uses: $ref,
// allOf, type, enum, properties, required, additionalProperties, items,
// format date-time, minimum, maximum, maxLength, pattern, maxItems and
// maxProperties.
//
// It is stricter than JSON Schema in two ways, both conventions of the API:
// an object's properties must be declared (unless the schema declares
// additionalProperties, or is a bare "type": "object"), so that a field a
// response carries cannot go undocumented; and a date-time must be RFC 3339
// in UTC.
type schemaDoc struct {
	root map[string]any
}

func newSchemaDoc(raw []byte) (*schemaDoc, error) {
	var root map[string]any
	if err := json.Unmarshal(raw, &root); err != nil {
		return nil, err
	}
	return &schemaDoc{root: root}, nil
}

// resolve follows a local "#/a/b" reference.
func (d *schemaDoc) resolve(ref string) (map[string]any, error) {
	path, ok := strings.CutPrefix(ref, "#/")
	if !ok {
		return nil, fmt.Errorf("reference %q: only local references are known", ref)
	}
	var cur any = d.root
	for _, part := range strings.Split(path, "/") {
		m, ok := cur.(map[string]any)
		if !ok {
			return nil, fmt.Errorf("reference %q: %q is not an object", ref, part)
		}
		if cur, ok = m[part]; !ok {
			return nil, fmt.Errorf("reference %q: no %q", ref, part)
		}
	}
	m, ok := cur.(map[string]any)
	if !ok {
		return nil, fmt.Errorf("reference %q is not an object", ref)
	}
	return m, nil
}

// deref follows $ref until a schema without one.
func (d *schemaDoc) deref(s map[string]any) (map[string]any, error) {
	for range 32 {
		ref, ok := s["$ref"].(string)
		if !ok {
			return s, nil
		}
		var err error
		if s, err = d.resolve(ref); err != nil {
			return nil, err
		}
	}
	return nil, fmt.Errorf("reference loop")
}

// validate returns every way v breaks schema, each prefixed by where.
func (d *schemaDoc) validate(where string, schema map[string]any, v any) []string {
	s, err := d.deref(schema)
	if err != nil {
		return []string{where + ": " + err.Error()}
	}
	var errs []string
	fail := func(format string, args ...any) { errs = append(errs, where+": "+fmt.Sprintf(format, args...)) }
	for _, sub := range asList(s["allOf"]) {
		if m, ok := sub.(map[string]any); ok {
			errs = append(errs, d.validateLoose(where, m, v)...)
		}
	}
	if enum, ok := s["enum"].([]any); ok && !slices.ContainsFunc(enum, func(e any) bool { return jsonEqual(e, v) }) {
		fail("%v is not one of %v", v, enum)
	}
	typ, _ := s["type"].(string)
	if typ == "" && s["allOf"] != nil {
		typ = "object"
	}
	switch typ {
	case "":
	case "string":
		str, ok := v.(string)
		if !ok {
			fail("want a string, got %s", jsonKind(v))
			break
		}
		if n, ok := s["maxLength"].(float64); ok && float64(len([]rune(str))) > n {
			fail("%d characters, at most %v", len([]rune(str)), n)
		}
		if p, ok := s["pattern"].(string); ok && !regexp.MustCompile(p).MatchString(str) {
			fail("%q does not match %s", str, p)
		}
		if s["format"] == "date-time" {
			if t, err := time.Parse(time.RFC3339Nano, str); err != nil {
				fail("%q is not an RFC 3339 date-time", str)
			} else if _, off := t.Zone(); off != 0 || !strings.HasSuffix(str, "Z") {
				fail("%q is not in UTC (Z)", str)
			}
		}
	case "integer", "number":
		n, ok := v.(float64)
		if !ok {
			fail("want a %s, got %s", typ, jsonKind(v))
			break
		}
		if typ == "integer" && n != math.Trunc(n) {
			fail("%v is not an integer", n)
		}
		if lo, ok := s["minimum"].(float64); ok && n < lo {
			fail("%v is below the minimum %v", n, lo)
		}
		if hi, ok := s["maximum"].(float64); ok && n > hi {
			fail("%v is above the maximum %v", n, hi)
		}
	case "boolean":
		if _, ok := v.(bool); !ok {
			fail("want a boolean, got %s", jsonKind(v))
		}
	case "array":
		arr, ok := v.([]any)
		if !ok {
			fail("want an array, got %s", jsonKind(v))
			break
		}
		if n, ok := s["maxItems"].(float64); ok && float64(len(arr)) > n {
			fail("%d items, at most %v", len(arr), n)
		}
		if items, ok := s["items"].(map[string]any); ok {
			for i, e := range arr {
				errs = append(errs, d.validate(fmt.Sprintf("%s[%d]", where, i), items, e)...)
			}
		}
	case "object":
		obj, ok := v.(map[string]any)
		if !ok {
			fail("want an object, got %s", jsonKind(v))
			break
		}
		errs = append(errs, d.validateObject(where, s, obj)...)
	default:
		fail("schema type %q is not known to this checker", typ)
	}
	return errs
}

// validateLoose checks v against one member of an allOf: its undeclared
// properties are the business of the whole allOf.
func (d *schemaDoc) validateLoose(where string, schema map[string]any, v any) []string {
	s, err := d.deref(schema)
	if err != nil {
		return []string{where + ": " + err.Error()}
	}
	loose := map[string]any{"additionalProperties": true}
	for k, x := range s {
		if k != "additionalProperties" {
			loose[k] = x
		}
	}
	return d.validate(where, loose, v)
}

// validateObject checks required, declared and additional properties.
func (d *schemaDoc) validateObject(where string, s map[string]any, obj map[string]any) []string {
	var errs []string
	props, extra, free := d.declared(s)
	for _, r := range d.required(s) {
		if _, ok := obj[r]; !ok {
			errs = append(errs, fmt.Sprintf("%s: required property %q missing", where, r))
		}
	}
	if n, ok := s["maxProperties"].(float64); ok && float64(len(obj)) > n {
		errs = append(errs, fmt.Sprintf("%s: %d properties, at most %v", where, len(obj), n))
	}
	keys := make([]string, 0, len(obj))
	for k := range obj {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		sub := where + "." + k
		if p, ok := props[k]; ok {
			if _, inAllOf := s["allOf"]; !inAllOf || s["properties"] != nil {
				errs = append(errs, d.validate(sub, p, obj[k])...)
			}
			continue
		}
		switch {
		case extra != nil:
			errs = append(errs, d.validate(sub, extra, obj[k])...)
		case free:
		default:
			errs = append(errs, fmt.Sprintf("%s: property not declared in the schema", sub))
		}
	}
	return errs
}

// declared returns the properties of s and its allOf members, the schema of
// additional properties if any, and whether undeclared properties are free.
func (d *schemaDoc) declared(s map[string]any) (props map[string]map[string]any, extra map[string]any, free bool) {
	props = map[string]map[string]any{}
	var walk func(s map[string]any)
	walk = func(s map[string]any) {
		s, err := d.deref(s)
		if err != nil {
			return
		}
		for k, p := range asMap(s["properties"]) {
			if m, ok := p.(map[string]any); ok {
				props[k] = m
			}
		}
		switch ap := s["additionalProperties"].(type) {
		case bool:
			free = free || ap
		case map[string]any:
			extra = ap
		}
		for _, sub := range asList(s["allOf"]) {
			if m, ok := sub.(map[string]any); ok {
				walk(m)
			}
		}
	}
	walk(s)
	if len(props) == 0 && extra == nil && s["allOf"] == nil && s["additionalProperties"] == nil {
		free = true // a bare "type": "object"
	}
	return props, extra, free
}

func (d *schemaDoc) required(s map[string]any) []string {
	var out []string
	for _, r := range asList(s["required"]) {
		if name, ok := r.(string); ok {
			out = append(out, name)
		}
	}
	return out
}

// operation returns the operation of method and path (an OpenAPI path
// template such as /api/v1/updates/{id}).
func (d *schemaDoc) operation(method, path string) (map[string]any, bool) {
	op, ok := asMap(asMap(d.root["paths"])[path])[strings.ToLower(method)].(map[string]any)
	return op, ok
}

// operations returns "METHOD path" of every operation of the document.
func (d *schemaDoc) operations() []string {
	var out []string
	for p, item := range asMap(d.root["paths"]) {
		for m := range asMap(item) {
			switch m {
			case "get", "post", "put", "patch", "delete":
				out = append(out, strings.ToUpper(m)+" "+p)
			}
		}
	}
	sort.Strings(out)
	return out
}

// responseSchema returns the schema the operation declares for status and
// media type: ok false if the status or the media type is not declared.
func (d *schemaDoc) responseSchema(op map[string]any, status int, mediaType string) (map[string]any, error) {
	resps := asMap(op["responses"])
	r, ok := resps[fmt.Sprint(status)].(map[string]any)
	if !ok {
		if r, ok = resps["default"].(map[string]any); !ok {
			return nil, fmt.Errorf("status %d is not declared", status)
		}
	}
	r, err := d.deref(r)
	if err != nil {
		return nil, err
	}
	content := asMap(r["content"])
	media, ok := content[mediaType].(map[string]any)
	if !ok {
		return nil, fmt.Errorf("status %d: media type %q is not declared (declared: %v)", status, mediaType, keysOf(content))
	}
	schema, _ := media["schema"].(map[string]any)
	return schema, nil
}

// requestSchema returns the JSON schema of the operation's request body.
func (d *schemaDoc) requestSchema(op map[string]any) map[string]any {
	body, err := d.deref(asMap(op["requestBody"]))
	if err != nil {
		return nil
	}
	s, _ := asMap(asMap(body["content"])["application/json"])["schema"].(map[string]any)
	return s
}

func asMap(v any) map[string]any {
	m, _ := v.(map[string]any)
	return m
}

func asList(v any) []any {
	l, _ := v.([]any)
	return l
}

func keysOf(m map[string]any) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

func jsonEqual(a, b any) bool {
	x, err1 := json.Marshal(a)
	y, err2 := json.Marshal(b)
	return err1 == nil && err2 == nil && string(x) == string(y)
}

func jsonKind(v any) string {
	switch v.(type) {
	case nil:
		return "null"
	case string:
		return "a string"
	case float64:
		return "a number"
	case bool:
		return "a boolean"
	case []any:
		return "an array"
	case map[string]any:
		return "an object"
	}
	return fmt.Sprintf("%T", v)
}
