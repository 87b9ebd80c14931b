package covertest

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// A program built in a coverage run writes its counters into the run's
// directory however it is started: here with an empty environment, into a
// directory with a quote in its name.
func TestBuildCollects(t *testing.T) {
	cover := filepath.Join(t.TempDir(), "it's here")
	t.Setenv(EnvVar, cover)
	bin := filepath.Join(t.TempDir(), "echo")
	if out, err := Build(bin, "./testdata/echo"); err != nil {
		t.Fatalf("Build: %v\n%s", err, out)
	}
	cmd := exec.Command(bin, "a b")
	cmd.Env = []string{}
	out, err := cmd.Output()
	if want := "a b " + cover; err != nil || string(out) != want {
		t.Fatalf("running the built program: %q, %v", out, err)
	}
	files, _ := filepath.Glob(filepath.Join(cover, "covcounters.*"))
	if len(files) != 1 {
		t.Fatalf("%d counter files in %s, want 1", len(files), cover)
	}
}

func TestBuildPlain(t *testing.T) {
	t.Setenv(EnvVar, "")
	bin := filepath.Join(t.TempDir(), "echo")
	if out, err := Build(bin, "./testdata/echo"); err != nil {
		t.Fatalf("Build: %v\n%s", err, out)
	}
	if b, err := os.ReadFile(bin); err != nil || strings.HasPrefix(string(b), "#!") {
		t.Fatalf("outside a coverage run Build wrote a script, or nothing: %v", err)
	}
}

// A relative directory would be read from each test's and each process's
// own working directory: refused before anything is built.
func TestBuildRefusesRelativeDir(t *testing.T) {
	t.Setenv(EnvVar, "cover")
	_, err := Build(filepath.Join(t.TempDir(), "x"), ".")
	if err == nil || !strings.Contains(err.Error(), "want an absolute path") {
		t.Fatalf("Build with %s=cover: %v", EnvVar, err)
	}
}
