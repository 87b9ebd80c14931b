//go:build linux

package command_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/troupe-llm/troupe/actors"
	"github.com/troupe-llm/troupe/actors/command"
)

// bound is how long a run that must end promptly may take: generous, so a
// loaded CI machine does not fail the test, and still far below the
// programs' own 1000 s.
const bound = 5 * time.Second

func newModel(t *testing.T, args actors.Args) actors.Model {
	t.Helper()
	m, err := command.New(args)
	if err != nil {
		t.Fatalf("New(%v): %v", args, err)
	}
	return m
}

func sh(script string, args ...string) []any {
	argv := []any{"/bin/sh", "-c", script, "sh"}
	for _, a := range args {
		argv = append(argv, a)
	}
	return argv
}

func chat(params map[string]string, history ...*actors.Message) *actors.ChatRequest {
	return &actors.ChatRequest{ChatId: "c1", History: history, Params: params}
}

func user(s string) *actors.Message { return &actors.Message{Role: actors.Role_ROLE_USER, Content: s} }

// generate runs one chat and returns its output, its error and the chunks
// as emitted. A test that would otherwise hang fails after ten seconds.
func generate(t *testing.T, m actors.Model, req *actors.ChatRequest) (string, []string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var chunks []string
	err := m.Generate(ctx, req, func(s string) error {
		chunks = append(chunks, s)
		return nil
	})
	return strings.Join(chunks, ""), chunks, err
}

func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(bound)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("after %v: %s", bound, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// gone reports whether a process has ended. A zombie counts as ended: an
// orphan is reaped by pid 1, which in a container may never do it.
func gone(pid int) bool {
	if err := syscall.Kill(pid, 0); errors.Is(err, syscall.ESRCH) {
		return true
	}
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return true
	}
	// The state follows the command name, which is in parentheses and may
	// hold spaces.
	fields := strings.Fields(string(stat[strings.LastIndexByte(string(stat), ')')+1:]))
	return len(fields) == 0 || fields[0] == "Z" || fields[0] == "X"
}

func TestStdin(t *testing.T) {
	history := []*actors.Message{
		{Role: actors.Role_ROLE_SYSTEM, Content: "be brief"},
		user("hello <world> & you"),
		{Role: actors.Role_ROLE_ASSISTANT, Content: "hi"},
		user("second question"),
	}
	jsonHistory := `[{"role":"system","content":"be brief"},{"role":"user","content":"hello <world> & you"},` +
		`{"role":"assistant","content":"hi"},{"role":"user","content":"second question"}]` + "\n"
	tests := []struct {
		name    string
		args    actors.Args
		history []*actors.Message
		want    string
	}{
		{"last by default", actors.Args{"argv": []any{"cat"}}, history, "second question"},
		{"last", actors.Args{"argv": []any{"cat"}, "input": "last"}, history, "second question"},
		{"through tr", actors.Args{"argv": []any{"tr", "a-z", "A-Z"}}, history, "SECOND QUESTION"},
		{"history", actors.Args{"argv": []any{"cat"}, "input": "history"}, history,
			"system: be brief\nuser: hello <world> & you\nassistant: hi\nuser: second question\n"},
		{"json", actors.Args{"argv": []any{"cat"}, "input": "json"}, history, jsonHistory},
		{"empty history", actors.Args{"argv": []any{"cat"}}, nil, ""},
		{"program ignores stdin", actors.Args{"argv": sh("echo fixed")}, history, "fixed\n"},
		{"large prompt", actors.Args{"argv": []any{"cat"}}, []*actors.Message{user(strings.Repeat("x", 1<<20))},
			strings.Repeat("x", 1<<20)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, _, err := generate(t, newModel(t, tt.args), chat(nil, tt.history...))
			if err != nil {
				t.Fatal(err)
			}
			if got != tt.want {
				t.Errorf("output %.200q, want %.200q", got, tt.want)
			}
			if tt.name == "json" {
				var list []map[string]string
				if err := json.Unmarshal([]byte(got), &list); err != nil || len(list) != 4 {
					t.Errorf("not a JSON list of 4 messages: %v", err)
				}
			}
		})
	}
}

// The program prints, then waits for a FIFO the test writes only once the
// first chunk has arrived: the answer can end only if output streams.
func TestStreamsBeforeExit(t *testing.T) {
	fifo := filepath.Join(t.TempDir(), "go")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	m := newModel(t, actors.Args{"argv": sh(`printf first; read x < "$1"; printf second`, fifo)})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var chunks []string
	err := m.Generate(ctx, chat(nil, user("hi")), func(s string) error {
		chunks = append(chunks, s)
		if strings.Join(chunks, "") == "first" {
			// Opening blocks until the script opens its end to read.
			f, err := os.OpenFile(fifo, os.O_WRONLY, 0)
			if err != nil {
				return err
			}
			defer f.Close()
			_, err = f.WriteString("go\n")
			return err
		}
		return nil
	})
	if err != nil {
		t.Fatalf("Generate: %v (chunks %q)", err, chunks)
	}
	if len(chunks) < 2 || chunks[0] != "first" || strings.Join(chunks, "") != "firstsecond" {
		t.Errorf("chunks %q, want \"first\" then \"second\"", chunks)
	}
}

func TestEnvironment(t *testing.T) {
	t.Setenv("TROUPE_TEST_SHOWN", "yes")
	t.Setenv("TROUPE_TEST_HIDDEN", "secret")
	os.Unsetenv("TROUPE_TEST_UNSET")
	const defaultPath = "PATH=/usr/local/bin:/usr/bin:/bin"
	tests := []struct {
		name   string
		args   actors.Args
		params map[string]string
		want   []string
	}{
		{"nothing listed", actors.Args{}, nil, []string{defaultPath}},
		{"allow-list", actors.Args{"env": []any{"TROUPE_TEST_SHOWN", "TROUPE_TEST_UNSET"}}, nil,
			[]string{defaultPath, "TROUPE_TEST_SHOWN=yes"}},
		{"node's PATH passed through", actors.Args{"env": []any{"PATH"}}, nil, []string{"PATH=" + os.Getenv("PATH")}},
		{"set", actors.Args{"set": map[string]any{"MODE": "fast", "PATH": "/opt/bin"}}, nil,
			[]string{"MODE=fast", "PATH=/opt/bin"}},
		{"params", actors.Args{}, map[string]string{"temperature": "0.5", "top-p": "0.9", "Max tokens": "10", "stop": `["\n\n"]`}, []string{
			defaultPath, "TROUPE_PARAM_MAX_TOKENS=10", "TROUPE_PARAM_STOP=[\"\\n\\n\"]",
			"TROUPE_PARAM_TEMPERATURE=0.5", "TROUPE_PARAM_TOP_P=0.9"}},
		{"set wins over env and params", actors.Args{
			"env": []any{"TROUPE_TEST_SHOWN"},
			"set": map[string]any{"TROUPE_TEST_SHOWN": "set", "TROUPE_PARAM_SEED": "1"}},
			map[string]string{"seed": "9", "temperature": "0"},
			[]string{defaultPath, "TROUPE_PARAM_SEED=1", "TROUPE_PARAM_TEMPERATURE=0", "TROUPE_TEST_SHOWN=set"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			args := actors.Args{"argv": []any{"env", "-0"}}
			for k, v := range tt.args {
				args[k] = v
			}
			got, _, err := generate(t, newModel(t, args), chat(tt.params, user("hi")))
			if err != nil {
				t.Fatal(err)
			}
			vars := strings.Split(strings.TrimSuffix(got, "\x00"), "\x00")
			slices.Sort(vars)
			if !slices.Equal(vars, tt.want) {
				t.Errorf("environment\n got %q\nwant %q", vars, tt.want)
			}
		})
	}
}

func TestParamVar(t *testing.T) {
	for name, want := range map[string]string{
		"temperature": "TROUPE_PARAM_TEMPERATURE",
		"top_p":       "TROUPE_PARAM_TOP_P",
		"top-p":       "TROUPE_PARAM_TOP_P",
		"Max Tokens":  "TROUPE_PARAM_MAX_TOKENS",
		"été":         "TROUPE_PARAM__T_",
		"9lives":      "TROUPE_PARAM_9LIVES",
	} {
		t.Run(name, func(t *testing.T) {
			if got := command.ParamVar(name); got != want {
				t.Errorf("ParamVar(%q) = %q, want %q", name, got, want)
			}
		})
	}
}

// failure checks that err is an *actors.Error with code and reason, whose
// Err (the log's text) holds inErr and whose Reason holds none of it.
func failure(t *testing.T, err error, code actors.Code, reason, inErr string) {
	t.Helper()
	var e *actors.Error
	if !errors.As(err, &e) {
		t.Fatalf("error %v (%T), want an *actors.Error", err, err)
	}
	if e.Code != code || e.Reason != reason {
		t.Errorf("code %v, reason %q; want %v, %q", e.Code, e.Reason, code, reason)
	}
	if e.Err == nil || !strings.Contains(e.Err.Error(), inErr) {
		t.Errorf("Err %v, want it to hold %q", e.Err, inErr)
	}
	if inErr != "" && strings.Contains(e.Reason, inErr) {
		t.Errorf("reason %q shows %q to the user", e.Reason, inErr)
	}
}

func TestFailures(t *testing.T) {
	tests := []struct {
		name   string
		script string
		params map[string]string
		code   actors.Code
		reason string
		inErr  string
	}{
		{"exit status", "echo partial; echo 'db password wrong' >&2; exit 3", nil,
			actors.Code_CODE_INTERNAL, "the command failed (exit status 3)", "db password wrong"},
		{"killed by a signal", "echo dying >&2; kill -9 $$", nil,
			actors.Code_CODE_INTERNAL, "the command failed (killed by signal 9)", "dying"},
		{"stderr keeps its tail", "head -c 100000 /dev/zero | tr '\\0' x >&2; echo THE-END >&2; exit 1", nil,
			actors.Code_CODE_INTERNAL, "the command failed (exit status 1)", "THE-END"},
		{"NUL in a parameter", "exit 0", map[string]string{"stop": "a\x00b"},
			actors.Code_CODE_INVALID_ARGUMENT, "a request parameter holds a NUL byte", "stop"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, _, err := generate(t, newModel(t, actors.Args{"argv": sh(tt.script)}), chat(tt.params, user("hi")))
			failure(t, err, tt.code, tt.reason, tt.inErr)
			if n := len(err.Error()); n > 5000 {
				t.Errorf("error of %d bytes: the stderr tail is not bounded", n)
			}
		})
	}
}

func TestProgramGoneAfterLoad(t *testing.T) {
	prog := filepath.Join(t.TempDir(), "answer")
	if err := os.WriteFile(prog, []byte("#!/bin/sh\necho hi\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	m := newModel(t, actors.Args{"argv": []any{prog}})
	if err := os.Remove(prog); err != nil {
		t.Fatal(err)
	}
	_, _, err := generate(t, m, chat(nil, user("hi")))
	failure(t, err, actors.Code_CODE_UNAVAILABLE, "the command could not be started", prog)
}

func TestTimeout(t *testing.T) {
	m := newModel(t, actors.Args{"argv": []any{"sleep", "1000"}, "timeout": "100ms"})
	start := time.Now()
	_, _, err := generate(t, m, chat(nil, user("hi")))
	if took := time.Since(start); took > bound {
		t.Errorf("Generate took %v after a 100ms timeout", took)
	}
	failure(t, err, actors.Code_CODE_DEADLINE_EXCEEDED, "the command ran past its timeout", "timed out")
}

// pids reads "leader child\n", the first line of the scripts that leave a
// child behind.
func pids(line string) (leader, child int, err error) {
	f := strings.Fields(line)
	if len(f) == 2 {
		leader, err = strconv.Atoi(f[0])
		if err == nil {
			child, err = strconv.Atoi(f[1])
		}
		if err == nil {
			return leader, child, nil
		}
	}
	return 0, 0, fmt.Errorf("want two pids, got %q", line)
}

func TestCancelKillsGroup(t *testing.T) {
	errGone := errors.New("the chat is gone")
	tests := []struct {
		name     string
		script   string
		emitFail bool // the chat ends by emit failing, not by ctx
	}{
		{"cancelled", `sleep 1000 & echo $$ $!; wait`, false},
		{"SIGTERM ignored by all", `trap '' TERM; sleep 1000 & echo $$ $!; while :; do wait; done`, false},
		{"emit fails", `sleep 1000 & echo $$ $!; wait`, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := newModel(t, actors.Args{"argv": sh(tt.script)})
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			var out string
			var stoppedAt time.Time
			var leader, child int
			var pidsErr error
			type result struct {
				err  error
				took time.Duration
			}
			done := make(chan result, 1)
			go func() {
				err := m.Generate(ctx, chat(nil, user("hi")), func(s string) error {
					if !stoppedAt.IsZero() {
						return ctx.Err()
					}
					out += s
					if !strings.HasSuffix(out, "\n") {
						return nil
					}
					leader, child, pidsErr = pids(out)
					stoppedAt = time.Now()
					if tt.emitFail {
						return errGone
					}
					cancel()
					return nil
				})
				done <- result{err, time.Since(stoppedAt)}
			}()
			var r result
			select {
			case r = <-done:
			case <-time.After(10 * time.Second):
				cancel()
				<-done
				t.Fatal("Generate did not return")
			}
			if stoppedAt.IsZero() {
				t.Fatalf("Generate returned %v before the script printed its pids", r.err)
			}
			if pidsErr != nil {
				t.Fatal(pidsErr)
			}
			want := context.Canceled
			if tt.emitFail {
				want = errGone
			}
			if !errors.Is(r.err, want) {
				t.Errorf("Generate returned %v, want %v", r.err, want)
			}
			if r.took > bound {
				t.Errorf("Generate returned %v after the chat ended", r.took)
			}
			eventually(t, fmt.Sprintf("script %d is still running", leader), func() bool { return gone(leader) })
			eventually(t, fmt.Sprintf("its child %d is still running", child), func() bool { return gone(child) })
		})
	}
}

// A program that exits leaving a child holding stdout still ends its answer,
// and the child is killed.
func TestLeftoversKilledAtExit(t *testing.T) {
	m := newModel(t, actors.Args{"argv": sh(`sleep 1000 & echo $$ $!`)})
	start := time.Now()
	got, _, err := generate(t, m, chat(nil, user("hi")))
	if err != nil {
		t.Fatal(err)
	}
	if took := time.Since(start); took > bound {
		t.Errorf("Generate took %v", took)
	}
	_, child, err := pids(got)
	if err != nil {
		t.Fatal(err)
	}
	eventually(t, fmt.Sprintf("child %d is still running", child), func() bool { return gone(child) })
}

// A process that leaves the program's group (setsid) and holds stdout and
// stderr open cannot be killed with the group; the answer still ends a
// bounded while after the program exits.
func TestEscapedChildDoesNotHoldAnswer(t *testing.T) {
	m := newModel(t, actors.Args{"argv": sh(`setsid sleep 1000 & echo $$ $!`)})
	start := time.Now()
	got, _, err := generate(t, m, chat(nil, user("hi")))
	took := time.Since(start)
	_, escaped, pidsErr := pids(got)
	if pidsErr == nil {
		t.Cleanup(func() { _ = syscall.Kill(escaped, syscall.SIGKILL) })
	}
	if err != nil {
		t.Fatal(err)
	}
	if pidsErr != nil {
		t.Fatal(pidsErr)
	}
	if took > bound {
		t.Errorf("Generate took %v", took)
	}
}

func TestDir(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "run.sh"), []byte("#!/bin/sh\necho ran\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	real, err := filepath.EvalSymlinks(dir)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		argv []any
		want string
	}{
		{"working directory", []any{"pwd", "-P"}, real + "\n"},
		{"program relative to dir", []any{"./run.sh"}, "ran\n"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, _, err := generate(t, newModel(t, actors.Args{"argv": tt.argv, "dir": dir}), chat(nil, user("hi")))
			if err != nil {
				t.Fatal(err)
			}
			if got != tt.want {
				t.Errorf("output %q, want %q", got, tt.want)
			}
		})
	}
}

func TestConcurrentChats(t *testing.T) {
	m := newModel(t, actors.Args{"argv": []any{"cat"}})
	var wg sync.WaitGroup
	for i := range 8 {
		wg.Go(func() {
			prompt := fmt.Sprintf("prompt %d", i)
			var got strings.Builder
			err := m.Generate(context.Background(), chat(nil, user(prompt)), func(s string) error {
				got.WriteString(s)
				return nil
			})
			if err != nil || got.String() != prompt {
				t.Errorf("chat %d: %q, %v; want %q", i, got.String(), err, prompt)
			}
		})
	}
	wg.Wait()
}

func TestNewErrors(t *testing.T) {
	file := filepath.Join(t.TempDir(), "file")
	if err := os.WriteFile(file, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		args actors.Args
		want string // the error must hold it
	}{
		{"no argv", actors.Args{}, "argv"},
		{"empty argv", actors.Args{"argv": []any{}}, "argv"},
		{"argv not a list", actors.Args{"argv": "cat -n"}, "argv"},
		{"empty program", actors.Args{"argv": []any{""}}, "argv[0]"},
		{"program not in PATH", actors.Args{"argv": []any{"troupe-no-such-program"}}, `argv[0]: no program "troupe-no-such-program" in PATH`},
		{"no file at path", actors.Args{"argv": []any{"/nonexistent/answer"}}, "argv[0]: /nonexistent/answer is not an executable file"},
		{"not executable", actors.Args{"argv": []any{file}}, "argv[0]: " + file + " is not an executable file"},
		{"NUL in argv", actors.Args{"argv": []any{"cat", "a\x00b"}}, "argv[1]"},
		{"unknown input", actors.Args{"argv": []any{"cat"}, "input": "xml"}, `input: want "last", "history" or "json", got "xml"`},
		{"bad timeout", actors.Args{"argv": []any{"cat"}, "timeout": "soon"}, "timeout"},
		{"negative timeout", actors.Args{"argv": []any{"cat"}, "timeout": "-1s"}, "timeout"},
		{"missing dir", actors.Args{"argv": []any{"cat"}, "dir": "/nonexistent"}, "dir"},
		{"dir is a file", actors.Args{"argv": []any{"cat"}, "dir": file}, "dir: " + file + " is not a directory"},
		{"bad env name", actors.Args{"argv": []any{"cat"}, "env": []any{"A=B"}}, "env[0]"},
		{"env not a list", actors.Args{"argv": []any{"cat"}, "env": "HOME"}, "env"},
		{"bad set name", actors.Args{"argv": []any{"cat"}, "set": map[string]any{"": "x"}}, "set"},
		{"set value not a string", actors.Args{"argv": []any{"cat"}, "set": map[string]any{"N": 1}}, "set"},
		{"concurrency in args", actors.Args{"argv": []any{"cat"}, "concurrency": 2}, "concurrency: set it on the llm beside args"},
		{"unknown argument", actors.Args{"argv": []any{"cat"}, "shell": true}, `unknown field "shell"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m, err := command.New(tt.args)
			if err == nil {
				t.Fatalf("New(%v) = %v, want an error", tt.args, m)
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Errorf("error %q, want it to hold %q", err, tt.want)
			}
		})
	}
}

func TestRegistered(t *testing.T) {
	k, err := actors.DefaultRegistry.Model("command")
	if err != nil {
		t.Fatal(err)
	}
	if k.Capacity != 4 {
		t.Errorf("capacity %d, want 4", k.Capacity)
	}
}
