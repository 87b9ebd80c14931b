package opencc

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
)

// ErrUnknownConfig is returned by Load for a name that is not in Configs.
var ErrUnknownConfig = errors.New("unknown OpenCC config")

// A config names the dictionaries of one conversion, as in OpenCC's
// <name>.json: the text is first cut into segments by longest match with seg,
// then each stage of chain rewrites every segment on its own; a stage is a
// group of dictionaries, tried in order.
type config struct {
	seg   string
	chain [][]string
}

// configs mirror /usr/share/opencc/*.json of OpenCC 1.1.6, plus s2hk-finance,
// which the library offers and OpenCC does not ship.
var configs = map[string]config{
	"hk2s":  {"TSPhrases", [][]string{{"HKVariantsRevPhrases", "HKVariantsRev"}, {"TSPhrases", "TSCharacters"}}},
	"hk2t":  {"HKVariantsRevPhrases", [][]string{{"HKVariantsRevPhrases", "HKVariantsRev"}}},
	"jp2t":  {"JPShinjitaiPhrases", [][]string{{"JPShinjitaiPhrases", "JPShinjitaiCharacters", "JPVariantsRev"}}},
	"s2hk":  {"STPhrases", [][]string{{"STPhrases", "STCharacters"}, {"HKVariants"}}},
	"s2t":   {"STPhrases", [][]string{{"STPhrases", "STCharacters"}}},
	"s2tw":  {"STPhrases", [][]string{{"STPhrases", "STCharacters"}, {"TWVariants"}}},
	"s2twp": {"STPhrases", [][]string{{"STPhrases", "STCharacters"}, {"TWPhrases"}, {"TWVariants"}}},
	"t2hk":  {"HKVariants", [][]string{{"HKVariants"}}},
	"t2jp":  {"JPVariants", [][]string{{"JPVariants"}}},
	"t2s":   {"TSPhrases", [][]string{{"TSPhrases", "TSCharacters"}}},
	"t2tw":  {"TWVariants", [][]string{{"TWVariants"}}},
	"tw2s":  {"TSPhrases", [][]string{{"TWVariantsRevPhrases", "TWVariantsRev"}, {"TSPhrases", "TSCharacters"}}},
	"tw2sp": {"TSPhrases", [][]string{{"TWPhrasesRev", "TWVariantsRevPhrases", "TWVariantsRev"}, {"TSPhrases", "TSCharacters"}}},
	"tw2t":  {"TWVariantsRevPhrases", [][]string{{"TWVariantsRevPhrases", "TWVariantsRev"}}},

	"s2hk-finance": {"STPhrases", [][]string{{"STPhrases", "STCharacters"}, {"HKVariants"}, {"HKPhrasesFinance"}}},
}

// Configs lists the supported config names, sorted.
func Configs() []string {
	names := make([]string, 0, len(configs))
	for name := range configs {
		names = append(names, name)
	}
	slices.Sort(names)
	return names
}

var converters struct {
	mu     sync.Mutex
	loaded map[string]*Converter
}

// Load returns the process-wide shared converter for an OpenCC config name
// ("s2twp", "s2t", "t2s", ...). The first call for a name builds it (a few
// milliseconds; dictionaries are shared between configs); it is safe for
// concurrent use.
func Load(config string) (*Converter, error) {
	cfg, ok := configs[config]
	if !ok {
		return nil, fmt.Errorf("%w %q (valid: %s)", ErrUnknownConfig, config, strings.Join(Configs(), ", "))
	}
	converters.mu.Lock()
	defer converters.mu.Unlock()
	if c, ok := converters.loaded[config]; ok {
		return c, nil
	}
	c, err := newConverter(config, cfg)
	if err != nil {
		return nil, fmt.Errorf("opencc config %q: %w", config, err)
	}
	if converters.loaded == nil {
		converters.loaded = make(map[string]*Converter)
	}
	converters.loaded[config] = c
	return c, nil
}
