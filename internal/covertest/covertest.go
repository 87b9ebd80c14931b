// Package covertest lets the tests that run Troupe's binaries in processes
// of their own count what those processes run. `go test -cover` credits a
// package only with what runs inside the test binary, so without this the
// multi-process tests of cmd/troupe count for nothing.
//
// `make cover` sets TROUPE_COVERDIR to an absolute directory. Build then
// instruments the binary for every package of the module, and each of its
// processes writes its own counters there when it exits: by returning from
// main or by os.Exit, never when it is killed with SIGKILL. Without the
// variable, Build is a plain go build, so `make test` pays nothing.
package covertest

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// EnvVar names the directory a coverage run collects the processes'
// counters in.
const EnvVar = "TROUPE_COVERDIR"

// coverPkg is every package of the module: a process's counters then land
// on the package whose code ran, wherever the binary's main is.
const coverPkg = "github.com/troupe-llm/troupe/..."

// Enabled reports whether a coverage run is under way.
func Enabled() bool { return os.Getenv(EnvVar) != "" }

// Build runs `go build -o out flags... pkg` in the current directory and
// returns its combined output. In a coverage run the instrumented binary
// goes beside out, and out is a script that sets GOCOVERDIR and execs it:
// every way a test starts out (its own environment or none, inside a
// network namespace through `ip netns exec`) then collects, and the
// process keeps the script's pid for the test's signals.
func Build(out, pkg string, flags ...string) ([]byte, error) {
	dir := os.Getenv(EnvVar)
	if dir == "" {
		return goBuild(out, pkg, flags)
	}
	// The tests run in their packages' directories, and the processes
	// wherever their tests put them: a relative path would scatter the
	// counters.
	if !filepath.IsAbs(dir) {
		return nil, fmt.Errorf("%s=%s: want an absolute path", EnvVar, dir)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("%s: %w", EnvVar, err)
	}
	// Same base name, so the process's argv[0] names the command as a
	// plain build's would.
	real := filepath.Join(filepath.Dir(out), ".covered", filepath.Base(out))
	if err := os.MkdirAll(filepath.Dir(real), 0o755); err != nil {
		return nil, err
	}
	output, err := goBuild(real, pkg, append(flags, "-cover", "-coverpkg="+coverPkg))
	if err != nil {
		return output, err
	}
	script := "#!/bin/sh\nexport GOCOVERDIR=" + quote(dir) + "\nexec " + quote(real) + " \"$@\"\n"
	return output, os.WriteFile(out, []byte(script), 0o755)
}

func goBuild(out, pkg string, flags []string) ([]byte, error) {
	args := append([]string{"build", "-o", out}, flags...)
	return exec.Command("go", append(args, pkg)...).CombinedOutput()
}

// quote makes s one word for sh.
func quote(s string) string { return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'" }
