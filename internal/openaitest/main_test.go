package openaitest

import (
	"testing"
	"time"

	"github.com/troupe-llm/troupe/internal/leaktest"
)

func TestMain(m *testing.M) { leaktest.Main(m, 5*time.Second) }
