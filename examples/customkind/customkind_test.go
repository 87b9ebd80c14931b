package main

import (
	"bufio"
	"io"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/troupe-llm/troupe/internal/covertest"
)

// The example builds into a troupe binary whose layouts can use its own
// kind: a chat through it comes back shouted, and the kind's arguments are
// checked at load time with their place in the file.
func TestCustomBinary(t *testing.T) {
	bin := filepath.Join(t.TempDir(), "customtroupe")
	if out, err := covertest.Build(bin, "."); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}

	bad := filepath.Join(t.TempDir(), "bad.yaml")
	if err := os.WriteFile(bad, []byte("version: 2\nlayouts:\n  a:\n    pipeline: [{model: reflect}, {filter: shout, args: {mark: \"!!!!\"}}]\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(bin, "layout", "check", bad).CombinedOutput()
	if err == nil || !strings.Contains(string(out), bad+":4:56: shout: mark must be 1 to 3 characters") {
		t.Fatalf("layout check of a bad mark: %v\n%s", err, out)
	}

	cmd := exec.Command(bin)
	cmd.Env = []string{"PATH=" + os.Getenv("PATH"), "LAYOUT_CONFIG=layout.yaml", "PORT=0", "GOSSIP_PORT=0",
		"REMOTE_PORT=0", "IGNORE_AGENT=true", "PUBLIC_ADDRESS=127.0.0.1"}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Signal(os.Interrupt)
		done := make(chan struct{})
		go func() { _ = cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			_ = cmd.Process.Kill()
			<-done
		}
	})
	addr := make(chan string, 1)
	go func() {
		s := bufio.NewScanner(stdout)
		serving := regexp.MustCompile(`on http://([0-9.:]+)/`)
		for s.Scan() {
			if m := serving.FindStringSubmatch(s.Text()); m != nil {
				addr <- m[1]
			}
		}
	}()
	var base string
	select {
	case a := <-addr:
		base = "http://" + a
	case <-time.After(30 * time.Second):
		t.Fatal("the custom binary did not start serving")
	}
	resp, err := http.PostForm(base+"/v1/completion", url.Values{"input": {`[{"msg":"it works. version 3.5 too.","isbot":false}]`}})
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 || string(body) != "IT WORKS!! VERSION 3.5 TOO!!" {
		t.Fatalf("status %d: %q", resp.StatusCode, body)
	}
}
