package agenttest

import "slices"

// CallKind names a worker's call to the Agent.
type CallKind string

// The calls a worker makes.
const (
	CallRegister   CallKind = "register"
	CallUnregister CallKind = "unregister"
)

// Call is one register or unregister call as the Agent saw it.
type Call struct {
	Kind CallKind
	// Name and Endpoint are the form fields as sent; empty when missing.
	Name     string
	Endpoint string
	// Answer is the body the Agent sent back: "Success" or "Failed".
	Answer string
}

// Answers of the Agent, byte for byte.
const (
	answerSuccess   = "Success"
	answerFailed    = "Failed"
	answerReady     = "READY"
	answerBusy      = "BUSY"
	answerNoMachine = "NOMACHINE"
)

// optional is a form value that may be missing: the kernel compares Python
// None as a value of its own, so a missing user_id matches only a missing
// user_id.
type optional struct {
	v  string
	ok bool
}

// endpoint is one row of the kernel's table, a list
// [url, "READY"|"BUSY", history_id or -1, user_id or -1].
type endpoint struct {
	url       string
	busy      bool
	reserved  bool // history_id is not -1
	historyID optional
	userID    optional
}

func (e *endpoint) state() EndpointState {
	s := EndpointState{URL: e.url, Status: answerReady, Reserved: e.reserved, HistoryID: e.historyID.v, UserID: e.userID.v}
	if e.busy {
		s.Status = answerBusy
	}
	return s
}

// release is the kernel's `finally` after a reply: the row is free again.
func (e *endpoint) release() {
	e.busy, e.reserved = false, false
	e.historyID, e.userID = optional{}, optional{}
}

// table is the kernel's `data` dict: names in insertion order (worker/list
// shows them in that order), rows per name in registration order.
type table struct {
	order  []string
	byName map[string][]*endpoint
}

func (t *table) add(name string, e *endpoint) {
	if t.byName == nil {
		t.byName = map[string][]*endpoint{}
	}
	if _, ok := t.byName[name]; !ok {
		t.order = append(t.order, name)
	}
	t.byName[name] = append(t.byName[name], e)
}

// keep leaves under name only the rows for which f is true, deleting the
// name when none is left, and reports how many rows went.
func (t *table) keep(name string, f func(*endpoint) bool) int {
	rows := t.byName[name]
	kept := slices.DeleteFunc(slices.Clone(rows), func(e *endpoint) bool { return !f(e) })
	if len(kept) == 0 {
		delete(t.byName, name)
		t.order = slices.DeleteFunc(t.order, func(n string) bool { return n == name })
	} else {
		t.byName[name] = kept
	}
	return len(rows) - len(kept)
}

// register follows executor.py register(): both fields must be present, and
// the endpoint, less one trailing slash, must be new under that name.
func (t *table) register(name, endpointURL optional) string {
	if !name.ok || !endpointURL.ok {
		return answerFailed
	}
	u := trimOneSlash(endpointURL.v)
	for _, e := range t.byName[name.v] {
		if e.url == u {
			return answerFailed
		}
	}
	t.add(name.v, &endpoint{url: u})
	return answerSuccess
}

// unregister follows executor.py unregister(): every row whose
// scheme://netloc equals the given endpoint's goes. Success means rows went.
func (t *table) unregister(name, endpointURL optional) string {
	if _, ok := t.byName[name.v]; !name.ok || !ok {
		return answerFailed
	}
	if !endpointURL.ok {
		// Python turns a missing URL into "b''://b''", which matches no row.
		return answerFailed
	}
	base := baseURL(endpointURL.v)
	if t.keep(name.v, func(e *endpoint) bool { return baseURL(e.url) != base }) == 0 {
		return answerFailed
	}
	return answerSuccess
}

// schedule follows executor.py status(): the first READY row not yet
// reserved is reserved for the chat.
func (t *table) schedule(name, historyID, userID optional) string {
	if name.v == "" || historyID.v == "" {
		return answerBusy
	}
	rows := t.byName[name.v]
	if len(rows) == 0 {
		return answerNoMachine
	}
	for _, e := range rows {
		if !e.busy && !e.reserved {
			e.reserved, e.historyID, e.userID = true, historyID, userID
			return answerReady
		}
	}
	return answerBusy
}

// reserved finds the row chat/completions forwards to: READY and reserved
// for exactly this (history_id, user_id).
func (t *table) reserved(name, historyID, userID optional) *endpoint {
	for _, e := range t.byName[name.v] {
		if !e.busy && e.reserved && e.historyID == historyID && e.userID == userID {
			return e
		}
	}
	return nil
}

func trimOneSlash(s string) string {
	if len(s) > 0 && s[len(s)-1] == '/' {
		return s[:len(s)-1]
	}
	return s
}
