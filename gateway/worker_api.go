package gateway

import (
	"encoding/json"
	"fmt"
	"mime"
	"net/http"
	"strconv"
	"time"
	"unicode/utf8"

	"github.com/julienschmidt/httprouter"

	"github.com/troupe-llm/troupe/actors"
)

// handleChat serves the Agent's chat endpoint: a form with the history in
// "input", answered with the model's output streamed as plain text.
func (s *Server) handleChat(w http.ResponseWriter, r *http.Request, ps httprouter.Params) {
	slot := ps.ByName("slot")
	if slot != "" && !s.validSlot(slot) {
		http.NotFound(w, r)
		return
	}
	conn := connOf(r)
	conn.receiving()
	limits := s.cfg.Limits
	if r.ContentLength > limits.MaxBodyBytes {
		s.overLimit(w, limits.tooLarge())
		return
	}
	r.Body = http.MaxBytesReader(w, r.Body, limits.MaxBodyBytes)
	if err := parseForm(r); err != nil {
		if le := limits.bodyError(err); le != nil {
			s.overLimit(w, le)
			return
		}
		s.badRequest(w, http.StatusBadRequest, "form", "The request is not a valid form: "+err.Error())
		return
	}
	history, err := parseHistory(r.PostForm.Get("input"))
	if err != nil {
		s.badRequest(w, http.StatusBadRequest, "input", capitalize(err.Error())+".")
		return
	}
	name, ok := s.layoutFor(r.PostForm.Get("name"))
	if !ok {
		s.badRequest(w, http.StatusNotFound, "name", fmt.Sprintf("This worker does not serve an LLM named %q.", r.PostForm.Get("name")))
		return
	}
	req := &actors.ChatRequest{ChatId: s.newChatID(), Layout: name, History: history}
	if err := applyModelfile(r.PostForm.Get("modelfile"), req); err != nil {
		s.badRequest(w, http.StatusBadRequest, "modelfile", capitalize(err.Error())+".")
		return
	}
	if le := limits.checkHistory(req.History); le != nil {
		s.overLimit(w, le)
		return
	}
	var key string
	if hid, uid := r.PostForm.Get("history_id"), r.PostForm.Get("user_id"); hid != "" || uid != "" {
		key = hid + "\x00" + uid
	}
	conn.serveChat(s.cfg.ChatTimeout)
	defer conn.rest()
	s.serveChat(r, req, key, slot, newTextAnswer(w, r, req.ChatId, limits.MaxAnswerBytes))
}

// overLimit refuses a request over a limit in the Agent's API: the status,
// and a sentence for the chat window.
func (s *Server) overLimit(w http.ResponseWriter, le *limitError) {
	s.countOverLimit(le)
	if le.status == http.StatusRequestTimeout {
		w.Header().Set("Connection", "close")
	}
	http.Error(w, le.msg, le.status)
}

// countOverLimit counts a request refused by a limit. A body that came too
// slowly was counted by its connection, which saw the read time out.
func (s *Server) countOverLimit(le *limitError) {
	s.metrics.badRequests.WithLabelValues(le.limit).Inc()
	if le.limit != limitBodyTimeout {
		s.limited(le.limit)
	}
}

func parseForm(r *http.Request) error {
	ct, _, _ := mime.ParseMediaType(r.Header.Get("Content-Type"))
	if ct == "multipart/form-data" {
		return r.ParseMultipartForm(1 << 20)
	}
	return r.ParseForm()
}

func (s *Server) validSlot(slot string) bool {
	n, err := strconv.Atoi(slot)
	if err != nil || n < 1 || strconv.Itoa(n) != slot {
		return false
	}
	for _, l := range s.layouts.Map() {
		if n < l.Admission.Capacity() {
			return true
		}
	}
	return false
}

// layoutFor picks the layout for an LLM name: one this node or another
// serves. A node with one layout takes any name for it, as the original
// worker did, because older Agents do not forward the name.
func (s *Server) layoutFor(name string) (string, bool) {
	if _, ok := s.layouts.Get(name); ok {
		return name, true
	}
	if name != "" && s.cfg.Router.Serves(name) {
		return name, true
	}
	if layouts := s.layouts.Map(); len(layouts) == 1 {
		for n := range layouts {
			return n, true
		}
	}
	return "", false
}

func statusFor(code actors.Code) int {
	switch code {
	case actors.Code_CODE_INVALID_ARGUMENT:
		return http.StatusBadRequest
	case actors.Code_CODE_UNAVAILABLE:
		return http.StatusServiceUnavailable
	case actors.Code_CODE_DEADLINE_EXCEEDED:
		return http.StatusGatewayTimeout
	case actors.Code_CODE_OVERLOADED:
		return http.StatusTooManyRequests
	default:
		return http.StatusInternalServerError
	}
}

// reject answers a chat that never reached a layout.
func (s *Server) reject(out answer, layout string, status int, msg string, retryAfter time.Duration) {
	s.metrics.chats.WithLabelValues(layout, outcomeRejected).Inc()
	out.reject(status, msg, retryAfter)
}

func (s *Server) badRequest(w http.ResponseWriter, status int, reason, msg string) {
	s.metrics.badRequests.WithLabelValues(reason).Inc()
	http.Error(w, msg, status)
}

// handleSlotGet serves GET {endpoint}/abort; a GET of a slot's chat URL is
// a mistake.
func (s *Server) handleSlotGet(w http.ResponseWriter, r *http.Request, ps httprouter.Params) {
	if ps.ByName("slot") != "abort" {
		http.Error(w, "Send chats with POST.", http.StatusMethodNotAllowed)
		return
	}
	s.abort(w, "")
}

// handleSlotAbort serves GET {endpoint}/N/abort.
func (s *Server) handleSlotAbort(w http.ResponseWriter, r *http.Request, ps httprouter.Params) {
	if !s.validSlot(ps.ByName("slot")) {
		http.NotFound(w, r)
		return
	}
	s.abort(w, ps.ByName("slot"))
}

// abort stops the chats the Agent sent through one endpoint slot, as the
// Agent's chat/abort asks, and answers in the original worker's JSON form.
func (s *Server) abort(w http.ResponseWriter, slot string) {
	msg := "No chat to abort."
	if s.abortSlot(slot) > 0 {
		msg = "Aborted."
	}
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(map[string]string{"msg": msg})
}

func capitalize(s string) string {
	if s == "" {
		return s
	}
	r, size := utf8.DecodeRuneInString(s)
	if r >= 'a' && r <= 'z' {
		return string(r-'a'+'A') + s[size:]
	}
	return s
}
