package agenttest

import (
	"errors"
	"io"
	"mime"
	"mime/multipart"
	"net/http"
	"net/url"
	"strings"
)

// maxForm bounds a form body; chat histories are long but not this long.
const maxForm = 32 << 20

// form is a request form in the order it was sent. The kernel re-encodes
// the whole form to the worker in that order with the first value of each
// key, as werkzeug's MultiDict.items() yields it.
type form []field

type field struct{ key, value string }

// get is Flask's request.form.get: the first value, and whether the key was
// sent at all.
func (f form) get(key string) optional {
	for _, kv := range f {
		if kv.key == key {
			return optional{kv.value, true}
		}
	}
	return optional{}
}

// firstValues keeps the first field of each key, in order.
func (f form) firstValues() form {
	seen := map[string]bool{}
	var out form
	for _, kv := range f {
		if !seen[kv.key] {
			seen[kv.key] = true
			out = append(out, kv)
		}
	}
	return out
}

// encode is Python's urlencode with quote_plus, which escapes exactly as
// url.QueryEscape does; unlike url.Values.Encode it keeps the order.
func (f form) encode() string {
	var b strings.Builder
	for i, kv := range f {
		if i > 0 {
			b.WriteByte('&')
		}
		b.WriteString(url.QueryEscape(kv.key))
		b.WriteByte('=')
		b.WriteString(url.QueryEscape(kv.value))
	}
	return b.String()
}

// parseForm reads the body as Flask fills request.form: only for the two
// form content types; anything else (JSON, say) gives an empty form, so the
// call fails the way it would against the kernel.
func parseForm(r *http.Request) (form, error) {
	mt, params, err := mime.ParseMediaType(r.Header.Get("Content-Type"))
	if err != nil {
		return nil, nil
	}
	switch mt {
	case "application/x-www-form-urlencoded":
		body, err := io.ReadAll(io.LimitReader(r.Body, maxForm))
		if err != nil {
			return nil, err
		}
		return parseQuery(string(body)), nil
	case "multipart/form-data":
		return parseMultipart(r.Body, params["boundary"])
	}
	return nil, nil
}

// parseQuery is Python's parse_qsl(keep_blank_values=True): '&' separates,
// empty pairs are skipped, a pair without '=' has an empty value, and bad
// percent escapes are kept as they are rather than rejected.
func parseQuery(s string) form {
	var f form
	for pair := range strings.SplitSeq(s, "&") {
		if pair == "" {
			continue
		}
		k, v, _ := strings.Cut(pair, "=")
		f = append(f, field{unquotePlus(k), unquotePlus(v)})
	}
	return f
}

func unquotePlus(s string) string {
	if u, err := url.QueryUnescape(s); err == nil {
		return u
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		switch c := s[i]; {
		case c == '+':
			b.WriteByte(' ')
		case c == '%' && i+2 < len(s) && isHex(s[i+1]) && isHex(s[i+2]):
			b.WriteByte(unhex(s[i+1])<<4 | unhex(s[i+2]))
			i += 2
		default:
			b.WriteByte(c)
		}
	}
	return strings.ToValidUTF8(b.String(), "\uFFFD")
}

func isHex(c byte) bool {
	return '0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F'
}

func unhex(c byte) byte {
	switch {
	case c <= '9':
		return c - '0'
	case c >= 'a':
		return c - 'a' + 10
	}
	return c - 'A' + 10
}

// parseMultipart keeps the text parts in order; file parts go to Flask's
// request.files, not request.form.
func parseMultipart(body io.Reader, boundary string) (form, error) {
	if boundary == "" {
		return nil, errors.New("multipart form without boundary")
	}
	mr := multipart.NewReader(io.LimitReader(body, maxForm), boundary)
	var f form
	for {
		p, err := mr.NextPart()
		if errors.Is(err, io.EOF) {
			return f, nil
		}
		if err != nil {
			return nil, err
		}
		if p.FormName() == "" || p.FileName() != "" {
			continue
		}
		v, err := io.ReadAll(p)
		if err != nil {
			return nil, err
		}
		f = append(f, field{p.FormName(), string(v)})
	}
}

// baseURL is the kernel's get_base_url: f"{scheme}://{netloc}" from
// Python's urlsplit. The netloc is compared as written (userinfo, case and
// an explicit default port all count), so "http://w:80" and "http://w" are
// different workers to the Agent.
func baseURL(raw string) string {
	s := strings.TrimLeft(raw, "\x00\x01\x02\x03\x04\x05\x06\x07\x08\x09\x0a\x0b\x0c\x0d\x0e\x0f"+
		"\x10\x11\x12\x13\x14\x15\x16\x17\x18\x19\x1a\x1b\x1c\x1d\x1e\x1f ")
	s = strings.NewReplacer("\t", "", "\r", "", "\n", "").Replace(s)
	scheme := ""
	if i := strings.IndexByte(s, ':'); i > 0 && isSchemeStart(s[0]) && strings.IndexFunc(s[:i], notSchemeChar) < 0 {
		scheme, s = strings.ToLower(s[:i]), s[i+1:]
	}
	netloc := ""
	if strings.HasPrefix(s, "//") {
		s = s[2:]
		end := len(s)
		if i := strings.IndexAny(s, "/?#"); i >= 0 {
			end = i
		}
		netloc = s[:end]
	}
	return scheme + "://" + netloc
}

func isSchemeStart(c byte) bool { return 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' }

func notSchemeChar(r rune) bool {
	return !('a' <= r && r <= 'z' || 'A' <= r && r <= 'Z' || '0' <= r && r <= '9' || r == '+' || r == '-' || r == '.')
}
