package opencc

import (
	"errors"
	"slices"
	"strings"
	"sync"
	"testing"
)

func mustLoad(t testing.TB, config string) *Converter {
	t.Helper()
	c, err := Load(config)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// The wants are the reference's (OpenCC 1.1.6) outputs.
func TestConvert(t *testing.T) {
	tests := []struct {
		config, in, want string
	}{
		// Taiwan phrases apply inside the segments of the phrase dictionary,
		// never across their edges.
		{"s2twp", "正则表达式", "正則表示式"},
		{"s2twp", "复选框", "複選框"},
		{"s2twp", "单变量回归", "單變量回歸"},
		{"s2twp", "U盘和SQL注入", "隨身碟和SQL注入"},
		{"s2twp", "打开U盘", "開啟隨身碟"},
		// Data the library has stale or overridden.
		{"s2twp", "皮肤科医生", "皮膚科醫生"},
		{"s2twp", "虚拟机器", "虛擬機器"},
		{"s2twp", "讲下去", "講下去"},
		{"s2t", "气冲斗牛", "氣衝斗牛"},
		{"s2t", "佣金和厘米", "佣金和釐米"},
		{"s2twp", "鼠标", "滑鼠"},
		{"s2t", "鼠标", "鼠標"},
		// Keys longer than ten runes match.
		{"s2t", "双江拉祜族佤族布朗族傣族自治县", "雙江拉祜族佤族布朗族傣族自治縣"},
		{"tw2sp", "電腦軟體", "电脑软件"},
		{"tw2sp", "SQL隱碼攻擊", "SQL注入"},
		{"t2s", "滑鼠", "滑鼠"},
		{"s2hk-finance", "多头仓位", "長倉"},
		{"s2t", "", ""},
		{"s2t", "plain ASCII, untouched.\n", "plain ASCII, untouched.\n"},
		// Bytes that are not UTF-8 pass through, and so does NUL (the
		// reference stops a line at NUL and rejects invalid UTF-8).
		{"s2t", "后\xff面\xe4\xb8", "後\xff面\xe4\xb8"},
		{"s2t", "\xe4后\x00后", "\xe4後\x00後"},
	}
	for _, tt := range tests {
		t.Run(tt.config+"/"+tt.in, func(t *testing.T) {
			if got := mustLoad(t, tt.config).Convert(tt.in); got != tt.want {
				t.Errorf("Convert(%q) = %q, want %q", tt.in, got, tt.want)
			}
		})
	}
}

func TestLoad(t *testing.T) {
	a, b := mustLoad(t, "s2twp"), mustLoad(t, "s2twp")
	if a != b {
		t.Error("Load returned two converters for one config")
	}
	if a.Name() != "s2twp" {
		t.Errorf("Name() = %q", a.Name())
	}
	_, err := Load("s2x")
	if !errors.Is(err, ErrUnknownConfig) {
		t.Fatalf("Load(s2x) error = %v, want ErrUnknownConfig", err)
	}
	for _, name := range Configs() {
		if !strings.Contains(err.Error(), name) {
			t.Errorf("error %q does not list %s", err, name)
		}
	}
}

func TestConfigsSorted(t *testing.T) {
	names := Configs()
	if !slices.IsSorted(names) || len(names) != len(configs) {
		t.Errorf("Configs() = %v", names)
	}
}

func TestLoadConcurrent(t *testing.T) {
	var wg sync.WaitGroup
	got := make([]*Converter, 8)
	for i := range got {
		wg.Go(func() {
			c, err := Load("tw2sp")
			if err != nil {
				t.Error(err)
			}
			got[i] = c
			if out := c.Convert("滑鼠"); out != "鼠标" {
				t.Errorf("Convert = %q", out)
			}
		})
	}
	wg.Wait()
	for _, c := range got[1:] {
		if c != got[0] {
			t.Fatal("concurrent Loads built more than one converter")
		}
	}
}

func TestDictionariesShared(t *testing.T) {
	if mustLoad(t, "s2t").seg != mustLoad(t, "s2twp").seg {
		t.Error("s2t and s2twp loaded STPhrases twice")
	}
}
