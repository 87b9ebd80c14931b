package gateway_test

import (
	"context"
	"io"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/troupe-llm/troupe/actors"
)

// slowToStop is a model that takes its time to stop after a cancel, as an
// upstream call winding down does, and records the most generations it
// ever ran at once.
type slowToStop struct {
	running, peak atomic.Int32
	started       chan struct{}
	stopping      chan struct{} // a cancelled generation waits here
	release       chan struct{} // a generation not cancelled ends here
}

func (m *slowToStop) Generate(ctx context.Context, _ *actors.ChatRequest, emit func(string) error) error {
	n := m.running.Add(1)
	defer m.running.Add(-1)
	for {
		p := m.peak.Load()
		if n <= p || m.peak.CompareAndSwap(p, n) {
			break
		}
	}
	m.started <- struct{}{}
	if err := emit("x"); err != nil {
		return err
	}
	select {
	case <-ctx.Done():
		<-m.stopping
		return ctx.Err()
	case <-m.release:
		return nil
	}
}

// A cancelled chat's place is free for the next chat only once its model
// has stopped: the model never runs more than its concurrency, however
// slowly a cancelled generation winds down.
func TestModelNeverRunsAboveConcurrency(t *testing.T) {
	m := &slowToStop{started: make(chan struct{}, 4), stopping: make(chan struct{}), release: make(chan struct{})}
	n := startNode(t, actors.PipelineSpec{Model: modelOf(m, 1, 4)})
	ctx := ctxFor(t)

	first, cancelFirst := context.WithCancel(ctx)
	var wg sync.WaitGroup
	answering := make(chan struct{})
	wg.Add(1)
	go func() {
		defer wg.Done()
		resp := n.post(first, "/v1/completion", form(userInput("a")))
		close(answering)
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
	}()
	<-m.started
	<-answering
	cancelFirst() // the client goes away; the model takes its time to stop

	second := make(chan string, 1)
	go func() {
		resp := n.post(ctx, "/v1/completion", form(userInput("b")))
		second <- readAll(t, resp)
	}()
	// Both chats are at the model: the first still stopping, the second
	// waiting for its place there (had it started, the peak says so).
	waitFor(t, func() bool {
		return testutil.ToFloat64(gaugeOf(t, n, "troupe_actor_in_flight", "model/test")) == 2
	}, "the second chat waiting at the model")
	close(m.stopping)
	<-m.started
	close(m.release)
	if got := <-second; got != "x" {
		t.Fatalf("second chat: %q", got)
	}
	wg.Wait()
	if p := m.peak.Load(); p != 1 {
		t.Fatalf("the model ran %d generations at once with concurrency 1", p)
	}
}

// gaugeOf reads one actor's gauge; a series not created yet reads 0.
func gaugeOf(t *testing.T, n *node, name, actor string) prometheus.Collector {
	return collectorFunc(func(ch chan<- prometheus.Metric) {
		v := 0.0
		mfs, err := n.reg.Gather()
		if err != nil {
			t.Error(err)
		}
		for _, mf := range mfs {
			if mf.GetName() != name {
				continue
			}
			for _, m := range mf.GetMetric() {
				for _, l := range m.GetLabel() {
					if l.GetName() == "actor" && l.GetValue() == actor {
						v = m.GetGauge().GetValue()
					}
				}
			}
		}
		ch <- prometheus.MustNewConstMetric(prometheus.NewDesc(name, "", nil, nil), prometheus.GaugeValue, v)
	})
}
