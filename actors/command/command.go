// Package command is the command model, the counterpart of Kuwa's pipe
// executor: for every chat it runs a program with the prompt on its standard
// input and streams the program's standard output as the answer.
//
// The program is started directly from argv, never through a shell, with an
// environment built from the layout's allow-list alone, so a node's secrets
// reach a script only when a layout names them. Each run has a process group
// of its own: when the chat is cancelled, times out or the program exits,
// whatever the program started in its group is killed with it.
package command

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/troupe-llm/troupe/actors"
)

// Args are the command model's layout arguments.
type Args struct {
	// Argv is the program and its arguments. argv[0] is a path (relative
	// ones are taken from dir) or a name looked up in the node's PATH when
	// the layout loads, so a missing program is a layout error.
	Argv []string `json:"argv"`
	// Env names the node's environment variables the program sees; nothing
	// else of the node's environment is passed on.
	Env []string `json:"env"`
	// Set gives the program more environment variables; they win over env
	// and over request parameters.
	Set map[string]string `json:"set"`
	// Dir is the program's working directory; empty keeps the node's.
	Dir string `json:"dir"`
	// Input is what the program reads on stdin: "last" (the default, as
	// Kuwa's pipe executor) the last user message as is; "history" the
	// whole history as "role: content" lines; "json" the history as a JSON
	// list of {"role", "content"} objects on one line.
	Input string `json:"input"`
	// Timeout bounds one run, as a Go duration ("2m"); empty leaves only
	// the chat's own deadline.
	Timeout string `json:"timeout"`
	// Concurrency is not an argument: how many programs run at once is the
	// llm's concurrency key, beside args, which the host's admission
	// enforces. It is declared only to say so when a layout puts it here.
	Concurrency any `json:"concurrency"`
}

// Input modes.
const (
	inputLast    = "last"
	inputHistory = "history"
	inputJSON    = "json"
)

// defaultPath is the PATH a program gets when the layout neither passes the
// node's PATH through nor sets one: scripts call other programs by name, and
// the node's own PATH is part of the environment that is not inherited.
const defaultPath = "/usr/local/bin:/usr/bin:/bin"

// grace is how long a program has between SIGTERM and SIGKILL, and how long
// Wait waits for stderr when something outside the program's group holds it
// open after the program exited.
const grace = 2 * time.Second

// drain is how long stdout is still read after the program exited and its
// group was killed. What they wrote is in the pipe already and reads at
// once; the bound is for a process that left the group and holds the pipe.
const drain = time.Second

// stderrTail is how much of the end of stderr a failure's error keeps.
const stderrTail = 4 << 10

// paramPrefix starts the environment variable of each request parameter.
const paramPrefix = "TROUPE_PARAM_"

// Model is the command model. It holds no process between chats, so it needs
// no Close.
type Model struct {
	path    string   // argv[0] resolved, absolute
	argv    []string // as written, argv[0] included
	dir     string
	input   string
	timeout time.Duration
	base    []string        // NAME=value from env, plus PATH if not given
	set     []string        // NAME=value from set, sorted
	fixed   map[string]bool // names in set: parameters do not override them
}

var _ actors.Model = (*Model)(nil)

// New returns a command model.
func New(args actors.Args) (actors.Model, error) {
	var a Args
	if err := args.Decode(&a); err != nil {
		return nil, err
	}
	if !supported {
		return nil, errors.New("the command kind runs on Linux only")
	}
	if a.Concurrency != nil {
		return nil, errors.New("concurrency: set it on the llm beside args (llm: {class: command, concurrency: N, args: ...}), not in args")
	}
	m := &Model{input: inputLast, fixed: map[string]bool{}}

	if a.Dir != "" {
		dir, err := filepath.Abs(a.Dir)
		if err != nil {
			return nil, fmt.Errorf("dir: %w", err)
		}
		if fi, err := os.Stat(dir); err != nil {
			return nil, fmt.Errorf("dir: %w", err)
		} else if !fi.IsDir() {
			return nil, fmt.Errorf("dir: %s is not a directory", dir)
		}
		m.dir = dir
	}

	if len(a.Argv) == 0 {
		return nil, errors.New("argv: want the program and its arguments, e.g. [\"/usr/local/bin/answer\", \"--fast\"]")
	}
	for i, s := range a.Argv {
		if strings.IndexByte(s, 0) >= 0 {
			return nil, fmt.Errorf("argv[%d]: holds a NUL byte", i)
		}
	}
	path, err := resolve(a.Argv[0], m.dir)
	if err != nil {
		return nil, fmt.Errorf("argv[0]: %w", err)
	}
	m.path, m.argv = path, append([]string(nil), a.Argv...)

	switch a.Input {
	case "", inputLast:
	case inputHistory, inputJSON:
		m.input = a.Input
	default:
		return nil, fmt.Errorf("input: want %q, %q or %q, got %q", inputLast, inputHistory, inputJSON, a.Input)
	}

	if a.Timeout != "" {
		d, err := time.ParseDuration(a.Timeout)
		if err != nil || d <= 0 {
			return nil, fmt.Errorf("timeout: want a positive duration such as \"2m\", got %q", a.Timeout)
		}
		m.timeout = d
	}

	names := map[string]bool{}
	for i, name := range a.Env {
		if err := checkName(name); err != nil {
			return nil, fmt.Errorf("env[%d]: %w", i, err)
		}
		names[name] = true
		if v, ok := os.LookupEnv(name); ok {
			m.base = append(m.base, name+"="+v)
		}
	}
	for name, v := range a.Set {
		if err := checkName(name); err != nil {
			return nil, fmt.Errorf("set: %w", err)
		}
		if strings.IndexByte(v, 0) >= 0 {
			return nil, fmt.Errorf("set: %s: the value holds a NUL byte", name)
		}
		names[name] = true
		m.fixed[name] = true
		m.set = append(m.set, name+"="+v)
	}
	sort.Strings(m.set)
	if !names["PATH"] {
		m.base = append(m.base, "PATH="+defaultPath)
	}
	return m, nil
}

// resolve finds the program at load time, so that a layout naming a missing
// one fails when it loads rather than at its first chat.
func resolve(prog, dir string) (string, error) {
	if prog == "" {
		return "", errors.New("want a program, got an empty string")
	}
	if !strings.Contains(prog, "/") {
		path, err := exec.LookPath(prog)
		if errors.Is(err, exec.ErrDot) {
			return "", fmt.Errorf("%q is found only in the current directory through PATH; give its path, e.g. \"./%s\"", prog, prog)
		}
		if err != nil {
			return "", fmt.Errorf("no program %q in PATH", prog)
		}
		return filepath.Abs(path)
	}
	path := prog
	if !filepath.IsAbs(path) && dir != "" {
		path = filepath.Join(dir, path)
	}
	path, err := filepath.Abs(path)
	if err != nil {
		return "", err
	}
	if _, err := exec.LookPath(path); err != nil {
		return "", fmt.Errorf("%s is not an executable file", path)
	}
	return path, nil
}

func checkName(name string) error {
	if name == "" || strings.ContainsAny(name, "=\x00") {
		return fmt.Errorf("%q is not an environment variable name", name)
	}
	return nil
}

// environ is a run's environment: the allow-list, then the request's
// parameters, then set. Later entries win, as exec.Cmd keeps the last of
// duplicate names.
func (m *Model) environ(params map[string]string) ([]string, error) {
	env := make([]string, 0, len(m.base)+len(params)+len(m.set))
	env = append(env, m.base...)
	keys := make([]string, 0, len(params))
	for k := range params {
		keys = append(keys, k)
	}
	// Sorted, so that two parameters mapping to one name ("top-p", "top_p")
	// give the same variable every time.
	sort.Strings(keys)
	for _, k := range keys {
		name := ParamVar(k)
		if k == "" || m.fixed[name] {
			continue
		}
		v := params[k]
		if strings.IndexByte(v, 0) >= 0 {
			return nil, &actors.Error{Code: actors.Code_CODE_INVALID_ARGUMENT,
				Reason: "a request parameter holds a NUL byte", Err: fmt.Errorf("parameter %q holds a NUL byte", k)}
		}
		env = append(env, name+"="+v)
	}
	return append(env, m.set...), nil
}

// ParamVar is the environment variable that carries the request parameter
// name: TROUPE_PARAM_ and the name upper-cased, with every character other
// than an ASCII letter or digit made an underscore ("top-p" gives
// TROUPE_PARAM_TOP_P).
func ParamVar(name string) string {
	var b strings.Builder
	b.Grow(len(paramPrefix) + len(name))
	b.WriteString(paramPrefix)
	for _, r := range name {
		switch {
		case r >= 'a' && r <= 'z':
			b.WriteRune(r - 'a' + 'A')
		case r >= 'A' && r <= 'Z', r >= '0' && r <= '9':
			b.WriteRune(r)
		default:
			b.WriteByte('_')
		}
	}
	return b.String()
}

// stdin is what the program reads for a chat's history.
func (m *Model) stdin(history []*actors.Message) string {
	switch m.input {
	case inputHistory:
		var b strings.Builder
		for _, msg := range history {
			b.WriteString(roleName(msg.GetRole()))
			b.WriteString(": ")
			b.WriteString(msg.GetContent())
			b.WriteByte('\n')
		}
		return b.String()
	case inputJSON:
		type message struct {
			Role    string `json:"role"`
			Content string `json:"content"`
		}
		list := make([]message, 0, len(history))
		for _, msg := range history {
			list = append(list, message{Role: roleName(msg.GetRole()), Content: msg.GetContent()})
		}
		var b bytes.Buffer
		enc := json.NewEncoder(&b)
		enc.SetEscapeHTML(false) // a prompt's <, > and & stay readable
		_ = enc.Encode(list)     // strings only: it cannot fail
		return b.String()
	default:
		return actors.LastUserMessage(history)
	}
}

// roleName is a role as OpenAI and Kuwa write it: "user", "assistant",
// "system", "tool".
func roleName(r actors.Role) string {
	return strings.ToLower(strings.TrimPrefix(r.String(), "ROLE_"))
}

// Generate implements actors.Model: it runs the program once for the chat.
func (m *Model) Generate(ctx context.Context, req *actors.ChatRequest, emit func(string) error) error {
	env, err := m.environ(req.GetParams())
	if err != nil {
		return err
	}
	var runCtx context.Context
	var cancel context.CancelFunc
	if m.timeout > 0 {
		runCtx, cancel = context.WithTimeout(ctx, m.timeout)
	} else {
		runCtx, cancel = context.WithCancel(ctx)
	}
	defer cancel()

	// stdout is a pipe of our own, read on this goroutine, rather than
	// cmd.Stdout as a Writer: emit must be called from Generate's goroutine,
	// and Wait would not return while a child left behind holds the pipe.
	stdout, w, err := os.Pipe()
	if err != nil {
		return &actors.Error{Code: actors.Code_CODE_UNAVAILABLE, Reason: "the command could not be started", Err: err}
	}
	defer stdout.Close()
	out := &pipeReader{f: stdout}

	var stderr tail
	cmd := exec.CommandContext(runCtx, m.path)
	cmd.Args = m.argv
	cmd.Env = env // never nil: a nil Env would inherit the node's environment
	cmd.Dir = m.dir
	cmd.Stdin = strings.NewReader(m.stdin(req.GetHistory()))
	cmd.Stdout = w
	cmd.Stderr = &stderr
	g := newGroup(cmd)
	err = cmd.Start()
	w.Close() // the child has its copy; EOF comes when the last writer exits
	if err != nil {
		if ctx.Err() != nil {
			return ctx.Err() // exec does not start a chat already over
		}
		return startError(m.argv[0], err)
	}

	// The waiter ends when the program does, which a done runCtx forces
	// (SIGTERM, then SIGKILL after grace); Generate waits for it below.
	exited := make(chan struct{})
	go func() {
		defer close(exited)
		g.waitLeader()
		g.sweep()
		// What the program wrote is in the pipe and still read; a process
		// that escaped the group may hold the pipe open, so stop waiting
		// for its EOF after a while.
		out.stopBy(time.Now().Add(drain))
	}()
	stopOnDone := context.AfterFunc(runCtx, func() { out.stopBy(time.Now()) })

	emitErr, readErr := m.stream(out, emit)
	if emitErr != nil {
		cancel() // the chat is gone: end the program too
	}
	<-exited
	stopOnDone()
	waitErr := cmd.Wait() // reaps the program and drains stderr

	switch {
	case emitErr != nil:
		return emitErr
	case ctx.Err() != nil:
		return ctx.Err()
	case runCtx.Err() != nil:
		return &actors.Error{Code: actors.Code_CODE_DEADLINE_EXCEEDED, Reason: "the command ran past its timeout",
			Err: fmt.Errorf("%s: timed out after %v%s", m.argv[0], m.timeout, stderr.suffix())}
	}
	var exit *exec.ExitError
	if errors.As(waitErr, &exit) {
		reason := fmt.Sprintf("the command failed (exit status %d)", exit.ExitCode())
		if ws, ok := exit.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			reason = fmt.Sprintf("the command failed (killed by signal %d)", int(ws.Signal()))
		}
		return &actors.Error{Code: actors.Code_CODE_INTERNAL, Reason: reason,
			Err: fmt.Errorf("%s: %w%s", m.argv[0], waitErr, stderr.suffix())}
	}
	if readErr != nil {
		return &actors.Error{Code: actors.Code_CODE_INTERNAL, Reason: "the command's output could not be read",
			Err: fmt.Errorf("%s: %w%s", m.argv[0], readErr, stderr.suffix())}
	}
	// ErrWaitDelay only says a process outside the group kept stderr open
	// after the program ended well: the answer is complete.
	if waitErr != nil && !errors.Is(waitErr, exec.ErrWaitDelay) {
		return &actors.Error{Code: actors.Code_CODE_INTERNAL, Reason: "the command failed",
			Err: fmt.Errorf("%s: %w%s", m.argv[0], waitErr, stderr.suffix())}
	}
	return nil
}

// stream emits the program's output as it comes, one emit per read, until
// EOF or until reading is stopped. The host joins UTF-8 sequences cut
// between two reads.
func (m *Model) stream(out *pipeReader, emit func(string) error) (emitErr, readErr error) {
	buf := make([]byte, 32<<10)
	for {
		n, err := out.f.Read(buf)
		if n > 0 {
			if err := emit(string(buf[:n])); err != nil {
				return err, nil
			}
		}
		switch {
		case err == nil:
		case errors.Is(err, io.EOF), errors.Is(err, os.ErrDeadlineExceeded):
			return nil, nil
		default:
			return nil, err
		}
	}
}

func startError(prog string, err error) error {
	if errors.Is(err, syscall.E2BIG) {
		return &actors.Error{Code: actors.Code_CODE_INVALID_ARGUMENT,
			Reason: "the request is too large to pass to the command", Err: fmt.Errorf("%s: %w", prog, err)}
	}
	return &actors.Error{Code: actors.Code_CODE_UNAVAILABLE, Reason: "the command could not be started",
		Err: fmt.Errorf("%s: %w", prog, err)}
}

// pipeReader is the read end of stdout with a read deadline that only ever
// moves earlier: the chat's end stops reading at once, and the program's
// exit must not then extend that by grace.
type pipeReader struct {
	f        *os.File
	mu       sync.Mutex
	deadline time.Time
}

func (p *pipeReader) stopBy(t time.Time) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.deadline.IsZero() || t.Before(p.deadline) {
		p.deadline = t
		_ = p.f.SetReadDeadline(t)
	}
}

// tail keeps the last stderrTail bytes written to it. exec's copying
// goroutine writes it and Wait's return orders that before our reads.
type tail struct{ buf []byte }

func (t *tail) Write(p []byte) (int, error) {
	n := len(p)
	if len(p) > stderrTail {
		p = p[len(p)-stderrTail:]
	}
	t.buf = append(t.buf, p...)
	if over := len(t.buf) - stderrTail; over > 0 {
		t.buf = t.buf[:copy(t.buf, t.buf[over:])]
	}
	return n, nil
}

// suffix is the stderr tail to append to a logged error, or nothing.
func (t *tail) suffix() string {
	s := strings.TrimSpace(string(t.buf))
	if s == "" {
		return ""
	}
	return fmt.Sprintf("; stderr: %q", s)
}

func init() {
	actors.RegisterModel(actors.ModelKind{
		Name:     "command",
		Capacity: 4,
		New:      New,
	})
}
