package app

import (
	"io"
	"strings"
	"testing"
	"time"

	"github.com/troupe-llm/troupe/gateway"
)

func TestLimitSettings(t *testing.T) {
	tests := []struct {
		name    string
		env     map[string]string
		check   func(gateway.Limits) bool
		wantErr string
	}{
		{"defaults", nil, func(l gateway.Limits) bool { return l == gateway.DefaultLimits() }, ""},
		{"sizes", map[string]string{"MAX_BODY_BYTES": "16MiB", "MAX_HISTORY_BYTES": "512KiB", "MAX_ANSWER_BYTES": "100000", "MAX_HEADER_BYTES": "8 KiB"},
			func(l gateway.Limits) bool {
				return l.MaxBodyBytes == 16<<20 && l.MaxHistoryBytes == 512<<10 && l.MaxAnswerBytes == 100000 && l.MaxHeaderBytes == 8<<10
			}, ""},
		{"counts and times", map[string]string{"MAX_CONNECTIONS": "50", "MAX_HISTORY_MESSAGES": "10", "HEADER_TIMEOUT": "2s", "BODY_TIMEOUT": "30s", "IDLE_TIMEOUT": "1m"},
			func(l gateway.Limits) bool {
				return l.MaxConnections == 50 && l.MaxHistoryMessages == 10 && l.HeaderTimeout == 2*time.Second &&
					l.BodyTimeout == 30*time.Second && l.IdleTimeout == time.Minute
			}, ""},
		{"a size in decimal units", map[string]string{"MAX_BODY_BYTES": "8MB"}, nil, "MAX_BODY_BYTES"},
		{"a zero size", map[string]string{"MAX_ANSWER_BYTES": "0"}, nil, "MAX_ANSWER_BYTES"},
		{"no connections", map[string]string{"MAX_CONNECTIONS": "0"}, nil, "at least 1"},
		{"an overflowing size", map[string]string{"MAX_BODY_BYTES": "9000000000GiB"}, nil, "MAX_BODY_BYTES"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg, err := ParseConfig(nil, func(k string) string { return tt.env[k] }, io.Discard)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err %v, want one naming %q", err, tt.wantErr)
				}
				return
			}
			if err != nil || !tt.check(cfg.Limits) {
				t.Fatalf("limits %+v, err %v", cfg.Limits, err)
			}
		})
	}
}
