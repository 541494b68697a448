package fleet

import (
	"go/ast"
	"go/parser"
	"go/token"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// protocolDoc returns docs/PROTOCOL.md, the device authors' copy of the state
// machine and the reason codes.
func protocolDoc(t *testing.T) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("..", "..", "docs", "PROTOCOL.md"))
	require.NoError(t, err)
	return string(b)
}

// tableRows returns the cells of the markdown table rows that start with a
// back-quoted name, keyed by that name, from the section of doc that begins
// with heading.
func tableRows(t *testing.T, doc, heading, header string) map[string][]string {
	t.Helper()
	_, section, ok := strings.Cut(doc, heading)
	require.True(t, ok, "heading %q", heading)
	_, table, ok := strings.Cut(section, header)
	require.True(t, ok, "table %q", header)
	rows := map[string][]string{}
	for _, line := range strings.Split(table, "\n")[2:] { // skip the header's end and the rule
		if !strings.HasPrefix(line, "|") {
			break
		}
		cells := strings.Split(strings.Trim(line, "|"), "|")
		for i := range cells {
			cells[i] = strings.TrimSpace(cells[i])
		}
		rows[strings.Trim(cells[0], "`")] = cells[1:]
	}
	return rows
}

func TestProtocolDoc_TransitionTable(t *testing.T) {
	rows := tableRows(t, protocolDoc(t), "### 9.2", "| From | May go to |")
	require.Len(t, rows, len(AllDeviceStates))
	quoted := regexp.MustCompile("`([a-z_]+)`")
	for _, from := range AllDeviceStates {
		row, ok := rows[string(from)]
		if !assert.True(t, ok, "no row for %s", from) {
			continue
		}
		documented := map[DeviceState]bool{}
		for _, m := range quoted.FindAllStringSubmatch(row[0], -1) {
			documented[DeviceState(m[1])] = true
		}
		for _, to := range AllDeviceStates {
			assert.Equal(t, CanTransition(from, to), documented[to], "docs: %s -> %s", from, to)
		}
	}
}

func TestProtocolDoc_TransitionMatrix(t *testing.T) {
	doc := protocolDoc(t)
	_, section, ok := strings.Cut(doc, "The same as a matrix")
	require.True(t, ok)
	lines := strings.Split(section, "\n")
	var matrix []string
	for i, l := range lines {
		if strings.HasPrefix(l, "```") {
			for _, row := range lines[i+2:] { // skip the column header
				if strings.HasPrefix(row, "```") {
					break
				}
				matrix = append(matrix, row)
			}
			break
		}
	}
	require.Len(t, matrix, len(AllDeviceStates))
	// Rows and columns follow the order of the table header.
	order := []DeviceState{qu, sk, of, ac, rj, dl, dd, ve, in, rb, su, fa, ca, ol}
	for i, line := range matrix {
		fields := strings.Fields(line)
		require.Len(t, fields, 1+len(order), line)
		from := DeviceState(fields[0])
		assert.Equal(t, order[i], from)
		for j, to := range order {
			assert.Equal(t, CanTransition(from, to), fields[1+j] == "x", "matrix: %s -> %s", from, to)
		}
	}
}

// reasonConsts reads state.go and returns every Reason constant's value and
// whether its comment marks it "(device)".
func reasonConsts(t *testing.T) map[Reason]bool {
	t.Helper()
	fset := token.NewFileSet()
	f, err := parser.ParseFile(fset, "state.go", nil, parser.ParseComments)
	require.NoError(t, err)
	reasons := map[Reason]bool{}
	for _, decl := range f.Decls {
		gd, ok := decl.(*ast.GenDecl)
		if !ok || gd.Tok != token.CONST {
			continue
		}
		for _, spec := range gd.Specs {
			vs := spec.(*ast.ValueSpec)
			if id, ok := vs.Type.(*ast.Ident); !ok || id.Name != "Reason" || len(vs.Values) != 1 {
				continue
			}
			lit, ok := vs.Values[0].(*ast.BasicLit)
			require.True(t, ok)
			value := strings.Trim(lit.Value, `"`)
			if value == "" {
				continue // ReasonNone
			}
			reasons[Reason(value)] = strings.Contains(vs.Comment.Text(), "(device)")
		}
	}
	require.NotEmpty(t, reasons)
	return reasons
}

func TestProtocolDoc_ReasonTable(t *testing.T) {
	rows := tableRows(t, protocolDoc(t), "## 12. Reason codes", "| Code | Sent by |")
	consts := reasonConsts(t)
	assert.Len(t, rows, len(consts), "one row per reason code")
	for r, byDevice := range consts {
		row, ok := rows[string(r)]
		if !assert.True(t, ok, "reason %s missing from docs/PROTOCOL.md", r) {
			continue
		}
		assert.Equal(t, byDevice, strings.HasPrefix(row[0], "device"), "who sends %s", r)
	}
}

func TestProtocolDoc_RetryTable(t *testing.T) {
	rows := tableRows(t, protocolDoc(t), "### 12.1 Retries", "| Reason | Retried |")
	assert.Len(t, rows, len(Retries), "one row per entry of fleet.Retries")
	for r, rule := range Retries {
		row, ok := rows[string(r)]
		if !assert.True(t, ok, "reason %s missing from the retry table", r) {
			continue
		}
		assert.Equal(t, string(rule), row[0], "retry of %s", r)
	}
}
