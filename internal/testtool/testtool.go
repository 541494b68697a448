// Package testtool finds the programs that tests run (mosquitto, its
// clients, sqlite3, chromium, ...). A missing program fails the test with
// the command that installs it: scripts/deps.sh, which `make test` runs
// first, installs every one of them, so a test that skipped instead would
// hide a broken machine, on CI above all.
package testtool

import (
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// sbin holds the directories Debian installs daemons to (mosquitto), which
// a non-login shell's PATH may lack.
var sbin = []string{"/usr/local/sbin", "/usr/sbin", "/sbin"}

// Path returns the path of the program name, or fails the test saying how
// to install it. Every name a test passes here has a `want` line in
// scripts/deps.sh (TestDepsScript_InstallsEveryToolTheTestsRun checks).
func Path(t testing.TB, name string) string {
	t.Helper()
	if p, err := exec.LookPath(name); err == nil {
		return p
	}
	for _, dir := range sbin {
		p := filepath.Join(dir, name)
		if fi, err := os.Stat(p); err == nil && !fi.IsDir() && fi.Mode()&0o111 != 0 {
			return p
		}
	}
	t.Fatalf("%s is not installed: run ./scripts/deps.sh (make deps), which installs what the tests need as root or prints the apt-get command", name)
	return ""
}
