package layout_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/asynkron/protoactor-go/actor"

	"github.com/troupe-llm/troupe/actors"
	"github.com/troupe-llm/troupe/layout"
)

// paths lists a tree's node paths, depth first.
func paths(n actors.Node) []string {
	out := []string{n.NodePath()}
	switch n := n.(type) {
	case *actors.PipelineNode:
		for _, f := range n.Ingress {
			out = append(out, f.Path)
		}
		out = append(out, paths(n.Core)...)
		for _, f := range n.Egress {
			out = append(out, f.Path)
		}
	case *actors.RouteNode:
		for _, b := range n.Branches {
			out = append(out, paths(b.Then)...)
		}
		if n.Default != nil {
			out = append(out, paths(n.Default)...)
		}
	case *actors.FallbackNode:
		for _, c := range n.Children {
			out = append(out, paths(c)...)
		}
	case *actors.FanoutNode:
		for _, c := range n.Children {
			out = append(out, paths(c)...)
		}
	case *actors.PoolNode:
		for _, c := range n.Replicas {
			out = append(out, paths(c)...)
		}
	}
	return out
}

// The example compiles offline, each node named by its path in
// the tree, references inlined under the node that refers.
func TestV2ExampleCompiles(t *testing.T) {
	f, err := layout.Load("../examples/trees.yaml")
	if err != nil {
		t.Fatal(err)
	}
	specs, err := layout.CompileAll(f, "ignored", actors.DefaultRegistry)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{
		"taide": "taide/pipeline taide/pipeline/0/opencc taide/pipeline/1/fallback taide/pipeline/1/fallback/0/openai " +
			"taide/pipeline/1/fallback/1/pool taide/pipeline/1/fallback/1/pool/0/openai taide/pipeline/1/fallback/1/pool/1/openai " +
			"taide/pipeline/1/fallback/1/pool/2/openai taide/pipeline/1/fallback/1/pool/3/openai taide/pipeline/2/opencc",
		"helper": "helper/route helper/route/0/reflect helper/route/1/taide/pipeline helper/route/1/taide/pipeline/0/opencc",
		"hedged": "hedged/fanout hedged/fanout/0/taide/pipeline",
	}
	if len(specs) != 3 {
		t.Fatalf("%d layouts, want 3", len(specs))
	}
	for _, s := range specs {
		got := strings.Join(paths(s.Root), " ")
		if !strings.HasPrefix(got, want[s.Name]) {
			t.Errorf("%s: paths\n%s\nwant them to start with\n%s", s.Name, got, want[s.Name])
		}
	}
}

// Every mistake is reported at load time with its place, all at once.
func TestV2ErrorsNamePlace(t *testing.T) {
	tests := []struct {
		name, src string
		want      []string
	}{
		{"no layouts", "version: 2\n", []string{"l.yaml:1:1: missing layouts"}},
		{"unknown top key", "version: 2\nlayouts: {a: {model: reflect}}\nmodels: x\n", []string{"l.yaml:3:1: unknown key \"models\""}},
		{"not a node", "version: 2\nlayouts:\n  a: {modle: reflect}\n", []string{"l.yaml:3:6: want a node"}},
		{"two types", "version: 2\nlayouts:\n  a: {model: reflect, route: []}\n", []string{"l.yaml:3:23: a node is one thing"}},
		{"unknown key", "version: 2\nlayouts:\n  a: {model: reflect, argz: {}}\n", []string{"l.yaml:3:23: unknown key \"argz\" for a model node"}},
		{"wrong type", "version: 2\nlayouts:\n  a: {model: reflect, concurrency: many}\n", []string{"l.yaml:3:36: concurrency must be a whole number"}},
		{"missing argument", "version: 2\nlayouts:\n  a: {model: openai, args: {model: m}}\n", []string{"l.yaml:3:28: openai:", "base_url"}},
		{"unknown argument", "version: 2\nlayouts:\n  a: {model: reflect, args: {chunks: 1}}\n", []string{"l.yaml:3:29: reflect: arguments: json: unknown field \"chunks\""}},
		{"duplicate name", "version: 2\nlayouts:\n  a: {model: reflect}\n  a: {model: dummy}\n", []string{"l.yaml:4:3: layout \"a\" is defined twice (first at line 3)"}},
		{"unknown kind", "version: 2\nlayouts:\n  a: {model: gpt9}\n", []string{"l.yaml:3:14: unknown kind: model \"gpt9\""}},
		{"bad regexp", "version: 2\nlayouts:\n  a:\n    route:\n      - when: {last_message: \"(\"}\n        then: {model: reflect}\n", []string{"l.yaml:5:30: last_message: not a valid regular expression"}},
		{"cycle", "version: 2\nlayouts:\n  a: {layout: b}\n  b: {fallback: [{layout: a}]}\n", []string{"l.yaml:4:27: layouts refer to each other in a cycle: a → b → a", "l.yaml:3:15: layouts refer to each other in a cycle: b → a → b"}},
		{"unknown reference", "version: 2\nlayouts:\n  a: {layout: c}\n", []string{"l.yaml:3:15: no layout named \"c\" in this file (have a)"}},
		{"filter alone", "version: 2\nlayouts:\n  a: {filter: opencc}\n", []string{"l.yaml:3:6: a filter maps a pipeline's request or answer"}},
		{"two models", "version: 2\nlayouts:\n  a: {pipeline: [{model: reflect}, {model: dummy}]}\n", []string{"l.yaml:3:36: a pipeline has one stage that answers"}},
		{"no model", "version: 2\nlayouts:\n  a: {pipeline: [{filter: opencc}]}\n", []string{"l.yaml:3:6: a pipeline needs a stage that answers"}},
		{"default not last", "version: 2\nlayouts:\n  a:\n    route:\n      - default: {model: reflect}\n      - when: {messages: 2}\n        then: {model: dummy}\n", []string{"l.yaml:5:9: the default must be the route's last branch"}},
		{"bad merge", "version: 2\nlayouts:\n  a: {fanout: {merge: some, of: [{model: reflect}]}}\n", []string{"l.yaml:3:23: merge must be first or all"}},
		{"pool without size", "version: 2\nlayouts:\n  a: {pool: {of: {model: reflect}}}\n", []string{"l.yaml:3:13: pool needs size"}},
		{"bad range", "version: 2\nlayouts:\n  a:\n    route:\n      - when: {chars: {min: 9, max: 3}}\n        then: {model: reflect}\n", []string{"l.yaml:5:23: chars: want 0 ≤ min ≤ max"}},
		{"bad filter args", "version: 2\nlayouts:\n  a: {pipeline: [{filter: opencc, args: {config: s2x}}, {model: reflect}]}\n", []string{"l.yaml:3:41: opencc:"}},
		{"many at once", "version: 2\nlayouts:\n  a: {model: gpt9}\n  b: {layout: z}\n", []string{"l.yaml:3:14:", "l.yaml:4:15:"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f, err := layout.Parse("l.yaml", []byte(tt.src))
			if err == nil {
				_, err = layout.CompileAll(f, "x", actors.DefaultRegistry)
			}
			if err == nil {
				t.Fatal("no error")
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error\n%s\ndoes not contain %q", err, w)
				}
			}
			if n, want := strings.Count(err.Error(), "\n")+1, len(tt.want); tt.name != "missing argument" && n != want {
				t.Errorf("%d errors, want %d:\n%s", n, want, err)
			}
		})
	}
}

// The runnable example's layouts start and answer.
func TestLocalTreesRun(t *testing.T) {
	f, err := layout.Load("../examples/local-trees.yaml")
	if err != nil {
		t.Fatal(err)
	}
	specs, err := layout.CompileAll(f, "x", actors.DefaultRegistry)
	if err != nil {
		t.Fatal(err)
	}
	system := actors.NewActorSystem(actor.Configure())
	t.Cleanup(system.Shutdown)
	running := map[string]*actors.Layout{}
	for _, s := range specs {
		l, err := actors.StartLayout(system, s, nil, nil)
		if err != nil {
			t.Fatal(err)
		}
		running[s.Name] = l
		t.Cleanup(func() {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			_ = l.Stop(ctx)
		})
	}
	for _, tt := range []struct{ layout, input, want string }{
		{"echo", "鼠标", "滑鼠"},
		{"router", "/echo 软件", "/echo 軟體"},
		{"router", "/slow", "慢慢來，一個字一個字。"},
		{"resilient", "x", "This answer br...and another model finishes it."},
		{"both", "软件", "[echo]\n軟體\n\n[dummy]\n我是一个假模型。"},
		{"replicas", "x", "I'm a dummy model."},
	} {
		got, err := chatOnce(system, running[tt.layout], tt.input)
		if err != nil || got != tt.want {
			t.Errorf("%s(%q) = %q, %v; want %q", tt.layout, tt.input, got, err, tt.want)
		}
	}
}

func chatOnce(system *actor.ActorSystem, l *actors.Layout, input string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	id := "chat-" + input
	reply := actors.NewReply(system, id)
	defer reply.Close()
	system.Root.Send(l.Epoch().Entry(l), &actors.ChatRequest{ChatId: id, Layout: l.Name,
		History: []*actors.Message{{Content: input}}, ReplyTo: reply.PID()})
	var text strings.Builder
	for {
		batch, err := reply.Receive(ctx)
		if err != nil {
			return text.String(), err
		}
		for _, m := range batch {
			switch m := m.(type) {
			case *actors.Chunk:
				text.WriteString(m.Text)
			case *actors.End:
				return text.String(), nil
			case *actors.Failure:
				return text.String(), errorString(m.Reason)
			}
		}
	}
}

type errorString string

func (e errorString) Error() string { return string(e) }

func FuzzParseV2(f *testing.F) {
	for _, seed := range []string{
		"version: 2\nlayouts:\n  a: {model: reflect}\n",
		"version: 2\nlayouts:\n  a:\n    route:\n      - when: {last_message: x, messages: 2, chars: {max: 9}, param: {t: y}}\n        then: {model: reflect}\n      - default: {layout: b}\n  b: {fallback: {resume: true, of: [{model: dummy}]}}\n",
		"version: 2\nlayouts:\n  a: {fanout: {merge: all, of: [{pool: {size: 2, of: {model: reflect}}}]}}\n",
		"version: 2\nlayouts:\n  a: {pipeline: [{filter: opencc}, {model: reflect}, {filter: opencc}]}\n",
		"version: 2\nlayouts: {a: {layout: a}}\n", "version: 2\nlayouts: []\n", "version: 2\n",
	} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, src string) {
		file, err := layout.Parse("f.yaml", []byte(src))
		if err != nil {
			if !strings.HasPrefix(err.Error(), "f.yaml") {
				t.Fatalf("error without the file's name: %v", err)
			}
			return
		}
		if file.Version != 2 {
			return
		}
		specs, err := layout.CompileAll(file, "x", actors.DefaultRegistry)
		if err != nil {
			for _, line := range strings.Split(err.Error(), "\n") {
				if !strings.HasPrefix(line, "f.yaml") {
					t.Fatalf("error line without its place: %q", line)
				}
			}
			return
		}
		for _, s := range specs {
			if s.Root == nil {
				t.Fatalf("layout %q compiled to nothing from %q", s.Name, src)
			}
		}
	})
}

// A layout's breaker sits beside its top node's keys (version 2) or in
// llm (version 1); what it leaves out keeps the defaults.
func TestBreakerSettings(t *testing.T) {
	for _, tt := range []struct {
		name, src string
		want      actors.BreakerConfig
	}{
		{"v2", "version: 2\nlayouts:\n  a:\n    fallback: [{model: reflect}]\n    breaker: {failures: 3, ratio: 0.25, window: 40, cooldown: 2s, max_cooldown: 1m}\n",
			actors.BreakerConfig{Failures: 3, Ratio: 0.25, Window: 40, Cooldown: 2 * time.Second, MaxCooldown: time.Minute}},
		{"v2 some", "version: 2\nlayouts:\n  a: {model: reflect, breaker: {cooldown: 30s}}\n", actors.BreakerConfig{Cooldown: 30 * time.Second}},
		{"v2 off", "version: 2\nlayouts:\n  a: {model: reflect, breaker: off}\n", actors.BreakerConfig{Off: true}},
		{"v2 false", "version: 2\nlayouts:\n  a: {model: reflect, breaker: false}\n", actors.BreakerConfig{Off: true}},
		{"v2 none", "version: 2\nlayouts:\n  a: {model: reflect}\n", actors.BreakerConfig{}},
		{"v1", "version: 1\nllm:\n  class: reflect\n  breaker: {failures: 2}\n", actors.BreakerConfig{Failures: 2}},
		{"v1 off", "version: 1\nllm:\n  class: reflect\n  breaker: off\n", actors.BreakerConfig{Off: true}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			f, err := layout.Parse("l.yaml", []byte(tt.src))
			if err != nil {
				t.Fatal(err)
			}
			specs, err := layout.CompileAll(f, "a", actors.DefaultRegistry)
			if err != nil {
				t.Fatal(err)
			}
			if got := specs[0].Breaker; got != tt.want {
				t.Fatalf("breaker %+v, want %+v", got, tt.want)
			}
		})
	}
}

func TestBreakerErrorsNamePlace(t *testing.T) {
	for _, tt := range []struct{ name, src, want string }{
		{"unknown key", "version: 2\nlayouts:\n  a: {model: reflect, breaker: {failure: 3}}\n", "l.yaml:3:33: unknown key \"failure\" in breaker"},
		{"ratio", "version: 2\nlayouts:\n  a: {model: reflect, breaker: {ratio: 2}}\n", "l.yaml:3:40: ratio must be a share"},
		{"failures", "version: 2\nlayouts:\n  a: {model: reflect, breaker: {failures: 0}}\n", "l.yaml:3:43: failures must be a whole number of at least 1"},
		{"cooldown", "version: 2\nlayouts:\n  a: {model: reflect, breaker: {cooldown: soon}}\n", "l.yaml:3:43: cooldown wants a duration"},
		{"max below", "version: 2\nlayouts:\n  a: {model: reflect, breaker: {cooldown: 1m, max_cooldown: 30s}}\n", "l.yaml:3:61: max_cooldown (30s) is shorter than cooldown (1m0s)"},
		{"not a mapping", "version: 2\nlayouts:\n  a: {model: reflect, breaker: [1]}\n", "l.yaml:3:32: breaker wants off, or a mapping"},
		{"nested", "version: 2\nlayouts:\n  a: {fallback: [{model: reflect, breaker: off}]}\n", "l.yaml:3:35: breaker is a setting of a whole layout"},
		{"v1 filter", "version: 1\nllm:\n  class: reflect\negress-filters:\n  - class: opencc\n    breaker: off\n", "l.yaml:6:5: unknown key \"breaker\" (want class, args)"},
		{"v1 cooldown", "version: 1\nllm:\n  class: reflect\n  breaker:\n    cooldown: -1s\n", "l.yaml:5:15: cooldown wants a duration above zero"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			_, err := layout.Parse("l.yaml", []byte(tt.src))
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("error %v, want %q", err, tt.want)
			}
		})
	}
}
