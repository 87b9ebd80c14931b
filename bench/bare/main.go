// Command bare is the benchmark's reference point: a plain net/http handler
// that does a Troupe chat's work with the default layout (parse the form and
// the input JSON, convert the last user message with OpenCC s2twp as the
// ingress filter would, again as the egress filter would, answer it as plain
// text) and nothing else: no actors, no admission, no metrics, no streaming.
// The difference between it and a troupe node is what the framework costs.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/troupe-llm/troupe/actors/opencc"
)

// maxInputBytes matches the troupe gateway's default, so that both servers
// read bodies the same way.
const maxInputBytes = 8 << 20

type record struct {
	Msg   string `json:"msg"`
	IsBot bool   `json:"isbot"`
}

func main() {
	port := flag.Int("port", envInt("PORT", 0), "the HTTP port; 0 picks a free one (env PORT)")
	bind := flag.String("bind", envString("BIND_ADDRESS", "127.0.0.1"), "the address to listen on (env BIND_ADDRESS)")
	flag.Parse()

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, net.JoinHostPort(*bind, strconv.Itoa(*port))); err != nil {
		log.Fatalf("bare: %v", err)
	}
}

func run(ctx context.Context, addr string) error {
	conv, err := opencc.Load("s2twp")
	if err != nil {
		return err
	}
	mux := http.NewServeMux()
	mux.Handle("POST /v1/completion", &handler{conv: conv})
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return err
	}
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	serveErr := make(chan error, 1)
	go func() { serveErr <- srv.Serve(ln) }()
	// The load harness waits for this line, as it does for troupe's.
	fmt.Printf("bare: serving on http://%s/v1/completion\n", ln.Addr())

	select {
	case <-ctx.Done():
	case err := <-serveErr:
		return err
	}
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

type handler struct{ conv *opencc.Converter }

func (h *handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	r.Body = http.MaxBytesReader(w, r.Body, maxInputBytes)
	if err := r.ParseForm(); err != nil {
		http.Error(w, "The request is not a valid form.", http.StatusBadRequest)
		return
	}
	var records []record
	if err := json.Unmarshal([]byte(r.PostForm.Get("input")), &records); err != nil {
		http.Error(w, "The chat input is not a JSON list of messages.", http.StatusBadRequest)
		return
	}
	last := ""
	for i := len(records) - 1; i >= 0; i-- {
		if !records[i].IsBot {
			last = records[i].Msg
			break
		}
	}
	if strings.TrimSpace(last) == "" {
		http.Error(w, "The last message of the chat is empty.", http.StatusBadRequest)
		return
	}
	answer := h.conv.Convert(h.conv.Convert(last))
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	_, _ = io.WriteString(w, answer)
}

func envString(name, def string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return def
}

func envInt(name string, def int) int {
	v := os.Getenv(name)
	if v == "" {
		return def
	}
	n, err := strconv.Atoi(v)
	if err != nil {
		log.Fatalf("bare: %s=%q: want a whole number", name, v)
	}
	return n
}
