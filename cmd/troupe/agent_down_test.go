package main

import (
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/troupe-llm/troupe/internal/agenttest"
)

// An Agent that stays down past RETRY_COUNT rounds: the node says so where
// an operator looks (an error in its log, the failed state in /status.json
// and /metrics, with the failed rounds counted), keeps serving, keeps
// trying, and registers once the Agent is back.
func TestAgentDownPastRetryCount(t *testing.T) {
	agent := agenttest.Start(t)
	agent.SetDown(true)
	p := startProcess(t, nodeEnv(agent, "RETRY_COUNT", "2",
		"LAYOUT_CONFIG", writeTemp(t, "version: 1\nllm:\n  class: reflect\n  concurrency: 2\n")))

	waitFor(t, func() bool { return p.status(t).Agent.State == "failed" }, "the node to report the Agent failed")
	if st := p.status(t).Agent; st.URL != agent.URL() || st.Failures < 2 || st.Attempts < st.Failures {
		t.Errorf("status of a failed Agent: %+v, want its URL and at least 2 failed rounds", st)
	}
	if m := p.metrics(t); !strings.Contains(m, `troupe_agent_registration_state{state="failed"} 1`) {
		t.Errorf("metrics lack the failed state:\n%s", m)
	}
	p.waitLog(t, "cannot register with the Agent; still trying", 1)
	if code, body := p.post(t, "/v1/completion", url.Values{"input": {userInput("still serving")}}); code != 200 || body != "still serving" {
		t.Fatalf("chat while the Agent is down: %d %q", code, body)
	}

	agent.SetDown(false)
	agent.WaitEndpoints(t, "test-llm", hasN(2), 40*time.Second)
	waitFor(t, func() bool { return p.status(t).Agent.State == "registered" }, "the node to report the Agent registered")
}
