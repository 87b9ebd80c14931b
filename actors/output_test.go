package actors_test

import (
	"context"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/troupe-llm/troupe/actors"
)

// Tool-call deltas travel in order with the text and pass the egress filters
// unchanged; usage and the finish reason arrive with the End.
func TestOutputToolCallsUsageFinish(t *testing.T) {
	h := startLayout(t, actors.PipelineSpec{
		Model: actors.ModelSpec{New: func() (actors.Model, error) {
			return actors.ModelFunc(func(ctx context.Context, _ *actors.ChatRequest, emit func(string) error) error {
				out := actors.OutputOf(ctx)
				if out == nil {
					t.Error("no Output in a generation's context")
				}
				if err := emit("ab"); err != nil {
					return err
				}
				if err := out.ToolCalls(`[{"index":0,"id":"call_1","function":{"name":"f","arguments":"{\"x\""}}]`); err != nil {
					return err
				}
				if err := out.ToolCalls(`[{"index":0,"function":{"arguments":":1}"}}]`); err != nil {
					return err
				}
				out.Usage(12, 3)
				out.Finish("tool_calls")
				return nil
			}), nil
		}},
		Egress: []actors.FilterSpec{filterSpec("egress/0/pair", newPair)},
	})
	got := h.chat(withTimeout(t, 5*time.Second), "x")
	if got.failure != nil {
		t.Fatalf("failed: %v", got.failure)
	}
	if got.text != "ba" {
		t.Errorf("text %q, want the filter's output %q", got.text, "ba")
	}
	want := []string{`[{"index":0,"id":"call_1","function":{"name":"f","arguments":"{\"x\""}}]`, `[{"index":0,"function":{"arguments":":1}"}}]`}
	if len(got.toolCalls) != 2 || got.toolCalls[0] != want[0] || got.toolCalls[1] != want[1] {
		t.Errorf("tool calls %q, want %q", got.toolCalls, want)
	}
	if got.end.GetFinishReason() != "tool_calls" || got.end.GetPromptTokens() != 12 || got.end.GetCompletionTokens() != 3 {
		t.Errorf("end %+v, want finish tool_calls and usage 12/3", got.end)
	}
}

// OutputOf outside a host is nil, and a nil Output does nothing, so a kind
// can be unit-tested by calling Generate directly.
func TestOutputOutsideHost(t *testing.T) {
	out := actors.OutputOf(context.Background())
	if out != nil {
		t.Fatal("Output outside a host")
	}
	if err := out.ToolCalls("[]"); err != nil {
		t.Fatal(err)
	}
	out.Usage(1, 2)
	out.Finish("stop")
}

// closingModel counts Close calls and the generations running when Close came.
type closingModel struct {
	running, closed, closedWhileRunning *atomic.Int32
}

func (m closingModel) Generate(ctx context.Context, req *actors.ChatRequest, emit func(string) error) error {
	m.running.Add(1)
	defer m.running.Add(-1)
	switch actors.LastUserMessage(req.History) {
	case "panic":
		panic("boom")
	case "hang":
		if err := emit("started"); err != nil {
			return err
		}
		<-ctx.Done()
		// Slow to stop, as an upstream call winding down is.
		time.Sleep(20 * time.Millisecond)
		return ctx.Err()
	}
	return emit("ok")
}

func (m closingModel) Close() error {
	if m.running.Load() > 0 {
		m.closedWhileRunning.Add(1)
	}
	m.closed.Add(1)
	return nil
}

// An instance that holds resources is closed when it is restarted and when
// its layout stops, each time after its generations have returned.
func TestModelInstanceClosedOnRestartAndStop(t *testing.T) {
	var running, closed, whileRunning, made atomic.Int32
	h := startLayout(t, actors.PipelineSpec{Model: actors.ModelSpec{Path: "model/closing", New: func() (actors.Model, error) {
		made.Add(1)
		return closingModel{&running, &closed, &whileRunning}, nil
	}}})
	ctx := withTimeout(t, 10*time.Second)

	// A chat streaming on the instance that is about to be replaced.
	hung := actors.NewReply(h.system, "hung")
	defer hung.Close()
	h.system.Root.Send(h.layout.Root, &actors.ChatRequest{ChatId: "hung",
		History: []*actors.Message{{Content: "hang"}}, ReplyTo: hung.PID()})
	waitForChunk(ctx, t, hung, "started")

	if got := h.chat(ctx, "panic"); got.failure == nil {
		t.Fatal("panicking chat did not fail")
	}
	if got := collect(ctx, t, hung); got.failure == nil || got.failure.Code != actors.Code_CODE_UNAVAILABLE {
		t.Fatalf("chat on the restarted instance: %+v, want unavailable", got)
	}
	waitFor(t, 5*time.Second, func() bool { return closed.Load() == 1 }, "the crashed instance closed")
	if got := h.chat(ctx, "after"); got.text != "ok" {
		t.Fatalf("after restart: %+v", got)
	}

	stopCtx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := h.layout.Stop(stopCtx); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, func() bool { return closed.Load() == 2 }, "the last instance closed at stop")
	if n := whileRunning.Load(); n != 0 {
		t.Fatalf("Close came %d times while a generation was still running", n)
	}
}

// The time from a cancel to the model's return is observed per model actor.
func TestCancelLatencyObserved(t *testing.T) {
	var running, closed, whileRunning atomic.Int32
	h := startLayout(t, actors.PipelineSpec{Model: actors.ModelSpec{Path: "model/closing", New: func() (actors.Model, error) {
		return closingModel{&running, &closed, &whileRunning}, nil
	}}})
	ctx := withTimeout(t, 10*time.Second)
	reply := actors.NewReply(h.system, "c1")
	defer reply.Close()
	h.system.Root.Send(h.layout.Root, &actors.ChatRequest{ChatId: "c1",
		History: []*actors.Message{{Content: "hang"}}, ReplyTo: reply.PID()})
	waitForChunk(ctx, t, reply, "started")
	h.system.Root.Send(h.layout.Root, &actors.Cancel{ChatId: "c1"})
	if got := collect(ctx, t, reply); got.failure == nil || got.failure.Code != actors.Code_CODE_CANCELED {
		t.Fatalf("cancelled chat: %+v", got)
	}
	waitFor(t, 5*time.Second, func() bool {
		count, sum := histogram(t, h, "troupe_model_cancel_seconds", "model/closing")
		return count == 1 && sum >= 0.015
	}, "one cancel observed, at least as long as the model took to stop")
}

// histogram returns the sample count and sum of one actor's histogram.
func histogram(t *testing.T, h *harness, name, path string) (uint64, float64) {
	t.Helper()
	mfs, err := h.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "actor" && l.GetValue() == path {
					return m.GetHistogram().GetSampleCount(), m.GetHistogram().GetSampleSum()
				}
			}
		}
	}
	return 0, 0
}

type shoutArgs struct {
	Times int    `json:"times"`
	Mark  string `json:"mark"`
}

func (a *shoutArgs) Default() { a.Times, a.Mark = 1, "!" }

func (a *shoutArgs) Validate() error {
	if a.Times < 1 || a.Times > 5 {
		return fmt.Errorf("times must be 1 to 5, got %d", a.Times)
	}
	return nil
}

// A typed kind decodes its arguments strictly over its defaults and
// validates them.
func TestTypedModelKind(t *testing.T) {
	kind := actors.TypedModel("shout", 4, func(a shoutArgs) (actors.Model, error) {
		return actors.ModelFunc(func(_ context.Context, req *actors.ChatRequest, emit func(string) error) error {
			return emit(strings.Repeat(actors.LastUserMessage(req.History)+a.Mark, a.Times))
		}), nil
	})
	reg := actors.NewRegistry()
	reg.RegisterModel(kind)
	k, err := reg.Model("shout")
	if err != nil || k.Capacity != 4 {
		t.Fatalf("kind %+v, %v", k, err)
	}
	for _, tt := range []struct {
		args    actors.Args
		want    string
		wantErr string
	}{
		{nil, "hi!", ""},
		{actors.Args{"times": 2, "mark": "?"}, "hi?hi?", ""},
		{actors.Args{"times": 9}, "", "times must be 1 to 5"},
		{actors.Args{"loud": true}, "", `unknown field "loud"`},
		{actors.Args{"times": "two"}, "", "cannot unmarshal"},
	} {
		m, err := k.New(tt.args)
		if tt.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("%v: err %v, want %q", tt.args, err, tt.wantErr)
			}
			continue
		}
		if err != nil {
			t.Fatal(err)
		}
		var got string
		if err := m.Generate(context.Background(), &actors.ChatRequest{History: []*actors.Message{{Content: "hi"}}},
			func(s string) error { got += s; return nil }); err != nil || got != tt.want {
			t.Errorf("%v: %q, %v; want %q", tt.args, got, err, tt.want)
		}
	}
}
