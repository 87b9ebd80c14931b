package main

import (
	"context"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

// chromium runs headless Chromium on url and returns the page's DOM after
// its scripts ran; with screenshot set, it also writes a PNG there.
func chromium(t *testing.T, url, screenshot string) string {
	t.Helper()
	bin, err := exec.LookPath("chromium")
	if err != nil {
		t.Fatal("this test needs headless Chromium: install the Debian package \"chromium\"")
	}
	args := []string{"--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--hide-scrollbars",
		"--user-data-dir=" + t.TempDir(), "--virtual-time-budget=4000", "--window-size=1280,900"}
	if screenshot != "" {
		args = append(args, "--screenshot="+screenshot)
	} else {
		args = append(args, "--dump-dom")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, append(args, url)...)
	cmd.WaitDelay = 5 * time.Second
	var stderr syncBuffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("chromium %s: %v\n%s", url, err, stderr.String())
	}
	return string(out)
}

// rowOf returns the table row whose attribute attr is value.
func rowOf(dom, attr, value string) string {
	return regexp.MustCompile(`<tr [^>]*` + attr + `="` + regexp.QuoteMeta(value) + `"[^>]*>.*?</tr>`).FindString(dom)
}

// The status page, as a browser shows it, on a running cluster: the
// members and their state, the layout's tree of actors with their numbers,
// the Agent's state; restarts where an actor crashed. TROUPE_SCREENSHOT=path
// also saves a screenshot there (docs/status.png is one).
func TestStatusPageInBrowser(t *testing.T) {
	layoutFile := writeTemp(t, "version: 1\nllm:\n  class: dummy\n  args: {content: \"0123456789\", delay: 2ms}\n  concurrency: 4\negress-filters:\n  - class: opencc\n")
	a := startMember(t, "node-a", layoutFile, nil)
	b := startMember(t, "node-b", layoutFile, a)
	crashy := writeTemp(t, "version: 1\nllm:\n  class: dummy\n  args: {content: \"abc\", delay: 1ms, panic: 2}\n")
	c := startMember(t, "node-c", crashy, a, "LLM_NAME", "crashy")
	for _, m := range []*member{a, b, c} {
		m.waitAlive(t, 3)
	}
	r := runChats(t, a.process, 40, 8, 0, nil)
	if len(r.problems) > 0 {
		t.Fatalf("chats: %v", r.problems)
	}
	if code, body := c.post(t, "/v1/completion", url.Values{"input": {userInput("x")}, "name": {"crashy"}}); code != 200 || !strings.Contains(body, "[Error:") {
		t.Fatalf("the crashing chat: %d %q", code, body)
	}
	waitFor(t, func() bool {
		return strings.Contains(c.metrics(t), `troupe_actor_restarts_total{actor="model/dummy",layout="crashy"} 1`)
	}, "the restart")

	dom := chromium(t, a.url("/"), "")
	if !strings.Contains(dom, `data-loaded="true"`) {
		t.Fatalf("the page did not render its data:\n%s", dom)
	}
	for _, name := range []string{"node-a", "node-b", "node-c"} {
		row := rowOf(dom, "data-member", name)
		if !strings.Contains(row, `data-state="alive"`) || !strings.Contains(row, ">alive<") {
			t.Errorf("member %s is not shown alive: %q", name, row)
		}
	}
	if row := rowOf(dom, "data-member", "node-c"); !strings.Contains(row, "crashy") {
		t.Errorf("node-c's layout is not shown with it: %q", row)
	}
	if !strings.Contains(dom, `data-layout="test-llm"`) || !strings.Contains(dom, ">healthy<") {
		t.Error("the layout test-llm is not shown healthy")
	}
	model := rowOf(dom, "data-actor", "model/dummy")
	cells := regexp.MustCompile(`<td class="n[^"]*">([^<]*)</td>`).FindAllStringSubmatch(model, -1)
	// in flight, queued, messages, restarts, failures, first chunk p50, p95
	if len(cells) != 7 || cells[2][1] == "0" || cells[3][1] != "0" {
		t.Errorf("model/dummy row: %q", model)
	}
	if !regexp.MustCompile(`time to first chunk p50 <b>[0-9.]+ [µm]?s</b>`).MatchString(dom) {
		t.Error("the layout's time to first chunk is not shown")
	}
	if rowOf(dom, "data-actor", "egress/0/opencc") == "" {
		t.Error("the egress filter is not in the tree")
	}
	if !regexp.MustCompile(`id="agent"[^>]*>ignored<`).MatchString(dom) {
		t.Error("the Agent state is not shown")
	}
	if !regexp.MustCompile(`id="ready"[^>]*>ready<`).MatchString(dom) {
		t.Error("readiness is not shown")
	}

	crashed := chromium(t, c.url("/"), "")
	row := rowOf(crashed, "data-actor", "model/dummy")
	if !strings.Contains(row, `data-restarts="1"`) || !strings.Contains(row, `data-failures="1"`) {
		t.Errorf("the crashed model's row on node-c: %q", row)
	}

	shot := filepath.Join(t.TempDir(), "status.png")
	chromium(t, a.url("/"), shot)
	if png, err := os.ReadFile(shot); err != nil || len(png) < 10_000 || string(png[1:4]) != "PNG" {
		t.Fatalf("screenshot: %d bytes, %v", len(png), err)
	}
	if dst := os.Getenv("TROUPE_SCREENSHOT"); dst != "" {
		png, _ := os.ReadFile(shot)
		if err := os.WriteFile(dst, png, 0o644); err != nil {
			t.Fatal(err)
		}
	}
}
