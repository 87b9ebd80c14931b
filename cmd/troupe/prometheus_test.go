package main

import (
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/troupe-llm/troupe/actors"
)

// A real Prometheus server scrapes a node: the series the README documents
// arrive with the values the chats produced, per actor and per layout.
func TestPrometheusScrapesNode(t *testing.T) {
	promBin, err := exec.LookPath("prometheus")
	if err != nil {
		t.Fatal("this test needs the prometheus server: install the Debian package \"prometheus\" (make test does)")
	}
	p := startProcess(t, nodeEnv(nil))
	for i := 0; i < 3; i++ {
		if code, body := p.post(t, "/v1/completion", url.Values{"input": {userInput("软件")}}); code != 200 || body != "軟體" {
			t.Fatalf("chat %d: %d %q", i, code, body)
		}
	}

	dir := t.TempDir()
	config := fmt.Sprintf(`global:
  scrape_interval: 250ms
  scrape_timeout: 200ms
scrape_configs:
  - job_name: troupe
    static_configs:
      - targets: [%q]
`, p.addr)
	writeFile(t, filepath.Join(dir, "prometheus.yml"), config)
	addr := freeAddr(t)
	cmd := exec.Command(promBin,
		"--config.file="+filepath.Join(dir, "prometheus.yml"),
		"--storage.tsdb.path="+filepath.Join(dir, "data"),
		"--web.listen-address="+addr,
		"--log.level=warn")
	out := &syncBuffer{}
	cmd.Stdout, cmd.Stderr = out, out
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
		if t.Failed() {
			t.Logf("prometheus output:\n%s", out.String())
		}
	})

	query := func(q string) (float64, bool) {
		resp, err := http.Get("http://" + addr + "/api/v1/query?query=" + url.QueryEscape(q))
		if err != nil {
			return 0, false
		}
		defer resp.Body.Close()
		var r struct {
			Data struct {
				Result []struct {
					Value [2]any `json:"value"`
				} `json:"result"`
			} `json:"data"`
		}
		if json.NewDecoder(resp.Body).Decode(&r) != nil || len(r.Data.Result) != 1 {
			return 0, false
		}
		var v float64
		s, _ := r.Data.Result[0].Value[1].(string)
		_, err = fmt.Sscan(s, &v)
		return v, err == nil
	}
	want := map[string]float64{
		`up{job="troupe"}`: 1,
		`troupe_chats_total{layout="test-llm",outcome="completed"}`: 3,
		// Per chat through the egress filter: Begin, one chunk, End.
		`troupe_actor_messages_total{layout="test-llm",actor="egress/0/opencc"} >= bool 9`:            1,
		`troupe_actor_mailbox_depth{layout="test-llm",actor="model/reflect"}`:                         0,
		`troupe_layout_healthy{layout="test-llm"}`:                                                    1,
		`troupe_chat_duration_seconds_count{layout="test-llm"}`:                                       3,
		`troupe_chat_output_characters_sum{layout="test-llm"}`:                                        6,
		`troupe_actor_processing_seconds_count{layout="test-llm",actor="ingress/0/opencc"} >= bool 3`: 1,
	}
	want[fmt.Sprintf(`count(troupe_build_info{protocol="%d"})`, actors.ProtocolVersion)] = 1
	for q, v := range want {
		waitFor(t, func() bool {
			got, ok := query(q)
			return ok && got == v
		}, fmt.Sprintf("Prometheus to answer %s = %v", q, v))
	}
}

// freeAddr returns a loopback address with a port that was free a moment
// ago, for a server that cannot report the port it picked.
// The port is free for both TCP and UDP, since a gossip port binds both.
func freeAddr(t *testing.T) string {
	t.Helper()
	for range 100 {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		addr := ln.Addr().String()
		pc, err := net.ListenPacket("udp", addr)
		ln.Close()
		if err == nil {
			pc.Close()
			return addr
		}
	}
	t.Fatal("no port free for both TCP and UDP on 127.0.0.1")
	return ""
}
