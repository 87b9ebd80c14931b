package kuwa

import (
	"bytes"
	"encoding/json"
	"net/url"
	"sort"
	"strings"

	"github.com/troupe-llm/troupe/actors"
)

// Params that are form fields of their own rather than modelfile
// parameters: the Agent sends them beside the history.
const (
	paramHistoryID = "history_id"
	paramUserID    = "user_id"
)

// record is one message in the Kuwa form.
type record struct {
	Msg   string `json:"msg"`
	IsBot bool   `json:"isbot"`
}

// directive is one entry of a Kuwa modelfile.
type directive struct {
	Name string `json:"name"`
	Args string `json:"args"`
}

// form builds the chat's form body, with the fields in the order the
// Agent sends them: input, name, history_id, user_id, modelfile.
//
// The Kuwa form has no system record, so system messages go into the
// modelfile as one "system" directive (Kuwa executors concatenate the
// directives' text without a separator, hence one, joined by newlines, as
// Troupe's own gateway joins them coming in). Tool results become user
// records: they are input the model reads. Every other parameter becomes a
// "parameter" directive "key value", sorted by key so the body is stable;
// one with an empty value is left out, as an executor cannot parse it.
// history_id defaults to the chat's id, so the executor's logs can be
// matched with Troupe's; user_id defaults to empty.
func (m *Model) form(req *actors.ChatRequest) string {
	records := make([]record, 0, len(req.History))
	var system []string
	for _, msg := range req.History {
		switch msg.GetRole() {
		case actors.Role_ROLE_SYSTEM:
			system = append(system, msg.GetContent())
		case actors.Role_ROLE_ASSISTANT:
			records = append(records, record{Msg: msg.GetContent(), IsBot: true})
		default:
			records = append(records, record{Msg: msg.GetContent()})
		}
	}

	var directives []directive
	if len(system) > 0 {
		directives = append(directives, directive{Name: "system", Args: strings.Join(system, "\n")})
	}
	params := req.GetParams()
	keys := make([]string, 0, len(params))
	for k, v := range params {
		if k == "" || v == "" || k == paramHistoryID || k == paramUserID {
			continue
		}
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		directives = append(directives, directive{Name: "parameter", Args: k + " " + params[k]})
	}
	if directives == nil {
		directives = []directive{} // "[]": executors json.loads the field
	}

	name := m.name
	if name == "" {
		name = req.GetLayout()
	}
	historyID := params[paramHistoryID]
	if historyID == "" {
		historyID = req.GetChatId()
	}

	var b strings.Builder
	field := func(key, value string) {
		if b.Len() > 0 {
			b.WriteByte('&')
		}
		b.WriteString(key)
		b.WriteByte('=')
		b.WriteString(url.QueryEscape(value))
	}
	field("input", compactJSON(records))
	field("name", name)
	field("history_id", historyID)
	field("user_id", params[paramUserID])
	field("modelfile", compactJSON(directives))
	return b.String()
}

// compactJSON encodes v without escaping <, > and &, which Python's
// json.loads reads either way but people reading logs read better.
func compactJSON(v any) string {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	_ = enc.Encode(v) // slices of plain structs always encode
	return strings.TrimSuffix(buf.String(), "\n")
}
