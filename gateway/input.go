package gateway

import (
	"encoding/json"
	"errors"
	"fmt"
	"strings"

	"github.com/troupe-llm/troupe/actors"
)

// record is one chat message as the Agent sends it: the Kuwa form
// {"msg", "isbot"} or the OpenAI form {"role", "content"}.
type record struct {
	Msg     *string `json:"msg"`
	IsBot   bool    `json:"isbot"`
	Role    string  `json:"role"`
	Content *string `json:"content"`
}

// Input errors are shown to users as they are: short and human.
var (
	errInputMissing   = errors.New("the chat has no input: send the history as the form field \"input\"")
	errInputEmpty     = errors.New("the chat history is empty")
	errLastEmpty      = errors.New("the last message of the chat is empty")
	errRecordNoText   = errors.New("has neither \"msg\" nor \"content\"")
	errModelfileShape = errors.New("modelfile must be a JSON list of {\"name\", \"args\"} objects")
)

// parseHistory parses the Agent's input field into a history, oldest first.
func parseHistory(input string) ([]*actors.Message, error) {
	if strings.TrimSpace(input) == "" {
		return nil, errInputMissing
	}
	var records []record
	if err := json.Unmarshal([]byte(input), &records); err != nil {
		return nil, fmt.Errorf("the chat input is not a JSON list of messages (%s)", shortJSONError(err))
	}
	if len(records) == 0 {
		return nil, errInputEmpty
	}
	history := make([]*actors.Message, 0, len(records))
	for i, r := range records {
		m := &actors.Message{}
		switch {
		case r.Msg != nil:
			m.Content = *r.Msg
			if r.IsBot {
				m.Role = actors.Role_ROLE_ASSISTANT
			}
		case r.Content != nil:
			m.Content = *r.Content
			switch r.Role {
			case "user", "":
			case "assistant", "bot":
				m.Role = actors.Role_ROLE_ASSISTANT
			case "system":
				m.Role = actors.Role_ROLE_SYSTEM
			default:
				return nil, fmt.Errorf("message %d has an unknown role %q (want user, assistant or system)", i+1, r.Role)
			}
		default:
			return nil, fmt.Errorf("message %d %w", i+1, errRecordNoText)
		}
		history = append(history, m)
	}
	if strings.TrimSpace(history[len(history)-1].Content) == "" {
		return nil, errLastEmpty
	}
	return history, nil
}

// directive is one entry of a Kuwa modelfile.
type directive struct {
	Name string `json:"name"`
	Args string `json:"args"`
}

// applyModelfile folds a Kuwa modelfile into the request: a "system"
// directive becomes a system message in front of the history, a
// "parameter" directive ("key value") a model parameter. Directives Troupe
// does not know are kept as parameters named after them, for models that do.
func applyModelfile(modelfile string, req *actors.ChatRequest) error {
	if strings.TrimSpace(modelfile) == "" {
		return nil
	}
	var directives []directive
	if err := json.Unmarshal([]byte(modelfile), &directives); err != nil {
		return errModelfileShape
	}
	var system []string
	for _, d := range directives {
		name := strings.ToLower(strings.TrimSpace(d.Name))
		switch name {
		case "":
			return errModelfileShape
		case "system":
			system = append(system, d.Args)
		case "parameter":
			key, value, _ := strings.Cut(strings.TrimSpace(d.Args), " ")
			if key == "" {
				return fmt.Errorf("modelfile parameter %q has no name", d.Args)
			}
			setParam(req, key, strings.TrimSpace(value))
		default:
			setParam(req, name, d.Args)
		}
	}
	if len(system) > 0 {
		msg := &actors.Message{Role: actors.Role_ROLE_SYSTEM, Content: strings.Join(system, "\n")}
		req.History = append([]*actors.Message{msg}, req.History...)
	}
	return nil
}

func setParam(req *actors.ChatRequest, key, value string) {
	if req.Params == nil {
		req.Params = map[string]string{}
	}
	req.Params[key] = value
}

// shortJSONError keeps encoding/json's message but not its Go type names.
func shortJSONError(err error) string {
	var syntax *json.SyntaxError
	var typ *json.UnmarshalTypeError
	switch {
	case errors.As(err, &syntax):
		return fmt.Sprintf("%s at byte %d", syntax.Error(), syntax.Offset)
	case errors.As(err, &typ):
		if typ.Field != "" {
			return fmt.Sprintf("field %q has the wrong type", typ.Field)
		}
		return "want a list of objects"
	default:
		return err.Error()
	}
}
