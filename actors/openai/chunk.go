package openai

import (
	"encoding/json"
	"fmt"
	"math"
	"strconv"
	"unicode/utf8"
)

// chunk is what the kind reads of one chat.completion.chunk event:
//
//	{"choices":[{"index":0,"delta":{"content":"…","refusal":"…","tool_calls":[…],
//	  "reasoning_content":"…","reasoning":"…"},"finish_reason":"stop"}],
//	 "usage":{"prompt_tokens":N,"completion_tokens":N},"error":{…}}
//
// and nothing else: ids, timestamps, logprobs, fingerprints and whatever a
// server adds are checked for JSON syntax and skipped. A chunk is reused
// from event to event.
type chunk struct {
	// choices are those with index 0, in order: a chat asks for one
	// answer (no n), so others are not expected and are ignored.
	choices []choice
	// usage is set when the chunk has a usage object (not null).
	usage                          bool
	promptTokens, completionTokens int
	// failed is set when the chunk has an "error" that is not null: an
	// error event.
	failed bool
}

type choice struct {
	content, refusal string
	// toolCalls is the delta's tool_calls as received, valid until the
	// next event; nil when absent or null.
	toolCalls []byte
	// reasoning and reasoningContent report a reasoning or
	// reasoning_content that is neither null nor "".
	reasoning, reasoningContent bool
	finish                      string
}

// working reports whether a delta shows the server at work on the
// answer: text, a refusal, a tool call, or a reasoning model's thoughts
// (vLLM's and DeepSeek's reasoning_content, Ollama's and OpenRouter's
// reasoning). Troupe has no channel for thoughts yet, but they show that
// the server is working, which is what the timeouts are about.
func (c *choice) working() bool {
	return c.content != "" || c.refusal != "" || hasToolCalls(c.toolCalls) || c.reasoning || c.reasoningContent
}

// hasToolCalls reports whether a raw tool_calls value is a list with at
// least one element: what the SDK forwarded.
func hasToolCalls(raw []byte) bool {
	if len(raw) < 2 || raw[0] != '[' {
		return false
	}
	for _, c := range raw[1:] {
		switch c {
		case ' ', '\t', '\n', '\r':
		default:
			return c != ']'
		}
	}
	return false
}

// malformedError is an event that is not a chunk: invalid JSON, or a
// field the kind reads with the wrong type.
type malformedError struct {
	msg    string
	offset int
}

func (e *malformedError) Error() string {
	return fmt.Sprintf("malformed event at byte %d: %s", e.offset, e.msg)
}

// maxDepth bounds the nesting of an event, as encoding/json does.
const maxDepth = 10000

// decodeChunk reads an event's data into c. It is a small JSON scanner
// rather than encoding/json: it walks the event once, allocates only the
// strings it keeps (none for an empty delta, one for a content delta), and
// takes about a tenth of json.Unmarshal's time on a typical chunk. It is
// as strict as encoding/json about syntax, and returns what json.Unmarshal
// into the same fields would, with exact (case-sensitive) field names and
// the last of duplicate fields winning; FuzzDecodeChunk holds it to that.
// Strings with escapes or invalid UTF-8 are unescaped by encoding/json.
func decodeChunk(data []byte, c *chunk) error {
	*c = chunk{choices: c.choices[:0]}
	d := decoder{data: data}
	d.space()
	if d.literal("null") {
		// As json.Unmarshal into a struct: nothing.
	} else if err := d.object(func(key []byte) error {
		switch string(key) {
		case "choices":
			c.choices = c.choices[:0]
			return d.choices(c)
		case "usage":
			c.usage, c.promptTokens, c.completionTokens = false, 0, 0
			return d.usage(c)
		case "error":
			d.space()
			c.failed = !d.peekNull()
		}
		return d.skip()
	}); err != nil {
		return err
	}
	d.space()
	if d.pos != len(d.data) {
		return d.fail("data after the chunk")
	}
	return nil
}

// decoder is a position in an event's data.
type decoder struct {
	data  []byte
	pos   int
	depth int
}

func (d *decoder) fail(msg string) error {
	return &malformedError{msg: msg, offset: d.pos}
}

func (d *decoder) space() {
	for d.pos < len(d.data) {
		switch d.data[d.pos] {
		case ' ', '\t', '\n', '\r':
			d.pos++
		default:
			return
		}
	}
}

// peek returns the next byte, 0 at the end.
func (d *decoder) peek() byte {
	if d.pos < len(d.data) {
		return d.data[d.pos]
	}
	return 0
}

func (d *decoder) peekNull() bool {
	return len(d.data)-d.pos >= 4 && string(d.data[d.pos:d.pos+4]) == "null"
}

// literal consumes lit when it comes next.
func (d *decoder) literal(lit string) bool {
	if len(d.data)-d.pos >= len(lit) && string(d.data[d.pos:d.pos+len(lit)]) == lit {
		d.pos += len(lit)
		return true
	}
	return false
}

// object reads an object, calling field for each key with the position
// at its value, which field must consume.
func (d *decoder) object(field func(key []byte) error) error {
	d.space()
	if d.peek() != '{' {
		return d.fail("want an object")
	}
	d.pos++
	if d.depth++; d.depth > maxDepth {
		return d.fail("nested too deep")
	}
	d.space()
	if d.peek() == '}' {
		d.pos++
		d.depth--
		return nil
	}
	for {
		d.space()
		if d.peek() != '"' {
			return d.fail("want a field name")
		}
		key, escaped, err := d.str()
		if err != nil {
			return err
		}
		if escaped {
			if key, err = unescape(key); err != nil {
				return d.fail("bad field name")
			}
		}
		d.space()
		if d.peek() != ':' {
			return d.fail("want a colon")
		}
		d.pos++
		d.space()
		if err := field(key); err != nil {
			return err
		}
		d.space()
		switch d.peek() {
		case ',':
			d.pos++
		case '}':
			d.pos++
			d.depth--
			return nil
		default:
			return d.fail("want a comma or the object's end")
		}
	}
}

// array reads an array, calling elem with the position at each element,
// which elem must consume.
func (d *decoder) array(elem func() error) error {
	d.space()
	if d.peek() != '[' {
		return d.fail("want a list")
	}
	d.pos++
	if d.depth++; d.depth > maxDepth {
		return d.fail("nested too deep")
	}
	d.space()
	if d.peek() == ']' {
		d.pos++
		d.depth--
		return nil
	}
	for {
		d.space()
		if err := elem(); err != nil {
			return err
		}
		d.space()
		switch d.peek() {
		case ',':
			d.pos++
		case ']':
			d.pos++
			d.depth--
			return nil
		default:
			return d.fail("want a comma or the list's end")
		}
	}
}

// str reads a string, returning what is between its quotes and whether
// that holds escapes or bytes that are not valid UTF-8 (which
// encoding/json replaces), that is, whether it needs unescape.
func (d *decoder) str() (raw []byte, escaped bool, err error) {
	start := d.pos + 1
	ascii := true
	for i := start; i < len(d.data); {
		switch c := d.data[i]; {
		case c == '"':
			raw = d.data[start:i]
			d.pos = i + 1
			if !ascii && !escaped && !utf8.Valid(raw) {
				escaped = true
			}
			return raw, escaped, nil
		case c == '\\':
			escaped = true
			if i+1 >= len(d.data) {
				d.pos = i
				return nil, false, d.fail("unfinished string")
			}
			switch d.data[i+1] {
			case '"', '\\', '/', 'b', 'f', 'n', 'r', 't':
				i += 2
			case 'u':
				if i+6 > len(d.data) || !isHex(d.data[i+2]) || !isHex(d.data[i+3]) || !isHex(d.data[i+4]) || !isHex(d.data[i+5]) {
					d.pos = i
					return nil, false, d.fail("bad \\u escape")
				}
				i += 6
			default:
				d.pos = i
				return nil, false, d.fail("bad escape")
			}
		case c < 0x20:
			d.pos = i
			return nil, false, d.fail("control character in a string")
		default:
			if c >= utf8.RuneSelf {
				ascii = false
			}
			i++
		}
	}
	d.pos = len(d.data)
	return nil, false, d.fail("unfinished string")
}

func isHex(c byte) bool {
	return '0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F'
}

// unescape decodes a string's escapes (and replaces invalid UTF-8) with
// encoding/json itself, so that the text is exactly what it would read.
func unescape(raw []byte) ([]byte, error) {
	q := make([]byte, 0, len(raw)+2)
	q = append(append(append(q, '"'), raw...), '"')
	var s string
	if err := json.Unmarshal(q, &s); err != nil {
		return nil, err
	}
	return []byte(s), nil
}

// text reads a string or null ("") as a Go string.
func (d *decoder) text() (string, error) {
	if d.literal("null") {
		return "", nil
	}
	if d.peek() != '"' {
		return "", d.fail("want a string")
	}
	raw, escaped, err := d.str()
	if err != nil {
		return "", err
	}
	if escaped {
		b, err := unescape(raw)
		if err != nil {
			return "", d.fail("bad string")
		}
		return string(b), nil
	}
	return string(raw), nil
}

// number reads a number, returning its text.
func (d *decoder) number() ([]byte, error) {
	start, i, n := d.pos, d.pos, len(d.data)
	digits := func() bool {
		j := i
		for i < n && '0' <= d.data[i] && d.data[i] <= '9' {
			i++
		}
		return i > j
	}
	if i < n && d.data[i] == '-' {
		i++
	}
	switch {
	case i < n && d.data[i] == '0':
		i++
	case !digits():
		d.pos = i
		return nil, d.fail("want a value")
	}
	if i < n && d.data[i] == '.' {
		i++
		if !digits() {
			d.pos = i
			return nil, d.fail("bad number")
		}
	}
	if i < n && (d.data[i] == 'e' || d.data[i] == 'E') {
		i++
		if i < n && (d.data[i] == '+' || d.data[i] == '-') {
			i++
		}
		if !digits() {
			d.pos = i
			return nil, d.fail("bad number")
		}
	}
	d.pos = i
	return d.data[start:i], nil
}

// skip reads any value.
func (d *decoder) skip() error {
	d.space()
	switch d.peek() {
	case '{':
		return d.object(func([]byte) error { return d.skip() })
	case '[':
		return d.array(d.skip)
	case '"':
		_, _, err := d.str()
		return err
	case 't':
		if d.literal("true") {
			return nil
		}
	case 'f':
		if d.literal("false") {
			return nil
		}
	case 'n':
		if d.literal("null") {
			return nil
		}
	default:
		_, err := d.number()
		return err
	}
	return d.fail("want a value")
}

// raw reads any value and returns its text.
func (d *decoder) raw() ([]byte, error) {
	start := d.pos
	if err := d.skip(); err != nil {
		return nil, err
	}
	return d.data[start:d.pos], nil
}

func (d *decoder) choices(c *chunk) error {
	if d.literal("null") {
		return nil
	}
	return d.array(func() error {
		var ch choice
		index := 0
		if !d.literal("null") {
			if err := d.object(func(key []byte) error {
				var err error
				switch string(key) {
				case "index":
					index, err = d.integer()
				case "delta":
					ch.content, ch.refusal, ch.toolCalls, ch.reasoning, ch.reasoningContent = "", "", nil, false, false
					err = d.delta(&ch)
				case "finish_reason":
					ch.finish, err = d.text()
				default:
					err = d.skip()
				}
				return err
			}); err != nil {
				return err
			}
		}
		if index == 0 {
			c.choices = append(c.choices, ch)
		}
		return nil
	})
}

func (d *decoder) delta(ch *choice) error {
	if d.literal("null") {
		return nil
	}
	return d.object(func(key []byte) error {
		var err error
		switch string(key) {
		case "content":
			ch.content, err = d.text()
		case "refusal":
			ch.refusal, err = d.text()
		case "tool_calls":
			var raw []byte
			if raw, err = d.raw(); err == nil {
				ch.toolCalls = raw
				if string(raw) == "null" {
					ch.toolCalls = nil
				}
			}
		case "reasoning_content":
			ch.reasoningContent, err = d.thinking()
		case "reasoning":
			ch.reasoning, err = d.thinking()
		default:
			err = d.skip()
		}
		return err
	})
}

// thinking reads a reasoning field: whether it is neither null nor "".
func (d *decoder) thinking() (bool, error) {
	raw, err := d.raw()
	return err == nil && string(raw) != "null" && string(raw) != `""`, err
}

// integer reads a whole number of int's range, or null (0), as
// json.Unmarshal into an int does.
func (d *decoder) integer() (int, error) {
	if d.literal("null") {
		return 0, nil
	}
	if c := d.peek(); c != '-' && (c < '0' || c > '9') {
		return 0, d.fail("want a number")
	}
	start := d.pos
	text, err := d.number()
	if err != nil {
		return 0, err
	}
	n, err := strconv.Atoi(string(text))
	if err != nil {
		d.pos = start
		return 0, d.fail("want a whole number")
	}
	return n, nil
}

// count reads a token count: any number (a server may write 12.0), or
// null (0), as json.Unmarshal into a float64 does.
func (d *decoder) count() (int, error) {
	if d.literal("null") {
		return 0, nil
	}
	if c := d.peek(); c != '-' && (c < '0' || c > '9') {
		return 0, d.fail("want a number")
	}
	start := d.pos
	text, err := d.number()
	if err != nil {
		return 0, err
	}
	f, err := strconv.ParseFloat(string(text), 64)
	if err != nil {
		d.pos = start
		return 0, d.fail("number out of range")
	}
	return int(max(min(f, math.MaxInt32), 0)), nil
}

func (d *decoder) usage(c *chunk) error {
	if d.literal("null") {
		return nil
	}
	c.usage = true
	return d.object(func(key []byte) error {
		var err error
		switch string(key) {
		case "prompt_tokens":
			c.promptTokens, err = d.count()
		case "completion_tokens":
			c.completionTokens, err = d.count()
		default:
			err = d.skip()
		}
		return err
	})
}
