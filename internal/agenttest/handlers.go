package agenttest

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// Flask's answers for a view returning a string, and for an exception.
const (
	flaskTextType = "text/html; charset=utf-8"
	flask500      = "<!doctype html>\n<html lang=en>\n<title>500 Internal Server Error</title>\n" +
		"<h1>Internal Server Error</h1>\n<p>The server encountered an internal error and was unable " +
		"to complete your request. Either the server is overloaded or there is an error in the application.</p>\n"
	flask404 = "<!doctype html>\n<html lang=en>\n<title>404 Not Found</title>\n<h1>Not Found</h1>\n" +
		"<p>The requested URL was not found on the server. If you entered the URL manually please check " +
		"your spelling and try again.</p>\n"
	flask405 = "<!doctype html>\n<html lang=en>\n<title>405 Method Not Allowed</title>\n" +
		"<h1>Method Not Allowed</h1>\n<p>The method is not allowed for the requested URL.</p>\n"
)

// Timeouts of the kernel's outgoing calls.
const (
	abortTimeout  = 10 * time.Second
	healthTimeout = 20 * time.Second
)

// hopHeaders are not relayed to the worker: they describe the front end's
// connection, not the request, and the Content-Length changes with the
// re-encoded body. Accept-Encoding is dropped so the worker's bytes arrive
// uncompressed, as requests hands them to the kernel.
var hopHeaders = []string{
	"Connection", "Keep-Alive", "Proxy-Authenticate", "Proxy-Authorization", "Proxy-Connection",
	"Te", "Trailer", "Transfer-Encoding", "Upgrade", "Content-Length", "Accept-Encoding",
}

func (a *Agent) serveHTTP(w http.ResponseWriter, r *http.Request) {
	if !a.track() {
		w.WriteHeader(http.StatusServiceUnavailable)
		return
	}
	defer a.inflight.Done()

	// Exact paths: Flask answers 404 to "//" or a trailing slash where Go's
	// ServeMux would redirect.
	method, handle := a.route(r.URL.Path)
	if handle == nil {
		writeFlask(w, http.StatusNotFound, flask404)
		return
	}
	if r.Method != method && (method != http.MethodGet || r.Method != http.MethodHead) {
		w.Header().Set("Allow", method+", OPTIONS")
		writeFlask(w, http.StatusMethodNotAllowed, flask405)
		return
	}
	f, err := parseForm(r)
	if err != nil {
		writeFlask(w, http.StatusBadRequest, err.Error())
		return
	}
	handle(w, r, f)
}

type handler func(http.ResponseWriter, *http.Request, form)

// route maps a path to the kernel's view and the one method it accepts.
func (a *Agent) route(path string) (string, handler) {
	switch path {
	case APIPath + "worker/register":
		return http.MethodPost, a.register
	case APIPath + "worker/unregister":
		return http.MethodPost, a.unregister
	case APIPath + "worker/schedule":
		return http.MethodPost, a.schedule
	case APIPath + "worker/list":
		return http.MethodGet, a.list
	case APIPath + "chat/completions":
		return http.MethodPost, a.completions
	case APIPath + "chat/abort":
		return http.MethodPost, a.abort
	}
	return "", nil
}

func writeFlask(w http.ResponseWriter, status int, body string) {
	w.Header().Set("Content-Type", flaskTextType)
	w.WriteHeader(status)
	_, _ = io.WriteString(w, body)
}

func (a *Agent) register(w http.ResponseWriter, _ *http.Request, f form) {
	name, ep := f.get("name"), f.get("endpoint")
	a.mu.Lock()
	answer := a.tab.register(name, ep)
	a.calls = append(a.calls, Call{Kind: CallRegister, Name: name.v, Endpoint: ep.v, Answer: answer})
	a.mu.Unlock()
	a.logf("register %q %q: %s", name.v, ep.v, answer)
	writeFlask(w, http.StatusOK, answer)
}

func (a *Agent) unregister(w http.ResponseWriter, _ *http.Request, f form) {
	name, ep := f.get("name"), f.get("endpoint")
	a.mu.Lock()
	answer := a.tab.unregister(name, ep)
	a.calls = append(a.calls, Call{Kind: CallUnregister, Name: name.v, Endpoint: ep.v, Answer: answer})
	a.mu.Unlock()
	a.logf("unregister %q %q: %s", name.v, ep.v, answer)
	writeFlask(w, http.StatusOK, answer)
}

func (a *Agent) schedule(w http.ResponseWriter, _ *http.Request, f form) {
	a.mu.Lock()
	answer := a.tab.schedule(f.get("name"), f.get("history_id"), f.get("user_id"))
	a.mu.Unlock()
	writeFlask(w, http.StatusOK, answer)
}

// list is jsonify(list(data.keys())): compact JSON and a newline.
func (a *Agent) list(w http.ResponseWriter, _ *http.Request, _ form) {
	names := a.Names()
	if names == nil {
		names = []string{}
	}
	body, _ := json.Marshal(names)
	w.Header().Set("Content-Type", "application/json")
	_, _ = w.Write(append(body, '\n'))
}

// completions relays the chat to the endpoint reserved for it. Whatever goes
// wrong before the worker answers, the user gets an empty 200.
func (a *Agent) completions(w http.ResponseWriter, r *http.Request, f form) {
	name, historyID, userID := f.get("name"), f.get("history_id"), f.get("user_id")
	a.mu.Lock()
	dest := a.tab.reserved(name, historyID, userID)
	var target string
	if dest != nil {
		target = dest.url
	}
	a.mu.Unlock()
	if dest == nil {
		writeFlask(w, http.StatusOK, "")
		return
	}

	req, err := a.forwardRequest(r, target, f)
	if err != nil {
		// requests raises MissingSchema or InvalidURL here, which the kernel
		// does not catch.
		writeFlask(w, http.StatusInternalServerError, flask500)
		return
	}
	resp, err := a.upstream.Do(req)
	if err != nil {
		if r.Context().Err() != nil {
			return // the front end left; nobody to answer
		}
		// requests raises ConnectionError for refused, reset or closed
		// before an answer; the kernel then forgets the worker. Only the
		// very URL goes, and the table is not saved to the record file.
		a.mu.Lock()
		_, listed := a.tab.byName[name.v]
		if listed {
			a.tab.keep(name.v, func(e *endpoint) bool { return e.url != target })
		}
		a.mu.Unlock()
		if !listed {
			writeFlask(w, http.StatusInternalServerError, flask500) // KeyError
			return
		}
		a.logf("completions: dropped %q %q: %v", name.v, target, err)
		writeFlask(w, http.StatusOK, "")
		return
	}
	defer resp.Body.Close()

	a.mu.Lock()
	dest.busy = true
	a.mu.Unlock()
	defer func() {
		a.mu.Lock()
		dest.release()
		a.mu.Unlock()
	}()

	// The status code is not read: an error page streams into the chat.
	w.Header().Set("Content-Type", "text/plain")
	rc := http.NewResponseController(w)
	dec := newReplyDecoder(resp.Header.Get("Content-Type"))
	send := func(p []byte) bool {
		if len(p) == 0 {
			return true
		}
		if _, err := w.Write(p); err != nil {
			return false
		}
		return rc.Flush() == nil
	}
	buf := make([]byte, 32<<10)
	for {
		n, err := resp.Body.Read(buf)
		if !send(dec.decode(buf[:n])) {
			return
		}
		if err != nil {
			// A broken stream ends the reply quietly, as the kernel's
			// generator catches the exception.
			break
		}
	}
	send(dec.flush())
}

// forwardRequest builds the POST to the worker. Newer kernels send the front
// end's whole form and headers (Host included); older ones a fixed set of
// fields.
func (a *Agent) forwardRequest(r *http.Request, target string, f form) (*http.Request, error) {
	var body string
	header := http.Header{}
	if a.cfg.LegacyForward {
		var legacy form
		for _, k := range []string{"input", "openai_token", "google_token", "user_token", "modelfile"} {
			// requests leaves out fields whose value is None.
			if v := f.get(k); v.ok {
				legacy = append(legacy, field{k, v.v})
			}
		}
		body = legacy.encode()
		header.Set("Content-Type", "application/x-www-form-urlencoded")
	} else {
		body = f.firstValues().encode()
		header = r.Header.Clone()
		for _, h := range hopHeaders {
			header.Del(h)
		}
	}
	if !strings.HasPrefix(target, "http://") && !strings.HasPrefix(target, "https://") {
		return nil, errors.New("no http(s) scheme")
	}
	req, err := http.NewRequestWithContext(r.Context(), http.MethodPost, target, strings.NewReader(body))
	if err != nil {
		return nil, err
	}
	req.Header = header
	if !a.cfg.LegacyForward {
		req.Host = r.Host
	}
	return req, nil
}

// abort calls GET {endpoint}/abort on every endpoint reserved for one of the
// listed chats of that user. history_id is a Python list literal the kernel
// eval()s; JSON arrays of numbers are what the front end sends.
func (a *Agent) abort(w http.ResponseWriter, r *http.Request, f form) {
	historyIDs, userID := f.get("history_id"), f.get("user_id")
	if historyIDs.v == "" || userID.v == "" {
		writeFlask(w, http.StatusOK, answerSuccess)
		return
	}
	ids, err := parseHistoryList(historyIDs.v)
	if err != nil {
		writeFlask(w, http.StatusInternalServerError, flask500)
		return
	}
	var targets []string
	a.mu.Lock()
	for _, name := range a.tab.order {
		for _, e := range a.tab.byName[name] {
			id := -1
			if e.reserved {
				// int(k[2]) raises on a history id that is not a number,
				// whoever it belongs to.
				if id, err = strconv.Atoi(strings.TrimSpace(e.historyID.v)); err != nil {
					a.mu.Unlock()
					writeFlask(w, http.StatusInternalServerError, flask500)
					return
				}
			}
			if e.reserved && ids[float64(id)] && e.userID == (optional{userID.v, true}) {
				targets = append(targets, e.url)
			}
		}
	}
	a.mu.Unlock()
	for _, t := range targets {
		if err := a.get(r.Context(), t+"/abort", abortTimeout, nil); err != nil {
			writeFlask(w, http.StatusInternalServerError, flask500)
			return
		}
	}
	writeFlask(w, http.StatusOK, answerSuccess)
}

// parseHistoryList reads a list literal of numbers into a set. Python's
// `in` compares 3 == 3.0, so the set is keyed by float64.
func parseHistoryList(s string) (map[float64]bool, error) {
	dec := json.NewDecoder(strings.NewReader(s))
	dec.UseNumber()
	var items []any
	if err := dec.Decode(&items); err != nil {
		return nil, err
	}
	ids := map[float64]bool{}
	for _, it := range items {
		if n, ok := it.(json.Number); ok {
			if v, err := n.Float64(); err == nil {
				ids[v] = true
			}
		}
	}
	return ids, nil
}

// get calls a worker and reports a failure to get any answer; status
// reports the status when it is wanted.
func (a *Agent) get(ctx context.Context, u string, timeout time.Duration, status *int) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return err
	}
	resp, err := a.upstream.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 1<<20))
	if status != nil {
		*status = resp.StatusCode
	}
	return nil
}
