package layout_test

import (
	"context"
	"os"
	"strings"
	"testing"

	"github.com/troupe-llm/troupe/actors"
	_ "github.com/troupe-llm/troupe/actors/command"
	_ "github.com/troupe-llm/troupe/actors/dummy"
	_ "github.com/troupe-llm/troupe/actors/kuwa"
	_ "github.com/troupe-llm/troupe/actors/openai"
	_ "github.com/troupe-llm/troupe/actors/opencc"
	_ "github.com/troupe-llm/troupe/actors/reflect"
	"github.com/troupe-llm/troupe/layout"
)

func TestExampleLayoutsCompile(t *testing.T) {
	for _, path := range []string{"", "../examples/layout.yaml", "../examples/dummy.yaml"} {
		t.Run(path, func(t *testing.T) {
			f, err := layout.Load(path)
			if err != nil {
				t.Fatal(err)
			}
			spec, err := layout.Compile(f, "llm", actors.DefaultRegistry)
			if err != nil {
				t.Fatal(err)
			}
			if spec.Model.Capacity < 16 {
				t.Errorf("capacity %d, want at least 16 for a built-in kind", spec.Model.Capacity)
			}
		})
	}
}

// The upstream examples compile offline (no kind calls its server at load
// time), with the capacity their comments promise.
func TestUpstreamExamplesCompile(t *testing.T) {
	t.Setenv("OPENAI_API_KEY", "sk-test")
	for _, tt := range []struct {
		path     string
		capacity int
	}{
		{"../examples/vllm.yaml", 64},
		{"../examples/llamacpp.yaml", 4},
		{"../examples/ollama.yaml", 4},
		{"../examples/hosted.yaml", 32},
		{"../examples/kuwa.yaml", 1},
		{"../examples/command.yaml", 4},
	} {
		t.Run(tt.path, func(t *testing.T) {
			f, err := layout.Load(tt.path)
			if err != nil {
				t.Fatal(err)
			}
			spec, err := layout.Compile(f, "llm", actors.DefaultRegistry)
			if err != nil {
				t.Fatal(err)
			}
			if spec.Model.Capacity != tt.capacity {
				t.Errorf("capacity %d, want %d", spec.Model.Capacity, tt.capacity)
			}
		})
	}
}

func TestOriginalClassNamesAreAliases(t *testing.T) {
	f, err := layout.Load("../examples/layout.yaml")
	if err != nil {
		t.Fatal(err)
	}
	spec, err := layout.Compile(f, "llm", actors.DefaultRegistry)
	if err != nil {
		t.Fatal(err)
	}
	var paths []string
	for _, s := range spec.Ingress {
		paths = append(paths, s.Path)
	}
	paths = append(paths, spec.Model.Path)
	for _, s := range spec.Egress {
		paths = append(paths, s.Path)
	}
	want := "ingress/0/opencc model/reflect egress/0/opencc"
	if got := strings.Join(paths, " "); got != want {
		t.Fatalf("paths %q, want %q", got, want)
	}
}

func TestConcurrencyAndQueue(t *testing.T) {
	f, err := layout.Parse("l.yaml", []byte("version: 1\nllm:\n  class: reflect\n  concurrency: 3\n  queue: 7\n"))
	if err != nil {
		t.Fatal(err)
	}
	spec, err := layout.Compile(f, "llm", actors.DefaultRegistry)
	if err != nil {
		t.Fatal(err)
	}
	if spec.Model.Capacity != 3 || spec.Model.Queue != 7 {
		t.Fatalf("capacity %d queue %d, want 3 and 7", spec.Model.Capacity, spec.Model.Queue)
	}
}

// Every error names the file, the line and column, and what is wrong.
func TestErrorsNamePlace(t *testing.T) {
	tests := []struct {
		name, src string
		want      []string
	}{
		{"bad yaml", "version: 1\nllm: [\n", []string{"l.yaml:2: invalid YAML"}},
		{"empty", "", []string{"l.yaml: empty layout"}},
		{"no version", "llm:\n  class: reflect\n", []string{"l.yaml:1:1: missing version"}},
		{"wrong version", "version: 3\nllm:\n  class: reflect\n", []string{"l.yaml:1:10: unsupported version \"3\": this Troupe reads versions 1 and 2"}},
		{"version 1 keys in version 2", "version: 2\nllm:\n  class: reflect\n", []string{"l.yaml:2:1: llm belongs to version 1 files"}},
		{"no llm", "version: 1\n", []string{"l.yaml:1:1: missing llm"}},
		{"unknown key", "version: 1\nllm:\n  class: reflect\nfilters: []\n", []string{"l.yaml:4:1: unknown key \"filters\""}},
		{"override-process", "version: 1\nllm:\n  class: reflect\noverride-process: x\n", []string{"l.yaml:4:1: override-process is not supported"}},
		{"no class", "version: 1\nllm:\n  args: {}\n", []string{"l.yaml:3:3: missing class"}},
		{"bad args", "version: 1\nllm:\n  class: reflect\n  args: [1]\n", []string{"l.yaml:4:9: args must be a mapping"}},
		{"bad concurrency", "version: 1\nllm:\n  class: reflect\n  concurrency: 0\n", []string{"l.yaml:4:16: concurrency must be a whole number"}},
		{"filters not a list", "version: 1\nllm:\n  class: reflect\negress-filters: opencc\n", []string{"l.yaml:4:17: want a list"}},
		{"two problems", "version: 3\nllm:\n  class: reflect\nx: 1\n", []string{"l.yaml:1:10:", "l.yaml:4:1:"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := layout.Parse("l.yaml", []byte(tt.src))
			if err == nil {
				t.Fatal("no error")
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not contain %q", err, w)
				}
			}
		})
	}
}

func TestCompileErrorsNamePlace(t *testing.T) {
	tests := []struct {
		name, src, want string
	}{
		{"unknown model", "version: 1\nllm:\n  class: gpt5\n", "l.yaml:3:10: unknown kind: model \"gpt5\""},
		{"unknown filter", "version: 1\nllm:\n  class: reflect\ningress-filters:\n  - class: nope\n", "l.yaml:5:12: unknown kind: filter \"nope\""},
		{"unknown argument", "version: 1\nllm:\n  class: reflect\n  args:\n    chunks: 3\n", "l.yaml:5:5: reflect: arguments: json: unknown field \"chunks\""},
		{"bad opencc config", "version: 1\nllm:\n  class: reflect\negress-filters:\n  - class: opencc\n    args: {config: s2x}\n", "l.yaml:6:11: opencc:"},
		{"bad dummy delay", "version: 1\nllm:\n  class: dummy\n  args: {delay: soon}\n", "l.yaml:4:9: dummy: delay"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f, err := layout.Parse("l.yaml", []byte(tt.src))
			if err != nil {
				t.Fatal(err)
			}
			_, err = layout.Compile(f, "llm", actors.DefaultRegistry)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("error %v, want it to contain %q", err, tt.want)
			}
		})
	}
}

func FuzzParse(f *testing.F) {
	builtin, err := os.ReadFile("default.yaml")
	if err != nil {
		f.Fatal(err)
	}
	f.Add(builtin)
	f.Add([]byte("version: 1\nllm:\n  class: reflect\n  args: {chunk: 2}\n"))
	f.Add([]byte("version: 1\nllm: [\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		file, err := layout.Parse("fuzz.yaml", data)
		if err != nil {
			if !strings.HasPrefix(err.Error(), "fuzz.yaml") {
				t.Fatalf("error without the file name: %v", err)
			}
			return
		}
		if file.Model.Class == "" {
			t.Fatal("parsed without a model class")
		}
	})
}

// sizedModel says its capacity from its arguments and counts its Closes.
type sizedModel struct {
	slots  int
	closed *int
}

func (m sizedModel) Generate(context.Context, *actors.ChatRequest, func(string) error) error {
	return nil
}
func (m sizedModel) Capacity() int { return m.slots }
func (m sizedModel) Close() error  { *m.closed++; return nil }

// A model's concurrency argument sets the layout's capacity (the layout's
// own key still wins), and the instance built to check the arguments is
// closed.
func TestCapacityFromArgumentsAndProbeClosed(t *testing.T) {
	closed := 0
	reg := actors.NewRegistry()
	reg.RegisterModel(actors.ModelKind{Name: "sized", Capacity: 1, New: func(args actors.Args) (actors.Model, error) {
		var a struct {
			Concurrency int `json:"concurrency"`
		}
		if err := args.Decode(&a); err != nil {
			return nil, err
		}
		return sizedModel{slots: a.Concurrency, closed: &closed}, nil
	}})
	for _, tt := range []struct {
		yaml string
		want int
	}{
		{"version: 1\nllm:\n  class: sized\n", 1},
		{"version: 1\nllm:\n  class: sized\n  args: {concurrency: 6}\n", 6},
		{"version: 1\nllm:\n  class: sized\n  args: {concurrency: 6}\n  concurrency: 2\n", 2},
	} {
		f, err := layout.Parse("l.yaml", []byte(tt.yaml))
		if err != nil {
			t.Fatal(err)
		}
		spec, err := layout.Compile(f, "llm", reg)
		if err != nil {
			t.Fatal(err)
		}
		if spec.Model.Capacity != tt.want || spec.Model.Queue != 4*tt.want {
			t.Errorf("%q: capacity %d queue %d, want %d and %d", tt.yaml, spec.Model.Capacity, spec.Model.Queue, tt.want, 4*tt.want)
		}
	}
	if closed != 3 {
		t.Errorf("probe instances closed %d times, want 3", closed)
	}
}
