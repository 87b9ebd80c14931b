// Package deploy holds the deployment files (compose, Kubernetes,
// Prometheus) and the tests that run them for real: the images built by
// `make image`, a three-node compose cluster with Prometheus, a node killed
// under load. It has no Go code of its own.
package deploy

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// root is the repository's top.
var root = func() string { d, _ := filepath.Abs(".."); return d }()

// needDocker fails (never skips) when Docker or Compose is missing.
func needDocker(t *testing.T) []string {
	t.Helper()
	if _, err := exec.LookPath("docker"); err != nil {
		t.Fatal("this test needs Docker: install the Debian package \"docker.io\" and start the daemon")
	}
	if out, err := exec.Command("docker", "info", "-f", "{{.ServerVersion}}").CombinedOutput(); err != nil {
		t.Fatalf("this test needs a running Docker daemon (docker info: %v: %s)", err, bytes.TrimSpace(out))
	}
	if exec.Command("docker", "compose", "version").Run() == nil {
		return []string{"docker", "compose"}
	}
	if _, err := exec.LookPath("docker-compose"); err != nil {
		t.Fatal("this test needs Docker Compose: install the Debian package \"docker-compose\"")
	}
	return []string{"docker-compose"}
}

// run runs a command with a deadline and returns its output; it fails the
// test when the command fails.
func run(t *testing.T, timeout time.Duration, env []string, name string, args ...string) string {
	t.Helper()
	out, err := tryRun(timeout, env, name, args...)
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return out
}

func tryRun(timeout time.Duration, env []string, name string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Dir = root
	cmd.Env = append(os.Environ(), env...)
	cmd.WaitDelay = 5 * time.Second
	out, err := cmd.CombinedOutput()
	return string(out), err
}

func uniqueID() string {
	var b [4]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

func freePort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// buildImages runs `make image` as users do, into a build context of the
// test's own (so that parallel runs in one work tree do not share files),
// and removes the images at the end.
func buildImages(t *testing.T, tag string) {
	t.Helper()
	ctxDir := t.TempDir()
	start := time.Now()
	out := run(t, 10*time.Minute, nil, "make", "-s", "image", "IMAGE="+tag, "IMAGE_CONTEXT="+ctxDir)
	t.Logf("make image: %s (%s)", strings.TrimSpace(lastLine(out)), time.Since(start).Round(time.Second))
	t.Cleanup(func() { _, _ = tryRun(time.Minute, nil, "docker", "rmi", "-f", tag, tag+"-example") })
}

func lastLine(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return lines[len(lines)-1]
}

// waitFor polls cond until it holds or the deadline passes.
func waitFor(t *testing.T, timeout time.Duration, what string, cond func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		err := cond()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s: %v", timeout, what, err)
		}
		time.Sleep(250 * time.Millisecond)
	}
}

// The image: small, no shell, not root, healthy by its own HEALTHCHECK,
// answering with no settings on the published port; the example image
// serves its own layout.
func TestImage(t *testing.T) {
	needDocker(t)
	tag := "troupe-test-" + uniqueID()
	buildImages(t, tag)

	var img []struct {
		Size   int64
		Config struct {
			User        string
			Env         []string
			Healthcheck struct{ Test []string }
			Entrypoint  []string
		}
	}
	if err := json.Unmarshal([]byte(run(t, time.Minute, nil, "docker", "image", "inspect", tag)), &img); err != nil || len(img) != 1 {
		t.Fatalf("docker image inspect: %v", err)
	}
	c := img[0].Config
	if c.User == "" || c.User == "0" || strings.HasPrefix(c.User, "root") || strings.HasPrefix(c.User, "0:") {
		t.Errorf("the image runs as %q, want a user that is not root", c.User)
	}
	if strings.Join(c.Healthcheck.Test, " ") != "CMD /troupe health" {
		t.Errorf("HEALTHCHECK %q, want the binary's own troupe health", c.Healthcheck.Test)
	}
	// What a registry stores and a pull transfers: the layers, compressed.
	compressed := compressedSize(t, tag)
	t.Logf("image %s: %.1f MB unpacked, %.1f MB compressed (as pulled)", tag, float64(img[0].Size)/1e6, float64(compressed)/1e6)
	if img[0].Size > 30e6 || compressed > 30e6 {
		t.Errorf("image is %.1f MB (%.1f MB compressed), want under 30 MB", float64(img[0].Size)/1e6, float64(compressed)/1e6)
	}
	if out, err := tryRun(time.Minute, nil, "docker", "run", "--rm", "--entrypoint", "/bin/sh", tag, "-c", "true"); err == nil {
		t.Errorf("the image has a shell: %s", out)
	}
	if out := run(t, time.Minute, nil, "docker", "run", "--rm", "--entrypoint", "/troupe", tag, "version"); !strings.HasPrefix(out, "troupe ") {
		t.Errorf("troupe version: %q", out)
	}

	// docker run -p PORT:8123 troupe, with no settings at all.
	port := freePort(t)
	name := tag + "-run"
	run(t, time.Minute, nil, "docker", "run", "-d", "--name", name, "-p", fmt.Sprintf("127.0.0.1:%d:8123", port), tag)
	t.Cleanup(func() { _, _ = tryRun(time.Minute, nil, "docker", "rm", "-f", name) })
	base := fmt.Sprintf("http://127.0.0.1:%d", port)
	waitFor(t, 60*time.Second, "the container to answer on the published port", func() error {
		got, err := chat(base, "鼠标和软件", nil)
		if err == nil && got.body != "滑鼠和軟體" {
			err = fmt.Errorf("answered %d %q", got.code, got.body)
		}
		return err
	})
	waitFor(t, 60*time.Second, "Docker to call the container healthy", func() error {
		if s := strings.TrimSpace(run(t, time.Minute, nil, "docker", "inspect", "-f", "{{.State.Health.Status}}", name)); s != "healthy" {
			return errors.New(s)
		}
		return nil
	})

	ex := tag + "-example-run"
	run(t, time.Minute, nil, "docker", "run", "-d", "--name", ex, "-e", "IGNORE_AGENT=1", "-p", fmt.Sprintf("127.0.0.1:%d:8123", freePort(t)), tag+"-example")
	t.Cleanup(func() { _, _ = tryRun(time.Minute, nil, "docker", "rm", "-f", ex) })
	exPort := strings.TrimSpace(lastLine(run(t, time.Minute, nil, "docker", "port", ex, "8123/tcp")))
	waitFor(t, 60*time.Second, "the example image to serve its layout", func() error {
		got, err := chat("http://"+exPort, "软件", url.Values{"name": {"troupe-example"}})
		if err == nil && got.body != "軟體" {
			err = fmt.Errorf("answered %d %q", got.code, got.body)
		}
		return err
	})
}

// compressedSize is the image's size as a registry stores it: its layers,
// gzipped.
func compressedSize(t *testing.T, tag string) int64 {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	save := exec.CommandContext(ctx, "docker", "save", tag)
	gz := exec.CommandContext(ctx, "gzip", "-6")
	pipe, err := save.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	gz.Stdin = pipe
	var n countWriter
	gz.Stdout = &n
	if err := gz.Start(); err != nil {
		t.Fatalf("gzip: %v", err)
	}
	if err := save.Run(); err != nil {
		t.Fatalf("docker save: %v", err)
	}
	if err := gz.Wait(); err != nil {
		t.Fatalf("gzip: %v", err)
	}
	return int64(n)
}

type countWriter int64

func (c *countWriter) Write(p []byte) (int, error) { *c += countWriter(len(p)); return len(p), nil }

type answer struct {
	code int
	node string
	body string
}

var client = &http.Client{Timeout: 60 * time.Second}

func chat(base, text string, extra url.Values) (answer, error) {
	form := url.Values{"input": {fmt.Sprintf(`[{"msg":%q,"isbot":false}]`, text)}}
	for k, v := range extra {
		form[k] = v
	}
	resp, err := client.PostForm(base+"/v1/completion", form)
	if err != nil {
		return answer{}, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return answer{resp.StatusCode, resp.Header.Get("X-Troupe-Node"), string(b)}, err
}

// prometheusImage builds an image of Debian's prometheus binary (with the
// libraries it links) FROM scratch, since the official one cannot be pulled.
func prometheusImage(t *testing.T, tag string) {
	t.Helper()
	bin, err := exec.LookPath("prometheus")
	if err != nil {
		t.Fatal("this test needs Prometheus: install the Debian package \"prometheus\"")
	}
	dir := t.TempDir()
	copyFile(t, bin, filepath.Join(dir, "prometheus"))
	// A Go binary built with cgo: its interpreter and libc, as ldd lists
	// them; none when it is static.
	libs := regexp.MustCompile(`(/\S+\.so[.0-9]*)`).FindAllString(run(t, time.Minute, nil, "ldd", bin), -1)
	dockerfile := "FROM scratch\n"
	for i, lib := range libs {
		name := "lib" + strconv.Itoa(i)
		copyFile(t, lib, filepath.Join(dir, name))
		dockerfile += fmt.Sprintf("COPY %s %s\n", name, lib)
	}
	dockerfile += "COPY prometheus /bin/prometheus\nENTRYPOINT [\"/bin/prometheus\"]\n"
	if err := os.WriteFile(filepath.Join(dir, "Dockerfile"), []byte(dockerfile), 0o644); err != nil {
		t.Fatal(err)
	}
	run(t, 5*time.Minute, nil, "docker", "build", "-q", "-t", tag, dir)
	t.Cleanup(func() { _, _ = tryRun(time.Minute, nil, "docker", "rmi", "-f", tag) })
}

func copyFile(t *testing.T, from, to string) {
	t.Helper()
	b, err := os.ReadFile(from)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(to, b, 0o755); err != nil {
		t.Fatal(err)
	}
}

// slowLayout runs each chat for about half a second; each node runs two at
// once and queues four.
const slowLayout = "version: 1\nllm:\n  class: dummy\n  args: {content: \"0123456789\", delay: 50ms}\n  concurrency: 2\n  queue: 4\n"

const slowAnswer = "0123456789"

// deploy/compose.yaml as users run it (with the test's Prometheus image):
// three nodes join by their service name, a chat through one runs on the
// others, Prometheus scrapes every node's per-actor series, and a node
// killed under load loses no chat.
func TestCompose(t *testing.T) {
	compose := needDocker(t)
	id := uniqueID()
	tag := "troupe-test-" + id
	buildImages(t, tag)
	prometheusImage(t, tag+"-prometheus")

	layouts := t.TempDir()
	if err := os.Chmod(layouts, 0o755); err != nil { // the image runs as nobody
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(layouts, "slow.yaml"), []byte(slowLayout), 0o644); err != nil {
		t.Fatal(err)
	}
	httpPort, promPort := freePort(t), freePort(t)
	project := "troupetest" + id
	env := []string{
		"TROUPE_IMAGE=" + tag,
		"TEST_PROMETHEUS_IMAGE=" + tag + "-prometheus",
		"TROUPE_PORT=127.0.0.1:" + strconv.Itoa(httpPort),
		"PROMETHEUS_PORT=127.0.0.1:" + strconv.Itoa(promPort),
		"IGNORE_AGENT=true",
		"LLM_NAME=test-llm",
		"LAYOUTS_DIR=" + layouts,
		"LAYOUT_CONFIG=/etc/troupe/layouts/slow.yaml",
		"CLUSTER_KEY=compose test cluster key " + id,
	}
	dc := func(timeout time.Duration, args ...string) string {
		t.Helper()
		all := append(append(compose[1:], "-p", project, "-f", "deploy/compose.yaml", "-f", "deploy/compose.test.yaml"), args...)
		return run(t, timeout, env, compose[0], all...)
	}
	start := time.Now()
	t.Cleanup(func() {
		if t.Failed() {
			logs, _ := tryRun(time.Minute, env, compose[0], append(compose[1:], "-p", project, "-f", "deploy/compose.yaml", "-f", "deploy/compose.test.yaml", "logs", "--no-color", "--tail", "60")...)
			t.Logf("compose logs:\n%s", logs)
		}
		out, err := tryRun(2*time.Minute, env, compose[0], append(compose[1:], "-p", project, "-f", "deploy/compose.yaml", "-f", "deploy/compose.test.yaml", "down", "-v", "--remove-orphans", "-t", "5")...)
		if err != nil {
			t.Errorf("compose down: %v\n%s", err, out)
		}
	})
	dc(3*time.Minute, "up", "-d", "--no-build")

	base := "http://127.0.0.1:" + strconv.Itoa(httpPort)
	nodes := map[string]string{} // service to container ID
	for _, svc := range []string{"troupe-1", "troupe-2", "troupe-3"} {
		nodes[svc] = strings.TrimSpace(dc(time.Minute, "ps", "-q", svc))
	}
	waitFor(t, 90*time.Second, "three healthy nodes that see each other", func() error {
		for svc, c := range nodes {
			if s := strings.TrimSpace(run(t, time.Minute, nil, "docker", "inspect", "-f", "{{.State.Health.Status}}", c)); s != "healthy" {
				return fmt.Errorf("%s is %s", svc, s)
			}
		}
		st, err := status(base)
		if err != nil {
			return err
		}
		alive := 0
		for _, m := range st.Members {
			if m.State == "alive" {
				alive++
			}
		}
		if alive != 3 {
			return fmt.Errorf("troupe-1 sees %d alive members", alive)
		}
		return nil
	})
	t.Logf("up, healthy and joined in %s", time.Since(start).Round(time.Millisecond))
	// The compose file requires CLUSTER_KEY, so no node runs an open link.
	if logs := dc(time.Minute, "logs", "--no-color", "troupe-1", "troupe-2", "troupe-3"); strings.Contains(logs, "link is open") {
		t.Fatalf("a node says its link is open:\n%s", logs)
	}

	// Chats sent through troupe-1 run on all three nodes.
	r := chats(base, 60, 12, 0, nil)
	if len(r.problems) > 0 || r.answers[slowAnswer] != 60 {
		t.Fatalf("chats through troupe-1: problems %v, answers %v", r.problems, r.answers)
	}
	if len(r.byNode) != 3 {
		t.Fatalf("60 chats through troupe-1 ran on %v, want all three nodes", r.byNode)
	}
	t.Logf("60 chats through troupe-1 ran on %v", r.byNode)

	// Prometheus found every node by DNS and has its per-actor series.
	prom := "http://127.0.0.1:" + strconv.Itoa(promPort)
	var instances []string
	waitFor(t, 90*time.Second, "Prometheus to have per-actor series of three nodes", func() error {
		res, err := promQuery(prom, `count by (instance) (troupe_actor_messages_total{layout="test-llm"} > 0)`)
		if err != nil {
			return err
		}
		instances = instances[:0]
		for _, s := range res {
			instances = append(instances, s.Metric["instance"])
		}
		if len(instances) != 3 {
			return fmt.Errorf("instances with per-actor series: %v", instances)
		}
		return nil
	})
	for _, inst := range instances {
		res, err := promQuery(prom, fmt.Sprintf(`troupe_actor_messages_total{instance=%q,layout="test-llm"}`, inst))
		if err != nil {
			t.Fatal(err)
		}
		actors := map[string]bool{}
		for _, s := range res {
			actors[s.Metric["actor"]] = true
		}
		if !actors["model/dummy"] && !hasSuffix(actors, "/dummy") {
			t.Errorf("instance %s: per-actor series for %v, want the model among them", inst, actors)
		}
	}
	t.Logf("Prometheus has per-actor series of %v", instances)

	// docker kill of troupe-3 while chats queue on every node: every chat
	// is answered (whole, or cut with a short error if it was streaming
	// from troupe-3) or cleanly refused; none hangs or vanishes.
	const total = 120
	r = chats(base, total, 12, 20, func() { run(t, time.Minute, nil, "docker", "kill", nodes["troupe-3"]) })
	answered, cut, refused := 0, 0, 0
	for a, n := range r.answers {
		switch {
		case a == slowAnswer:
			answered += n
		case strings.Contains(a, "[Error:"):
			cut += n
		default:
			t.Errorf("%d chats answered %q", n, a)
		}
	}
	refused = r.refused
	if len(r.problems) > 0 {
		t.Fatalf("chats lost or hung around the kill: %d, first: %s", len(r.problems), r.problems[0])
	}
	if answered+cut+refused != total {
		t.Fatalf("%d answered + %d cut + %d refused of %d sent", answered, cut, refused, total)
	}
	if cut > 2 {
		t.Errorf("%d chats were cut, want at most 2 (the killed node's capacity)", cut)
	}
	t.Logf("docker kill under load: %d chats answered, %d cut mid-answer, %d refused (429/503), by node %v; compose test %s",
		answered, cut, refused, r.byNode, time.Since(start).Round(time.Second))
}

func hasSuffix(set map[string]bool, suffix string) bool {
	for k := range set {
		if strings.HasSuffix(k, suffix) {
			return true
		}
	}
	return false
}

type results struct {
	mu       sync.Mutex
	byNode   map[string]int
	answers  map[string]int
	refused  int
	problems []string
}

// chats sends n chats from clients goroutines; after runs once when the
// chat numbered at is answered.
func chats(base string, n, clients, at int, after func()) *results {
	r := &results{byNode: map[string]int{}, answers: map[string]int{}}
	jobs := make(chan int)
	var wg sync.WaitGroup
	var once sync.Once
	count := 0
	for range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range jobs {
				a, err := chat(base, "hi", nil)
				r.mu.Lock()
				switch {
				case err != nil:
					r.problems = append(r.problems, err.Error())
				case a.code == http.StatusTooManyRequests || a.code == http.StatusServiceUnavailable:
					r.refused++
				case a.code != http.StatusOK:
					r.problems = append(r.problems, fmt.Sprintf("status %d: %q", a.code, a.body))
				default:
					r.byNode[a.node]++
					r.answers[a.body]++
				}
				count++
				fire := count == at && after != nil
				r.mu.Unlock()
				if fire {
					once.Do(after)
				}
			}
		}()
	}
	for i := range n {
		jobs <- i
	}
	close(jobs)
	wg.Wait()
	return r
}

type nodeStatus struct {
	Node    string `json:"node"`
	Members []struct {
		Name  string `json:"name"`
		State string `json:"state"`
	} `json:"members"`
}

func status(base string) (nodeStatus, error) {
	var st nodeStatus
	resp, err := client.Get(base + "/status.json")
	if err != nil {
		return st, err
	}
	defer resp.Body.Close()
	return st, json.NewDecoder(resp.Body).Decode(&st)
}

type promSeries struct {
	Metric map[string]string `json:"metric"`
}

func promQuery(base, q string) ([]promSeries, error) {
	resp, err := client.Get(base + "/api/v1/query?query=" + url.QueryEscape(q))
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	var out struct {
		Status string `json:"status"`
		Error  string `json:"error"`
		Data   struct {
			Result []promSeries `json:"result"`
		} `json:"data"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&out); err != nil {
		return nil, err
	}
	if out.Status != "success" {
		return nil, fmt.Errorf("query %s: %s", q, out.Error)
	}
	return out.Data.Result, nil
}
