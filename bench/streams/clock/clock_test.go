package clock

import (
	"context"
	"strconv"
	"strings"
	"testing"

	"github.com/troupe-llm/troupe/actors"
)

func TestClock(t *testing.T) {
	if _, err := New(actors.Args{"every": "0s"}); err == nil {
		t.Error("a zero pace was taken")
	}
	if _, err := New(actors.Args{"chunks": 0}); err == nil {
		t.Error("zero chunks were taken")
	}
	m, err := New(actors.Args{"chunks": 3, "every": "1ms"})
	if err != nil {
		t.Fatal(err)
	}
	var chunks []string
	err = m.Generate(context.Background(), &actors.ChatRequest{}, func(s string) error {
		chunks = append(chunks, s)
		return nil
	})
	if err != nil || len(chunks) != 3 {
		t.Fatalf("%d chunks, %v; want 3", len(chunks), err)
	}
	var last int64
	for _, c := range chunks {
		ns, err := strconv.ParseInt(strings.TrimSuffix(c, "\n"), 10, 64)
		if err != nil || !strings.HasSuffix(c, "\n") || ns < last {
			t.Fatalf("chunk %q is not a later time on a line", c)
		}
		last = ns
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	m, _ = New(actors.Args{"chunks": 2, "every": "1h"})
	if err := m.Generate(ctx, &actors.ChatRequest{}, func(string) error { return nil }); err == nil {
		t.Fatal("a cancelled chat went on")
	}
}
