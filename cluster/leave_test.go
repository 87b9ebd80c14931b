package cluster

import (
	"context"
	"io"
	"log/slog"
	"testing"
	"time"

	"github.com/asynkron/protoactor-go/actor"

	"github.com/troupe-llm/troupe/actors"
)

// Stop verbs are safe to repeat: a second Leave does nothing, and does
// not panic on a closed channel.
func TestLeaveTwice(t *testing.T) {
	system := actor.NewActorSystemWithConfig(actor.Configure(actor.WithLoggerFactory(
		func(*actor.ActorSystem) *slog.Logger { return slog.New(slog.DiscardHandler) })))
	t.Cleanup(system.Shutdown)
	c, err := New(Config{NodeName: "solo", BindAddress: "127.0.0.1", AdvertiseAddress: "127.0.0.1",
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))}, system)
	if err != nil {
		t.Fatal(err)
	}
	l, err := actors.StartPipeline(system, actors.PipelineSpec{Name: "llm",
		Model: actors.ModelSpec{Path: "model/echo", New: func() (actors.Model, error) { return echoModel, nil }, Capacity: 1}}, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = l.Stop(ctx)
	})
	if err := c.Start(map[string]*actors.Layout{"llm": l}); err != nil {
		t.Fatal(err)
	}
	if err := c.Leave(time.Second); err != nil {
		t.Fatal(err)
	}
	if err := c.Leave(time.Second); err != nil {
		t.Fatalf("second Leave: %v", err)
	}
}
