package app

import (
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

func TestAPIKeysSettings(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "keys")
	if err := os.WriteFile(file, []byte("# operators' keys\nkey-a\n\n  key-b  # the batch jobs\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	empty := filepath.Join(dir, "empty")
	if err := os.WriteFile(empty, []byte("# none yet\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name    string
		env     map[string]string
		want    []string
		wantErr string
	}{
		{"none", nil, nil, ""},
		{"env", map[string]string{"API_KEYS": "k1, k2"}, []string{"k1", "k2"}, ""},
		{"file", map[string]string{"API_KEYS_FILE": file}, []string{"key-a", "key-b"}, ""},
		{"both", map[string]string{"API_KEYS": "k1", "API_KEYS_FILE": file}, []string{"k1", "key-a", "key-b"}, ""},
		{"missing file", map[string]string{"API_KEYS_FILE": filepath.Join(dir, "nope")}, nil, "API_KEYS_FILE"},
		{"empty file", map[string]string{"API_KEYS_FILE": empty}, nil, "holds no key"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg, err := ParseConfig(nil, func(k string) string { return tt.env[k] }, io.Discard)
			if err != nil {
				t.Fatal(err)
			}
			keys, err := cfg.apiKeys()
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err %v, want one naming %q", err, tt.wantErr)
				}
				return
			}
			if err != nil || !slices.Equal(keys, tt.want) {
				t.Fatalf("keys %q, err %v; want %q", keys, err, tt.want)
			}
		})
	}
}

// The three TLS files go together: one or two of them stop the node,
// naming the missing ones.
func TestTLSFilesGoTogether(t *testing.T) {
	tests := []struct {
		name    string
		env     map[string]string
		wantErr string
	}{
		{"none", nil, ""},
		{"all", map[string]string{"TLS_CERT": "c", "TLS_KEY": "k", "TLS_CA": "ca"}, ""},
		{"cert only", map[string]string{"TLS_CERT": "c"}, "TLS_KEY and TLS_CA not set"},
		{"no CA", map[string]string{"TLS_CERT": "c", "TLS_KEY": "k"}, "TLS_CA not set"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := ParseConfig(nil, func(k string) string { return tt.env[k] }, io.Discard)
			if tt.wantErr == "" {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("err %v, want one saying %q", err, tt.wantErr)
			}
		})
	}
}
