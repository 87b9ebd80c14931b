package layout_test

import (
	"bytes"
	"os/exec"
	"regexp"
	"strings"
	"testing"

	"github.com/troupe-llm/troupe/layout"
)

// The DOT graph of the examples is valid for Graphviz itself, and shows
// every layout, node type and reference.
func TestGraphDOT(t *testing.T) {
	dot, err := exec.LookPath("dot")
	if err != nil {
		t.Fatal(`this test needs Graphviz's dot: install the Debian package "graphviz" (make test does)`)
	}
	for _, file := range []string{"../examples/trees.yaml", "../examples/local-trees.yaml", "../examples/layout.yaml"} {
		f, err := layout.Load(file)
		if err != nil {
			t.Fatal(err)
		}
		var out bytes.Buffer
		if err := layout.WriteGraph(&out, f, "llm", layout.FormatDOT); err != nil {
			t.Fatal(err)
		}
		cmd := exec.Command(dot, "-Tsvg")
		cmd.Stdin = bytes.NewReader(out.Bytes())
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		svg, err := cmd.Output()
		if err != nil || stderr.Len() > 0 {
			t.Fatalf("%s: dot refused the graph: %v %s\n%s", file, err, stderr.String(), out.String())
		}
		if !bytes.Contains(svg, []byte("<svg")) {
			t.Fatalf("%s: no SVG from dot", file)
		}
	}
	f, _ := layout.Load("../examples/trees.yaml")
	var out bytes.Buffer
	_ = layout.WriteGraph(&out, f, "", layout.FormatDOT)
	for _, want := range []string{`label="taide"`, `"filter: opencc"`, `"fallback"`, `"pool × 4"`, `"model: openai"`,
		`"0: last message ~ ^/echo "`, `"default"`, `"layout taide"`, `"fanout (first)"`} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("DOT lacks %s:\n%s", want, out.String())
		}
	}
}

// The Mermaid graph is well formed: every edge joins two declared nodes,
// every subgraph ends.
func TestGraphMermaid(t *testing.T) {
	f, err := layout.Load("../examples/trees.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	if err := layout.WriteGraph(&out, f, "", layout.FormatMermaid); err != nil {
		t.Fatal(err)
	}
	text := out.String()
	if !strings.HasPrefix(text, "flowchart LR\n") {
		t.Fatalf("not a flowchart:\n%s", text)
	}
	declared := map[string]bool{}
	for _, m := range regexp.MustCompile(`(?m)^\s+(n\d+_\w*)[\[(]`).FindAllStringSubmatch(text, -1) {
		declared[m[1]] = true
	}
	edges := regexp.MustCompile(`(?m)^\s+(n\d+_\w*) -->(?:\|"[^"]*"\|)? (n\d+_\w*)$`).FindAllStringSubmatch(text, -1)
	if len(edges) < 15 {
		t.Fatalf("%d edges:\n%s", len(edges), text)
	}
	for _, e := range edges {
		if !declared[e[1]] || !declared[e[2]] {
			t.Errorf("edge %s → %s joins an undeclared node", e[1], e[2])
		}
	}
	if strings.Count(text, "subgraph ") != strings.Count(text, "\n  end\n") {
		t.Errorf("unbalanced subgraphs:\n%s", text)
	}
	if err := layout.WriteGraph(&out, f, "", "png"); err == nil {
		t.Error("an unknown format was accepted")
	}
}
