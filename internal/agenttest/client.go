package agenttest

import (
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
)

// Errors of Chat, for the schedule answers that mean no chat starts.
var (
	// ErrNoMachine is worker/schedule answering NOMACHINE: no endpoint is
	// registered under the name.
	ErrNoMachine = errors.New("agenttest: NOMACHINE: no endpoint under that name")
	// ErrBusy is worker/schedule answering BUSY: every endpoint is reserved
	// or streaming (also the answer to a missing name or history id).
	ErrBusy = errors.New("agenttest: BUSY: every endpoint is taken")
)

// Chat does what the Kuwa web front end does for one message: POST
// worker/schedule, then POST chat/completions with name, input, history_id,
// user_id and extra (in that order, extra sorted by key), and returns the
// reply body as it streams. The caller closes it.
//
// The Agent answers 200 to anything, so an empty body is also what a
// dropped worker or a lost reservation looks like; check Endpoints to tell.
// historyID should be a decimal number, as the front end's are: chat/abort
// fails for everyone while a reserved chat has any other id.
func (a *Agent) Chat(ctx context.Context, name, historyID, userID, input string, extra url.Values) (io.ReadCloser, error) {
	sched := form{{"name", name}, {"history_id", historyID}, {"user_id", userID}}
	answer, err := a.postText(ctx, "worker/schedule", sched)
	if err != nil {
		return nil, err
	}
	switch answer {
	case answerReady:
	case answerNoMachine:
		return nil, fmt.Errorf("schedule %q: %w", name, ErrNoMachine)
	case answerBusy:
		return nil, fmt.Errorf("schedule %q: %w", name, ErrBusy)
	default:
		return nil, fmt.Errorf("agenttest: schedule %q: unexpected answer %q", name, answer)
	}

	chat := form{{"name", name}, {"input", input}, {"history_id", historyID}, {"user_id", userID}}
	for _, k := range slices.Sorted(maps.Keys(extra)) {
		for _, v := range extra[k] {
			chat = append(chat, field{k, v})
		}
	}
	resp, err := a.post(ctx, "chat/completions", chat)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		resp.Body.Close()
		return nil, fmt.Errorf("agenttest: chat/completions: %s", resp.Status)
	}
	return resp.Body, nil
}

// Abort does what the front end's stop button does: POST chat/abort with
// history_id as a one-element list literal. The Agent then calls GET
// {endpoint}/abort on the endpoint serving that chat, if any.
func (a *Agent) Abort(ctx context.Context, historyID, userID string) error {
	lit := strconv.Quote(historyID)
	if _, err := strconv.Atoi(historyID); err == nil {
		lit = historyID
	}
	answer, err := a.postText(ctx, "chat/abort", form{{"history_id", "[" + lit + "]"}, {"user_id", userID}})
	if err != nil {
		return err
	}
	if answer != answerSuccess {
		return fmt.Errorf("agenttest: chat/abort: unexpected answer %q", answer)
	}
	return nil
}

func (a *Agent) post(ctx context.Context, route string, f form) (*http.Response, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, a.URL()+route, strings.NewReader(f.encode()))
	if err != nil {
		return nil, err
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	return a.front.Do(req)
}

func (a *Agent) postText(ctx context.Context, route string, f form) (string, error) {
	resp, err := a.post(ctx, route, f)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return "", fmt.Errorf("agenttest: %s: %w", route, err)
	}
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("agenttest: %s: %s", route, resp.Status)
	}
	return string(body), nil
}
