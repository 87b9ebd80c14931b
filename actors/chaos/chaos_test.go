package chaos

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/troupe-llm/troupe/actors"
)

func newModel(t *testing.T, args actors.Args) actors.Model {
	t.Helper()
	k, err := actors.DefaultRegistry.Model("chaos")
	if err != nil {
		t.Fatal(err)
	}
	m, err := k.New(args)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func generate(m actors.Model, ctx context.Context) (text string, err error, panicked bool) {
	defer func() {
		if recover() != nil {
			panicked = true
		}
	}()
	err = m.Generate(ctx, &actors.ChatRequest{}, func(s string) error { text += s; return nil })
	return text, err, false
}

func TestFates(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	for _, tt := range []struct {
		name  string
		args  actors.Args
		check func(text string, err error, panicked bool) bool
	}{
		{"spared", actors.Args{"content": "abc", "delay": "0s"}, func(s string, err error, p bool) bool { return s == "abc" && err == nil && !p }},
		{"panic after 2", actors.Args{"content": "abcd", "panic": 1, "after": 2, "delay": "0s"}, func(s string, err error, p bool) bool { return s == "ab" && p }},
		{"error", actors.Args{"content": "abcd", "error": 1, "delay": "0s"}, func(s string, err error, p bool) bool {
			var e *actors.Error
			return s == "" && errors.As(err, &e) && e.Code == actors.Code_CODE_UNAVAILABLE
		}},
		{"overload", actors.Args{"content": "abcd", "overload": 1, "delay": "0s"}, func(s string, err error, p bool) bool {
			var e *actors.Error
			return errors.As(err, &e) && e.Code == actors.Code_CODE_OVERLOADED && e.RetryAfter == time.Second
		}},
		{"after past the end", actors.Args{"content": "ab", "error": 1, "after": 5, "delay": "0s"}, func(s string, err error, p bool) bool { return s == "ab" && err != nil }},
	} {
		t.Run(tt.name, func(t *testing.T) {
			text, err, panicked := generate(newModel(t, tt.args), ctx)
			if !tt.check(text, err, panicked) {
				t.Fatalf("text %q, err %v, panicked %v", text, err, panicked)
			}
		})
	}
}

// A hanging chat ends with its context.
func TestHangEndsWithContext(t *testing.T) {
	m := newModel(t, actors.Args{"hang": 1})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { _, err, _ := generate(m, ctx); done <- err }()
	cancel()
	select {
	case err := <-done:
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("err %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("a hanging chat did not end with its context")
	}
}

// The draws are repeatable with a seed, and follow the probabilities.
// A seed repeats a run draw for draw: the first instance of a seed draws
// the same in every run, and so does the second; an instance restarted
// draws anew, not its predecessor's draws again.
func TestSeededDraws(t *testing.T) {
	args := actors.Args{"content": "x", "delay": "0s", "error": 0.3, "seed": 42}
	outcomes := func() string {
		m := newModel(t, args)
		var b strings.Builder
		for i := 0; i < 1000; i++ {
			if _, err, _ := generate(m, context.Background()); err != nil {
				b.WriteByte('E')
			} else {
				b.WriteByte('.')
			}
		}
		return b.String()
	}
	newRun := func() {
		instances.Lock()
		instances.bySeed = nil
		instances.Unlock()
	}
	newRun()
	first, restarted := outcomes(), outcomes()
	newRun()
	if again := outcomes(); again != first {
		t.Fatal("the same seed drew differently in a second run")
	}
	if again := outcomes(); again != restarted {
		t.Fatal("the second instance of a seed drew differently in a second run")
	}
	if first == restarted {
		t.Fatal("a restarted instance drew its predecessor's draws again")
	}
	if n := strings.Count(first, "E"); n < 240 || n > 360 {
		t.Fatalf("%d errors in 1000 draws at p=0.3", n)
	}
}

// The first crash_loop chats of every instance panic.
func TestCrashLoop(t *testing.T) {
	m := newModel(t, actors.Args{"content": "x", "delay": "0s", "crash_loop": 2})
	for i, want := range []bool{true, true, false} {
		if _, _, p := generate(m, context.Background()); p != want {
			t.Fatalf("chat %d panicked %v, want %v", i, p, want)
		}
	}
}

func TestBadArguments(t *testing.T) {
	k, _ := actors.DefaultRegistry.Model("chaos")
	for _, args := range []actors.Args{{"panic": 2.0}, {"error": 0.6, "hang": 0.6}, {"delay": "soon"}, {"after": -1}, {"typo": 1}} {
		if _, err := k.New(args); err == nil {
			t.Errorf("%v accepted", args)
		}
	}
}

// With while_file, the model fails only while the file exists.
func TestWhileFile(t *testing.T) {
	file := filepath.Join(t.TempDir(), "broken")
	m := newModel(t, actors.Args{"content": "ok", "delay": "0s", "error": 1, "while_file": file})
	ctx := context.Background()
	if text, err, _ := generate(m, ctx); err != nil || text != "ok" {
		t.Fatalf("without the file: %q, %v; want spared", text, err)
	}
	if err := os.WriteFile(file, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err, _ := generate(m, ctx); err == nil {
		t.Fatal("with the file the chat was spared")
	}
	if err := os.Remove(file); err != nil {
		t.Fatal(err)
	}
	if _, err, _ := generate(m, ctx); err != nil {
		t.Fatalf("the file removed, the chat failed: %v", err)
	}
}
