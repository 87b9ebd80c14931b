package actors_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/asynkron/protoactor-go/actor"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/troupe-llm/troupe/actors"
)

// echo answers the last user message in chunks of one rune.
var echo = actors.ModelFunc(func(_ context.Context, req *actors.ChatRequest, emit func(string) error) error {
	for _, r := range actors.LastUserMessage(req.History) {
		if err := emit(string(r)); err != nil {
			return err
		}
	}
	return nil
})

// pairFilter is a stream filter whose unit is two runes: it swaps each pair,
// so it must hold back an odd rune until the next chunk or the end. On the
// way in it upper-cases.
type pairFilter struct{ panicOn string }

func (f *pairFilter) MapHistory(h []*actors.Message) ([]*actors.Message, error) {
	for _, m := range h {
		if m.Content == "reject" {
			return nil, errors.New("rejected by filter")
		}
		m.Content = strings.ToUpper(m.Content)
	}
	return h, nil
}

func (f *pairFilter) NewStream() actors.Stream { return &pairStream{panicOn: f.panicOn} }

type pairStream struct {
	held    []rune
	panicOn string
}

func (s *pairStream) Write(chunk string) string {
	if s.panicOn != "" && chunk == s.panicOn {
		panic("pair filter: told to panic")
	}
	var out []rune
	for _, r := range chunk {
		s.held = append(s.held, r)
		if len(s.held) == 2 {
			out = append(out, s.held[1], s.held[0])
			s.held = s.held[:0]
		}
	}
	return string(out)
}

func (s *pairStream) Flush() string {
	out := string(s.held)
	s.held = nil
	return out
}

type harness struct {
	t       *testing.T
	system  *actor.ActorSystem
	layout  *actors.Layout
	reg     *prometheus.Registry
	counter atomic.Int64
}

func startLayout(t *testing.T, spec actors.PipelineSpec) *harness {
	t.Helper()
	system := actors.NewActorSystem(actor.Configure())
	t.Cleanup(system.Shutdown)
	reg := prometheus.NewRegistry()
	if spec.Name == "" {
		spec.Name = "test"
	}
	if spec.Model.Path == "" {
		spec.Model.Path = "model/test"
	}
	if spec.Model.Capacity == 0 {
		spec.Model.Capacity = 8
	}
	l, err := actors.StartPipeline(system, spec, actors.NewMetrics(reg), nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = l.Stop(ctx)
	})
	return &harness{t: t, system: system, layout: l, reg: reg}
}

// answer is a chat's outcome as its reply saw it.
type answer struct {
	text      string
	chunks    int
	toolCalls []string
	end       *actors.End
	failure   *actors.Failure
}

// chat runs one chat to its end and returns what came back.
func (h *harness) chat(ctx context.Context, input string) answer {
	h.t.Helper()
	id := "chat-" + string(rune('a'+h.counter.Add(1)%26)) + time.Now().Format("150405.000000000")
	reply := actors.NewReply(h.system, id)
	defer reply.Close()
	h.system.Root.Send(h.layout.Root, &actors.ChatRequest{
		ChatId:  id,
		History: []*actors.Message{{Role: actors.Role_ROLE_USER, Content: input}},
		ReplyTo: reply.PID(),
	})
	return collect(ctx, h.t, reply)
}

func collect(ctx context.Context, t *testing.T, reply *actors.Reply) answer {
	t.Helper()
	var a answer
	for {
		batch, err := reply.Receive(ctx)
		if err != nil {
			t.Fatalf("no answer: %v (so far %q)", err, a.text)
		}
		for _, m := range batch {
			switch m := m.(type) {
			case *actors.Chunk:
				if m.ToolCalls != "" {
					a.toolCalls = append(a.toolCalls, m.ToolCalls)
					continue
				}
				a.text += m.Text
				a.chunks++
			case *actors.End:
				a.end = m
				return a
			case *actors.Failure:
				a.failure = m
				return a
			}
		}
	}
}

// waitForChunk reads a reply until a chunk with text arrives.
func waitForChunk(ctx context.Context, t *testing.T, reply *actors.Reply, text string) {
	t.Helper()
	for {
		batch, err := reply.Receive(ctx)
		if err != nil {
			t.Fatalf("waiting for chunk %q: %v", text, err)
		}
		for _, m := range batch {
			if c, ok := m.(*actors.Chunk); ok && c.Text == text {
				return
			}
		}
	}
}

func filterSpec(path string, f func() (actors.Filter, error)) actors.FilterSpec {
	return actors.FilterSpec{Path: path, New: f}
}

func newPair() (actors.Filter, error) { return &pairFilter{}, nil }

func withTimeout(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

func TestPipelineRunsFiltersAroundModel(t *testing.T) {
	tests := []struct {
		name            string
		ingress, egress int
		input, want     string
	}{
		{"model only", 0, 0, "abcde", "abcde"},
		{"ingress upper-cases", 1, 0, "abcde", "ABCDE"},
		{"egress swaps pairs, holds the odd rune", 0, 1, "abcde", "badce"},
		{"two egress filters undo each other", 0, 2, "abcde", "abcde"},
		{"both ways, multibyte", 1, 1, "鼠标ab", "标鼠BA"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			spec := actors.PipelineSpec{Model: actors.ModelSpec{New: func() (actors.Model, error) { return echo, nil }}}
			for i := 0; i < tt.ingress; i++ {
				spec.Ingress = append(spec.Ingress, filterSpec("ingress", newPair))
			}
			for i := 0; i < tt.egress; i++ {
				spec.Egress = append(spec.Egress, filterSpec("egress", newPair))
			}
			h := startLayout(t, spec)
			got := h.chat(withTimeout(t, 5*time.Second), tt.input)
			if got.failure != nil || got.text != tt.want {
				t.Fatalf("got %q (failure %v), want %q", got.text, got.failure, tt.want)
			}
		})
	}
}

func TestIngressErrorFailsChat(t *testing.T) {
	h := startLayout(t, actors.PipelineSpec{
		Ingress: []actors.FilterSpec{filterSpec("ingress/0/pair", newPair)},
		Model:   actors.ModelSpec{New: func() (actors.Model, error) { return echo, nil }},
	})
	got := h.chat(withTimeout(t, 5*time.Second), "reject")
	if got.failure == nil || got.failure.Code != actors.Code_CODE_INVALID_ARGUMENT || !strings.Contains(got.failure.Reason, "rejected") {
		t.Fatalf("got %+v, want an invalid-argument failure", got)
	}
}

// A model's error reaches the user as the short reason of an *actors.Error,
// with its code; any other error's text stays in the log, since an
// upstream's message may hold internals.
func TestModelErrorFailsChat(t *testing.T) {
	tests := []struct {
		name       string
		err        error
		wantCode   actors.Code
		wantReason string
		wantRetry  uint32
	}{
		{"plain error hidden", errors.New("upstream said no: token sk-secret"), actors.Code_CODE_INTERNAL, "the model failed", 0},
		{"typed error shown", fmt.Errorf("call: %w", &actors.Error{Code: actors.Code_CODE_UNAVAILABLE,
			Reason: "the model server is unavailable", Err: errors.New("dial tcp: refused")}),
			actors.Code_CODE_UNAVAILABLE, "the model server is unavailable", 0},
		{"overloaded with retry-after", &actors.Error{Code: actors.Code_CODE_OVERLOADED, Reason: "busy",
			RetryAfter: 1500 * time.Millisecond}, actors.Code_CODE_OVERLOADED, "busy", 1500},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := startLayout(t, actors.PipelineSpec{Model: actors.ModelSpec{New: func() (actors.Model, error) {
				return actors.ModelFunc(func(_ context.Context, _ *actors.ChatRequest, emit func(string) error) error {
					_ = emit("partial")
					return tt.err
				}), nil
			}}})
			got := h.chat(withTimeout(t, 5*time.Second), "x")
			if got.text != "partial" || got.failure == nil || got.failure.Reason != tt.wantReason ||
				got.failure.Code != tt.wantCode || got.failure.RetryAfterMs != tt.wantRetry {
				t.Fatalf("got %+v (failure %+v)", got, got.failure)
			}
		})
	}
}

// A model that panics fails the chat it was running, and the supervisor
// restarts it with a fresh instance that serves the next chat.
func TestPanickingModelIsRestarted(t *testing.T) {
	var made atomic.Int32
	h := startLayout(t, actors.PipelineSpec{
		Model: actors.ModelSpec{Path: "model/flaky", New: func() (actors.Model, error) {
			made.Add(1)
			return actors.ModelFunc(func(ctx context.Context, req *actors.ChatRequest, emit func(string) error) error {
				if actors.LastUserMessage(req.History) == "panic" {
					panic("boom")
				}
				return echo(ctx, req, emit)
			}), nil
		}},
		Supervision: actors.Supervision{InitialBackoff: time.Millisecond},
	})
	ctx := withTimeout(t, 5*time.Second)
	got := h.chat(ctx, "panic")
	if got.failure == nil || got.failure.Code != actors.Code_CODE_INTERNAL {
		t.Fatalf("panicking chat: got %+v, want an internal failure", got)
	}
	waitFor(t, 5*time.Second, func() bool {
		return testutil.ToFloat64(restarts(h, "model/flaky")) == 1
	}, "the model restarted once")
	if got := h.chat(ctx, "after"); got.failure != nil || got.text != "after" {
		t.Fatalf("chat after restart: got %+v", got)
	}
	// One instance checked at start-up, one for the first incarnation is
	// the same, one after the restart.
	if n := made.Load(); n != 2 {
		t.Fatalf("model instances made: %d, want 2 (start-up and restart)", n)
	}
	if !h.layout.Health().Healthy {
		t.Fatal("layout unhealthy after one restart")
	}
}

// A filter that panics on a chunk fails that chat only; its other chats
// were not lost silently either: each in-flight chat gets an answer.
func TestPanickingEgressFilterFailsOnlyItsChat(t *testing.T) {
	h := startLayout(t, actors.PipelineSpec{
		Model: actors.ModelSpec{New: func() (actors.Model, error) { return echo, nil }},
		Egress: []actors.FilterSpec{filterSpec("egress/0/pair", func() (actors.Filter, error) {
			return &pairFilter{panicOn: "!"}, nil
		})},
		Supervision: actors.Supervision{InitialBackoff: time.Millisecond},
	})
	ctx := withTimeout(t, 5*time.Second)
	got := h.chat(ctx, "ab!cd")
	if got.failure == nil {
		t.Fatalf("got %+v, want a failure", got)
	}
	if got := h.chat(ctx, "abcd"); got.failure != nil || got.text != "badc" {
		t.Fatalf("next chat: got %+v", got)
	}
}

// Past its restart budget the layout turns unhealthy: the chat running in
// it is failed, new chats are refused with "unavailable", and after the
// cooldown a fresh set of actors serves again.
func TestRestartBudgetMarksLayoutUnhealthyThenRecovers(t *testing.T) {
	release := make(chan struct{})
	h := startLayout(t, actors.PipelineSpec{
		Model: actors.ModelSpec{Path: "model/flaky", New: func() (actors.Model, error) {
			return actors.ModelFunc(func(ctx context.Context, req *actors.ChatRequest, emit func(string) error) error {
				switch actors.LastUserMessage(req.History) {
				case "panic":
					panic("boom")
				case "wait":
					select {
					case <-release:
					case <-ctx.Done():
						return ctx.Err()
					}
				}
				return echo(ctx, req, emit)
			}), nil
		}},
		Supervision: actors.Supervision{InitialBackoff: time.Millisecond, MaxBackoff: time.Millisecond, MaxRestarts: 2, Cooldown: 300 * time.Millisecond},
	})
	defer close(release)
	ctx := withTimeout(t, 10*time.Second)

	// A chat in flight when the budget runs out.
	waiting := actors.NewReply(h.system, "waiting")
	defer waiting.Close()
	h.system.Root.Send(h.layout.Root, &actors.ChatRequest{ChatId: "waiting",
		History: []*actors.Message{{Content: "wait"}}, ReplyTo: waiting.PID()})

	for i := 0; i < 3; i++ {
		if got := h.chat(ctx, "panic"); got.failure == nil {
			t.Fatalf("panic %d: got %+v", i, got)
		}
		if i < 2 {
			waitFor(t, 5*time.Second, func() bool {
				return testutil.ToFloat64(restarts(h, "model/flaky")) == float64(i+1)
			}, "restart")
		}
	}
	waitFor(t, 5*time.Second, func() bool { return !h.layout.Health().Healthy }, "layout unhealthy")
	if got := collect(ctx, t, waiting); got.failure == nil {
		t.Fatalf("in-flight chat: got %+v, want a failure", got)
	}
	if got := h.chat(ctx, "hello"); got.failure == nil || got.failure.Code != actors.Code_CODE_UNAVAILABLE {
		t.Fatalf("chat while unhealthy: got %+v, want unavailable", got)
	}
	waitFor(t, 5*time.Second, func() bool { return h.layout.Health().Healthy }, "layout recovered")
	if got := h.chat(ctx, "hello"); got.failure != nil || got.text != "hello" {
		t.Fatalf("chat after recovery: got %+v", got)
	}
}

func TestCancelStopsGeneration(t *testing.T) {
	stopped := make(chan error, 1)
	h := startLayout(t, actors.PipelineSpec{Model: actors.ModelSpec{New: func() (actors.Model, error) {
		return actors.ModelFunc(func(ctx context.Context, _ *actors.ChatRequest, emit func(string) error) error {
			_ = emit("started")
			<-ctx.Done()
			stopped <- ctx.Err()
			return ctx.Err()
		}), nil
	}}})
	ctx := withTimeout(t, 5*time.Second)
	reply := actors.NewReply(h.system, "c1")
	defer reply.Close()
	h.system.Root.Send(h.layout.Root, &actors.ChatRequest{ChatId: "c1", History: []*actors.Message{{Content: "x"}}, ReplyTo: reply.PID()})
	waitForChunk(ctx, t, reply, "started")
	h.system.Root.Send(h.layout.Root, &actors.Cancel{ChatId: "c1"})
	select {
	case err := <-stopped:
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("model context ended with %v", err)
		}
	case <-ctx.Done():
		t.Fatal("model was not cancelled")
	}
	if got := collect(ctx, t, reply); got.failure == nil || got.failure.Code != actors.Code_CODE_CANCELED {
		t.Fatalf("got %+v, want a cancelled failure", got)
	}
}

func TestDeadlineEndsGeneration(t *testing.T) {
	h := startLayout(t, actors.PipelineSpec{Model: actors.ModelSpec{New: func() (actors.Model, error) {
		return actors.ModelFunc(func(ctx context.Context, _ *actors.ChatRequest, _ func(string) error) error {
			<-ctx.Done()
			return ctx.Err()
		}), nil
	}}})
	ctx := withTimeout(t, 5*time.Second)
	reply := actors.NewReply(h.system, "d1")
	defer reply.Close()
	h.system.Root.Send(h.layout.Root, &actors.ChatRequest{ChatId: "d1", History: []*actors.Message{{Content: "x"}},
		ReplyTo: reply.PID(), DeadlineUnixNano: time.Now().Add(20 * time.Millisecond).UnixNano()})
	if got := collect(ctx, t, reply); got.failure == nil || got.failure.Code != actors.Code_CODE_DEADLINE_EXCEEDED {
		t.Fatalf("got %+v, want deadline exceeded", got)
	}
}

// Models may emit any bytes; what travels on is valid UTF-8, with a
// sequence cut between two emits joined again.
func TestModelOutputIsValidUTF8(t *testing.T) {
	h := startLayout(t, actors.PipelineSpec{Model: actors.ModelSpec{New: func() (actors.Model, error) {
		return actors.ModelFunc(func(_ context.Context, _ *actors.ChatRequest, emit func(string) error) error {
			b := []byte("鼠")
			for _, piece := range []string{string(b[:1]), string(b[1:]), "a\xffb"} {
				if err := emit(piece); err != nil {
					return err
				}
			}
			return nil
		}), nil
	}}})
	got := h.chat(withTimeout(t, 5*time.Second), "x")
	if got.failure != nil || got.text != "鼠a\uFFFDb" {
		t.Fatalf("got %q %v", got.text, got.failure)
	}
}

func TestActorMetrics(t *testing.T) {
	h := startLayout(t, actors.PipelineSpec{
		Name:   "metrics",
		Model:  actors.ModelSpec{Path: "model/echo", New: func() (actors.Model, error) { return echo, nil }},
		Egress: []actors.FilterSpec{filterSpec("egress/0/pair", newPair)},
	})
	ctx := withTimeout(t, 5*time.Second)
	for i := 0; i < 3; i++ {
		h.chat(ctx, "abcd")
	}
	// Each chat: Begin, 4 chunks, End through the egress filter.
	waitFor(t, 5*time.Second, func() bool {
		n, _ := testutil.GatherAndCount(h.reg, "troupe_actor_mailbox_depth")
		return n == 4 // root, pipeline, model, egress filter
	}, "mailbox depth series for every actor")
	got := testutil.ToFloat64(messages(h, "egress/0/pair"))
	if got < 18 {
		t.Fatalf("egress filter handled %v messages, want at least 18", got)
	}
	for _, path := range []string{"model/echo", "egress/0/pair"} {
		if count, _ := histogram(t, h, "troupe_actor_first_chunk_seconds", path); count != 3 {
			t.Errorf("%s: share of the time to first chunk observed %d times, want one per chat", path, count)
		}
	}
	for _, path := range []string{"model/echo"} {
		if v := testutil.ToFloat64(gauge(h, "troupe_actor_in_flight", path)); v != 0 {
			t.Errorf("%s: %v chats in flight after every chat ended", path, v)
		}
	}
}

func restarts(h *harness, path string) prometheus.Collector {
	return metricFor(h, "troupe_actor_restarts_total", path)
}

func messages(h *harness, path string) prometheus.Collector {
	return metricFor(h, "troupe_actor_messages_total", path)
}

// metricFor finds one actor's series in the harness registry.
func metricFor(h *harness, name, path string) prometheus.Collector {
	return collectorFunc(func(ch chan<- prometheus.Metric) {
		mfs, err := h.reg.Gather()
		if err != nil {
			h.t.Fatal(err)
		}
		for _, mf := range mfs {
			if mf.GetName() != name {
				continue
			}
			for _, m := range mf.GetMetric() {
				for _, l := range m.GetLabel() {
					if l.GetName() == "actor" && l.GetValue() == path {
						ch <- prometheus.MustNewConstMetric(prometheus.NewDesc(name, "", nil, nil),
							prometheus.CounterValue, m.GetCounter().GetValue())
					}
				}
			}
		}
	})
}

// gauge reads one actor's gauge; a series not created yet reads 0.
func gauge(h *harness, name, path string) prometheus.Collector {
	return collectorFunc(func(ch chan<- prometheus.Metric) {
		v := 0.0
		mfs, _ := h.reg.Gather()
		for _, mf := range mfs {
			if mf.GetName() != name {
				continue
			}
			for _, m := range mf.GetMetric() {
				for _, l := range m.GetLabel() {
					if l.GetName() == "actor" && l.GetValue() == path {
						v = m.GetGauge().GetValue()
					}
				}
			}
		}
		ch <- prometheus.MustNewConstMetric(prometheus.NewDesc(name, "", nil, nil), prometheus.GaugeValue, v)
	})
}

type collectorFunc func(chan<- prometheus.Metric)

func (f collectorFunc) Describe(chan<- *prometheus.Desc)    {}
func (f collectorFunc) Collect(ch chan<- prometheus.Metric) { f(ch) }

// waitFor polls cond until it holds or the timeout passes.
func waitFor(t *testing.T, timeout time.Duration, cond func() bool, what string) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for: %s", what)
		}
		time.Sleep(2 * time.Millisecond)
	}
}
