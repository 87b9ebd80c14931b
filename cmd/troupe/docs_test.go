package main

import (
	"os"
	"os/exec"
	"regexp"
	"slices"
	"strings"
	"testing"
)

// docs/configuration.md's table of settings is what `troupe -h` prints:
// the same settings in the same order, each with the same environment
// variable, default and meaning.
func TestConfigurationPageMatchesHelp(t *testing.T) {
	out, err := exec.Command(binary, "-h").CombinedOutput()
	if err != nil {
		t.Fatalf("troupe -h: %v\n%s", err, out)
	}
	var help [][4]string
	lines := strings.Split(string(out), "\n")
	row := regexp.MustCompile(`^  -(\S+)  (\S+)  default: (.*)$`)
	for i, line := range lines {
		if m := row.FindStringSubmatch(line); m != nil && i+1 < len(lines) {
			help = append(help, [4]string{"-" + m[1], m[2], m[3], strings.TrimSpace(lines[i+1])})
		}
	}
	if len(help) < 20 {
		t.Fatalf("found %d settings in troupe -h:\n%s", len(help), out)
	}

	page, err := os.ReadFile("../../docs/configuration.md")
	if err != nil {
		t.Fatal(err)
	}
	var doc [][4]string
	for _, line := range strings.Split(string(page), "\n") {
		cells := strings.Split(line, " | ")
		if len(cells) != 4 || !strings.HasPrefix(line, "| `-") {
			continue
		}
		var r [4]string
		for i, c := range cells {
			r[i] = strings.Trim(strings.TrimSpace(strings.Trim(c, "|")), "`")
		}
		doc = append(doc, r)
	}
	if !slices.Equal(help, doc) {
		for i := range max(len(help), len(doc)) {
			var h, d [4]string
			if i < len(help) {
				h = help[i]
			}
			if i < len(doc) {
				d = doc[i]
			}
			if h != d {
				t.Errorf("row %d:\n troupe -h:             %q\n docs/configuration.md: %q", i+1, h, d)
			}
		}
	}
}
