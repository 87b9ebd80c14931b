package gateway_test

import (
	"context"
	"errors"
	"net/http"
	"slices"
	"strings"
	"testing"

	"github.com/asynkron/protoactor-go/actor"

	"github.com/troupe-llm/troupe/actors"
	"github.com/troupe-llm/troupe/gateway"
)

// A chat whose every node went away before answering (or could not be
// reached at all, like a node whose link refuses this one) is not a matter
// of load: it gets a 503 that says so, not "too many chats". With one of
// them full, it is.
func TestUnreachableNodesAreNotOverload(t *testing.T) {
	gone, cancel := context.WithCancel(context.Background())
	cancel()
	for _, tt := range []struct {
		name       string
		full       bool // the first node tried refuses for want of room
		wantStatus int
		wantBody   string
	}{
		{"every node went away", false, http.StatusServiceUnavailable, "could not be reached"},
		{"one full, one gone", true, http.StatusTooManyRequests, "Too many chats"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			model := &refuser{next: echo}
			model.refuse.Store(tt.full)
			n := startNodeWith(t, actors.PipelineSpec{Model: modelOf(model, 1, 1)}, func(cfg *gateway.Config) {
				l := cfg.Layouts["llm"]
				cfg.Router = routerFunc(func(tried []string) (gateway.Target, error) {
					switch {
					case len(tried) == 0 && tt.full:
						// Its model refuses for want of room.
						return gateway.Target{Node: "self", Local: l, Gone: context.Background()}, nil
					case !slices.Contains(tried, "far"):
						return gateway.Target{Node: "far", Remote: actor.NewPID("far:1", "chats"), Gone: gone}, nil
					}
					return gateway.Target{}, errors.New("no node serves llm")
				})
			})
			resp := n.post(ctxFor(t), "/v1/completion", form(userInput("x")))
			body := readAll(t, resp)
			if resp.StatusCode != tt.wantStatus || !strings.Contains(body, tt.wantBody) {
				t.Fatalf("got %d %q, want %d and %q", resp.StatusCode, body, tt.wantStatus, tt.wantBody)
			}
		})
	}
}
