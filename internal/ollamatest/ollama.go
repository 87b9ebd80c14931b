// Package ollamatest runs a real Ollama server for tests, serving a tiny
// model that the package writes itself (see WriteModel), so code that talks
// to an OpenAI-compatible inference server is tested against a real one:
// real streaming, real cancellation when a client hangs up, real request
// logs, with nothing downloaded.
//
// Ollama must be installed: `make test` installs it, or
//
//	CGO_ENABLED=1 go install github.com/ollama/ollama@v0.6.5
//
// (several minutes the first time: it compiles llama.cpp). Without it Start
// fails the test; it never skips.
package ollamatest

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"go/build"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// ModelName is the name Start serves the tiny model as.
const ModelName = "tiny"

// OllamaVersion is the Ollama release this package is written against.
const OllamaVersion = "v0.6.5"

// InstallHint says how to install Ollama.
const InstallHint = "run `make test` (it installs Ollama when missing), or " +
	"`CGO_ENABLED=1 go install github.com/ollama/ollama@" + OllamaVersion + "` " +
	"(several minutes the first time: it compiles llama.cpp)"

// NumCtx is the context, in tokens, of each of the model's sequences
// (Ollama serves NumParallel sequences at once, each with this context).
// A token is one byte of text, so a request's prompt and answer together
// must stay under 32 KiB. Generation costs only the context a request uses,
// but Ollama refuses to load the model unless the machine has about
// 1.3 GiB free (llama.cpp's worst case for NumParallel full contexts), of
// which the runner touches about 115 MB.
const NumCtx = 32768

// NumParallel is how many requests Ollama generates for at once; more wait
// in its queue. Ollama would pick 4 on a CPU anyway; it is set so that it
// does not depend on the machine.
const NumParallel = 4

// Bounds on the steps of Start and of stopping the server.
const (
	readyTimeout  = 30 * time.Second
	createTimeout = 60 * time.Second
	warmTimeout   = 120 * time.Second
	stopTimeout   = 10 * time.Second
)

// Server is a running Ollama server serving the tiny model.
type Server struct {
	// BaseURL is the base of the OpenAI-compatible API, for example
	// http://127.0.0.1:41234/v1: POST BaseURL+"/chat/completions".
	BaseURL string
	// URL is the server's root, for Ollama's own API (URL+"/api/version").
	URL string
	// Model is the name of the served model (ModelName).
	Model string
	// ModelPath is the GGUF file the model was created from.
	ModelPath string

	log *logBuffer
}

// Start starts `ollama serve` on a free port of 127.0.0.1, with its own
// models directory and home, creates the tiny model in it, and loads it by
// generating one token through Ollama's own API (/api/generate, so no
// request to /v1 is logged before the test's own), so a test measures a
// server in its steady state. The server is stopped when the test ends.
// Start fails the test if Ollama is not installed or does not start.
func Start(tb testing.TB) *Server {
	tb.Helper()
	bin, err := findOllama()
	if err != nil {
		tb.Fatalf("ollamatest: %v", err)
	}

	dir := tb.TempDir()
	modelsDir := filepath.Join(dir, "models")
	home := filepath.Join(dir, "home")
	for _, d := range []string{modelsDir, home} {
		if err := os.Mkdir(d, 0o755); err != nil {
			tb.Fatalf("ollamatest: %v", err)
		}
	}
	modelPath := filepath.Join(dir, "model.gguf")
	if err := WriteModel(modelPath); err != nil {
		tb.Fatalf("ollamatest: %v", err)
	}
	modelfile := filepath.Join(dir, "Modelfile")
	// The template passes the messages' text through as is: the tiny model
	// knows no chat format, and the prompt is then exactly what the client
	// sent. One thread: llama.cpp's threads wait for each other at every
	// step by spinning, which for a model this small costs more than it
	// saves (1,800 tokens/s on one thread, 600 on two), and collapses when
	// other processes keep the cores busy (under 25 tokens/s on two
	// threads, against 900 or more on one).
	mf := fmt.Sprintf("FROM %s\n"+
		"TEMPLATE \"{{ range .Messages }}{{ .Content }}{{ end }}\"\n"+
		"PARAMETER num_ctx %d\n"+
		"PARAMETER num_thread 1\n", modelPath, NumCtx)
	if err := os.WriteFile(modelfile, []byte(mf), 0o644); err != nil {
		tb.Fatalf("ollamatest: %v", err)
	}

	var p *process
	for attempt := 1; ; attempt++ {
		p, err = startServer(tb, bin, modelsDir, home)
		if err == nil {
			break
		}
		// Another process can take the port between the moment it is
		// found free and the moment Ollama listens on it: try another.
		if attempt < 3 && errors.Is(err, errPortTaken) {
			tb.Logf("ollamatest: %v; trying another port", err)
			continue
		}
		tb.Fatalf("ollamatest: %v", err)
	}
	s := &Server{
		BaseURL:   "http://" + p.addr + "/v1",
		URL:       "http://" + p.addr,
		Model:     ModelName,
		ModelPath: modelPath,
		log:       p.log,
	}

	ctx, cancel := context.WithTimeout(context.Background(), createTimeout)
	create := exec.CommandContext(ctx, bin, "create", ModelName, "-f", modelfile)
	create.Env = p.env
	create.Dir = dir
	out, err := create.CombinedOutput()
	cancel()
	if err != nil {
		tb.Fatalf("ollamatest: ollama create: %v\n%s\nserver log:\n%s", err, out, s.Log())
	}

	if err := s.warm(); err != nil {
		tb.Fatalf("ollamatest: loading the model: %v\nserver log:\n%s", err, s.Log())
	}
	return s
}

// errPortTaken reports that Ollama could not listen on its port.
var errPortTaken = errors.New("port taken")

// process is a running `ollama serve`.
type process struct {
	addr string   // host:port it listens on
	env  []string // its environment, also that of `ollama create`
	log  *logBuffer
}

// startServer starts `ollama serve` on a free port, registers its stop
// with tb.Cleanup, and waits until it answers.
func startServer(tb testing.TB, bin, modelsDir, home string) (*process, error) {
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	p := &process{addr: addr, log: newLogBuffer()}
	// Ollama's own settings of the environment running the tests must not
	// leak in.
	for _, e := range os.Environ() {
		if !strings.HasPrefix(e, "OLLAMA_") && !strings.HasPrefix(e, "HOME=") {
			p.env = append(p.env, e)
		}
	}
	p.env = append(p.env,
		"HOME="+home, // Ollama writes its key pair under $HOME/.ollama
		"OLLAMA_HOST="+addr,
		"OLLAMA_MODELS="+modelsDir,
		"OLLAMA_NUM_PARALLEL="+strconv.Itoa(NumParallel),
		"OLLAMA_KEEP_ALIVE=-1", // never unload the model during a test
	)

	cmd := exec.Command(bin, "serve")
	cmd.Env = p.env
	cmd.Stdout = p.log
	cmd.Stderr = p.log
	// Its own process group: stopping it stops the runner processes it
	// starts too.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	// Wait returns even if a runner left behind keeps the output open.
	cmd.WaitDelay = stopTimeout
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s serve: %w", bin, err)
	}
	exited := make(chan struct{})
	var waitErr error
	go func() {
		waitErr = cmd.Wait()
		close(exited)
	}()
	pgid := cmd.Process.Pid
	tb.Cleanup(func() {
		stop(tb, pgid, exited)
		if tb.Failed() {
			tb.Logf("ollamatest: server log (tail):\n%s", tail(p.log.String(), 60))
		}
	})

	if err := waitReady("http://"+addr, exited); err != nil {
		log := p.log.String()
		if strings.Contains(log, "address already in use") {
			return nil, fmt.Errorf("%s: %w", addr, errPortTaken)
		}
		select {
		case <-exited:
			return nil, fmt.Errorf("ollama serve exited (%v) before answering:\n%s", waitErr, log)
		default:
		}
		return nil, fmt.Errorf("%v\nserver log:\n%s", err, log)
	}
	return p, nil
}

// stop stops the process group pgid: SIGTERM (Ollama then stops its
// runners), and SIGKILL if it has not exited within stopTimeout. Anything
// left in the group afterwards is killed too.
func stop(tb testing.TB, pgid int, exited <-chan struct{}) {
	_ = syscall.Kill(-pgid, syscall.SIGTERM)
	t := time.NewTimer(stopTimeout)
	defer t.Stop()
	select {
	case <-exited:
	case <-t.C:
		tb.Logf("ollamatest: ollama serve did not stop within %v of SIGTERM; killing it", stopTimeout)
		_ = syscall.Kill(-pgid, syscall.SIGKILL)
		// Wait cannot block for longer than WaitDelay once the
		// process is dead.
		<-exited
	}
	_ = syscall.Kill(-pgid, syscall.SIGKILL)
}

// waitReady polls GET /api/version until it answers 200, the process exits,
// or readyTimeout passes.
func waitReady(url string, exited <-chan struct{}) error {
	client := &http.Client{Timeout: time.Second}
	defer client.CloseIdleConnections()
	deadline := time.NewTimer(readyTimeout)
	defer deadline.Stop()
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		resp, err := client.Get(url + "/api/version")
		if err == nil {
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
			err = fmt.Errorf("GET /api/version: %s", resp.Status)
		}
		select {
		case <-exited:
			return errors.New("ollama serve exited")
		case <-deadline.C:
			return fmt.Errorf("ollama serve not answering after %v: %v", readyTimeout, err)
		case <-tick.C:
		}
	}
}

// warm loads the model by generating one token.
func (s *Server) warm() error {
	ctx, cancel := context.WithTimeout(context.Background(), warmTimeout)
	defer cancel()
	body, _ := json.Marshal(map[string]any{
		"model":   s.Model,
		"prompt":  "warm up",
		"stream":  false,
		"options": map[string]any{"num_predict": 1, "seed": 1},
	})
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, s.URL+"/api/generate", bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	client := &http.Client{}
	defer client.CloseIdleConnections()
	resp, err := client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return err
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("POST /api/generate: %s: %s", resp.Status, b)
	}
	return nil
}

// findOllama returns the path of the ollama binary: on $PATH, or where
// `go install` puts it ($GOPATH/bin, by default $HOME/go/bin).
func findOllama() (string, error) {
	if p, err := exec.LookPath("ollama"); err == nil {
		return p, nil
	}
	gopaths := filepath.SplitList(build.Default.GOPATH)
	// `go env -w GOPATH=...` is seen by the go command only.
	if out, err := exec.Command("go", "env", "GOPATH").Output(); err == nil {
		gopaths = append(gopaths, filepath.SplitList(strings.TrimSpace(string(out)))...)
	}
	var tried []string
	for _, gopath := range gopaths {
		p := filepath.Join(gopath, "bin", "ollama")
		if slices.Contains(tried, p) {
			continue
		}
		if fi, err := os.Stat(p); err == nil && !fi.IsDir() && fi.Mode()&0o111 != 0 {
			return p, nil
		}
		tried = append(tried, p)
	}
	return "", fmt.Errorf("ollama not found on $PATH nor at %s: %s", strings.Join(tried, ", "), InstallHint)
}

// freePort returns a TCP port of 127.0.0.1 that nothing listens on now.
func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// Log returns everything the server (and its runner) has written to
// stdout and stderr so far.
func (s *Server) Log() string { return s.log.String() }

// RequestLogLine is a request the server has finished, as its request log
// (Gin's) shows it.
type RequestLogLine struct {
	Time     time.Time     // when it finished, to the second (local time)
	Status   int           // HTTP status
	Duration time.Duration // from its start to the end of its handler
	ClientIP string
	Method   string
	Path     string // without the query
	Line     string // the whole line
}

// ginLine matches a line of Gin's request log, colours off:
//
//	[GIN] 2026/12/01 - 21:00:00 | 200 |  1.234567ms |       127.0.0.1 | POST     "/v1/chat/completions"
var ginLine = regexp.MustCompile(`^\[GIN\] (\d{4}/\d\d/\d\d - \d\d:\d\d:\d\d) \|\s*(\d{3})\s*\|\s*(\S+)\s*\|\s*(\S*)\s*\|\s*(\S+)\s+(".*")\s*$`)

// ParseRequestLogLine parses one line of Ollama's request log. Durations
// are Go's: "812.4µs", "1.234567ms", "2.5s", or above a minute "1m2s".
func ParseRequestLogLine(line string) (RequestLogLine, bool) {
	m := ginLine.FindStringSubmatch(line)
	if m == nil {
		return RequestLogLine{}, false
	}
	at, err := time.ParseInLocation("2006/01/02 - 15:04:05", m[1], time.Local)
	if err != nil {
		return RequestLogLine{}, false
	}
	status, err := strconv.Atoi(m[2])
	if err != nil {
		return RequestLogLine{}, false
	}
	d, err := time.ParseDuration(m[3])
	if err != nil {
		return RequestLogLine{}, false
	}
	path, err := strconv.Unquote(m[6])
	if err != nil {
		return RequestLogLine{}, false
	}
	path, _, _ = strings.Cut(path, "?")
	return RequestLogLine{
		Time: at, Status: status, Duration: d, ClientIP: m[4], Method: m[5], Path: path, Line: line,
	}, true
}

// Requests returns the requests for path (all paths if path is "") that
// the server has finished so far, oldest first. Ollama logs a request when
// its handler returns: for a stream, when the answer ends or the client
// has hung up and generation has stopped.
func (s *Server) Requests(path string) []RequestLogLine {
	return requests(s.log.String(), path)
}

func requests(log, path string) []RequestLogLine {
	var rs []RequestLogLine
	for {
		line, rest, ok := strings.Cut(log, "\n")
		if !ok { // a line is logged once it is complete
			break
		}
		log = rest
		if r, ok := ParseRequestLogLine(line); ok && (path == "" || r.Path == path) {
			rs = append(rs, r)
		}
	}
	return rs
}

// WaitRequestLog waits until the server has logged at least n finished
// requests for path (all paths if path is ""), and returns them all, oldest
// first. It fails the test if that takes longer than timeout; call it from
// the test's goroutine. The warm-up request of Start is to /api/generate,
// so requests to /v1 paths are the test's own.
func (s *Server) WaitRequestLog(tb testing.TB, path string, n int, timeout time.Duration) []RequestLogLine {
	tb.Helper()
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	for {
		log, changed := s.log.snapshot()
		rs := requests(log, path)
		if len(rs) >= n {
			return rs
		}
		select {
		case <-changed:
		case <-deadline.C:
			tb.Fatalf("ollamatest: %d requests to %q logged after %v, want %d; server log (tail):\n%s",
				len(rs), path, timeout, n, tail(log, 40))
			return nil
		}
	}
}

// logBuffer collects the server's output; it is safe for concurrent use,
// and a reader can wait for the next write.
type logBuffer struct {
	mu      sync.Mutex
	buf     bytes.Buffer
	changed chan struct{} // closed, and replaced, on every write
}

func newLogBuffer() *logBuffer { return &logBuffer{changed: make(chan struct{})} }

func (b *logBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.buf.Write(p)
	close(b.changed)
	b.changed = make(chan struct{})
	return len(p), nil
}

func (b *logBuffer) String() string {
	s, _ := b.snapshot()
	return s
}

// snapshot returns the log so far and a channel closed at the next write.
func (b *logBuffer) snapshot() (string, <-chan struct{}) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String(), b.changed
}

// tail returns the last n lines of s.
func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
