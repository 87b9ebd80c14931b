package openaitest

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strconv"
	"unicode/utf16"
	"unicode/utf8"
)

// The servers imitated here write their JSON with different libraries, and
// the bytes differ: key order, separators and which characters are escaped.
// encoding/json cannot keep key order or leave '<' alone in a map, so the
// answers are built from ordered objects and written by a small encoder
// that follows each library's rules.

// field is one member of an ordered JSON object.
type field struct {
	key string
	val any
}

// object is a JSON object whose members keep their order. Values are nil,
// bool, int, int64, float64, string, object or array.
type object []field

// array is a JSON array of the same values.
type array []any

// style is how one JSON library writes text.
type style struct {
	// goEscapes is encoding/json's: '<', '>' and '&' become \u003c, \u003e
	// and \u0026, and U+2028 and U+2029 are escaped (Ollama).
	goEscapes bool
	// asciiOnly is Python's json.dumps default (ensure_ascii): every
	// non-ASCII rune becomes \uXXXX, as UTF-16 surrogate pairs above the
	// BMP (vLLM's stream error events).
	asciiOnly bool
	// spaced is Python's json.dumps default separators ", " and ": ".
	spaced bool
}

var (
	compactStyle = style{}                              // pydantic, nlohmann::json, OpenAI
	goStyle      = style{goEscapes: true}               // Go's encoding/json
	pythonStyle  = style{asciiOnly: true, spaced: true} // Python's json.dumps
)

// encode writes v in the style.
func (st style) encode(v any) []byte {
	var b bytes.Buffer
	st.write(&b, v)
	return b.Bytes()
}

// indent re-formats compact JSON with one level of indentation per nesting
// level and ": " after keys, as OpenAI's indented bodies are.
func indent(compact []byte, level string) []byte {
	var b bytes.Buffer
	if err := json.Indent(&b, compact, "", level); err != nil {
		panic("openaitest: indent own JSON: " + err.Error())
	}
	return b.Bytes()
}

func (st style) write(b *bytes.Buffer, v any) {
	comma, colon := ",", ":"
	if st.spaced {
		comma, colon = ", ", ": "
	}
	switch v := v.(type) {
	case nil:
		b.WriteString("null")
	case bool:
		b.WriteString(strconv.FormatBool(v))
	case int:
		b.WriteString(strconv.Itoa(v))
	case int64:
		b.WriteString(strconv.FormatInt(v, 10))
	case float64:
		b.WriteString(strconv.FormatFloat(v, 'f', -1, 64))
	case string:
		st.quote(b, v)
	case object:
		b.WriteByte('{')
		for i, f := range v {
			if i > 0 {
				b.WriteString(comma)
			}
			st.quote(b, f.key)
			b.WriteString(colon)
			st.write(b, f.val)
		}
		b.WriteByte('}')
	case array:
		b.WriteByte('[')
		for i, e := range v {
			if i > 0 {
				b.WriteString(comma)
			}
			st.write(b, e)
		}
		b.WriteByte(']')
	default:
		panic(fmt.Sprintf("openaitest: cannot encode a %T", v))
	}
}

const hexDigits = "0123456789abcdef"

func writeU(b *bytes.Buffer, r rune) {
	b.WriteString(`\u`)
	b.WriteByte(hexDigits[r>>12&0xf])
	b.WriteByte(hexDigits[r>>8&0xf])
	b.WriteByte(hexDigits[r>>4&0xf])
	b.WriteByte(hexDigits[r&0xf])
}

// quote writes s as a JSON string. All the libraries use the short escapes
// \" \\ \b \f \n \r \t and \u00xx (lower-case hex) for the other control
// characters; none escapes '/' or DEL. Invalid UTF-8 becomes U+FFFD
// (escaped by encoding/json).
func (st style) quote(b *bytes.Buffer, s string) {
	b.WriteByte('"')
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			switch {
			case c == '"':
				b.WriteString(`\"`)
			case c == '\\':
				b.WriteString(`\\`)
			case c == '\b':
				b.WriteString(`\b`)
			case c == '\f':
				b.WriteString(`\f`)
			case c == '\n':
				b.WriteString(`\n`)
			case c == '\r':
				b.WriteString(`\r`)
			case c == '\t':
				b.WriteString(`\t`)
			case c < 0x20:
				writeU(b, rune(c))
			case st.goEscapes && (c == '<' || c == '>' || c == '&'):
				writeU(b, rune(c))
			default:
				b.WriteByte(c)
			}
			i++
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		i += size
		switch {
		case st.asciiOnly && r > 0xffff:
			hi, lo := utf16.EncodeRune(r)
			writeU(b, hi)
			writeU(b, lo)
		case st.asciiOnly:
			writeU(b, r)
		case st.goEscapes && (r == '\u2028' || r == '\u2029'):
			writeU(b, r)
		case st.goEscapes && r == utf8.RuneError && size == 1:
			writeU(b, r) // encoding/json escapes the replacement
		default:
			b.WriteRune(r) // utf8.RuneError for invalid bytes
		}
	}
	b.WriteByte('"')
}
