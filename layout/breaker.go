package layout

import (
	"time"

	"gopkg.in/yaml.v3"

	"github.com/troupe-llm/troupe/actors"
)

// breaker parses a layout's circuit breaker: off (or false), on (or true)
// for the defaults, or a mapping of the settings that differ from
// actors.DefaultBreaker.
func (p *parser) breaker(n *yaml.Node) actors.BreakerConfig {
	var b actors.BreakerConfig
	if n.Kind == yaml.ScalarNode {
		var on bool
		switch {
		case n.Value == "off":
			return actors.BreakerConfig{Off: true}
		case n.Value == "on":
			return b
		case n.Decode(&on) == nil:
			return actors.BreakerConfig{Off: !on}
		}
	}
	if n.Kind != yaml.MappingNode {
		p.errorf(n, "breaker wants off, or a mapping of failures, ratio, window, cooldown, max_cooldown")
		return b
	}
	var maxAt *yaml.Node
	for i := 0; i+1 < len(n.Content); i += 2 {
		key, val := n.Content[i], n.Content[i+1]
		switch key.Value {
		case "failures":
			b.Failures = p.count(val, "failures")
		case "window":
			b.Window = p.count(val, "window")
		case "ratio":
			if err := val.Decode(&b.Ratio); err != nil || b.Ratio <= 0 || b.Ratio > 1 {
				p.errorf(val, "ratio must be a share of the window's chats, above 0 and at most 1 (e.g. 0.5)")
				b.Ratio = 0
			}
		case "cooldown":
			b.Cooldown = p.duration(val, "cooldown")
		case "max_cooldown":
			b.MaxCooldown, maxAt = p.duration(val, "max_cooldown"), val
		default:
			p.errorf(key, "unknown key %q in breaker (want failures, ratio, window, cooldown, max_cooldown)", key.Value)
		}
	}
	cooldown := b.Cooldown
	if cooldown == 0 {
		cooldown = actors.DefaultBreaker.Cooldown
	}
	if b.MaxCooldown > 0 && b.MaxCooldown < cooldown {
		p.errorf(maxAt, "max_cooldown (%s) is shorter than cooldown (%s)", b.MaxCooldown, cooldown)
	}
	return b
}

// duration reads a positive duration such as "10s" or "2m".
func (p *parser) duration(n *yaml.Node, what string) time.Duration {
	d, err := time.ParseDuration(n.Value)
	if n.Kind != yaml.ScalarNode || err != nil || d <= 0 {
		p.errorf(n, "%s wants a duration above zero, such as \"10s\" or \"2m\"", what)
		return 0
	}
	return d
}
