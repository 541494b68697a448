package httpapi

import (
	"os"
	"path/filepath"
	"regexp"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestDashboard_WritesStringsAsTextNeverAsHTML guards the dashboard against
// markup in what devices and operators name things (models, versions,
// tags, reasons): it builds the page with textContent and DOM nodes, and
// never parses a string as HTML.
func TestDashboard_WritesStringsAsTextNeverAsHTML(t *testing.T) {
	files, err := filepath.Glob(filepath.Join("ui", "*.js"))
	require.NoError(t, err)
	require.NotEmpty(t, files)
	sinks := regexp.MustCompile(`\.(innerHTML|outerHTML|insertAdjacentHTML)\b|document\.write|\beval\(|new Function\(|createContextualFragment|DOMParser`)
	for _, f := range files {
		src, err := os.ReadFile(f)
		require.NoError(t, err)
		assert.Empty(t, sinks.FindAllString(string(src), -1), "%s parses strings as HTML or code", f)
	}
}
