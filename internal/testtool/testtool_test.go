package testtool

import (
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// toolCall matches a program named in Go code where it is looked up or
// run: Path(t, "x"), requireTool(t, "x"), exec.LookPath("x"),
// exec.Command("x", ...).
var toolCall = regexp.MustCompile(`(?:\bPath|requireTool|LookPath|exec\.Command|exec\.CommandContext)\((?:ctx, |t, |s\.t, |tb, )?"([a-z][a-z0-9_]*)"`)

// wantLine matches `want PACKAGE command -v PROGRAM` in scripts/deps.sh.
var wantLine = regexp.MustCompile(`(?m)^want\s+\S+\s+command -v\s+(\S+)\s*$`)

// TestDepsScript_InstallsEveryToolTheTestsRun reads every Go file of the
// repository for the programs it runs and checks that scripts/deps.sh
// installs each: a test that needs a program the script does not know
// fails on a fresh machine.
func TestDepsScript_InstallsEveryToolTheTestsRun(t *testing.T) {
	root := filepath.Join("..", "..")
	script, err := os.ReadFile(filepath.Join(root, "scripts", "deps.sh"))
	require.NoError(t, err)
	installed := map[string]bool{
		"go":         true, // the toolchain itself (README: "Needs Go")
		"litestream": true, // built from the Go module proxy by make test
	}
	for _, m := range wantLine.FindAllStringSubmatch(string(script), -1) {
		installed[m[1]] = true
	}
	used := map[string][]string{}
	err = filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() && (d.Name() == ".git" || d.Name() == "third_party" || d.Name() == "testtool") {
			return filepath.SkipDir
		}
		if d.IsDir() || !strings.HasSuffix(path, ".go") {
			return nil
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		for _, m := range toolCall.FindAllStringSubmatch(string(b), -1) {
			used[m[1]] = append(used[m[1]], path)
		}
		return nil
	})
	require.NoError(t, err)
	for _, want := range []string{"mosquitto", "mosquitto_sub", "sqlite3", "chromium", "chromedriver"} {
		require.Contains(t, used, want, "the scan finds the programs the tests are known to run")
	}
	var missing []string
	for tool, files := range used {
		if !installed[tool] {
			missing = append(missing, tool+" ("+strings.Join(files, ", ")+")")
		}
	}
	sort.Strings(missing)
	assert.Empty(t, missing, "programs run by the code without a `want PACKAGE command -v PROGRAM` line in scripts/deps.sh")
}
