// Package inproc runs a node's gateway and actors in the test process, so
// that what bench/load measures from outside can be profiled from inside:
//
//	go test ./bench/inproc -run '^$' -bench . -cpu 1 -cpuprofile cpu.prof
//	go test ./bench/inproc -run Streams -v -streams.heap heap.prof
package inproc_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"runtime"
	"runtime/metrics"
	"runtime/pprof"
	"strings"
	"testing"
	"time"

	"github.com/asynkron/protoactor-go/actor"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/troupe-llm/troupe/actors"
	_ "github.com/troupe-llm/troupe/actors/dummy"
	"github.com/troupe-llm/troupe/actors/opencc"
	_ "github.com/troupe-llm/troupe/actors/reflect"
	"github.com/troupe-llm/troupe/gateway"
	"github.com/troupe-llm/troupe/layout"
)

var heapProfile = flag.String("streams.heap", "", "write a heap profile taken while TestStreamsMemory holds its streams open")

// startNode starts a layout (nil for the built-in one) and its gateway.
func startNode(tb testing.TB, src []byte) *gateway.Server {
	tb.Helper()
	var file *layout.File
	var err error
	if src == nil {
		file, err = layout.Load("")
	} else {
		file, err = layout.Parse("bench", src)
	}
	if err != nil {
		tb.Fatal(err)
	}
	spec, err := layout.Compile(file, "bench", actors.DefaultRegistry)
	if err != nil {
		tb.Fatal(err)
	}
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	system := actors.NewActorSystem(actor.Configure(
		actor.WithLoggerFactory(func(*actor.ActorSystem) *slog.Logger { return quiet })))
	tb.Cleanup(system.Shutdown)
	reg := prometheus.NewRegistry()
	running, err := actors.StartPipeline(system, spec, actors.NewMetrics(reg), quiet)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = running.Stop(ctx)
	})
	gw, err := gateway.New(gateway.Config{
		Layouts:    map[string]*actors.Layout{"bench": running},
		Gatherer:   reg,
		Registerer: reg,
		Logger:     quiet,
	}, system)
	if err != nil {
		tb.Fatal(err)
	}
	return gw
}

func readInput(tb testing.TB, name string) string {
	tb.Helper()
	data, err := os.ReadFile(filepath.Join("..", "testdata", name+".txt"))
	if err != nil {
		tb.Fatal(err)
	}
	return string(data)
}

func formBody(msg string) []byte {
	input, _ := json.Marshal([]map[string]any{{"msg": msg, "isbot": false}})
	return []byte(url.Values{"input": {string(input)}, "name": {"bench"}}.Encode())
}

// BenchmarkChat serves chats through the node's handler, without the HTTP
// server and network, next to the same work done by a plain handler (what
// bench/bare does), so that the difference is the framework's.
func BenchmarkChat(b *testing.B) {
	conv, err := opencc.Load("s2twp")
	if err != nil {
		b.Fatal(err)
	}
	gw := startNode(b, nil)
	bare := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_ = r.ParseForm()
		var records []struct {
			Msg   string `json:"msg"`
			IsBot bool   `json:"isbot"`
		}
		_ = json.Unmarshal([]byte(r.PostForm.Get("input")), &records)
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		_, _ = io.WriteString(w, conv.Convert(conv.Convert(records[len(records)-1].Msg)))
	})
	for _, in := range []string{"short", "long"} {
		text := readInput(b, in)
		body, want := formBody(text), conv.Convert(conv.Convert(text))
		for _, h := range []struct {
			name string
			h    http.Handler
		}{{"troupe", gw.Handler()}, {"bare", bare}} {
			b.Run(h.name+"/"+in, func(b *testing.B) {
				b.ReportAllocs()
				created := goroutinesCreated()
				for b.Loop() {
					req := httptest.NewRequest(http.MethodPost, "/v1/completion", bytes.NewReader(body))
					req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
					rec := httptest.NewRecorder()
					h.h.ServeHTTP(rec, req)
					if rec.Code != http.StatusOK || rec.Body.String() != want {
						b.Fatalf("status %d, body %.100q", rec.Code, rec.Body.String())
					}
				}
				// Each new goroutine starts on a small stack that deep
				// actor code then grows and copies: worth counting.
				b.ReportMetric(float64(goroutinesCreated()-created)/float64(b.N), "goroutines/op")
			})
		}
	}
}

// streamBudget is what a streaming chat may hold, live, once it streams on
// its own: heap after a collection plus goroutine stacks. bench/README.md
// gives the measured figure and where it goes; what a node's RSS grows by
// per stream is about twice the live heap (the collector lets the heap grow
// to twice what is live, stacks counted, before collecting) plus stacks.
// Measured: 11.8 to 13.6 KiB under -race (12.1 in one run before the HTTP
// limits came), and up to 15.7 KiB on a machine busy
// with other tests; the budget leaves room for that, not for a regression
// of a few KiB.
const streamBudget = 16 << 10

// TestStreamsMemory holds many streaming chats open on a real HTTP server
// and checks the heap and stacks they take, per chat, once they stream on
// connections taken over from net/http. The clients are bare connections
// that send a request and read one byte, so that nearly all the memory
// measured is the node's.
func TestStreamsMemory(t *testing.T) {
	if testing.Short() {
		t.Skip("holds 1000 connections for a few seconds")
	}
	const n = 1000
	// 200 runes half a second apart: every stream still runs when it is
	// measured, however slow a busy machine makes the set-up (at 50 ms a
	// rune, the first streams had ended by then in a loaded CI run, their
	// answers waiting in memory for clients that read one byte).
	content := strings.Repeat("我是一个假模型，一次回答一个字。", 14)[:600]
	src := fmt.Sprintf("version: 1\nllm:\n  class: dummy\n  args: {content: %q, delay: 500ms}\n  concurrency: 2048\n  queue: 2048\n"+
		"ingress-filters:\n  - class: opencc\n    args: {config: s2twp}\negress-filters:\n  - class: opencc\n    args: {config: s2twp}\n", content)
	gw := startNode(t, []byte(src))
	srv := httptest.NewServer(gw.Handler())
	t.Cleanup(srv.Close)
	body := formBody("你好")
	req := fmt.Appendf(nil, "POST /v1/completion HTTP/1.1\r\nHost: %s\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: %d\r\n\r\n%s",
		srv.Listener.Addr(), len(body), body)

	before := memory()
	goroutines := runtime.NumGoroutine()
	conns := make([]net.Conn, 0, n)
	t.Cleanup(func() {
		for _, c := range conns {
			c.Close()
		}
	})
	for range n {
		c, err := net.Dial("tcp", srv.Listener.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		conns = append(conns, c)
		if _, err := c.Write(req); err != nil {
			t.Fatal(err)
		}
	}
	// A byte of response means the chat is admitted and streaming.
	for _, c := range conns {
		_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
		if _, err := bufio.NewReaderSize(c, 16).ReadByte(); err != nil {
			t.Fatal(err)
		}
	}
	if got := gw.InFlight(); got != n {
		t.Fatalf("%d chats in flight, want %d", got, n)
	}
	// Streaming on, each chat soon leaves its HTTP handler: then only the
	// model's goroutine is left per chat.
	deadline := time.Now().Add(10 * time.Second)
	for runtime.NumGoroutine() > goroutines+n+n/20 {
		if time.Now().After(deadline) {
			t.Fatalf("%d goroutines for %d streams: the chats did not leave their handlers", runtime.NumGoroutine()-goroutines, n)
		}
		time.Sleep(10 * time.Millisecond)
	}
	// What the streams hold at rest: chunks on their way and goroutines
	// at work only add to it, and a busy machine leaves more of them, so
	// the least of a few samples is the figure.
	after := memory()
	for range 4 {
		time.Sleep(100 * time.Millisecond)
		if m := memory(); m.heap+m.stack < after.heap+after.stack {
			after = m
		}
	}
	heap, stacks := float64(after.heap-before.heap)/n, float64(after.stack-before.stack)/n
	t.Logf("per streaming chat: %.1f KiB heap in use, %.1f KiB stacks, %.2f goroutines (budget %d KiB)",
		heap/1024, stacks/1024, float64(runtime.NumGoroutine()-goroutines)/n, streamBudget>>10)
	if heap+stacks > streamBudget {
		t.Errorf("a streaming chat holds %.1f KiB, over its budget of %d KiB", (heap+stacks)/1024, streamBudget>>10)
	}
	if *heapProfile != "" {
		f, err := os.Create(*heapProfile)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		if err := pprof.Lookup("heap").WriteTo(f, 0); err != nil {
			t.Fatal(err)
		}
	}
}

func goroutinesCreated() uint64 {
	s := []metrics.Sample{{Name: "/sched/goroutines-created:goroutines"}}
	metrics.Read(s)
	if s[0].Value.Kind() != metrics.KindUint64 {
		return 0
	}
	return s[0].Value.Uint64()
}

type mem struct{ heap, stack uint64 }

// memory returns the live heap, after a collection, and the stacks in use
// (a collection also shrinks the stacks that use little of theirs, and a
// second one frees what the first left for finalizers).
func memory() mem {
	runtime.GC()
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return mem{heap: ms.HeapAlloc, stack: ms.StackInuse}
}
