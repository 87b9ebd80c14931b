package openaitest

import (
	"encoding/json"
	"testing"
)

func TestJSONStyles(t *testing.T) {
	const tricky = "a\"b\\c/\b\f\n\r\t\x01\x1f\x7f<>& é \u2028\u2029 \U0001F600 \xff"
	goJSON, err := json.Marshal(tricky)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name  string
		style style
		v     any
		want  string
	}{
		// Ollama writes with encoding/json: the same bytes.
		{"go string", goStyle, tricky, string(goJSON)},
		{"compact string", compactStyle, tricky,
			`"a\"b\\c/\b\f\n\r\t\u0001\u001f` + "\x7f<>& é \u2028\u2029 \U0001F600 \uFFFD" + `"`},
		// Python's json.dumps(ensure_ascii=True).
		{"python string", pythonStyle, "é\U0001F600<\n", `"\u00e9\ud83d\ude00<\n"`},
		{"python object", pythonStyle, object{{"error", object{{"message", "x"}, {"param", nil}, {"code", 500}}}},
			`{"error": {"message": "x", "param": null, "code": 500}}`},
		{"compact object", compactStyle, object{{"b", array{1, 2.5, true, nil}}, {"a", object{}}, {"c", array{}}},
			`{"b":[1,2.5,true,null],"a":{},"c":[]}`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := string(tt.style.encode(tt.v)); got != tt.want {
				t.Errorf("got  %s\nwant %s", got, tt.want)
			}
		})
	}
}
